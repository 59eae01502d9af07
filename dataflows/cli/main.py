"""`cuts`: the command line. Bad input stops with one line and exit code 2."""
from __future__ import annotations

import argparse
import atexit
import os
import signal
import sys

from dataflows.cli import live_commands, reconcile_command, sweep_command
from dataflows.cli.args import EXIT_USAGE
from dataflows.cli.args import Parser as _Parser
from dataflows.cli.args import positive_int as _positive_int
from dataflows.cli.args import positive_seconds, seconds
from dataflows.stop import RunInterrupted, StopSignal, exit_code, raise_on_signals, signal_name


def _recovery_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recovery-dir", help="turn on Bytewax recovery with snapshots in this directory")
    p.add_argument("--snapshot-s", type=_positive_int, default=10,
                   help="seconds between snapshots (with --recovery-dir; default 10)")


def _cluster_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-i", "--process-id", type=int, default=0,
                   help="this process's index (multi-process; process 0 holds the database)")
    p.add_argument("-a", "--addresses", default="",
                   help="host:port of every process, ';'-separated, same order on all (multi-process)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="cuts", description="thousandcuts: SMA-crossover trading on minute bars")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    bt = sub.add_parser("backtest", help="run the flow over a bar file or a replayed topic")
    src = bt.add_mutually_exclusive_group(required=True)
    src.add_argument("--bars", help="Parquet or CSV file of minute bars")
    src.add_argument("--kafka", metavar="BOOTSTRAP", help="replay a bars topic from this broker")
    bt.add_argument("--topic", default="bars", help="topic to replay (with --kafka)")
    bt.add_argument("--from-beginning", action="store_true", default=True,
                    help="replay from the first offset (the default; a recovery dir resumes)")
    bt.add_argument("--config", help="trading configuration YAML (default config/trading.yaml)")
    bt.add_argument("--run-id", help="run id (default: derived from the file and config)")
    bt.add_argument("--clickhouse", help="chdb:///dir or http://host:8123 (default ./data/clickhouse)")
    bt.add_argument("--out", help="also write trades.csv, orders.csv, ... to this directory")
    bt.add_argument("--html", metavar="PATH", help="also write the run's tearsheet page (one HTML file)")
    bt.add_argument("--workers", type=_positive_int, default=1, help="Bytewax workers (default 1)")
    bt.add_argument("--quiet", action="store_true", help="no progress or report")
    _cluster_args(bt)
    # bars of a file held in memory; a larger file is put in event-time order on disk (tests)
    bt.add_argument("--memory-bars", type=_positive_int, default=None, help=argparse.SUPPRESS)
    _recovery_args(bt)

    run = sub.add_parser("run", help="live: tail the bars topic through the flow (simulated broker, "
                                     "or Alpaca with --alpaca)")
    run.add_argument("--kafka", metavar="BOOTSTRAP", help="broker (default KAFKA_BOOTSTRAP)")
    run.add_argument("--topic", default="bars")
    run.add_argument("--config")
    run.add_argument("--run-id")
    run.add_argument("--clickhouse")
    run.add_argument("--workers", type=_positive_int, default=1, help="workers in this process")
    _cluster_args(run)
    run.add_argument("--dead-letter-topic", default="bars.dead_letters")
    run.add_argument("--alpaca", action="store_true",
                     help="trade through Alpaca (paper account unless --live and ALPACA_PAPER=false)")
    run.add_argument("--live", action="store_true", help="with --alpaca: the live account (real money)")
    run.add_argument("--trade-topic", help="topic of the broker's trade updates (default trade_updates.RUN_ID)")
    run.add_argument("--clock-poll-s", type=positive_seconds, default=1.0,
                     help="with --alpaca: how often the relay takes the broker's time for a marker "
                          "(default 1.0)")
    run.add_argument("--grace-s", type=seconds, default=1.5,
                     help="with --alpaca: a broker time T is written as a marker this long after it was "
                          "read; minute M is applied once the marker passes M + 60 (default 1.5)")
    run.add_argument("--clock-refresh-s", type=seconds, default=15.0,
                     help="with --alpaca: read Alpaca's clock (GET /v2/clock) this often and advance it "
                          "with the local clock in between; 0 reads it every time (default 15)")
    run.add_argument("--trading-url", help=argparse.SUPPRESS)
    _recovery_args(run)

    pub = sub.add_parser("publish", help="play a bar file into a Kafka topic with event-time markers")
    pub.add_argument("--bars", required=True)
    pub.add_argument("--kafka", metavar="BOOTSTRAP", help="broker (default KAFKA_BOOTSTRAP)")
    pub.add_argument("--topic", default="bars")
    pub.add_argument("--partitions", type=_positive_int, default=1,
                     help="partitions when the topic is created (an existing topic keeps its own)")
    pub.add_argument("--speed", type=float, default=None,
                     help="X times real time (default: as fast as possible)")
    pub.add_argument("--records", choices=("bars", "bar"), default=None,
                     help="bars: several minutes of a symbol per record, replays 3-4x faster to the same "
                          "results (default without --speed); bar: one bar per record as `cuts stream` "
                          "writes (default with --speed)")

    for name, text in (("halt", "kill switch: stop new entries in the running flow"),
                       ("resume", "lift a kill-switch halt")):
        ks = sub.add_parser(name, help=text)
        ks.add_argument("--kafka", metavar="BOOTSTRAP", help="broker (default KAFKA_BOOTSTRAP)")
        ks.add_argument("--topic", default="bars")
        ks.add_argument("--why", required=True, help="the reason, recorded in ClickHouse")
        ks.add_argument("--who", help="who decided (default: the login name)")
        if name == "halt":
            ks.add_argument("--flatten", action="store_true",
                            help="also cancel pending entries and close every position at market")

    rp = sub.add_parser("report", help="performance report of a run, computed in ClickHouse")
    rp.add_argument("--run-id", help="run id (default: the latest run)")
    rp.add_argument("--clickhouse", help="chdb:///dir or http://host:8123")
    rp.add_argument("--against", metavar="RUN_ID",
                    help="compare the run (a live or paper one; default: the latest other run) with "
                         "this backtest of the same bars: slippage, missed and extra trades")
    rp.add_argument("--csv", metavar="PATH", help="with --against: also write the per-trade comparison here")
    rp.add_argument("--sweep", metavar="SWEEP_ID", help="the report of a sweep (`latest`: the most recent)")
    rp.add_argument("--html", metavar="PATH",
                    help="write the run's tearsheet page (one self-contained HTML file; with --against, "
                         "the comparison too; with --sweep, the sweep's page) instead of printing the report")

    gen = sub.add_parser("generate", help="write seeded synthetic minute bars")
    gen.add_argument("--symbols", type=_positive_int, required=True)
    gen.add_argument("--days", type=_positive_int, required=True)
    gen.add_argument("--seed", type=int, required=True)
    gen.add_argument("--start", default="2024-01-02", help="first session date (YYYY-MM-DD)")
    gen.add_argument("--out", required=True, help="output .parquet or .csv")

    live_commands.register(sub)
    reconcile_command.register(sub)
    sweep_command.register(sub)

    demo = sub.add_parser("demo", help="generate a market, backtest it, print the report and write "
                                       "DIR/report.html")
    demo.add_argument("--dir", default="data/demo", help="where the demo keeps its files")
    demo.add_argument("--symbols", type=_positive_int, default=31)
    demo.add_argument("--days", type=_positive_int, default=20)
    return p


def _user_error_inside(exc: BaseException, kinds: tuple) -> BaseException | None:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, kinds):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def run() -> None:
    """The `cuts` program: `main()`, then out without the interpreter's
    teardown. Freeing every module and chDB's engine at exit took 0.3-0.5 s
    of a 2 s backtest; the exit handlers (atexit: logging, temporary
    directories) still run, every client is closed and the outputs are
    flushed first. An exception leaves the usual way, with its traceback."""
    code = main()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else 0)


