"""`cuts report` (text, JSON, CSV; `--against` a backtest) and `cuts runs`
(every run with its status; `--show ID`).

Both read a run's current attempt (connectors.clickhouse.runs): a report
never mixes attempts, states the run's status first, and a run that has not
finished is marked PARTIAL wherever its numbers appear.
"""
from __future__ import annotations

import json
import os
import sys

from connectors.clickhouse.errors import ClickHouseDsnError, ClickHouseUnavailable
from connectors.clickhouse.report import UnknownRun
from dataflows.cli.args import UsageError, out_dir_arg
from dataflows.cli.html_output import HtmlPathError
from dataflows.cli.sweep_command import SweepUsageError


def register(sub) -> None:
    rp = sub.add_parser("report", help="performance report of a run, computed in ClickHouse SQL",
                        description="The metrics of a run (default: the latest started) and its status: "
                                    "a run that did not finish is marked PARTIAL.")
    rp.add_argument("--run-id", help="run id (default: the run started last)")
    rp.add_argument("--clickhouse", metavar="DSN",
                    help="chdb:///dir or http://host:8123 (default: CLICKHOUSE_DSN, else ./data/clickhouse)")
    rp.add_argument("--against", metavar="RUN_ID",
                    help="compare the run (a live or paper one; default: the latest other run) with "
                         "this backtest of the same bars: slippage, missed and extra trades (default: no "
                         "comparison)")
    rp.add_argument("--json", action="store_true", help="print the report as JSON instead of text")
    rp.add_argument("--sweep", metavar="SWEEP_ID",
                    help="the report of a sweep (`latest`: the most recent) (default: a run's report)")
    rp.add_argument("--html", metavar="PATH",
                    help="write the run's tearsheet page (one self-contained HTML file; with --against, the "
                         "comparison too) instead of printing the report (default: print text)")
    rp.add_argument("--csv", metavar="DIR", type=out_dir_arg,
                    help="also write the report's tables as CSV files into DIR (with --against: "
                         "DIR/comparison.csv, or the file itself when DIR ends in .csv) (default: none)")

    runs = sub.add_parser("runs", help="every run: id, mode, status, times, bars, trades, P&L, source",
                          description="The runs in ClickHouse, the latest started first.")
    runs.add_argument("--show", metavar="RUN_ID", help="everything about one run: its attempts, source and "
                                                       "configuration (default: list every run)")
    runs.add_argument("--clickhouse", metavar="DSN",
                      help="chdb:///dir or http://host:8123 (default: CLICKHOUSE_DSN, else ./data/clickhouse)")
    runs.add_argument("--json", action="store_true", help="print JSON instead of text")


def _client(args):
    from connectors.clickhouse.client import open_reader
    from connectors.config import clickhouse_dsn

    return open_reader(clickhouse_dsn(args.clickhouse))


def cmd_report(args) -> int:
    from connectors.clickhouse import analytics
    from connectors.clickhouse.report import build_report, format_text, to_json, write_csv

    if args.html and args.csv is not None:  # what the command asks is checked before the store opens
        raise UsageError("--csv goes with the text report or comparison: the page holds the tables")
    if args.sweep is not None:
        _check_sweep_args(args)
    client = _client(args)
    if args.sweep is not None:
        return _report_sweep(client, args, args.sweep)
    if args.html:
        return _report_html(client, args)
    if args.against is not None:
        return _report_against(client, args)
    run_id = args.run_id or analytics.latest_run_id(client)
    if run_id is None:
        raise UsageError("no runs in ClickHouse yet: run `cuts backtest` first")
    if analytics.run_info(client, run_id).get("mode") == "sweep":  # its report is the sweep's
        return _report_sweep(client, args, run_id)
    if args.csv and args.csv.endswith(".csv") and not os.path.isdir(args.csv):
        raise UsageError(f"--csv {args.csv}: give a directory for the report's CSV files (a single .csv file "
                         f"is for --against)")
    doc = build_report(client, run_id)
    if args.csv:
        written = write_csv(doc, args.csv)
        print(f"wrote {', '.join(written)} to {args.csv}", file=sys.stderr)
    print(to_json(doc) if args.json else format_text(doc), end="" if not args.json else "\n")
    return 0


