"""Reconciliation of a trading run: the broker's account (connectors.alpaca.account)
against what the run recorded in ClickHouse (connectors.clickhouse.reconciliations),
compared by the pure `connectors.alpaca.reconcile`. `cuts reconcile` and the
start-up of `cuts run --alpaca` call it.
"""
from __future__ import annotations

from connectors.alpaca.account import broker_open_orders, broker_positions
from connectors.alpaca.reconcile import (
    ReconcileReport,
    blocked_symbols,
    expected_by_symbol,
    reconcile,
)
from connectors.clickhouse.reconciliations import (
    ensure_reconciliations,
    expected_positions,
    latest_decisions,
    run_order_ids,
)


def reconcile_run(tc, ch_client, run_id: str, in_flight: dict | None = None
                  ) -> tuple[ReconcileReport, list[dict]]:
    """The report of the run now, and the open orders it was made from.
    `in_flight`: {symbol: qty} the run's own orders filled at the broker that
    the run has not recorded yet (it will, from the trade-updates catch-up)."""
    ensure_reconciliations(ch_client)
    positions_ = dict(expected_positions(ch_client, run_id))
    for symbol, qty in (in_flight or {}).items():
        positions_[(symbol, "(in flight)")] = qty
    expected = expected_by_symbol(positions_)
    known = run_order_ids(ch_client, run_id)
    positions = broker_positions(tc)
    orders = broker_open_orders(tc)
    return reconcile(expected, positions, orders, run_id, known_order_ids=known), orders


def unclear_symbols_now(tc, ch_client, run_id: str, in_flight: dict | None = None
                        ) -> tuple[ReconcileReport, set[str]]:
    """(report, blocked): blocked = unclear symbols that no standing adopt or
    flatten decision covers. A trading run calls this at start-up and refuses
    to trade the blocked symbols."""
    report, _orders = reconcile_run(tc, ch_client, run_id, in_flight)
    return report, blocked_symbols(report, latest_decisions(ch_client, run_id, decided_only=True))
