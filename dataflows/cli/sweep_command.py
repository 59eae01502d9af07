"""`cuts sweep`: a grid of configurations over a bar file or a replayed topic
in one pass (docs/sweeps.md), and `cuts report --sweep ID`.

`register(subparsers)` adds the subcommand; `COMMANDS` maps it to
`fn(args) -> exit code`; `USER_ERRORS` are printed as one line, exit code 2
(a bad grid is an `operators.grid.GridError`, a ConfigError: the core
commands' USER_ERRORS print it).
"""
from __future__ import annotations

import sys

from dataflows.cli.args import positive_int as _positive_int


class SweepUsageError(ValueError):
    """The sweep cannot run as given."""


USER_ERRORS = (SweepUsageError,)


def register(sub) -> None:
    sw = sub.add_parser("sweep", help="many configurations (a grid) over the same bars in one pass, "
                                      "with walk-forward evaluation")
    src = sw.add_mutually_exclusive_group(required=True)
    src.add_argument("--bars", help="Parquet or CSV file of minute bars")
    src.add_argument("--kafka", metavar="BOOTSTRAP", help="replay a bars topic from this broker")
    sw.add_argument("--topic", default="bars", help="topic to replay (with --kafka)")
    sw.add_argument("--grid", required=True, help="grid YAML: axes (dotted key paths -> values), "
                                                  "optional walk_forward")
    sw.add_argument("--config", help="base trading configuration YAML (default config/trading.yaml)")
    sw.add_argument("--run-id", help="sweep id (default: derived from the bars, grid and base configuration)")
    sw.add_argument("--clickhouse", help="chdb:///dir or http://host:8123 (default ./data/clickhouse)")
    sw.add_argument("--out", help="also write configs.csv, trades.csv, metrics.csv, daily.csv, folds.csv here "
                                              "(default: none)")
    sw.add_argument("--html", metavar="PATH", help="also write the sweep's page (one HTML file: heatmap, "
                                                   "ranking, top equity curves, walk-forward) (default: none)")
    sw.add_argument("--workers", type=_positive_int, default=1, help="Bytewax workers in this process")
    sw.add_argument("-i", "--process-id", type=int, default=0, help="this process's index (multi-process)")
    sw.add_argument("-a", "--addresses", default="",
                    help="host:port of every process, ';'-separated, same order on all (multi-process)")
    sw.add_argument("--max-configs", type=_positive_int, default=10_000,
                    help="refuse grids with more configurations (default 10,000)")
    sw.add_argument("--detail", action="store_true",
                    help="also store every configuration's orders, fills and rejections (large; default: "
                         "trades, daily rows and metrics only)")
    sw.add_argument("--quiet", action="store_true", help="no progress or report (default: both shown)")
    sw.add_argument("--recovery-dir", help="turn on Bytewax recovery with snapshots in this directory; the same command "
                         "resumes from it (default: no recovery)")
    sw.add_argument("--snapshot-s", type=_positive_int, default=10,
                    help="seconds between snapshots (with --recovery-dir; default 10)")


def cmd_sweep(args) -> int:
    from connectors.clickhouse.client import open_client
    from connectors.clickhouse.sweep_report import export_sweep_csv, format_sweep_report
    from connectors.config import clickhouse_dsn, kafka_bootstrap, load_grid, load_trading_config
    from dataflows.sweep import SweepSource, run_sweep

    grid = load_grid(args.grid)
    if args.html:
        from dataflows.cli.html_output import check_html_path

        check_html_path(args.html)  # before the sweep, not after it
    base = load_trading_config(args.config)
    addresses = [a for a in args.addresses.split(";") if a]
    if addresses and not 0 <= args.process_id < len(addresses):
        raise SweepUsageError(f"--process-id {args.process_id} is not an index of --addresses")
    if args.bars:
        source = SweepSource(bars_path=args.bars)
    else:
        source = SweepSource(bootstrap=kafka_bootstrap(args.kafka), topic=args.topic)
    dsn = clickhouse_dsn(args.clickhouse)
    result = run_sweep(source, grid, base, dsn, sweep_id=args.run_id, workers=args.workers,
                       addresses=addresses, process_id=args.process_id, max_configs=args.max_configs,
                       detail=args.detail, grid_name=args.grid, recovery_dir=args.recovery_dir,
                       snapshot_s=args.snapshot_s, show_progress=not args.quiet)
    if not result.owner:
        print(f"sweep {result.sweep_id}: process {args.process_id} done; process 0 holds the results")
        return 0
    rate = result.bars * result.configs / max(result.seconds, 1e-9)
    resumed = " (resumed from the recovery directory)" if result.resumed else ""
    print(f"sweep {result.sweep_id}: {result.configs:,} configurations x {result.bars:,} bars in "
          f"{result.seconds:.1f} s ({rate:,.0f} bar-configurations/s){resumed}")
    client = open_client(dsn)
    if args.out:
        written = export_sweep_csv(client, result.sweep_id, args.out)
        if not args.quiet:
            print(f"wrote {', '.join(f'{k} ({v} rows)' for k, v in written.items())} to {args.out}",
                  file=sys.stderr)
    if not args.quiet:
        print(format_sweep_report(client, result.sweep_id))
    if args.html:
        from dataflows.cli.html_output import write_html_page

        write_html_page(args.html, "sweep", result.sweep_id, client)
    return 0


def sweep_id_of(client, sweep_id: str) -> str:
    """The sweep id `cuts report --sweep` names (`latest`: the most recent sweep)."""
    from connectors.clickhouse import sweeps

    if sweep_id == "latest":
        sweep_id = sweeps.latest_sweep_id(client)
        if sweep_id is None:
            raise SweepUsageError("no sweeps in ClickHouse yet: run `cuts sweep` first")
    if not sweeps.sweep_info(client, sweep_id):
        raise SweepUsageError(f"unknown sweep id: {sweep_id}")
    return sweep_id


def cmd_report_sweep(client, sweep_id: str) -> str:
    """`cuts report --sweep ID` (`latest`: the most recent sweep)."""
    from connectors.clickhouse.sweep_report import format_sweep_report

    return format_sweep_report(client, sweep_id_of(client, sweep_id))


COMMANDS = {"sweep": cmd_sweep}
