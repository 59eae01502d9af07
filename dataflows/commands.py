"""What each `cuts` subcommand does; `cli` only parses arguments."""
from __future__ import annotations

import os
import sys

from connectors import analytics
from connectors.barfile import BarFileError
from connectors.clickhouse import ClickHouseUnavailable, close_clients, open_client
from connectors.config import clickhouse_dsn, load_trading_config
from dataflows.backtest import run_backtest
from operators.config import ConfigError



class UsageError(Exception):
    """The command asks for something that is not there (a run id, say)."""


# Errors a user fixes by changing the command, file or setup: one line, exit 2.
USER_ERRORS = (ConfigError, BarFileError, ClickHouseUnavailable, UsageError)


def dispatch(args) -> int:
    try:
        return _COMMANDS[args.command](args)
    finally:
        close_clients()  # on the main thread (closing from a worker thread hangs)


def cmd_backtest(args) -> int:
    config = load_trading_config(args.config)
    dsn = clickhouse_dsn(args.clickhouse)
    result = run_backtest(args.bars, config, dsn, run_id=args.run_id, workers=args.workers,
                          show_progress=not args.quiet)
    client = open_client(dsn)
    if args.out:
        written = analytics.export_csv(client, result.run_id, args.out)
        if not args.quiet:
            print(f"wrote {', '.join(f'{k} ({v} rows)' for k, v in written.items())} to {args.out}",
                  file=sys.stderr)
    rate = result.bars_read / max(result.seconds, 1e-9)
    print(f"run {result.run_id}: {result.bars_read:,} bars in {result.seconds:.1f} s ({rate:,.0f} bars/s)")
    if not args.quiet:
        print(_report(client, result.run_id))
    return 0


def cmd_report(args) -> int:
    client = open_client(clickhouse_dsn(args.clickhouse))
    run_id = args.run_id or analytics.latest_run_id(client)
    if run_id is None:
        raise UsageError("no runs in ClickHouse yet: run `cuts backtest` first")
    print(_report(client, run_id))
    return 0


def _report(client, run_id: str) -> str:
    info = analytics.run_info(client, run_id)
    if not info:
        raise UsageError(f"unknown run id: {run_id}")
    perf = analytics.performance(client, run_id)
    breakdowns = {by: analytics.breakdown(client, run_id, by)
                  for by in ("strategy", "exit_reason", "symbol", "day")}
    return analytics.format_report(perf, breakdowns, analytics.counts(client, run_id))


def cmd_generate(args) -> int:
    from connectors.synthetic import generate_bars, write_bars

    df = generate_bars(args.symbols, args.days, args.seed, start=args.start)
    write_bars(df, args.out)
    print(f"wrote {len(df):,} bars ({args.symbols} symbols x {args.days} days) to {args.out}")
    return 0


def cmd_demo(args) -> int:
    from connectors.synthetic import generate_bars, write_bars

    os.makedirs(args.dir, exist_ok=True)
    bars = os.path.join(args.dir, "bars.parquet")
    if not os.path.exists(bars):
        print(f"generating {args.symbols} symbols x {args.days} days of minute bars -> {bars}")
        write_bars(generate_bars(args.symbols, args.days, seed=7), bars)
    dsn = "chdb://" + os.path.abspath(os.path.join(args.dir, "clickhouse"))
    config = load_trading_config(None)
    result = run_backtest(bars, config, dsn)
    client = open_client(dsn)
    analytics.export_csv(client, result.run_id, os.path.join(args.dir, "out"))
    rate = result.bars_read / max(result.seconds, 1e-9)
    print(f"run {result.run_id}: {result.bars_read:,} bars in {result.seconds:.1f} s ({rate:,.0f} bars/s)")
    print(_report(client, result.run_id))
    print(f"\nCSV files in {os.path.join(args.dir, 'out')}; ClickHouse data in {dsn}")
    return 0


_COMMANDS = {
    "backtest": cmd_backtest,
    "report": cmd_report,
    "generate": cmd_generate,
    "demo": cmd_demo,
}
