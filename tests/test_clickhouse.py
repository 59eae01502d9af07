"""connectors.clickhouse: the pure mapping half, and the I/O half against a real
embedded chDB.

chDB opens one directory per process at a time, so this module shares one
module-scoped directory (distinct run_ids per test) and closes its clients at
teardown, leaving the process free for other modules' directories.
"""
import dataclasses
import subprocess
import sys
import textwrap
from pathlib import Path

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main

from connectors.alpaca.order_history import OrderEvent
from connectors.clickhouse import client as ch
from connectors.clickhouse import runs as ch_runs
from connectors.clickhouse import schema as ch_schema
from connectors.clickhouse import sink as ch_sink
from operators.types import (
    Bar,
    ControlEvent,
    DeadLetter,
    EquityPoint,
    Fill,
    Order,
    PortfolioOutput,
    Rejection,
    Signal,
    SymbolOutput,
    Trade,
)

T0 = 1704205860  # 2024-01-02T14:31:00Z

EVENTS = {
    "bars": [Bar("AAPL", T0, 10.0, 11.0, 9.5, 10.5, 1000.0, 12.0, 10.2), Bar("MSFT", T0, 1.0, 1.0, 1.0, 1.0, 0.0)],
    "signals": [Signal("sma_5_15", "AAPL", "buy", T0, 10.5, 0.7, 0.02, 0.01, 2.0),
                Signal("sma_5_15", "AAPL", "sell", T0 + 60, 10.4, 0.7, 0.02, 0.01, 2.0, "min_confidence")],
    "orders": [Order("r-sma_5_15-AAPL-1704205860-entry", "sma_5_15", "AAPL", "buy", 10, T0, 10.5, "entry")],
    "fills": [Fill("r-sma_5_15-AAPL-1704205860-entry", "sma_5_15", "AAPL", "buy", 10, T0 + 60, 10.501, 0.0,
                   "entry")],
    "trades": [Trade("t1", "AAPL", "sma_5_15", 10, T0 + 60, 10.501, T0 + 120, 10.7, "take_profit", 1.99,
                     0.0189, 0.0)],
    "equity": [EquityPoint(T0, 100000.0, 100000.0, 0, 0.0), EquityPoint(T0 + 60, 99894.99, 99999.99, 1, 105.0)],
    "rejections": [Rejection("sma_5_15", "AAPL", T0, "max_positions", 10.5, "10 open")],
    "dead_letters": [DeadLetter("AAPL", T0, "duplicate", "bars.csv:3", "{}"),
                     DeadLetter("AAPL", T0, "duplicate", "bars.csv:4", "{}")],
    "controls": [ControlEvent("c1", "halt", True, T0, "ops", "news", 2, 1)],
    "broker_orders": [
        OrderEvent("r.s.AAPL.1.entry", (T0 + 60) * 1000, "decided", "bar", "sink", "s.AAPL.1.entry", "entry",
                   "AAPL", "buy", 10, T0, 10.5),
        OrderEvent("r.s.AAPL.1.entry", T0 * 1000 + 70_500, "sent", "broker", "sink", "s.AAPL.1.entry", "entry",
                   "AAPL", "buy", 10, T0, 10.5, decision_lag_ms=10_500.0),
        OrderEvent("r.s.AAPL.1.entry", T0 * 1000 + 70_513, "accepted", "broker", "sink", "s.AAPL.1.entry",
                   "entry", "AAPL", "buy", 10, T0, 10.5, "b-1", "accepted", decision_lag_ms=10_500.0,
                   submit_ms=12.5),
        OrderEvent("r.s.AAPL.1.entry", (T0 + 71) * 1000, "filled", "broker_event", "trade_updates",
                   "s.AAPL.1.entry", symbol="AAPL", side="buy", broker_order_id="b-1", status="filled",
                   filled_qty=10, fill_price=10.52)],
}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    c = ch.open_client("chdb://" + str(tmp_path_factory.mktemp("ch") / "db"))
    ch.ensure_schema(c)
    yield c
    ch.close_clients()


