"""Reconciliation: the broker's positions and open orders against a run's fills.
Pure statuses first, then ClickHouse + the local Alpaca server with the real
TradingClient, then `cuts reconcile` in-process."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from connectors.alpaca.reconcile import (
    FOREIGN_ORDER,
    MATCH,
    MISSING_POSITION,
    QTY_MISMATCH,
    UNKNOWN_POSITION,
    blocked_symbols,
    expected_by_symbol,
    format_report,
    reconcile,
)

RUN = "live-1"


def order(symbol, cid, side="sell", qty=10, legs=None, oid=None):
    return {"id": oid or f"id-{cid}", "symbol": symbol, "client_order_id": cid, "side": side, "qty": qty,
            "legs": legs or []}


# ---------------------------------------------------------------- pure half
def test_equal_positions_and_own_orders_match():
    oco = order("AAPL", f"{RUN}.sma_5_15.AAPL.1704207300.entry.oco",
                legs=[order("AAPL", "alpaca-generated-leg-id", oid="leg-1")])
    report = reconcile({"AAPL": 10}, {"AAPL": ("10", "185.5")}, [oco], RUN)
    row = report.get("AAPL")
    assert row.status == MATCH and row.broker_qty == 10 and row.avg_entry_price == 185.5
    assert row.our_orders == (oco["client_order_id"],) and row.foreign_orders == ()
    assert report.clean and report.unclear_symbols == ()


def test_different_quantities_are_a_qty_mismatch_with_both():
    row = reconcile({"AAPL": 5}, {"AAPL": (10, 185.5)}, [], RUN).get("AAPL")
    assert (row.status, row.expected_qty, row.broker_qty, row.offset) == (QTY_MISMATCH, 5, 10, 5)


def test_broker_position_the_run_does_not_know_is_unknown():
    report = reconcile({}, {"MSFT": (3, 400.0)}, [], RUN)
    assert report.get("MSFT").status == UNKNOWN_POSITION and report.unclear_symbols == ("MSFT",)


def test_run_position_the_broker_does_not_have_is_missing():
    report = reconcile({"TSLA": 7, "ZERO": 0}, {}, [], RUN)
    assert report.get("TSLA").status == MISSING_POSITION and report.get("ZERO") is None


def test_an_open_order_not_ours_is_foreign_but_legs_of_ours_are_not():
    ours = order("AAPL", f"{RUN}.s.AAPL.1.entry.oco", legs=[order("AAPL", "uuid-leg", oid="leg-1")])
    leg_listed_flat = order("AAPL", "uuid-leg", oid="leg-1")  # a leg also listed on its own
    other_run = order("AAPL", "live-10.s.AAPL.1.entry", side="buy")  # prefix of another run
    manual = order("NVDA", "web-order-123", side="buy")
    report = reconcile({"AAPL": 10}, {"AAPL": (10, 1.0)}, [ours, leg_listed_flat, other_run, manual], RUN)
    assert report.get("AAPL").status == FOREIGN_ORDER
    assert report.get("AAPL").foreign_orders == ("live-10.s.AAPL.1.entry",)
    assert report.get("NVDA").status == FOREIGN_ORDER and report.get("NVDA").broker_qty == 0
    assert report.unclear_symbols == ("AAPL", "NVDA")
    # a known id without the prefix (a hashed long run id) is ours too
    assert reconcile({}, {}, [manual], RUN, known_order_ids={"web-order-123"}).clean


def test_position_disagreement_outranks_a_foreign_order_which_is_still_listed():
    row = reconcile({"AAPL": 5}, {"AAPL": (10, 1.0)}, [order("AAPL", "manual")], RUN).get("AAPL")
    assert row.status == QTY_MISMATCH and row.foreign_orders == ("manual",)


def test_short_and_fractional_quantities_compare_exactly():
    report = reconcile({"AAPL": -5, "MSFT": 2}, {"AAPL": ("-5", "10"), "MSFT": ("2.5", "300")}, [], RUN)
    assert report.get("AAPL").status == MATCH
    assert report.get("MSFT").status == QTY_MISMATCH and report.get("MSFT").broker_qty == 2.5


def test_expected_sums_strategies_per_symbol_and_drops_flat_ones():
    assert expected_by_symbol({("AAPL", "sma_5_15"): 10, ("AAPL", "sma_10_30"): 4,
                               ("MSFT", "sma_5_15"): 3, ("MSFT", "sma_10_30"): -3}) == {"AAPL": 14}


def test_format_report_is_a_table_with_a_summary():
    report = reconcile({"AAPL": 5, "TSLA": 7}, {"AAPL": (10, 185.5), "IBM": (1, 150)}, [], RUN)
    lines = format_report(report).splitlines()
    assert lines[0] == f"reconciliation of run {RUN}"
    assert lines[1].split() == ["symbol", "status", "expected", "broker", "avg_price", "our_orders",
                                "foreign_orders"]
    assert lines[2].split()[:5] == ["AAPL", "qty_mismatch", "5", "10", "185.50"]
    assert lines[3].split()[:2] == ["IBM", "unknown_position"]
    assert lines[4].split()[:4] == ["TSLA", "missing_position", "7", "0"]
    assert lines[-1].startswith("3 symbol(s)") and lines[-1].endswith("unclear: AAPL, IBM, TSLA")
    assert "all clear" in format_report(reconcile({}, {}, [], RUN))


def test_a_decision_covers_only_the_discrepancy_it_was_taken_on():
    report = reconcile({"AAPL": 5, "TSLA": 7}, {"AAPL": (10, 1.0)}, [], RUN)
    assert blocked_symbols(report, {}) == {"AAPL", "TSLA"}
    decisions = {"AAPL": {"decision": "adopt", "broker_qty": 10, "expected_qty": 5},
                 # flattened earlier: the broker is flat, the run still believes 7
                 "TSLA": {"decision": "flatten", "broker_qty": 7, "expected_qty": 7}}
    assert blocked_symbols(report, decisions) == set()
    # the offset moved after the adopt: a new discrepancy
    later = reconcile({"AAPL": 5}, {"AAPL": (12, 1.0)}, [], RUN)
    assert blocked_symbols(later, decisions) == {"AAPL"}
    assert blocked_symbols(report, {"AAPL": {"decision": "none", "broker_qty": 10,
                                             "expected_qty": 5}}) == {"AAPL", "TSLA"}


# ---------------------------------------------------------------- I/O half
from alpaca.trading.client import TradingClient  # noqa: E402
from alpaca.trading.enums import OrderSide, TimeInForce  # noqa: E402
from alpaca.trading.requests import MarketOrderRequest  # noqa: E402

from connectors.alpaca.broker import AlpacaBroker, to_protection_request  # noqa: E402
from connectors.clickhouse import client as ch  # noqa: E402
from connectors.clickhouse import reconciliations as rc  # noqa: E402
from dataflows import reconciliation  # noqa: E402
from dataflows.cli.main import main as cuts  # noqa: E402
from operators.types import BUY, SELL, Fill  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))  # the local Alpaca server lives beside the tests


@pytest.fixture
def server():
    from alpaca_server import AlpacaServer

    with AlpacaServer(trading=True) as srv:
        yield srv


@pytest.fixture
def dsn(tmp_path):
    dsn = f"chdb://{tmp_path / 'ch'}"
    yield dsn
    ch.close_clients()


def fill(order_id, symbol, side, qty, strategy="sma_5_15", ts=1704207300):
    return Fill(order_id, strategy, symbol, side, qty, ts, 100.0, 0.0, "entry" if side == BUY else "signal")


def write_fills(dsn, run_id, fills):
    client = ch.open_client(dsn)
    ch.ensure_schema(client)
    writer = ch.ClickHouseWriter(client, run_id)
    writer.add("fills", fills)
    writer.flush()
    return client


def trading(server) -> TradingClient:
    client = TradingClient(server.key, server.secret, paper=True, url_override=server.trading_url)
    client._retry_wait = 0
    return client


def test_expected_positions_come_from_the_runs_fills_per_strategy(dsn):
    client = write_fills(dsn, RUN, [
        fill("s1.AAPL.1.entry", "AAPL", BUY, 10), fill("s2.AAPL.1.entry", "AAPL", BUY, 4, "sma_10_30"),
        fill("s1.MSFT.1.entry", "MSFT", BUY, 3), fill("s1.MSFT.2.exit", "MSFT", SELL, 3, ts=1704207360)])
    write_fills(dsn, "other-run", [fill("s1.IBM.1.entry", "IBM", BUY, 9)])
    assert rc.expected_positions(client, RUN) == {("AAPL", "sma_10_30"): 4, ("AAPL", "sma_5_15"): 10}


def test_unclear_symbols_now_reads_broker_and_clickhouse_and_honours_decisions(server, dsn):
    client = write_fills(dsn, RUN, [fill("s1.AAPL.1.entry", "AAPL", BUY, 10),
                                    fill("s1.MSFT.1.entry", "MSFT", BUY, 5)])
    tc = trading(server)
    server.set_position("AAPL", 10, 100.0)
    server.set_position("MSFT", 8, 400.0)
    server.set_position("IBM", 2, 150.0)
    broker = AlpacaBroker(tc, RUN)  # the run's own OCO protection on AAPL: not foreign
    broker.submit(to_protection_request(RUN, "s1.AAPL.1.entry", "AAPL", 10, 95.0, 110.0))
    tc.submit_order(MarketOrderRequest(symbol="NVDA", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY,
                                       client_order_id="by-hand-1"))
    report, blocked = reconciliation.unclear_symbols_now(tc, client, RUN)
    assert {s.symbol: s.status for s in report.symbols} == {
        "AAPL": MATCH, "IBM": UNKNOWN_POSITION, "MSFT": QTY_MISMATCH, "NVDA": FOREIGN_ORDER}
    assert blocked == {"IBM", "MSFT", "NVDA"}
    rc.record_decisions(client, report, ["MSFT"], "adopt", "ann", "bought by hand", now_ms=1)
    rc.record_decisions(client, report, ["IBM"], "none", "ann", "looked", now_ms=2)
    assert rc.decided_symbols(client, RUN) == {"IBM": "none", "MSFT": "adopt"}
    assert reconciliation.unclear_symbols_now(tc, client, RUN)[1] == {"IBM", "NVDA"}


def test_orders_of_a_long_run_id_with_hashed_client_ids_are_the_runs(server, dsn):
    from operators.types import Order

    run = "r" * 120  # client order ids beyond Alpaca's 128 characters are hashed: no run prefix
    entry = Order("s1.AAPL.1704207300.entry", "s1", "AAPL", BUY, 10, 1704207300, 100.0, "entry")
    client = write_fills(dsn, run, [])
    writer = ch.ClickHouseWriter(client, run)
    writer.add("orders", [entry])
    writer.flush()
    tc = trading(server)
    placed = AlpacaBroker(tc, run).submit_order(entry)
    assert not placed.client_order_id.startswith(f"{run}.")
    assert placed.client_order_id in rc.run_order_ids(client, run)
    report, blocked = reconciliation.unclear_symbols_now(tc, client, run)
    assert report.get("AAPL").status == MATCH and report.get("AAPL").our_orders == (placed.client_order_id,)
    assert blocked == set()


def test_cli_reports_mismatch_with_exit_3_then_flatten_closes_and_unblocks(server, dsn, monkeypatch, capsys):
    monkeypatch.setenv("ALPACA_API_KEY", server.key)
    monkeypatch.setenv("ALPACA_SECRET_KEY", server.secret)
    monkeypatch.setenv("ALPACA_TRADING_URL", server.trading_url)
    monkeypatch.delenv("ALPACA_PAPER", raising=False)
    write_fills(dsn, RUN, [fill("s1.AAPL.1.entry", "AAPL", BUY, 10)])
    ch.close_clients()  # the command opens the chDB directory itself
    server.set_position("AAPL", 10, 100.0)
    server.set_position("MSFT", 4, 400.0)  # not the run's
    server.set_price("MSFT", 401.0)
    server.set_auto_fill(True)  # the closing market order fills at once
    tc = trading(server)
    base = ["reconcile", "--run-id", RUN, "--clickhouse", dsn, "--who", "ann"]

    assert cuts(base + ["--why", "start-up check"]) == 3
    out = capsys.readouterr().out
    assert "MSFT" in out and "unknown_position" in out and "blocked" in out

    assert cuts(base + ["--flatten", "AAPL", "--why", "x"]) == 2  # AAPL matches: nothing to decide
    assert "not unclear" in capsys.readouterr().err

    assert cuts(base + ["--flatten", "msft", "--why", "not ours: close it"]) == 0
    out = capsys.readouterr().out
    assert "MSFT: closing position of 4 at market" in out and "recorded flatten of MSFT" in out
    assert "MSFT" not in server.positions() and "AAPL" in server.positions()

    client = ch.open_client(dsn)
    assert rc.decided_symbols(client, RUN) == {"MSFT": "flatten"}
    rows = client.query(f"SELECT status, broker_qty, expected_qty, decision, who, why "
                        f"FROM thousandcuts.reconciliations FINAL WHERE run_id = '{RUN}' "
                        f"ORDER BY decided_at").result_rows
    assert rows == [("unknown_position", 4.0, 0.0, "none", "ann", "start-up check"),
                    ("unknown_position", 4.0, 0.0, "flatten", "ann", "not ours: close it")]
    report, blocked = reconciliation.unclear_symbols_now(tc, client, RUN)
    assert blocked == set() and report.clean
    ch.close_clients()
    assert cuts(base + ["--why", "again"]) == 0
    assert "all clear" in capsys.readouterr().out


def test_cli_adopt_records_without_broker_action_and_flatten_cancels_orders(server, dsn, monkeypatch, capsys):
    monkeypatch.setenv("ALPACA_API_KEY", server.key)
    monkeypatch.setenv("ALPACA_SECRET_KEY", server.secret)
    monkeypatch.setenv("ALPACA_TRADING_URL", server.trading_url)
    monkeypatch.delenv("ALPACA_PAPER", raising=False)
    write_fills(dsn, RUN, [fill("s1.AAPL.1.entry", "AAPL", BUY, 5), fill("s1.TSLA.1.entry", "TSLA", BUY, 3)])
    ch.close_clients()
    server.set_position("AAPL", 10, 100.0)
    server.set_position("TSLA", 3, 200.0)
    tc = trading(server)
    foreign = tc.submit_order(MarketOrderRequest(symbol="TSLA", qty=1, side=OrderSide.BUY,
                                                 time_in_force=TimeInForce.DAY, client_order_id="by-hand-2"))
    base = ["reconcile", "--run-id", RUN, "--clickhouse", dsn]
    assert cuts(base + ["--adopt", "AAPL", "--why", "bought 5 by hand, keep them", "--who", "bob"]) == 3
    out = capsys.readouterr().out
    assert "AAPL: adopted" in out and "still blocked: TSLA" in out
    assert server.positions()["AAPL"]["qty"] == "10"

    assert cuts(base + ["--flatten", "TSLA", "--why", "unknown order"]) == 0
    out = capsys.readouterr().out
    assert "canceled open order by-hand-2" in out
    assert server.order(str(foreign.id))["status"] == "canceled"
    closing = [o for o in server.orders("open") if o["symbol"] == "TSLA"]
    assert [(o["side"], o["qty"]) for o in closing] == [("sell", "3")]
    # until the closing order fills, TSLA is not flat yet: still blocked
    assert cuts(base + ["--why", "check"]) == 3
    assert "blocked (a person must decide: --adopt or --flatten): TSLA" in capsys.readouterr().out
    server.fill(closing[0]["id"], price=201.0)
    assert cuts(base + ["--why", "check"]) == 0  # AAPL adopted (same offset), TSLA flattened
    out = capsys.readouterr().out
    assert "decided earlier: AAPL (adopt by bob), TSLA (flatten by" in out
    assert "missing_position" in out  # the run still believes 3 TSLA: the runner's to adopt


def test_cli_one_line_errors(server, dsn, monkeypatch, capsys):
    monkeypatch.delenv("ALPACA_API_KEY", raising=False)
    monkeypatch.delenv("ALPACA_PAPER", raising=False)
    assert cuts(["reconcile", "--run-id", RUN, "--clickhouse", dsn, "--why", "x"]) == 2
    assert "ALPACA_API_KEY" in capsys.readouterr().err
    monkeypatch.setenv("ALPACA_API_KEY", "wrong")
    monkeypatch.setenv("ALPACA_SECRET_KEY", "wrong")
    monkeypatch.setenv("ALPACA_TRADING_URL", server.trading_url)
    assert cuts(["reconcile", "--run-id", RUN, "--clickhouse", dsn, "--why", "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cuts: error: broker refused") and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as exc:  # a decision flag each, never both
        cuts(["reconcile", "--run-id", RUN, "--adopt", "A", "--flatten", "B", "--why", "x"])
    assert exc.value.code == 2
