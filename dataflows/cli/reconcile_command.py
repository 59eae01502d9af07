"""`cuts reconcile`: the broker's positions and open orders against what a run
believes (reconciliation, I/O half; the comparison is `connectors.reconcile`).

The run's belief comes from ClickHouse: per (symbol, strategy) the run's buy
fill qty minus its sell fill qty (FINAL), nonzero ones, summed per symbol; the
run's own client order ids come from its `orders` and `broker_orders` rows.
The broker's truth is `TradingClient.get_all_positions()` and the open orders
(`GetOrdersRequest(status=OPEN, nested=True)`).

Decisions go to the table `thousandcuts.reconciliations` (created here):
one row per (run, symbol, decided_at) with the status, both quantities, the
decision (`adopt`, `flatten`, or `none` when a report found the symbol
unclear and nobody decided yet), who and why. `unclear_symbols_now` is what a
trading run calls at start-up: the symbols it must refuse to trade.

`register(subparsers)` adds the subcommand; `COMMANDS` maps it to
`fn(args) -> exit code`; `USER_ERRORS` are printed as one line, exit code 2.
Exit codes: 0 nothing blocked, 3 a symbol is unclear and undecided.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from clickhouse_connect.driver.exceptions import OperationalError

from connectors.clickhouse import DATABASE, ClickHouseUnavailable, client_lock, ensure_schema
from connectors.reconcile import (
    ADOPT, DECISIONS, FLATTEN, NONE, ReconcileReport, blocked_symbols, expected_by_symbol,
    format_report, quantity, reconcile,
)

EXIT_UNCLEAR = 3
TABLE = "reconciliations"
COLUMNS = [("run_id", "String"), ("symbol", "String"), ("status", "String"),
           ("broker_qty", "Float64"), ("expected_qty", "Float64"), ("decision", "String"),
           ("who", "String"), ("why", "String"), ("decided_at", "DateTime64(3, 'UTC')")]
CANCEL_WAIT_S = 10.0  # how long a flatten waits for its cancels before closing the position


class ReconcileUsageError(ValueError):
    """The command cannot run as given (a symbol that is not unclear, say)."""


class BrokerUnavailable(Exception):
    """The broker refused or could not be reached (credentials, network, rejection)."""


USER_ERRORS = (ReconcileUsageError, BrokerUnavailable)


# ---------------------------------------------------------------- ClickHouse
def reconciliations_ddl(database: str = DATABASE) -> str:
    body = ",\n  ".join(f"`{n}` {t}" for n, t in COLUMNS)
    return (f"CREATE TABLE IF NOT EXISTS `{database}`.`{TABLE}` (\n  {body}\n) "
            f"ENGINE = ReplacingMergeTree ORDER BY (run_id, symbol, decided_at)")


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
    from connectors.broker import client_order_id

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


# ---------------------------------------------------------------- the broker
def trading_client(live: bool = False, url: str | None = None):
    """alpaca-py's TradingClient from the environment: credentials, paper unless
    --live with ALPACA_PAPER=false, ALPACA_TRADING_URL (or `url`) overriding the endpoint."""
    from alpaca.trading.client import TradingClient

    from connectors.config import alpaca_credentials, alpaca_trading_url, trading_mode

    key, secret = alpaca_credentials()
    paper = trading_mode(live) == "paper"
    return TradingClient(key, secret, paper=paper, url_override=url or alpaca_trading_url())


def _broker_call(what: str, fn, *args):
    from alpaca.common.exceptions import APIError
    from requests.exceptions import RequestException

    try:
        return fn(*args)
    except APIError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise BrokerUnavailable(f"broker refused {what} (HTTP {exc.status_code}): {first}") from None
    except RequestException as exc:
        raise BrokerUnavailable(f"broker unreachable ({what}): {type(exc).__name__}") from None


def broker_positions(tc) -> dict[str, tuple[int | float, float]]:
    """{symbol: (signed qty, avg entry price)} of every broker position."""
    out = {}
    for p in _broker_call("the positions", tc.get_all_positions):
        qty = quantity(p.qty)
        side = getattr(p.side, "value", p.side)
        if side == "short" and qty > 0:
            qty = -qty
        out[p.symbol] = (qty, float(p.avg_entry_price))
    return out


def _order_dict(o) -> dict[str, Any]:
    return {"id": str(o.id), "symbol": o.symbol, "client_order_id": o.client_order_id,
            "side": getattr(o.side, "value", o.side), "qty": quantity(o.qty),
            "status": getattr(o.status, "value", o.status),
            "legs": [_order_dict(leg) for leg in (o.legs or ())]}


def broker_open_orders(tc, symbols: list[str] | None = None) -> list[dict[str, Any]]:
    """The open orders (legs nested in their parents) as plain dicts."""
    from alpaca.trading.enums import QueryOrderStatus
    from alpaca.trading.requests import GetOrdersRequest

    request = GetOrdersRequest(status=QueryOrderStatus.OPEN, nested=True, limit=500, symbols=symbols)
    return [_order_dict(o) for o in _broker_call("the open orders", tc.get_orders, request)]


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


def flatten_symbol(tc, symbol: str, open_orders: list[dict], broker_qty) -> list[str]:
    """Cancel the symbol's open orders (a parent's cancel takes its legs), wait
    for the cancels, close the broker position at market. What was done, as lines."""
    from alpaca.common.exceptions import APIError

    done = []
    for order in (o for o in open_orders if o["symbol"] == symbol):
        try:
            tc.cancel_order_by_id(order["id"])
            done.append(f"{symbol}: canceled open order {order['client_order_id']} "
                        f"({order['side']} {order['qty']})")
        except APIError as exc:
            if exc.status_code not in (404, 422):  # filled or canceled meanwhile
                raise BrokerUnavailable(f"cannot cancel {order['client_order_id']} "
                                        f"(HTTP {exc.status_code})") from None
            done.append(f"{symbol}: order {order['client_order_id']} already closed")
    deadline = time.monotonic() + CANCEL_WAIT_S
    while broker_open_orders(tc, [symbol]) and time.monotonic() < deadline:
        time.sleep(0.2)
    if quantity(broker_qty) != 0:
        try:
            close = tc.close_position(symbol)
            status = getattr(close.status, "value", close.status)
            done.append(f"{symbol}: closing position of {broker_qty} at market (order {close.id}, {status})")
            if status != "filled":
                done.append(f"{symbol}: until the closing order fills, {symbol} stays blocked")
        except APIError as exc:
            if exc.status_code != 404:
                raise BrokerUnavailable(f"cannot close the {symbol} position "
                                        f"(HTTP {exc.status_code}): {str(exc)[:200]}") from None
            done.append(f"{symbol}: no position left to close")
    else:
        done.append(f"{symbol}: no broker position to close")
    return done


# ---------------------------------------------------------------- the command
def _symbols(text: str) -> list[str]:
    symbols = [s.strip().upper() for s in text.split(",") if s.strip()]
    if not symbols:
        raise argparse.ArgumentTypeError(f"no symbols in {text!r}")
    return list(dict.fromkeys(symbols))


def register(sub) -> None:
    """Add `reconcile` to the CLI's subparsers."""
    rc = sub.add_parser("reconcile", help="compare the broker's positions and open orders with a run's; "
                                          "adopt or flatten unclear symbols")
    rc.add_argument("--run-id", required=True, help="the trading run to reconcile")
    rc.add_argument("--clickhouse", help="chdb:///dir or http://host:8123 (default CLICKHOUSE_DSN, "
                                         "else ./data/clickhouse)")
    decide = rc.add_mutually_exclusive_group()
    decide.add_argument("--adopt", type=_symbols, metavar="SYMBOLS",
                        help="accept the broker's state for these unclear symbols (no broker action)")
    decide.add_argument("--flatten", type=_symbols, metavar="SYMBOLS",
                        help="cancel these unclear symbols' open orders and close their broker positions")
    rc.add_argument("--why", required=True, help="the reason, recorded in ClickHouse")
    rc.add_argument("--who", help="who decided (default: the login name)")
    rc.add_argument("--live", action="store_true", help="the live account (needs ALPACA_PAPER=false too)")
    rc.add_argument("--trading-url", help=argparse.SUPPRESS)


