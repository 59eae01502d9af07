"""Run bookkeeping in ClickHouse (I/O): the `runs` row of a run (started,
finished or failed) and clearing a run's rows before a fresh run of its id."""
from __future__ import annotations

import time

from connectors.clickhouse.client import client_lock, insert_columns
from connectors.clickhouse.schema import DATABASE


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _run_row(client, run_id: str, database: str) -> dict | None:
    res = client.query(
        f"SELECT config_json, toUnixTimestamp64Milli(started_at), mode, version "
        f"FROM `{database}`.runs FINAL WHERE run_id = {{run_id:String}}",
        parameters={"run_id": run_id})
    if not res.result_rows:
        return None
    config_json, started, mode, version = res.result_rows[0]
    return {"config_json": config_json, "started_at": started, "mode": mode, "version": version}


def record_run_start(client, run_id: str, config_json: str, mode: str, *,
                     now_ms: int | None = None, database: str = DATABASE) -> None:
    """Row `status='running'`; a restarted run keeps its first started_at."""
    now = _now_ms() if now_ms is None else now_ms
    prev = _run_row(client, run_id, database)
    started = prev["started_at"] if prev else now
    version = max(now, prev["version"] + 1) if prev else now
    insert_columns(client, "runs", {
        "run_id": [run_id], "config_json": [config_json], "started_at": [started],
        "finished_at": [None], "bar_count": [0], "mode": [mode], "status": ["running"],
        "version": [version]}, database)


def record_run_end(client, run_id: str, bar_count: int, status: str, *,
                   now_ms: int | None = None, database: str = DATABASE) -> None:
    """Final row of a run (higher version than its start row, so it wins)."""
    now = _now_ms() if now_ms is None else now_ms
    prev = _run_row(client, run_id, database) or {"config_json": "", "started_at": now, "mode": "", "version": 0}
    insert_columns(client, "runs", {
        "run_id": [run_id], "config_json": [prev["config_json"]], "started_at": [prev["started_at"]],
        "finished_at": [now], "bar_count": [bar_count], "mode": [prev["mode"]], "status": [status],
        "version": [max(now, prev["version"] + 1)]}, database)


RUN_TABLES = ("bars", "signals", "orders", "fills", "trades", "equity", "rejections", "dead_letters",
              "controls", "broker_orders")


def clear_run(client, run_id: str, database: str = DATABASE) -> None:
    """Delete a run's events, so a fresh backtest under an old id starts clean.
    (A resumed run must not call this: replayed rows overwrite by key.)"""
    with client_lock(client):
        for table in RUN_TABLES:
            client.command(f"DELETE FROM `{database}`.{table} WHERE run_id = {{r:String}}",
                           parameters={"r": run_id})