def final_count(client, table, run_id):
    return client.command(f"SELECT count() FROM thousandcuts.{table} FINAL WHERE run_id = {{r:String}}",
                          parameters={"r": run_id})


# ------------------------------------------------------------- pure mapping
@pytest.mark.parametrize("table", list(EVENTS))
def test_mapping_keeps_every_event_field_as_a_column(table):
    events = EVENTS[table]
    cols = ch_schema.to_columns(table, "run-1", events)
    fields = [f.name for f in dataclasses.fields(events[0])]
    assert set(cols) == {"run_id", *fields}
    assert list(cols) == ch_schema.column_names(table)
    assert cols["run_id"] == ["run-1"] * len(events)
    assert all(len(v) == len(events) for v in cols.values())


def test_mapping_turns_epoch_seconds_into_millisecond_ticks():
    assert ch_schema.to_columns("bars", "r", EVENTS["bars"])["ts"] == [T0 * 1000, T0 * 1000]
    trade = ch_schema.to_columns("trades", "r", EVENTS["trades"])
    assert (trade["entry_time"], trade["exit_time"]) == ([(T0 + 60) * 1000], [(T0 + 120) * 1000])


def test_mapping_writes_passed_signals_with_empty_filtered_reason():
    assert ch_schema.to_columns("signals", "r", EVENTS["signals"])["filtered_reason"] == ["", "min_confidence"]


def test_mapping_keeps_missing_optional_bar_fields_as_null():
    cols = ch_schema.to_columns("bars", "r", EVENTS["bars"])
    assert cols["trade_count"] == [12.0, None] and cols["vwap"] == [10.2, None]


def test_every_table_key_starts_with_run_id_and_replaces():
    for table in ("runs", *ch_schema.TABLES):
        sql = ch_schema.ddl(table)
        assert "ENGINE = ReplacingMergeTree" in sql and "ORDER BY (run_id" in sql


@pytest.mark.parametrize("dsn,expected", [
    ("chdb:///abs/dir", "chdb:///abs/dir"),
    ("/abs/dir", "chdb:///abs/dir"),
    ("http://localhost:8123", "http://localhost:8123"),
    ("https://h:8443/db", "https://h:8443/db"),
])
def test_dsn_normalises_to_absolute_chdb_url(dsn, expected):
    assert ch.normalise_dsn(dsn) == expected


def test_relative_chdb_dsn_resolves_against_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert ch.normalise_dsn("chdb://./data/clickhouse") == f"chdb://{tmp_path}/data/clickhouse"
    assert ch.normalise_dsn("data/clickhouse") == f"chdb://{tmp_path}/data/clickhouse"


# --------------------------------------------------------------------- I/O
def test_open_client_caches_one_client_per_normalised_dsn(client):
    dsn = next(d for d in ch._clients if d.startswith("chdb:"))
    assert ch.open_client(dsn) is client
    assert ch.open_client(dsn[len("chdb://"):] + "/") is client  # bare path, trailing slash


def test_second_chdb_directory_in_one_process_is_unavailable(client, tmp_path):
    with pytest.raises(ch.ClickHouseUnavailable, match="one directory per process"):
        ch.open_client(f"chdb://{tmp_path}/other")


