"""connectors.clickhouse.tearsheet: the tearsheet's numbers and series in SQL,
on hand-built runs whose values were worked out by hand.

chDB opens one directory per process at a time: one module-scoped directory,
closed at teardown.
"""
import math
import random
import statistics

import pytest

from connectors.clickhouse import analytics as an
from connectors.clickhouse import client as ch
from connectors.clickhouse import runs as ch_runs
from connectors.clickhouse import tearsheet as ts
from operators.types import Bar, EquityPoint, Order, Signal, Trade

RUN = "sheet"
D1, D2, D3 = 1706625060, 1706711460, 1706797860  # 14:31Z on 2024-01-30, -31 and 2024-02-01
H = 3600
NY = -5 * H  # New York's offset in January and February: the series' times are its wall clock
CONFIG = '{"risk": {"initial_cash": 100000}, "exit": {"stop_loss_pct": 0.015, "take_profit_pct": 0.03}}'
EQUITY = [(D1, 100000.0), (D1 + H, 100500.0), (D1 + 2 * H, 99500.0), (D1 + 3 * H, 100100.0),
          (D2, 100600.0), (D2 + H, 100300.0), (D2 + 2 * H, 100000.0),
          (D3, 100400.0), (D3 + H, 100700.0), (D3 + 2 * H, 100650.0)]
# closing order: win win loss loss loss win (two close at D2 + H: by entry time)
TRADES = [
    Trade("a", "AAPL", "sma_5_15", 100, D1, 100.0, D1 + H, 102.0, "take_profit", 200.0, 0.02, 0.0),
    Trade("b", "MSFT", "sma_5_15", 10, D1, 200.0, D1 + 2 * H, 203.0, "signal", 30.0, 0.015, 0.0),
    Trade("d", "AAPL", "sma_10_30", 100, D2 - H, 100.0, D2 + H, 99.0, "stop_loss", -100.0, -0.01, 0.0),
    Trade("c", "MSFT", "sma_10_30", 10, D2 - 2 * H, 200.0, D2 + H, 198.0, "stop_loss", -20.0, -0.01, 0.0),
    Trade("e", "AAPL", "sma_5_15", 100, D3, 100.0, D3 + H, 99.5, "time_stop", -50.0, -0.005, 0.0),
    Trade("f", "AAPL", "sma_5_15", 100, D3 + H, 100.0, D3 + 2 * H, 101.2, "signal", 120.0, 0.012, 0.0),
]


def _signal(symbol, strategy, t, sl, tp):
    return Signal(strategy, symbol, "buy", t, 100.0, 0.7, tp, sl, tp / sl)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    c = ch.open_client("chdb://" + str(tmp_path_factory.mktemp("sheet") / "db"))
    ch.ensure_schema(c)
    ch_runs.record_run_start(c, RUN, CONFIG, "backtest", now_ms=D1 * 1000)
    w = ch.ClickHouseWriter(c, RUN)
    w.add("equity", [EquityPoint(t, eq, eq, 0, 0.0) for t, eq in EQUITY])
    w.add("trades", TRADES)
    # trade "a": two entry orders before it; the later one (D1 - 60) is its own
    w.add("orders", [Order("x1", "sma_5_15", "AAPL", "buy", 1, D1 - 3 * H, 100.0, "entry"),
                     Order("x2", "sma_5_15", "AAPL", "buy", 100, D1 - 60, 100.0, "entry")])
    w.add("signals", [_signal("AAPL", "sma_5_15", D1 - 3 * H, 0.05, 0.10),
                      _signal("AAPL", "sma_5_15", D1 - 60, 0.01, 0.02)])
    w.flush()
    ch_runs.record_run_end(c, RUN, 0, "finished", now_ms=D3 * 1000)
    yield c
    ch.close_clients()


