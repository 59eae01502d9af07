"""Every SQL query of the provisioned Grafana dashboards runs on the real
ClickHouse engine (chDB) as the plugin sends it (tests/grafana_sql.py expands
Grafana's variables and the plugin's macros), read-only, on a real run's
tables: a broken or empty panel fails here, not in front of a trader."""
from __future__ import annotations

import datetime as dt
import glob
import json
import os
import subprocess
import sys

import pandas as pd
import pytest
from grafana_sql import UnknownMacro, render

from connectors.clickhouse import client as ch
from connectors.clickhouse.schema import column_names, column_types
from operators.types import ControlEvent

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DASHBOARDS = sorted(glob.glob(os.path.join(ROOT, "docker", "grafana", "dashboards", "*.json")))
RUN = "graf"
BROKER_ORDER = dict(order_id="sma_5_15.AAA.1.entry", client_order_id="graf.sma_5_15.AAA.1.entry", intent="entry",
                    symbol="AAA", side="buy", qty=10, decision_price=100.0, broker_order_id="b-1", status="accepted",
                    adopted=False, detail="", acked_at_ms=0)

pytestmark = pytest.mark.slow


def _zero(kind: str):
    if kind.startswith("Nullable"):
        return None
    return {"String": "", "Bool": False, "Float64": 0.0}.get(kind, 0)


def _panels(panels):
    for p in panels:
        yield p
        yield from _panels(p.get("panels", []))  # collapsed rows hold their panels


