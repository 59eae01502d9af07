"""connectors.clickhouse.compare and `cuts report --against`: a hand-built live run
versus a hand-built backtest of the same bars, numbers worked out by hand.

Backtest "bt": AAPL/sma_5_15 (+200), MSFT/sma_5_15 (-100), AAPL/sma_10_30 (+20).
Live "live": AAPL/sma_5_15 entered 5 bps higher and left 10 bps lower on a
trailing stop instead of the take profit (+184.8); AAPL/sma_10_30 entered
2 bps lower (+20.2); MSFT/sma_5_15 missed; MSFT/sma_10_30 extra (+17.88).

chDB opens one directory per process at a time: the directory is built and
closed, the SQL tests open it in a class-scoped client, and the CLI test runs
`cuts` in a subprocess once that client is closed.
"""
from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest

from connectors.clickhouse import client as ch
from connectors.clickhouse import compare
from connectors.clickhouse import runs as ch_runs
from operators.types import Fill, Order, Trade

LIVE, BT = "live", "bt"
D1, D2 = 1704205860, 1704292260  # 14:31Z on 2024-01-02, -03
H = 3600
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BT_TRADES = [
    Trade("sma_5_15.AAPL.1", "AAPL", "sma_5_15", 100, D1, 100.0, D1 + H, 102.0, "take_profit", 200.0, 0.02, 0.0),
    Trade("sma_5_15.MSFT.1", "MSFT", "sma_5_15", 50, D1, 200.0, D1 + H, 198.0, "stop_loss", -100.0, -0.01, 0.0),
    Trade("sma_10_30.AAPL.2", "AAPL", "sma_10_30", 20, D2, 50.0, D2 + H, 51.0, "take_profit", 20.0, 0.02, 0.0),
]
LIVE_TRADES = [
    Trade("sma_5_15.AAPL.1", "AAPL", "sma_5_15", 100, D1, 100.05, D1 + H, 101.898, "trailing_stop",
          184.8, 101.898 / 100.05 - 1, 0.0),
    Trade("sma_10_30.AAPL.2", "AAPL", "sma_10_30", 20, D2, 49.99, D2 + H, 51.0, "take_profit", 20.2,
          51.0 / 49.99 - 1, 0.0),
    Trade("sma_10_30.MSFT.2", "MSFT", "sma_10_30", 10, D2, 210.0, D2 + H, 211.788, "signal", 17.88,
          211.788 / 210.0 - 1, 0.0),
]
# the live run's orders (decision price = the signal bar's close) and broker fills
LIVE_ORDERS = [
    Order("o1", "sma_5_15", "AAPL", "buy", 100, D1 - 60, 100.0, "entry"),
    Order("o1.oco", "sma_5_15", "AAPL", "sell", 100, D1, 100.05, "protect"),
    Order("o3", "sma_10_30", "AAPL", "buy", 20, D2 - 60, 50.0, "entry"),
    Order("o3.oco", "sma_10_30", "AAPL", "sell", 20, D2, 49.99, "protect"),
    Order("o4", "sma_10_30", "MSFT", "buy", 10, D2 - 60, 210.0, "entry"),
    Order("o4.exit", "sma_10_30", "MSFT", "sell", 10, D2 + H - 60, 212.0, "signal"),
]
LIVE_FILLS = [
    Fill("o1", "sma_5_15", "AAPL", "buy", 100, D1, 100.05, 0.0, "entry"),  # +5 bps
    Fill("o1.oco.stop", "sma_5_15", "AAPL", "sell", 100, D1 + H, 101.898, 0.0, "trailing_stop"),  # no decision
    Fill("o3", "sma_10_30", "AAPL", "buy", 20, D2, 49.99, 0.0, "entry"),  # -2 bps
    Fill("o3.oco.target", "sma_10_30", "AAPL", "sell", 20, D2 + H, 51.0, 0.0, "take_profit"),
    Fill("o4", "sma_10_30", "MSFT", "buy", 10, D2, 210.0, 0.0, "entry"),  # 0 bps
    Fill("o4.exit", "sma_10_30", "MSFT", "sell", 10, D2 + H, 211.788, 0.0, "signal"),  # +10 bps
]