def test_daily_returns_and_pnl_from_the_last_equity_of_each_new_york_day(client):
    days = ts.daily(client, RUN)
    assert [d["date"] for d in days] == ["2024-01-30", "2024-01-31", "2024-02-01"]
    assert [d["equity"] for d in days] == [100100.0, 100000.0, 100650.0]
    assert [d["pnl"] for d in days] == pytest.approx([100.0, -100.0, 650.0])
    assert [d["ret"] for d in days] == pytest.approx([0.001, 100000 / 100100 - 1, 0.0065])


def test_monthly_return_chains_month_end_equity_from_initial_cash(client):
    months = ts.monthly(client, RUN)
    assert [(m["year"], m["month"]) for m in months] == [(2024, 1), (2024, 2)]
    assert [m["ret"] for m in months] == pytest.approx([0.0, 0.0065])


def test_cagr_sortino_calmar_best_and_worst_day(client):
    perf = an.performance(client, RUN)
    x = ts.extra_metrics(client, RUN, perf["max_drawdown"])
    r = [0.001, 100000 / 100100 - 1, 0.0065]
    cagr = (100650 / 100000) ** (252 / 3) - 1
    assert x["cagr"] == pytest.approx(cagr)
    downside = math.sqrt(sum(min(v, 0) ** 2 for v in r) / 3)
    assert x["sortino"] == pytest.approx(statistics.mean(r) / downside * math.sqrt(252))
    assert perf["max_drawdown"] == pytest.approx(1000 / 100500)
    assert x["calmar"] == pytest.approx(cagr / (1000 / 100500))
    assert (x["best_day_date"], x["worst_day_date"]) == ("2024-02-01", "2024-01-31")
    assert x["best_day"] == pytest.approx(0.0065) and x["worst_day"] == pytest.approx(r[1])


def test_longest_drawdown_runs_from_the_peak_to_the_recovery_in_calendar_days(client):
    # under water: D1+2h..D1+3h (23 h, peak D1+1h -> D2), D2+1h..D3 (peak D2 -> D3+1h, 25 h),
    # D3+2h (never recovered, 1 h)
    x = ts.extra_metrics(client, RUN, 0.01)
    assert x["longest_drawdown_days"] == pytest.approx(25 / 24)
    assert (x["longest_drawdown_start"], x["longest_drawdown_end"]) == ("2024-01-31 09:31", "2024-02-01 10:31")
    assert x["longest_drawdown_recovered"] is True


def test_longest_drawdown_not_recovered_ends_at_the_last_minute(client):
    w = ch.ClickHouseWriter(client, "sinking")
    w.add("equity", [EquityPoint(D1 + i * 60, eq, eq, 0, 0.0) for i, eq in enumerate([100000.0, 99000.0, 98000.0])])
    w.flush()
    x = ts.extra_metrics(client, "sinking", 0.02)
    assert x["longest_drawdown_days"] == pytest.approx(120 / 86400)
    assert x["longest_drawdown_recovered"] is False and x["cagr"] is not None


def test_consecutive_wins_and_losses_in_closing_order(client):
    x = ts.extra_metrics(client, RUN, 0.01)
    assert (x["max_consecutive_wins"], x["max_consecutive_losses"]) == (2, 3)


def test_return_histogram_counts_every_trade_in_bins_aligned_on_zero(client):
    h = ts.return_histogram(client, RUN)
    assert h["width"] == 0.001  # range 0.03 / 40 bins = 0.00075 -> the next 1-2-2.5-5 step
    assert h["lo"] == pytest.approx(-0.01) and len(h["counts"]) == 31  # bins -10 .. 20
    assert sum(h["counts"]) == len(TRADES)
    assert h["counts"][0] == 2 and h["counts"][-1] == 1 and h["counts"][5] == 1  # -1 %, +2 %, -0.5 %