def queries(dashboard: dict):
    """(where, rawSql, format) of every panel target and query variable."""
    for p in _panels(dashboard.get("panels", [])):
        for t in p.get("targets", []):
            yield f"panel {p['title']!r} {t['refId']}", t["rawSql"], t.get("format", 1)
    for v in dashboard.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            yield f"variable {v['name']}", v["query"]["rawSql"], 1


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A backtest (with a bad bar, so a dead letter) through the CLI, then a
    kill-switch halt and broker orders added to the same run (a backtest has
    none): every panel has something to show."""
    d = tmp_path_factory.mktemp("grafana")
    bars = d / "bars.parquet"
    subprocess.run([sys.executable, "-m", "dataflows.cli", "generate", "--symbols", "5", "--days", "2", "--seed", "3",
                    "--out", str(bars)], check=True, cwd=ROOT, capture_output=True)
    df = pd.read_parquet(bars)
    df = df[df["timestamp"] < pd.Timestamp("2024-01-03 15:05", tz="UTC")]  # ends at 10:05 New York: positions open
    bad = df.iloc[[100]].copy()
    bad["high"] = bad["low"] - 1.0  # high below low: invalid
    bad["timestamp"] = bad["timestamp"] + pd.Timedelta(seconds=30)
    pd.concat([df, bad]).to_parquet(bars)
    proc = subprocess.run([sys.executable, "-m", "dataflows.cli", "backtest", "--bars", str(bars), "--clickhouse",
                           f"chdb://{d / 'ch'}", "--run-id", RUN, "--quiet"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    client = ch.open_client(f"chdb://{d / 'ch'}")
    try:  # a failed set-up still closes its client: the next tests open other directories
        (open_at_end,), = client.query("SELECT argMax(open_positions, ts) FROM thousandcuts.equity FINAL "
                                       "WHERE run_id = {r:String}", parameters={"r": RUN}).result_rows
        assert open_at_end > 0, "the run should end with open positions (the Open positions panel shows them)"
        first, last = client.query("SELECT toUnixTimestamp(min(ts)), toUnixTimestamp(max(ts)) FROM thousandcuts.equity "
                                   "FINAL WHERE run_id = {r:String}", parameters={"r": RUN}).result_rows[0]
        w = ch.ClickHouseWriter(client, RUN)
        w.add("controls", [ControlEvent("halt-1", "halt", False, first + 3600, "ops", "news pending", 0, 2)])
        decided = [(first + 60 * i) * 1000 for i in range(3)]
        orders = {k: [v] * 3 for k, v in BROKER_ORDER.items()} | {
            "run_id": [RUN] * 3, "decided_ts": decided, "at": decided, "event": ["accepted"] * 3,
            "decision_lag_ms": [40.0, 55.0, 70.0], "submit_ms": [80.0, 95.0, 120.0],
            "client_order_id": [f"graf.o{i}" for i in range(3)]}
        # the columns the table has (others get their type's zero), so the rows follow its schema
        w.add_columns("broker_orders", {
            name: orders.get(name) or [_zero(kind)] * 3
            for name, kind in zip(column_names("broker_orders"), column_types("broker_orders"))})
        w.flush()
        yield {"client": client, "from": dt.datetime.fromtimestamp(first, dt.timezone.utc),
               "to": dt.datetime.fromtimestamp(last + 60, dt.timezone.utc)}
    finally:
        ch.close_clients()


def test_there_is_a_dashboard_and_it_uses_the_provisioned_data_source():
    import yaml

    ds = yaml.safe_load(open(os.path.join(ROOT, "docker", "grafana", "provisioning", "datasources",
                                          "clickhouse.yml")))["datasources"]
    uids = {d["uid"]: d["type"] for d in ds}
    assert DASHBOARDS, "no dashboard in docker/grafana/dashboards"
    for path in DASHBOARDS:
        dash = json.load(open(path))
        refs = [p["datasource"] for p in _panels(dash["panels"])]
        refs += [t["datasource"] for p in _panels(dash["panels"]) for t in p.get("targets", [])]
        refs += [v["datasource"] for v in dash["templating"]["list"] if v["type"] == "query"]
        assert refs and all(uids.get(r["uid"]) == r["type"] == "grafana-clickhouse-datasource" for r in refs), path
        assert all(t.get("editorType") == "sql" for p in _panels(dash["panels"]) for t in p.get("targets", []))


@pytest.mark.parametrize("interval_ms", [60_000, 3_600_000])
def test_every_dashboard_query_runs_read_only_and_shows_rows(run, interval_ms):
    failures = []
    for path in DASHBOARDS:
        for where, raw, fmt in queries(json.load(open(path))):
            sql = render(raw, run["from"], run["to"], interval_ms, {"run": RUN})
            try:
                res = run["client"].query(sql, settings={"readonly": 1})
            except Exception as exc:  # noqa: BLE001 (collect every broken panel)
                failures.append(f"{os.path.basename(path)} {where}: {str(exc).splitlines()[0]}\n{sql}")
                continue
            if not res.result_rows:
                failures.append(f"{os.path.basename(path)} {where}: no rows")
            elif fmt == 0:  # time series: a `time` column first, ascending
                times = [r[0] for r in res.result_rows]
                if res.column_names[0] != "time" or times != sorted(times):
                    failures.append(f"{os.path.basename(path)} {where}: time series without an ascending time")
    assert not failures, "\n\n".join(failures)


def _panel_rows(run, title: str) -> tuple[list[str], list[tuple]]:
    for path in DASHBOARDS:
        for where, raw, _ in queries(json.load(open(path))):
            if where.startswith(f"panel {title!r}"):
                res = run["client"].query(render(raw, run["from"], run["to"], 60_000, {"run": RUN}))
                return res.column_names, res.result_rows
    raise AssertionError(f"no panel {title!r}")


def test_open_positions_panel_lists_the_positions_the_run_ended_with(run):
    c = run["client"]
    (open_at_end,), = c.query("SELECT argMax(open_positions, ts) FROM thousandcuts.equity FINAL "
                              "WHERE run_id = {r:String}", parameters={"r": RUN}).result_rows
    (entries,), = c.query("SELECT count() FROM thousandcuts.fills FINAL WHERE run_id = {r:String} AND side = 'buy'",
                          parameters={"r": RUN}).result_rows
    (trades,), = c.query("SELECT count() FROM thousandcuts.trades FINAL WHERE run_id = {r:String}",
                         parameters={"r": RUN}).result_rows
    names, rows = _panel_rows(run, "Open positions")
    assert len(rows) == open_at_end == entries - trades
    assert list(names[:3]) == ["symbol", "strategy", "qty"] and all(r[2] > 0 for r in rows)


def test_status_and_halts_panels(run):
    names, rows = _panel_rows(run, "Run status")
    assert dict(zip(names, rows[0]))["status"] == "finished"
    names, rows = _panel_rows(run, "Halts and kill-switch events")
    events = [r[1] for r in rows]
    assert "kill switch: halt" in events
    assert [r[2] for r in rows if r[1] == "kill switch: halt"] == ["ops: news pending"]
    _, latency = _panel_rows(run, "Order latency (ms)")
    assert latency and latency[0][1] == pytest.approx(40.0)  # one order per minute: p50 = its own lag


def test_run_variable_lists_the_latest_run_first(run):
    c = run["client"]
    ch_runs = __import__("connectors.clickhouse.runs", fromlist=["record_run_start"])
    ch_runs.record_run_start(c, "older", "{}", "backtest", now_ms=0)
    dash = json.load(open(DASHBOARDS[0]))
    raw = next(v["query"]["rawSql"] for v in dash["templating"]["list"] if v["name"] == "run")
    rows = c.query(render(raw, run["from"], run["to"], 60_000, {})).result_rows
    assert rows[0][0] == RUN and ("older",) in rows


def test_macros_expand_as_the_plugin_does():
    frm = dt.datetime(2024, 1, 2, 14, 30, tzinfo=dt.timezone.utc)
    to = frm + dt.timedelta(hours=1)
    sql = ("SELECT $__timeInterval(ts) AS time -- $__unknown in a comment is dropped\n"
           "FROM t WHERE $__timeFilter(ts) AND run_id = ${run:sqlstring} AND x = '$__not_a_macro' "
           "AND s = $__interval_s AND a >= $__fromTime_ms")
    assert render(sql, frm, to, 30_000, {"run": "it's"}) == (
        "SELECT toStartOfInterval(toDateTime(ts), INTERVAL 30 second) AS time  \n"
        "FROM t WHERE ts >= toDateTime(1704205800) AND ts <= toDateTime(1704209400) AND run_id = 'it''s' "
        "AND x = '$__not_a_macro' AND s = 30 AND a >= fromUnixTimestamp64Milli(1704205800000)")
    assert render("SELECT $__timeInterval(ts)", frm, to, 500, {}) == \
        "SELECT toStartOfInterval(toDateTime(ts), INTERVAL 1 second)"  # at least a second
    for bad in ("SELECT $__columns(a)", "SELECT $nope", "SELECT ${run:csv}", "SELECT $__timeFilter(a, b)"):
        with pytest.raises(UnknownMacro):
            render(bad, frm, to, 60_000, {"run": "r"})
