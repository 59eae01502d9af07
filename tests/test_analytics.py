"""connectors.clickhouse.analytics: section-6 metrics on a hand-built run whose numbers
were worked out by hand, and the CSV export.

chDB opens one directory per process at a time: one module-scoped directory,
closed at teardown.
"""
import csv
import math
import statistics

import pytest

from connectors.clickhouse import analytics as an
from connectors.clickhouse import client as ch
from connectors.clickhouse import runs as ch_runs
from operators.types import EquityPoint, Fill, Order, Rejection, Trade

RUN = "hand"
D1, D2, D3 = 1704205860, 1704292260, 1704378660  # 14:31Z on 2024-01-02, -03, -04
H = 3600

TRADES = [  # (exit order) pnl 200, -100, -100, 300
    Trade("t2", "MSFT", "sma_5_15", 50, D1, 200.0, D1 + H, 198.0, "stop_loss", -100.0, -0.01, 0.0),
    Trade("t1", "AAPL", "sma_5_15", 100, D1, 100.0, D1 + 2 * H, 102.0, "take_profit", 200.0, 0.02, 0.0),
    Trade("t3", "AAPL", "sma_10_30", 100, D2, 101.0, D2 + H, 100.0, "stop_loss", -100.0, 100 / 101 - 1, 0.0),
    Trade("t4", "MSFT", "sma_10_30", 10, D3, 200.0, D3 + H, 230.0, "take_profit", 300.0, 0.15, 0.0),
]
# (ts, equity, open positions). Day 1's last point is 00:30Z on Jan 3, still
# Jan 2 in New York.
EQUITY = [(D1, 100000.0, 1), (D1 + H, 100500.0, 1), (D1 + 2 * H, 99500.0, 1), (D1 + 10 * H - 60, 100100.0, 0),
          (D2, 100300.0, 1), (D2 + H, 99800.0, 1), (D2 + 2 * H, 100000.0, 0),
          (D3, 100200.0, 1), (D3 + H, 100300.0, 0)]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    c = ch.open_client("chdb://" + str(tmp_path_factory.mktemp("an") / "db"))
    ch.ensure_schema(c)
    ch_runs.record_run_start(c, RUN, '{"risk": {"initial_cash": 100000}}', "backtest", now_ms=D1 * 1000)
    w = ch.ClickHouseWriter(c, RUN)
    w.add("trades", TRADES)
    w.add("equity", [EquityPoint(ts, eq - 50.0, eq, n, 50.0 * n) for ts, eq, n in EQUITY])
    w.add("orders", [Order("o2", "sma_5_15", "MSFT", "buy", 50, D1 - 60, 200.0, "entry"),
                     Order("o1", "sma_5_15", "AAPL", "buy", 100, D1 - 60, 100.0, "entry")])
    w.add("fills", [Fill("o1", "sma_5_15", "AAPL", "buy", 100, D1, 100.0, 0.0, "entry")])
    w.add("rejections", [Rejection("sma_5_15", "AAPL", D2, "max_positions", 101.0)])
    w.flush()
    w.add("trades", TRADES)  # replayed: must not count twice
    w.flush()
    ch_runs.record_run_end(c, RUN, 1234, "finished", now_ms=D3 * 1000)
    yield c
    ch.close_clients()


def test_win_rate_profit_factor_and_trade_averages(client):
    p = an.performance(client, RUN)
    assert (p["trades"], p["wins"], p["losses"]) == (4, 2, 2)
    assert p["win_rate"] == 0.5
    assert p["profit_factor"] == pytest.approx(500 / 200)
    assert p["expectancy"] == pytest.approx(75.0) and p["total_pnl"] == pytest.approx(300.0)
    assert p["avg_win"] == pytest.approx(250.0) and p["avg_loss"] == pytest.approx(-100.0)
    assert p["avg_win_pct"] == pytest.approx(0.085)
    assert p["avg_loss_pct"] == pytest.approx((-0.01 + 100 / 101 - 1) / 2)
    assert p["max_loss_per_trade"] == -100.0


def test_days_are_new_york_dates_and_trades_per_day(client):
    p = an.performance(client, RUN)
    assert p["trading_days"] == 3 and p["trades_per_day"] == pytest.approx(4 / 3)


def test_total_return_uses_initial_cash_from_config(client):
    p = an.performance(client, RUN)
    assert p["initial_cash"] == 100000.0 and p["final_equity"] == 100300.0
    assert p["total_return"] == pytest.approx(0.003)


def test_max_drawdown_is_deepest_fall_from_running_peak(client):
    # peak 100500 (D1+1h), trough 99500 next hour
    assert an.performance(client, RUN)["max_drawdown"] == pytest.approx(1000 / 100500)


def test_sharpe_of_daily_returns_from_last_equity_of_each_day(client):
    daily = [100100 / 100000 - 1, 100000 / 100100 - 1, 100300 / 100000 - 1]
    expected = statistics.mean(daily) / statistics.stdev(daily) * math.sqrt(252)
    assert expected == pytest.approx(7.9417, abs=1e-3)  # worked by hand
    assert an.performance(client, RUN)["sharpe"] == pytest.approx(expected)