@pytest.fixture(scope="module")
def dsn(tmp_path_factory):
    dsn = "chdb://" + str(tmp_path_factory.mktemp("compare") / "db")
    c = ch.open_client(dsn)
    try:
        ch.ensure_schema(c)
        ch_runs.record_run_start(c, LIVE, "{}", "live", now_ms=D1 * 1000)
        ch_runs.record_run_start(c, BT, "{}", "backtest", now_ms=(D2 + 10 * H) * 1000)  # replayed afterwards
        ch_runs.record_run_end(c, BT, 100, "finished", now_ms=(D2 + 11 * H) * 1000)
        w = ch.ClickHouseWriter(c, BT)
        w.add("trades", BT_TRADES)
        # the backtest's own fills must not leak into the live run's fill slippage
        w.add("orders", [Order("b1", "sma_5_15", "AAPL", "buy", 100, D1 - 60, 90.0, "entry")])
        w.add("fills", [Fill("b1", "sma_5_15", "AAPL", "buy", 100, D1, 100.0, 0.0, "entry")])
        w.flush()
        w = ch.ClickHouseWriter(c, LIVE)
        w.add("trades", LIVE_TRADES)
        w.add("orders", LIVE_ORDERS)
        w.add("fills", LIVE_FILLS)
        w.flush()
        w.add("trades", LIVE_TRADES)  # replayed after a restart: must count once
        w.add("fills", LIVE_FILLS)
        w.flush()
    finally:
        ch.close_clients()
    return dsn


@pytest.fixture(scope="class")
def result(dsn):
    """The comparison, from a client closed when the class's tests are done."""
    try:
        yield compare.compare_runs(ch.open_client(dsn), LIVE, BT)
    finally:
        ch.close_clients()