def cmd_reconcile(args) -> int:
    from connectors.clickhouse import open_client
    from connectors.config import clickhouse_dsn, operator_name

    tc = trading_client(args.live, args.trading_url)
    ch_client = open_client(clickhouse_dsn(args.clickhouse))
    who = operator_name(args.who)
    report, orders = reconcile_run(tc, ch_client, args.run_id)
    decisions = latest_decisions(ch_client, args.run_id, decided_only=True)
    blocked = blocked_symbols(report, decisions)
    print(format_report(report))
    covered = [s for s in report.unclear_symbols if s not in blocked]
    if covered:
        print("decided earlier: " + ", ".join(f"{s} ({decisions[s]['decision']} by {decisions[s]['who']})"
                                             for s in covered))

    decision, chosen = (ADOPT, args.adopt) if args.adopt else (FLATTEN, args.flatten) if args.flatten \
        else (NONE, None)
    if chosen is None:
        record_decisions(ch_client, report, sorted(blocked), NONE, who, args.why)
        if blocked:
            print(f"blocked (a person must decide: --adopt or --flatten): {', '.join(sorted(blocked))}")
            return EXIT_UNCLEAR
        return 0

    clear = [s for s in chosen if s not in report.unclear_symbols]
    if clear:
        states = ", ".join(f"{s} ({report.get(s).status if report.get(s) else 'not held'})" for s in clear)
        raise ReconcileUsageError(f"not unclear, nothing to decide: {states}")
    for symbol in chosen:
        row = report.get(symbol)
        if decision == FLATTEN:
            for line in flatten_symbol(tc, symbol, orders, row.broker_qty):
                print(line)
        else:
            print(f"{symbol}: adopted the broker's state ({row.status}: broker {row.broker_qty}, "
                  f"run {row.expected_qty}); no broker action")
        record_decisions(ch_client, report, [symbol], decision, who, args.why)
    print(f"recorded {decision} of {', '.join(chosen)} for run {args.run_id} (by {who}: {args.why})")
    left = sorted(blocked - set(chosen))
    if left:
        print(f"still blocked: {', '.join(left)}")
        return EXIT_UNCLEAR
    return 0


COMMANDS = {"reconcile": cmd_reconcile}


def main(argv: list | None = None) -> int:
    """`python -m dataflows.reconcile_command reconcile ...` (the same as `cuts`)."""
    from dataflows.cli import main as cuts_main

    return cuts_main(argv)


if __name__ == "__main__":
    sys.exit(main())
