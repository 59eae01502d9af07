"""Migrations of older thousandcuts databases (I/O), run by
`connectors.clickhouse.client.ensure_schema`: `broker_orders` from before
the order history (one row per request) becomes history rows."""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)


REQUEST_LOG_BEFORE_HISTORY = "broker_orders_before_history"


def _columns_of(client, database: str, table: str) -> set:
    return {name for (name,) in client.query(
        "SELECT name FROM system.columns WHERE database = {d:String} AND table = {t:String}",
        parameters={"d": database, "t": table}).result_rows}


def set_aside_request_log(client, database: str) -> None:
    """`broker_orders` from before the order history (one row per request,
    overwritten by a replay; no `event` column) is renamed out of the way,
    to be copied into the history once that exists."""
    columns = _columns_of(client, database, "broker_orders")
    if not columns or "event" in columns:
        return
    aside = REQUEST_LOG_BEFORE_HISTORY
    client.command(f"RENAME TABLE `{database}`.broker_orders TO `{database}`.`{aside}`")
    log.warning("ClickHouse: %s.broker_orders was one row per request; renamed to %s and copied into "
                "the order history (events accepted, adopted, refused, skipped; clock local)", database, aside)


def migrate_request_log(client, database: str) -> None:
    """The set-aside rows as history rows (once): each request's last
    outcome, at the time it was acknowledged (this machine's wall clock)."""
    aside = REQUEST_LOG_BEFORE_HISTORY
    if not _columns_of(client, database, aside) or client.command(
            f"SELECT count() FROM `{database}`.broker_orders WHERE source = 'v1'"):
        return
    client.command(f"""
        INSERT INTO `{database}`.broker_orders
            (run_id, client_order_id, at, event, leg, broker_order_id, filled_qty, intent, decided_ts,
             order_id, symbol, side, qty, decision_price, clock, source, status, fill_price, detail,
             decision_lag_ms, submit_ms)
        SELECT run_id, client_order_id, fromUnixTimestamp64Milli(acked_at_ms, 'UTC'),
               multiIf(status = 'failed', 'refused', status = 'skipped', 'skipped',
                       adopted, 'adopted', 'accepted'),
               '', broker_order_id, 0, intent, decided_ts, order_id, symbol, side, qty, decision_price,
               'local', 'v1', if(status IN ('failed', 'skipped'), '', status), 0, detail,
               decision_lag_ms, submit_ms
        FROM `{database}`.`{aside}` FINAL""")