def test_directory_locked_by_another_process_is_unavailable(client):
    dsn = next(d for d in ch._clients if d.startswith("chdb:"))
    code = textwrap.dedent(f"""
        from connectors.clickhouse import client as ch, schema as ch_schema, runs as ch_runs, sink as ch_sink
        try:
            ch.open_client({dsn!r})
        except ch.ClickHouseUnavailable as exc:
            print("UNAVAILABLE", exc)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=ch.__file__.rsplit("/connectors/", 1)[0]).stdout
    path = dsn[len("chdb://"):]
    assert out.startswith("UNAVAILABLE") and path in out and "\n" not in out.strip()
    assert "in use by another process (pid " in out  # the true cause, from the directory's lock


def test_unreachable_server_is_unavailable():
    with pytest.raises(ch.ClickHouseUnavailable, match="127.0.0.1:9"):
        ch.open_client("http://127.0.0.1:9")


def test_every_event_type_round_trips(client):
    w = ch.ClickHouseWriter(client, "roundtrip")
    for table, events in EVENTS.items():
        w.add(table, events)
    w.flush()
    assert w.written == {t: len(e) for t, e in EVENTS.items()}
    for table, events in EVENTS.items():
        assert final_count(client, table, "roundtrip") == len(events)
    row = client.query("SELECT formatDateTime(ts, '%Y-%m-%dT%H:%i:%SZ', 'UTC'), trade_count, vwap "
                       "FROM thousandcuts.bars FINAL WHERE run_id = 'roundtrip' ORDER BY symbol").result_rows
    assert row == [("2024-01-02T14:31:00Z", 12.0, 10.2), ("2024-01-02T14:31:00Z", None, None)]


def test_native_blocks_round_trip_every_column_type(client):
    import math

    import numpy as np

    from connectors.clickhouse.native import encode_block
    client.command("CREATE TABLE IF NOT EXISTS thousandcuts.native_types (s String, f Float64, i Int64, "
                   "u UInt64, u32 UInt32, b Bool, t DateTime64(3, 'UTC'), nf Nullable(Float64), "
                   "nt Nullable(DateTime64(3, 'UTC'))) ENGINE = MergeTree ORDER BY i")
    cols = {
        "s": ["", "AAPL", "BRK.B", "żółw ✓", "x" * 300],
        "f": np.array([0.0, -0.0, 1.5, 1e300, -2.25]),
        "i": [-(2**63), -1, 0, 1, 2**63 - 1],
        "u": np.array([0, 1, 2**64 - 1, 7, 8], dtype=np.uint64),
        "u32": [0, 1, 2**32 - 1, 7, 8],
        "b": [True, False, True, False, True],
        "t": np.array([0, 1704205860123, -1000, 1, 2], dtype=np.int64),
        "nf": np.array([math.nan, 1.25, 0.0, math.nan, -3.5]),
        "nt": [None, 1704205860000, None, 5, 6],
    }
    types = ["String", "Float64", "Int64", "UInt64", "UInt32", "Bool", "DateTime64(3, 'UTC')", "Nullable(Float64)",
             "Nullable(DateTime64(3, 'UTC'))"]
    client.raw_insert("thousandcuts.native_types", list(cols), encode_block(list(cols), types, list(cols.values())),
                      fmt="Native")
    rows = client.query("SELECT s, f, i, u, u32, b, toUnixTimestamp64Milli(t), nf, toUnixTimestamp64Milli(nt) "
                        "FROM thousandcuts.native_types ORDER BY i").result_rows
    want = list(zip(cols["s"], cols["f"].tolist(), cols["i"], cols["u"].tolist(), cols["u32"], cols["b"],
                    cols["t"].tolist(),
                    [None, 1.25, 0.0, None, -3.5], cols["nt"]))
    assert [tuple(r) for r in rows] == want
    assert math.copysign(1.0, rows[1][1]) == -1.0  # -0.0 kept bit for bit


def test_every_column_type_of_the_schema_has_a_native_encoding():
    """Run tables and bookkeeping (runs, run_attempts) alike: an insert
    never meets a type the Native encoder does not know."""
    from connectors.clickhouse.native import encode_column
    from connectors.clickhouse.schema import BOOKKEEPING, TABLES, column_types

    kinds = {t for table in TABLES for t in column_types(table)}
    kinds |= {t for cols, _ in BOOKKEEPING.values() for _, t in cols}
    for kind in sorted(kinds):
        value = "" if kind == "String" else (None if kind.startswith("Nullable") else 0)
        assert isinstance(encode_column(kind, [value]), bytes), kind


def test_replayed_rows_overwrite_not_duplicate(client):
    for _ in range(2):  # at-least-once: the same outputs delivered twice
        w = ch.ClickHouseWriter(client, "replay")
        for table, events in EVENTS.items():
            w.add(table, events)
        w.flush()
    for table, events in EVENTS.items():
        assert final_count(client, table, "replay") == len(events), table


def test_dead_letters_of_the_same_bar_from_different_sources_are_kept(client):
    w = ch.ClickHouseWriter(client, "dead")
    w.add("dead_letters", EVENTS["dead_letters"])
    w.flush()
    assert final_count(client, "dead_letters", "dead") == 2


def test_writer_flushes_a_table_when_its_batch_is_full(client):
    w = ch.ClickHouseWriter(client, "batch", batch_rows=2)
    w.add("equity", [EquityPoint(T0 + 60 * i, 1.0, 1.0, 0, 0.0) for i in range(3)])
    assert w.written["equity"] == 3 and w.pending() == 0
    w.add("equity", [EquityPoint(T0 + 600, 1.0, 1.0, 0, 0.0)])
    assert w.written["equity"] == 3 and w.pending() == 1
    w.flush()
    assert w.written["equity"] == 4 and final_count(client, "equity", "batch") == 4


def test_run_end_row_wins_over_start_row(client):
    ch_runs.record_run_start(client, "run-x", '{"risk": {"initial_cash": 5000}}', "backtest", now_ms=T0 * 1000)
    ch_runs.record_run_end(client, "run-x", 42, "finished", now_ms=T0 * 1000)  # same clock: version still rises
    rows = client.query("SELECT config_json, mode, status, bar_count, toUnixTimestamp(started_at), "
                        "toUnixTimestamp(finished_at) FROM thousandcuts.runs FINAL WHERE run_id = 'run-x'"
                        ).result_rows
    assert rows == [('{"risk": {"initial_cash": 5000}}', "backtest", "finished", 42, T0, T0)]


def test_sink_writes_symbol_and_portfolio_outputs(client):
    dsn = next(d for d in ch._clients if d.startswith("chdb:"))
    items = [SymbolOutput(bars=EVENTS["bars"], signals={T0: EVENTS["signals"][:1]},
                          filtered=EVENTS["signals"][1:], dead_letters=EVENTS["dead_letters"]),
             PortfolioOutput(orders=EVENTS["orders"], fills=EVENTS["fills"], trades=EVENTS["trades"],
                             rejections=EVENTS["rejections"], equity=EVENTS["equity"],
                             controls=EVENTS["controls"])]
    flow = Dataflow("sink_test")
    sink = ch_sink.ClickHouseSink(dsn, "sink")
    keyed = op.key_on("one_partition", op.input("in", flow, TestingSource(items)), lambda _: sink.partition_key)
    op.output("out", keyed, sink)
    run_main(flow)
    for table, events in EVENTS.items():
        if table != "broker_orders":  # written by the broker sink, not this one
            assert final_count(client, table, "sink") == len(events), table


def test_every_table_caps_the_size_of_its_merged_parts(client):
    """Merging parts past the cap cost the process ~150 MB over 30 M bars
    (bench/README.md): every table, the sweep's too, is created with it."""
    engines = client.query("SELECT name, engine_full FROM system.tables WHERE database = 'thousandcuts' "
                           "AND engine LIKE '%MergeTree'").result_rows
    assert len(engines) > 20
    assert all(f"{ch_schema.MERGE_SETTING} = {ch_schema.MERGE_MAX_BYTES}" in e for _, e in engines), engines


def test_a_table_from_an_older_version_gets_its_new_columns(client):
    client.command("CREATE DATABASE IF NOT EXISTS olddb")
    client.command("CREATE TABLE olddb.orders (run_id String, order_id String, strategy_id String, symbol String, "
                   "side String, qty Int64, decided_ts DateTime64(3, 'UTC'), decision_price Float64, intent String) "
                   "ENGINE = ReplacingMergeTree ORDER BY (run_id, order_id)")
    ch.ensure_schema(client, database="olddb")
    names = {r[0] for r in client.query("SELECT name FROM system.columns WHERE database = 'olddb' "
                                        "AND table = 'orders'").result_rows}
    assert {"stop_price", "target_price", "parent_id", "oco_id"} <= names
    engines = dict(client.query("SELECT name, engine_full FROM system.tables WHERE database = 'olddb'").result_rows)
    assert f"{ch_schema.MERGE_SETTING} = {ch_schema.MERGE_MAX_BYTES}" in engines["orders"]  # the cap, added
    w = ch.ClickHouseWriter(client, "old", database="olddb")
    w.add("orders", EVENTS["orders"])
    w.flush()
    assert client.command("SELECT count() FROM olddb.orders FINAL") == len(EVENTS["orders"])


@pytest.mark.parametrize("flush_each_batch", [True, False])
def test_a_failed_write_ends_the_run_with_its_own_error_not_an_abort(tmp_path, flush_each_batch):
    """An insert ClickHouse refuses (here: a table without the sink's columns)
    stops the flow with that error; closing the sink does not fail again.
    Without a flush per batch the insert fails on the writer's insert thread
    and the sink's closing flush raises it."""
    import subprocess
    import sys as _sys
    import textwrap
    script = textwrap.dedent(f"""
        from bytewax.dataflow import Dataflow
        import bytewax.operators as op
        from bytewax.testing import TestingSource, run_main
        from connectors.clickhouse import client as ch, schema as ch_schema, runs as ch_runs, sink as ch_sink
        from operators.types import PortfolioOutput, Trade
        dsn = "chdb://{tmp_path / 'ch'}"
        c = ch.open_client(dsn)
        c.command("CREATE DATABASE IF NOT EXISTS thousandcuts")
        c.command("CREATE TABLE thousandcuts.trades (run_id String) ENGINE = MergeTree ORDER BY run_id")
        ch.ensure_schema = lambda client, database="thousandcuts": None  # keep the broken table
        t = Trade("t", "AAPL", "s", 1, 60, 1.0, 120, 1.0, "signal", 0.0, 0.0, 0.0)
        flow = Dataflow("f")
        items = op.input("in", flow, TestingSource([PortfolioOutput(trades=[t])]))
        op.output("out", op.key_on("k", items, lambda _: "clickhouse"),
                  ch_sink.ClickHouseSink(dsn, "r", flush_each_batch={flush_each_batch}))
        try:
            run_main(flow)
        except Exception as exc:
            print("FAILED CLEANLY:", type(exc).__name__)
        ch.close_clients()
    """)
    proc = subprocess.run([_sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=str(Path(__file__).resolve().parent.parent))
    assert proc.returncode == 0 and "FAILED CLEANLY" in proc.stdout, proc.stderr[-2000:]
    assert "panic in a destructor" not in proc.stderr


def test_a_background_writer_has_stored_every_row_when_flush_returns(client):
    w = ch.ClickHouseWriter(client, "background", batch_rows=2, background=True)
    try:
        for i in range(7):  # batches of two go to the insert thread as they fill
            w.add("equity", [EquityPoint(T0 + 60 * i, 1.0, 1.0, 0, 0.0)])
        w.flush()
        assert w.written["equity"] == 7 and w.pending() == 0
        assert final_count(client, "equity", "background") == 7
    finally:
        w.close()


def test_a_failed_background_insert_keeps_its_rows_and_the_next_write_raises_its_error(client):
    """The insert thread fails on a database that does not exist yet: the
    next write raises that error, every row stays buffered (also those queued
    behind the failed insert and the one being added), and a flush once the
    database exists stores them all."""
    w = ch.ClickHouseWriter(client, "lost-nothing", batch_rows=2, database="later", background=True)
    try:
        handed = 0
        with pytest.raises(Exception) as raised:
            for i in range(9):
                handed += 1  # the row of an add that raises is buffered too
                w.add("equity", [EquityPoint(T0 + 60 * i, 1.0, 1.0, 0, 0.0)])
            w.flush()
        assert "later" in str(raised.value)
        w.close()  # the inserts still queued are done (put back) when the thread ends
        assert w.failed and w.written["equity"] == 0 and w.pending() == handed
        for i in range(handed, 9):  # still failing: each add says so, its row waits in the buffer
            with pytest.raises(type(raised.value)):
                w.add("equity", [EquityPoint(T0 + 60 * i, 1.0, 1.0, 0, 0.0)])
        assert w.pending() == 9
        ch.ensure_schema(client, database="later")
        w.flush()  # tries every row again
        assert w.pending() == 0 and w.written["equity"] == 9 and not w.failed
        assert client.command("SELECT count() FROM later.equity FINAL") == 9
        w.add("equity", [EquityPoint(T0 + 6000, 1.0, 1.0, 0, 0.0)])
        w.flush()  # the failure is over
    finally:
        w.close()


@pytest.mark.parametrize("background", [True, False])
def test_every_flush_raises_while_any_row_is_unstored_not_only_the_first(client, background):
    """Threads sharing a writer (live: the sink and the order history) each
    flush: none may return as if its rows were stored while an insert's rows
    wait for a retry, whichever thread saw the failure first."""
    import threading

    database = f"notyet_{'background' if background else 'inline'}"
    w = ch.ClickHouseWriter(client, "shared", database=database, background=background)
    try:
        w.add("equity", [EquityPoint(T0, 1.0, 1.0, 0, 0.0)])
        errors = []

        def flush():
            try:
                w.flush()
            except Exception as exc:
                errors.append(exc)

        threads = [threading.Thread(target=flush) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(errors) == 3 and all(database in str(e) for e in errors)
        with pytest.raises(type(errors[0])):
            w.flush()  # and again, until they are stored
        ch.ensure_schema(client, database=database)
        w.flush()
        assert client.command(f"SELECT count() FROM {database}.equity FINAL") == 1 and not w.failed
    finally:
        w.close()


# ------------------------------------------------------------- order history
def _history(client, run_id):
    return client.query("SELECT event, broker_order_id, status FROM thousandcuts.broker_orders FINAL "
                        "WHERE run_id = {r:String} ORDER BY at, event", parameters={"r": run_id}).result_rows


def test_the_order_history_keeps_every_state_change_a_replay_adds_rows_never_rewrites(client):
    w = ch.ClickHouseWriter(client, "history")
    w.add("broker_orders", EVENTS["broker_orders"])
    w.flush()
    cid, later = "r.s.AAPL.1.entry", (T0 + 700) * 1000  # restarted 11 minutes later: the decision replayed
    replay = [OrderEvent(cid, (T0 + 60) * 1000, "decided", "bar", "sink", "s.AAPL.1.entry", "entry", "AAPL",
                         "buy", 10, T0, 10.5),
              OrderEvent(cid, later, "adopted", "broker", "sink", "s.AAPL.1.entry", "entry", "AAPL", "buy",
                         10, T0, 10.5, "b-1", "filled", detail="replayed decision")]
    w.add("broker_orders", replay)
    w.flush()
    assert _history(client, "history") == [
        ("decided", "", ""), ("sent", "", ""), ("accepted", "b-1", "accepted"), ("filled", "b-1", "filled"),
        ("adopted", "b-1", "filled")]  # the replayed decision is the same row; its adoption a new one


def test_the_current_state_of_an_order_is_its_most_advanced_event(client):
    w = ch.ClickHouseWriter(client, "state")
    oco = "r.s.AAPL.1.entry.oco"
    w.add("broker_orders", EVENTS["broker_orders"] + [
        # a replay adopts the entry after its fill: still filled
        OrderEvent("r.s.AAPL.1.entry", (T0 + 700) * 1000, "adopted", "broker", "sink", "s.AAPL.1.entry",
                   "entry", "AAPL", "buy", 10, T0, 10.5, "b-1", "filled"),
        # the OCO: accepted at .400, its `new` stamped in whole seconds before; the stop leg fills, the
        # target is canceled in the same second
        OrderEvent(oco, (T0 + 61) * 1000 + 400, "accepted", "broker", "relay", "s.AAPL.1.entry.oco",
                   "protect", "AAPL", "sell", 10, 0, 0.0, "b-2", "new"),
        OrderEvent(oco, (T0 + 61) * 1000, "new", "broker_event", "trade_updates", "s.AAPL.1.entry.oco",
                   symbol="AAPL", side="sell", broker_order_id="b-2", status="new", leg="target"),
        OrderEvent(oco, (T0 + 90) * 1000, "filled", "broker_event", "trade_updates", "s.AAPL.1.entry.oco",
                   symbol="AAPL", side="sell", broker_order_id="b-3", status="filled", leg="stop",
                   filled_qty=10, fill_price=10.4),
        OrderEvent(oco, (T0 + 90) * 1000, "canceled", "broker_event", "trade_updates", "s.AAPL.1.entry.oco",
                   symbol="AAPL", side="sell", broker_order_id="b-2", status="canceled", leg="target")])
    w.flush()
    rows = client.query("SELECT client_order_id, intent, broker_order_id, last_event, status, filled_qty, "
                        "sends, adoptions FROM thousandcuts.broker_order_state WHERE run_id = 'state' "
                        "ORDER BY client_order_id").result_rows
    assert rows == [("r.s.AAPL.1.entry", "entry", "b-1", "filled", "filled", 10, 1, 1),
                    (oco, "protect", "b-2", "filled", "filled", 10, 0, 0)]


def test_a_request_log_from_before_the_history_is_set_aside_and_copied_in(client):
    client.command("CREATE DATABASE IF NOT EXISTS olddb2")
    client.command("""CREATE TABLE olddb2.broker_orders (run_id String, order_id String, client_order_id String,
        intent String, symbol String, side String, qty Int64, decided_ts DateTime64(3, 'UTC'),
        decision_price Float64, broker_order_id String, status String, adopted Bool, detail String,
        acked_at_ms Int64, decision_lag_ms Float64, submit_ms Float64)
        ENGINE = ReplacingMergeTree ORDER BY (run_id, client_order_id, intent, decided_ts)""")
    client.command(f"""INSERT INTO olddb2.broker_orders VALUES
        ('old', 's.AAPL.1.entry', 'old.s.AAPL.1.entry', 'entry', 'AAPL', 'buy', 10, {T0}, 10.5, 'b-1', 'new',
         false, '', {T0 * 1000 + 61_000}, 1000.0, 12.0),
        ('old', 's.MSFT.1.entry', 'old.s.MSFT.1.entry', 'entry', 'MSFT', 'buy', 5, {T0}, 20.0, '', 'failed',
         false, 'HTTP 403', {T0 * 1000 + 61_000}, 1000.0, 9.0)""")
    for _ in range(2):  # the second start-up neither renames nor copies again
        ch.ensure_schema(client, database="olddb2")
    rows = client.query("SELECT client_order_id, event, broker_order_id, status, clock, source, "
                        "toUnixTimestamp64Milli(at), submit_ms FROM olddb2.broker_orders FINAL "
                        "ORDER BY client_order_id").result_rows
    assert rows == [("old.s.AAPL.1.entry", "accepted", "b-1", "new", "local", "v1", T0 * 1000 + 61_000, 12.0),
                    ("old.s.MSFT.1.entry", "refused", "", "", "local", "v1", T0 * 1000 + 61_000, 9.0)]
    assert client.command("SELECT count() FROM olddb2.broker_orders_before_history") == 2


def test_the_broker_summary_reads_requests_and_current_states_from_the_history(client):
    from connectors.clickhouse import analytics

    w = ch.ClickHouseWriter(client, "summary")
    w.add("broker_orders", EVENTS["broker_orders"])
    w.flush()
    summary = analytics.broker_summary(client, "summary")
    assert summary["requests"] == [["entry", "accepted", "1", "10,500", "10,500", "12", "12"]]
    assert summary["orders"] == [["entry", "filled", "1", "10"]]
    text = analytics.format_broker_summary(summary)
    assert "Broker orders" in text and "current state" in text
    assert analytics.broker_summary(client, "no-such-run") == {}