def _check_sweep_args(args) -> None:
    if args.against is not None or args.csv is not None:
        raise UsageError("--against and --csv compare runs; a sweep's report takes neither")
    if args.json:
        raise UsageError("a sweep's report is text or a page; its tables as CSV: `cuts sweep ... --out DIR`")


def _report_sweep(client, args, sweep_id: str) -> int:
    """A sweep's report: text, or its page with --html."""
    from dataflows.cli.html_output import write_html_page
    from dataflows.cli.sweep_command import cmd_report_sweep, sweep_id_of

    _check_sweep_args(args)
    if args.html:
        write_html_page(args.html, "sweep", sweep_id_of(client, sweep_id), client)
        return 0
    print(cmd_report_sweep(client, sweep_id))
    return 0


def _report_against(client, args) -> int:
    """`cuts report --against BACKTEST`: the live run (default: the latest
    other run) versus the backtest of the same bars."""
    from connectors.clickhouse import compare
    from connectors.clickhouse.report import resolve

    run_id = args.run_id or compare.latest_other_run(client, args.against)
    if run_id is None:
        raise UsageError(f"no run to compare with {args.against}: pass --run-id")
    if run_id == args.against:
        raise UsageError(f"--run-id and --against are the same run: {run_id}")
    live, _ = resolve(client, run_id)
    backtest, _ = resolve(client, args.against)
    result = compare.compare_runs(client, live, backtest)
    if args.csv:
        path = args.csv
        if not (path.endswith(".csv") and not os.path.isdir(path)):
            os.makedirs(path, exist_ok=True)
            path = os.path.join(path, "comparison.csv")
        rows = compare.write_comparison_csv(result, path)
        print(f"wrote {rows} compared trades to {path}", file=sys.stderr)
    print(json.dumps(result, indent=1, default=str) if args.json else compare.format_comparison(result),
          end="" if not args.json else "\n")
    return 0


def write_html(client, run, path: str, against: str | None = None) -> None:
    """The run's tearsheet page (its current attempt, or the RunAttempt
    given); prints where it is."""
    from connectors.clickhouse.runs import public_id
    from dataflows.reports import write_run_page

    from dataflows.cli.html_output import check_html_path

    check_html_path(path)
    try:
        size = write_run_page(client, run, path, against)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from exc
    print(f"report of run {public_id(run)}: {os.path.abspath(path)} ({size / 1e6:.1f} MB)")


def _report_html(client, args) -> int:
    """`cuts report --html PATH`: the tearsheet page of the run (with
    --against, its comparison with that backtest too)."""
    from connectors.clickhouse import analytics, compare
    from connectors.clickhouse.report import resolve

    if args.against is not None:
        run_id = args.run_id or compare.latest_other_run(client, args.against)
        if run_id is None:
            raise UsageError(f"no run to compare with {args.against}: pass --run-id")
        if run_id == args.against:
            raise UsageError(f"--run-id and --against are the same run: {run_id}")
    else:
        run_id = args.run_id or analytics.latest_run_id(client)
        if run_id is None:
            raise UsageError("no runs in ClickHouse yet: run `cuts backtest` first")
    for rid in filter(None, (run_id, args.against)):
        resolve(client, rid)  # UnknownRun with the nearest ids
    if args.against is None and analytics.run_info(client, run_id).get("mode") == "sweep":
        return _report_sweep(client, args, run_id)  # its rows are the sweep's: the sweep's page
    write_html(client, run_id, args.html, args.against)
    return 0


def cmd_runs(args) -> int:
    from connectors.clickhouse.run_list import format_run, format_runs, run_details, run_rows

    client = _client(args)
    if args.show:
        details = run_details(client, args.show)
        print(json.dumps(details, indent=1, default=str) if args.json else format_run(details), end="")
        return 0
    rows = run_rows(client)
    print(json.dumps(rows, indent=1, default=str) if args.json else format_runs(rows), end="")
    return 0


USER_ERRORS = (UnknownRun, ClickHouseUnavailable, ClickHouseDsnError, UsageError, HtmlPathError,
               SweepUsageError)
COMMANDS = {"report": cmd_report, "runs": cmd_runs}