def test_exposure_is_fraction_of_minutes_with_an_open_position(client):
    assert an.performance(client, RUN)["exposure"] == pytest.approx(6 / 9)


def test_profit_factor_is_none_without_losses(client):
    w = ch.ClickHouseWriter(client, "all-wins")
    w.add("trades", TRADES[1:2])
    w.flush()
    p = an.performance(client, "all-wins")
    assert p["profit_factor"] is None and p["max_loss_per_trade"] is None and p["win_rate"] == 1.0
    assert p["initial_cash"] == an.DEFAULT_INITIAL_CASH and p["sharpe"] is None


def test_breakdown_groups_trades(client):
    by_strategy = an.breakdown(client, RUN, "strategy")
    assert [(r["key"], r["trades"], r["pnl"], r["profit_factor"]) for r in by_strategy] == [
        ("sma_10_30", 2, 200.0, 3.0), ("sma_5_15", 2, 100.0, 2.0)]
    by_reason = {r["key"]: r for r in an.breakdown(client, RUN, "exit_reason")}
    assert by_reason["take_profit"]["win_rate"] == 1.0 and by_reason["take_profit"]["profit_factor"] is None
    assert by_reason["stop_loss"]["profit_factor"] == 0.0
    assert [r["key"] for r in an.breakdown(client, RUN, "day")] == ["2024-01-02", "2024-01-03", "2024-01-04"]
    assert [r["key"] for r in an.breakdown(client, RUN, "symbol")] == ["AAPL", "MSFT"]
    with pytest.raises(ValueError):
        an.breakdown(client, RUN, "hour")


def test_counts_and_run_info(client):
    c = an.counts(client, RUN)
    assert (c["trades"], c["orders"], c["fills"], c["equity_points"], c["rejections"]) == (4, 2, 1, 9, 1)
    assert c["rejections_by_reason"] == {"max_positions": 1} and c["dead_letters_by_reason"] == {}
    info = an.run_info(client, RUN)
    assert (info["status"], info["bar_count"], info["started_at"]) == ("finished", 1234, "2024-01-02T14:31:00Z")
    assert an.latest_run_id(client) == RUN


def test_export_csv_trades_header_order_and_rounding(client, tmp_path):
    written = an.export_csv(client, RUN, str(tmp_path))
    assert written == {"trades.csv": 4, "orders.csv": 2, "fills.csv": 1, "equity.csv": 9, "rejections.csv": 1,
                       "dead_letters.csv": 0, "controls.csv": 0}
    lines = (tmp_path / "trades.csv").read_text().splitlines()
    assert lines[0] == "run_id,symbol,strategy,qty,entry_time,entry_price,exit_time,exit_price,exit_reason,pnl,return_pct"
    assert lines[1] == "hand,MSFT,sma_5_15,50,2024-01-02T14:31:00Z,200.0,2024-01-02T15:31:00Z,198.0,stop_loss,-100.0,-0.01"
    rows = list(csv.DictReader(open(tmp_path / "trades.csv")))
    assert [r["symbol"] + r["strategy"] for r in rows] == ["MSFTsma_5_15", "AAPLsma_5_15", "AAPLsma_10_30",
                                                           "MSFTsma_10_30"]
    assert rows[2]["return_pct"] == repr(round(100 / 101 - 1, 8))  # fractions to 1e-8
    orders = list(csv.DictReader(open(tmp_path / "orders.csv")))
    assert [o["order_id"] for o in orders] == ["o1", "o2"]  # same time: by symbol
    assert list(csv.DictReader(open(tmp_path / "equity.csv")))[3]["time"] == "2024-01-03T00:30:00Z"


@pytest.mark.parametrize("column,value,text", [
    ("pnl", -40.391520000000014, "-40.39"), ("pnl", 1e-9, "0.0"), ("pnl", -0.004, "0.0"),
    ("cash", 99999.996, "100000.0"), ("equity", 123.456, "123.46"), ("commission", 0.015, "0.01"),
    ("entry_price", 101.123456789, "101.123457"), ("price", 0.0000004, "0.0"), ("exit_price", 98.5, "98.5"),
    ("return_pct", -0.009900990099009901, "-0.00990099"), ("entry_slippage_bps", 1.234567, "1.2346"),
    ("qty", 7, 7), ("reason", "stop_loss", "stop_loss"), ("pnl", None, ""), ("pnl", float("nan"), ""),
    ("flatten", True, True)])
def test_csv_values_are_rounded_by_what_they_are(column, value, text):
    assert an.csv_value(column, value) == text


def test_export_is_byte_identical_when_repeated(client, tmp_path):
    an.export_csv(client, RUN, str(tmp_path / "a"))
    an.export_csv(client, RUN, str(tmp_path / "b"))
    for name in an._EXPORTS:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_report_text_has_metrics_breakdowns_and_counts(client):
    perf = an.performance(client, RUN)
    text = an.format_report(perf, {"strategy": an.breakdown(client, RUN, "strategy")}, an.counts(client, RUN))
    assert "Win rate" in text and "50.00%" in text and "sma_10_30" in text and "max_positions" in text
    assert "Profit factor" in text and "2.5000" in text
