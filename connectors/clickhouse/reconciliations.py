"""The `reconciliations` table and the run's recorded positions and orders
(I/O): what `cuts reconcile` and a trading run's start-up read and write in
ClickHouse. The comparison itself is `connectors.alpaca.reconcile` (pure).

One row per (run, symbol, decided_at) with the status, both quantities, the
decision (`adopt`, `flatten`, or `none` when a report found the symbol
unclear and nobody decided yet), who and why. The run's belief: per (symbol,
strategy) the run's buy fill qty minus its sell fill qty (FINAL), nonzero
ones; the run's own client order ids come from its `orders` and
`broker_orders` rows.
"""
from __future__ import annotations

import time
from typing import Any

from clickhouse_connect.driver.exceptions import OperationalError

from connectors.alpaca.reconcile import (
    ADOPT,
    DECISIONS,
    FLATTEN,
    ReconcileReport,
    quantity,
)
from connectors.clickhouse.client import (
    ClickHouseUnavailable,
    client_lock,
    ensure_schema,
)
from connectors.clickhouse.schema import DATABASE, MERGE_SETTINGS

TABLE = "reconciliations"


COLUMNS = [("run_id", "String"), ("symbol", "String"), ("status", "String"),
           ("broker_qty", "Float64"), ("expected_qty", "Float64"), ("decision", "String"),
           ("who", "String"), ("why", "String"), ("decided_at", "DateTime64(3, 'UTC')")]


def reconciliations_ddl(database: str = DATABASE) -> str:
    body = ",\n  ".join(f"`{n}` {t}" for n, t in COLUMNS)
    return (f"CREATE TABLE IF NOT EXISTS `{database}`.`{TABLE}` (\n  {body}\n) "
            f"ENGINE = ReplacingMergeTree ORDER BY (run_id, symbol, decided_at) SETTINGS {MERGE_SETTINGS}")


def ensure_reconciliations(client, database: str = DATABASE) -> None:
    """The run tables (fills, orders, ...) and `reconciliations`, when missing."""
    with client_lock(client):
        ensure_schema(client, database)
        client.command(reconciliations_ddl(database))


def _query(client, sql: str, **params) -> list[tuple]:
    try:
        return list(client.query(sql, parameters=params).result_rows)
    except OperationalError as exc:
        raise ClickHouseUnavailable(f"ClickHouse query failed: {exc}") from exc


def expected_positions(client, run_id: str, database: str = DATABASE) -> dict[tuple[str, str], int]:
    """{(symbol, strategy_id): buy qty - sell qty} of the run's fills, nonzero only."""
    rows = _query(client, f"""
        SELECT symbol, strategy_id, sumIf(qty, side = 'buy') - sumIf(qty, side = 'sell') AS net
        FROM `{database}`.fills FINAL WHERE run_id = {{run_id:String}}
        GROUP BY symbol, strategy_id HAVING net != 0 ORDER BY symbol, strategy_id""", run_id=run_id)
    return {(symbol, strategy): int(net) for symbol, strategy, net in rows}


def run_order_ids(client, run_id: str, database: str = DATABASE) -> set[str]:
    """The client order ids the run sent (broker_orders) or would send (orders)."""
    from connectors.alpaca.broker import client_order_id

    ids = {client_order_id(run_id, oid) for (oid,) in _query(
        client, f"SELECT DISTINCT order_id FROM `{database}`.orders FINAL WHERE run_id = {{run_id:String}}",
        run_id=run_id)}
    ids |= {cid for (cid,) in _query(
        client, f"SELECT DISTINCT client_order_id FROM `{database}`.broker_orders FINAL "
                f"WHERE run_id = {{run_id:String}}", run_id=run_id) if cid}
    return ids


def record_decisions(client, report: ReconcileReport, symbols, decision: str, who: str, why: str,
                     *, now_ms: int | None = None, database: str = DATABASE) -> int:
    """One `reconciliations` row per symbol (its current status and quantities)."""
    if decision not in DECISIONS:
        raise ValueError(f"decision must be one of {DECISIONS}: {decision!r}")
    rows = [report.get(s) for s in symbols]
    if not rows:
        return 0
    now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    cols = {"run_id": [report.run_id] * len(rows), "symbol": [r.symbol for r in rows],
            "status": [r.status for r in rows], "broker_qty": [float(r.broker_qty) for r in rows],
            "expected_qty": [float(r.expected_qty) for r in rows], "decision": [decision] * len(rows),
            "who": [who] * len(rows), "why": [why] * len(rows), "decided_at": [now] * len(rows)}
    names = [n for n, _ in COLUMNS]
    try:
        with client_lock(client):
            client.insert(TABLE, data=[cols[n] for n in names], column_names=names,
                          column_type_names=[t for _, t in COLUMNS], column_oriented=True,
                          database=database)
    except OperationalError as exc:
        raise ClickHouseUnavailable(f"insert into {database}.{TABLE} failed: {exc}") from exc
    return len(rows)


def latest_decisions(client, run_id: str, *, decided_only: bool = False,
                     database: str = DATABASE) -> dict[str, dict[str, Any]]:
    """The latest `reconciliations` row per symbol of the run; `decided_only`:
    the latest adopt or flatten (what covers a discrepancy; `none` rows are
    findings kept for the record)."""
    ensure_reconciliations(client, database)
    only = f"AND decision IN ('{ADOPT}', '{FLATTEN}')" if decided_only else ""
    rows = _query(client, f"""
        SELECT symbol, argMax(tuple(status, broker_qty, expected_qty, decision, who, why),
                              decided_at) AS last, max(decided_at) AS at
        FROM `{database}`.`{TABLE}` FINAL WHERE run_id = {{run_id:String}} {only}
        GROUP BY symbol ORDER BY symbol""", run_id=run_id)
    out = {}
    for symbol, last, at in rows:
        status, broker_qty, expected_qty, decision, who, why = last
        out[symbol] = {"status": status, "broker_qty": quantity(broker_qty),
                       "expected_qty": quantity(expected_qty), "decision": decision, "who": who,
                       "why": why, "decided_at": at}
    return out


def decided_symbols(client, run_id: str, database: str = DATABASE) -> dict[str, str]:
    """{symbol: latest decision} of the run: adopt, flatten or none."""
    return {s: row["decision"] for s, row in latest_decisions(client, run_id, database=database).items()}