class TestCompareRuns:
    def test_summary_counts_slippage_and_pnl(self, result):
        s = result["summary"]
        assert (s["matched"], s["missed"], s["extra"]) == (1 + 1, 1, 1)
        assert (s["live_trades"], s["backtest_trades"]) == (3, 3)
        assert s["mean_entry_slippage_bps"] == pytest.approx((5.0 - 2.0) / 2)
        assert s["worst_entry_slippage_bps"] == pytest.approx(5.0)
        assert s["mean_exit_slippage_bps"] == pytest.approx((10.0 + 0.0) / 2)
        assert s["worst_exit_slippage_bps"] == pytest.approx(10.0)
        assert s["exit_reason_differences"] == 1 and s["same_config"] is True
        assert s["total_pnl_live"] == pytest.approx(184.8 + 20.2 + 17.88)
        assert s["total_pnl_backtest"] == pytest.approx(200.0 - 100.0 + 20.0)
        assert s["total_pnl_diff"] == pytest.approx(222.88 - 120.0)
        assert s["matched_pnl_diff"] == pytest.approx((184.8 - 200.0) + (20.2 - 20.0))

    def test_matched_trade_slippage_signs_pnl_and_exit_reasons(self, result):
        first, second = result["matched"]
        assert (first["symbol"], first["strategy_id"], first["entry_time"]) == (
            "AAPL", "sma_5_15", "2024-01-02T14:31:00Z")
        assert first["entry_slippage_bps"] == pytest.approx(5.0)  # paid 100.05 for 100.00: worse
        assert first["exit_slippage_bps"] == pytest.approx(10.0)  # got 101.898 for 102.00: worse
        assert first["pnl_diff"] == pytest.approx(-15.2)
        assert (first["live_exit_reason"], first["backtest_exit_reason"], first["same_exit_reason"]) == (
            "trailing_stop", "take_profit", False)
        assert (second["symbol"], second["strategy_id"]) == ("AAPL", "sma_10_30")
        assert second["entry_slippage_bps"] == pytest.approx(-2.0)  # paid less: better, negative
        assert second["exit_slippage_bps"] == pytest.approx(0.0) and second["same_exit_reason"]
        assert second["pnl_diff"] == pytest.approx(0.2)

    def test_missed_and_extra_trades(self, result):
        assert [(r["symbol"], r["strategy_id"], r["entry_time"], r["exit_reason"], r["pnl"])
                for r in result["missed"]] == [("MSFT", "sma_5_15", "2024-01-02T14:31:00Z", "stop_loss", -100.0)]
        assert [(r["symbol"], r["strategy_id"], r["entry_time"], r["qty"], r["pnl"])
                for r in result["extra"]] == [("MSFT", "sma_10_30", "2024-01-03T14:31:00Z", 10, 17.88)]

    def test_live_fill_slippage_against_decision_price_by_side(self, result):
        by_side = {r["side"]: r for r in result["fill_slippage"]}
        assert set(by_side) == {"buy", "sell"}
        buy, sell = by_side["buy"], by_side["sell"]
        assert buy["fills"] == 3  # o1, o3, o4; not the backtest's b1
        assert buy["mean_bps"] == pytest.approx((5.0 - 2.0 + 0.0) / 3)
        assert buy["max_bps"] == pytest.approx(5.0)
        assert sell["fills"] == 1  # the OCO legs have no decision bar
        assert sell["mean_bps"] == pytest.approx(10.0) and sell["max_bps"] == pytest.approx(10.0)

    def test_comparison_rows_and_csv(self, result, tmp_path):
        rows = compare.comparison_rows(result)
        assert [(r["status"], r["symbol"], r["strategy"]) for r in rows] == [
            ("matched", "AAPL", "sma_5_15"), ("missed", "MSFT", "sma_5_15"),
            ("matched", "AAPL", "sma_10_30"), ("extra", "MSFT", "sma_10_30")]
        assert rows[1]["backtest_pnl"] == -100.0 and rows[1]["live_pnl"] == ""
        assert rows[3]["live_exit_reason"] == "signal" and rows[3]["backtest_exit_reason"] == ""
        path = tmp_path / "comparison.csv"
        assert compare.write_comparison_csv(result, str(path)) == 4
        read = list(csv.DictReader(open(path)))
        assert list(read[0]) == compare.COMPARISON_CSV_COLUMNS
        assert float(read[0]["entry_slippage_bps"]) == pytest.approx(5.0)

    def test_text_has_summary_trades_and_fill_slippage(self, result):
        text = compare.format_comparison(result)
        assert text.startswith("Live run live versus backtest bt\n")
        lines = text.splitlines()
        assert _value(lines, "Matched trades") == "2"
        assert _value(lines, "Missed trades (backtest only)") == "1"
        assert _value(lines, "Worst entry slippage bps") == "+5.00"
        assert _value(lines, "Worst exit slippage bps") == "+10.00"
        assert _value(lines, "Total P&L live $") == "222.88"
        assert _value(lines, "Total P&L backtest $") == "120.00"
        assert "trailing_stop / take_profit" in text
        assert "Fill slippage vs decision price (live run)" in text
        assert "different trading configurations" not in text
        other = {**result, "summary": {**result["summary"], "same_config": False}}
        assert compare.format_comparison(other).splitlines()[2] == (
            "warning: the two runs have different trading configurations")

    def test_a_backtest_that_did_not_finish_is_said_first(self, result):
        for status in ("running", "interrupted", "failed"):
            text = compare.format_comparison({**result, "backtest_status": status})
            assert text.splitlines()[2] == (f"warning: the backtest bt is {status.upper()}, not finished: "
                                            f"its trades are partial and the comparison is incomplete")


def _value(lines: list[str], label: str) -> str:
    return next(line for line in lines if line.startswith(label + "  ")).split()[-1]


def _cuts(*args):
    return subprocess.run([sys.executable, "-m", "dataflows.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


@pytest.mark.slow
def test_cli_report_against(dsn, tmp_path):
    out = tmp_path / "cmp.csv"
    proc = _cuts("report", "--run-id", LIVE, "--against", BT, "--clickhouse", dsn, "--csv", str(out))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "Live run live versus backtest bt"
    assert _value(lines, "Matched trades") == "2" and _value(lines, "Extra trades (live only)") == "1"
    assert _value(lines, "Mean entry slippage bps") == "+1.50"
    assert _value(lines, "P&L difference $") == "102.88"
    assert len(list(csv.DictReader(open(out)))) == 4

    # without --run-id: the latest run that is not the backtest
    proc = _cuts("report", "--against", BT, "--clickhouse", dsn)
    assert proc.returncode == 0 and proc.stdout.splitlines()[0] == "Live run live versus backtest bt"

    proc = _cuts("report", "--run-id", LIVE, "--against", "nope", "--clickhouse", dsn)
    assert proc.returncode == 2
    assert proc.stderr.startswith("cuts: error: unknown run id: nope;") and proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1
    proc = _cuts("report", "--run-id", "nope", "--against", BT, "--clickhouse", dsn)
    assert proc.returncode == 2 and proc.stderr.startswith("cuts: error: unknown run id: nope;")
