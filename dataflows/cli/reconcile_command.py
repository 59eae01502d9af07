"""`cuts reconcile`: the broker's positions and open orders against what a run
believes, and a person's decision for each unclear symbol.

The comparison is `dataflows.reconciliation` (the account from
`connectors.alpaca.account`, the run's records and the decisions from
`connectors.clickhouse.reconciliations`, the rules from
`connectors.alpaca.reconcile`).

`register(subparsers)` adds the subcommand; `COMMANDS` maps it to
`fn(args) -> exit code`; `USER_ERRORS` are printed as one line, exit code 2.
Exit codes: 0 nothing blocked, 3 a symbol is unclear and undecided.
"""
from __future__ import annotations

import argparse

from connectors.alpaca.account import BrokerUnavailable, flatten_symbol, trading_client
from connectors.alpaca.reconcile import (
    ADOPT,
    FLATTEN,
    NONE,
    blocked_symbols,
    format_report,
)
from connectors.clickhouse.errors import ClickHouseDsnError, ClickHouseUnavailable
from connectors.clickhouse.reconciliations import latest_decisions, record_decisions
from dataflows.reconciliation import reconcile_run
from operators.config import ConfigError

EXIT_UNCLEAR = 3


class ReconcileUsageError(ValueError):
    """The command cannot run as given (a symbol that is not unclear, say)."""


USER_ERRORS = (ReconcileUsageError, BrokerUnavailable, ClickHouseUnavailable, ClickHouseDsnError, ConfigError)


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
                        help="accept the broker's state for these unclear symbols (no broker action) "
                             "(default: report only)")
    decide.add_argument("--flatten", type=_symbols, metavar="SYMBOLS",
                        help="cancel these unclear symbols' open orders and close their broker positions "
                             "(default: report only)")
    rc.add_argument("--why", required=True, help="the reason, recorded in ClickHouse")
    rc.add_argument("--who", help="who decided (default: the login name)")
    rc.add_argument("--live", action="store_true", help="the live account (needs ALPACA_PAPER=false too)")
    rc.add_argument("--trading-url", help=argparse.SUPPRESS)


def cmd_reconcile(args) -> int:
    from connectors.clickhouse.client import open_client
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