def main(argv: list[str] | None = None) -> int:
    raise_on_signals()  # SIGTERM as SIGINT: one line and 128 + signal, never a traceback
    try:
        return _main(argv)
    except StopSignal as stop:  # outside a flow (a flow's stop is RunInterrupted)
        print(f"cuts: interrupted by {signal_name(stop.signum)}", file=sys.stderr)
        return exit_code(stop.signum)
    except KeyboardInterrupt:
        print("cuts: interrupted", file=sys.stderr)
        return exit_code(signal.SIGINT)


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    from dataflows.cli import (
        commands,  # heavy imports only after the arguments are valid
    )

    user_errors = (commands.USER_ERRORS + live_commands.USER_ERRORS + reconcile_command.USER_ERRORS
                   + sweep_command.USER_ERRORS)
    handlers = {**commands.COMMANDS, **live_commands.COMMANDS, **reconcile_command.COMMANDS,
                **sweep_command.COMMANDS}
    try:
        return commands.dispatch(handlers[args.command], args)
    except RunInterrupted as stopped:  # a clean stop of a flow: its rows are stored
        print(f"cuts: {stopped.line()}", file=sys.stderr)
        return stopped.exit_code
    except user_errors as exc:
        print(f"cuts: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:
        # Bytewax wraps what a worker raised: a user error inside is still one line.
        cause = _user_error_inside(exc, user_errors)
        if cause is None:
            raise
        print(f"cuts: error: {cause}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    run()