def test_stop_and_target_from_the_entry_signal_else_the_configuration(client):
    t = ts.trade_list(client, RUN)
    assert list(t["exit_t"]) == sorted(t["exit_t"]) and len(t["symbol"]) == len(TRADES)
    by_entry = {(s, int(e) - NY): i for i, (s, e) in enumerate(zip(t["symbol"], t["entry_t"]))}
    a = by_entry[("AAPL", D1)]  # its own signal: 1 % stop, 2 % target (not the older 5 % / 10 %)
    assert (t["stop"][a], t["target"][a]) == pytest.approx((99.0, 102.0))
    b = by_entry[("MSFT", D1)]  # no entry order recorded: the run's exit configuration
    assert (t["stop"][b], t["target"][b]) == pytest.approx((200 * 0.985, 200 * 1.03))


def test_equity_curve_is_every_minute_when_it_fits(client):
    e = ts.equity_curve(client, RUN)
    assert (e["minutes"], e["bucket_minutes"]) == (10, 1)
    assert list(e["t"]) == [t + NY for t, _ in EQUITY] and list(e["equity"]) == [v for _, v in EQUITY]
    assert min(e["drawdown"]) == pytest.approx(-1000 / 100500) and e["drawdown"][0] == 0.0


def test_equity_curve_downsampled_keeps_first_last_extremes_and_deepest_drawdown(client):
    rng = random.Random(3)
    eq, points = 100000.0, []
    for i in range(600):
        eq += rng.gauss(0, 50)
        points.append((D1 + 60 * i, eq))
    w = ch.ClickHouseWriter(client, "walk")
    w.add("equity", [EquityPoint(t, v, v, 0, 0.0) for t, v in points])
    w.flush()
    ch_runs.record_run_start(client, "walk", CONFIG, "backtest")
    e = ts.equity_curve(client, "walk", max_points=60)
    assert (e["minutes"], e["bucket_minutes"]) == (600, 60)
    assert 20 <= len(e["t"]) <= 60 and list(e["t"]) == sorted(e["t"])
    truth = dict(points)
    assert all(truth[int(t) - NY] == v for t, v in zip(e["t"], e["equity"]))  # real minutes, real values
    values = [v for _, v in points]
    assert max(e["equity"]) == max(values) and min(e["equity"]) == min(values)
    assert (e["t"][0], e["t"][-1]) == (points[0][0] + NY, points[-1][0] + NY)
    assert min(e["drawdown"]) == pytest.approx(-an.performance(client, "walk")["max_drawdown"])


def test_candles_at_the_finest_resolution_that_fits_the_budget(client):
    bars = []
    for symbol, base in (("AAPL", 100.0), ("MSFT", 200.0)):
        for i in range(30):  # 14:30Z .. 14:59Z on 2024-01-30
            p = base + i
            bars.append(Bar(symbol, D1 - 60 + 60 * i, p, p + 0.5, p - 0.5, p + 0.25, 1000.0))
    w = ch.ClickHouseWriter(client, "bars")
    w.add("bars", bars)
    w.flush()
    assert ts.candle_minutes(client, "bars") == 1
    assert ts.candle_minutes(client, "bars", budget=59) == 5  # 60 one-minute candles, 12 of 5 minutes
    assert ts.candle_minutes(client, "bars", budget=100, per_symbol=5) == 15  # 2 per symbol
    assert ts.candle_minutes(client, "bars", budget=1) == 390
    c = ts.candles(client, "bars", 15)
    assert list(c["symbol"]) == ["AAPL", "AAPL", "MSFT", "MSFT"]
    assert list(c["t"]) == [D1 - 60 + NY, D1 - 60 + 15 * 60 + NY] * 2  # 09:30 and 09:45 New York
    assert (c["open"][0], c["high"][0], c["low"][0], c["close"][0]) == (100.0, 114.5, 99.5, 114.25)
    day = ts.candles(client, "bars", 390)
    assert list(day["open"]) == [100.0, 200.0] and list(day["close"]) == [129.25, 229.25]
    assert len(ts.candles(client, "bars", 1)["t"]) == 60
