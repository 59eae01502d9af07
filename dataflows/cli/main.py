"""`cuts`: the command line. Bad input stops with one line and exit code 2."""
from __future__ import annotations

import argparse
import atexit
import importlib
import os
import signal
import sys

from dataflows.cli.args import EXIT_USAGE, UsageError, bar_file_out_arg, out_dir_arg
from dataflows.cli.args import Parser as _Parser
from dataflows.cli.args import positive_int as _positive_int
from dataflows.cli.args import positive_seconds, seconds
from dataflows.stop import RunInterrupted, StopSignal, exit_code, raise_on_signals, signal_name


CLICKHOUSE_HELP = "chdb:///dir or http://host:8123 (default: CLICKHOUSE_DSN, else ./data/clickhouse)"
KAFKA_HELP = "Kafka bootstrap servers, host:port (default: KAFKA_BOOTSTRAP)"
CONFIG_HELP = "trading configuration YAML (default: config/trading.yaml, else the built-in defaults)"


def _recovery_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recovery-dir", metavar="DIR",
                   help="turn on Bytewax recovery with snapshots in this directory; the same command "
                        "resumes from it (default: no recovery)")
    p.add_argument("--snapshot-s", type=_positive_int, default=10,
                   help="seconds between snapshots (with --recovery-dir)")


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("thousandcuts")
    except PackageNotFoundError:  # run from a source tree
        return "unknown"


def _cluster_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-i", "--process-id", type=int, default=0,
                   help="this process's index (multi-process; process 0 holds the database)")
    p.add_argument("-a", "--addresses", default="",
                   help="host:port of every process, ';'-separated, same order on all (multi-process)")


def build_parser() -> argparse.ArgumentParser:
    from dataflows.cli import live_commands, reconcile_command, run_commands, sweep_command

    p = _Parser(prog="cuts", description="thousandcuts: SMA-crossover and panic-rebound trading on minute "
                                         "bars. Rules: docs/trading-rules.md")
    p.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text)

    bt = command("backtest", "run the flow over a bar file or a replayed topic")
    src = bt.add_mutually_exclusive_group(required=True)
    src.add_argument("--bars", metavar="PATH", help="Parquet or CSV file of minute bars")
    src.add_argument("--kafka", metavar="BOOTSTRAP", help="replay a bars topic from this broker")
    bt.add_argument("--topic", default="bars", help="topic to replay (with --kafka)")
    bt.add_argument("--from-beginning", action="store_true", default=True,
                    help="replay from the first offset (the default and only way; a recovery dir resumes "
                         "where it stopped)")
    bt.add_argument("--config", help=CONFIG_HELP)
    bt.add_argument("--run-id", help="run id (default: derived from the file or topic and the config, so "
                                     "the same backtest has the same id; a rerun is a new attempt)")
    bt.add_argument("--clickhouse", metavar="DSN", help=CLICKHOUSE_HELP)
    bt.add_argument("--out", metavar="DIR", type=out_dir_arg,
                    help="also write trades.csv, orders.csv, ... to this directory, checked before the "
                         "run (default: none)")
    bt.add_argument("--html", metavar="PATH",
                    help="also write the run's tearsheet page, one HTML file (default: none)")
    bt.add_argument("--workers", type=_positive_int, default=1, help="Bytewax workers")
    bt.add_argument("--quiet", action="store_true", help="no progress or report (default: both shown)")
    _cluster_args(bt)
    # bars of a file held in memory; a larger file is put in event-time order on disk (tests)
    bt.add_argument("--memory-bars", type=_positive_int, default=None, help=argparse.SUPPRESS)
    _recovery_args(bt)

    run = command("run", "live: tail the bars topic through the flow (simulated broker, or Alpaca with "
                         "--alpaca)")
    run.add_argument("--kafka", metavar="BOOTSTRAP", help=KAFKA_HELP)
    run.add_argument("--topic", default="bars", help="the bars topic")
    run.add_argument("--config", help=CONFIG_HELP)
    run.add_argument("--run-id", help="run id, the same across restarts (default: derived from the topic "
                                      "and the config; --alpaca needs one)")
    run.add_argument("--clickhouse", metavar="DSN", help=CLICKHOUSE_HELP)
    run.add_argument("--workers", type=_positive_int, default=1, help="workers in this process")
    _cluster_args(run)
    run.add_argument("--dead-letter-topic", default="bars.dead_letters",
                     help="undecodable records are copied here")
    run.add_argument("--alpaca", action="store_true",
                     help="trade through Alpaca: the paper account unless --live and ALPACA_PAPER=false "
                          "(default: the simulated broker)")
    run.add_argument("--live", action="store_true",
                     help="with --alpaca: the live account, real money (default: paper)")
    run.add_argument("--trade-topic", help="topic of the broker's trade updates (default: "
                                           "trade_updates.RUN_ID)")
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

    pub = command("publish", "play a bar file into a Kafka topic with event-time markers")
    pub.add_argument("--bars", metavar="PATH", required=True, help="Parquet or CSV file of minute bars")
    pub.add_argument("--kafka", metavar="BOOTSTRAP", help=KAFKA_HELP)
    pub.add_argument("--topic", default="bars", help="the topic to write")
    pub.add_argument("--partitions", type=_positive_int, default=1,
                     help="partitions when the topic is created (an existing topic keeps its own)")
    pub.add_argument("--speed", type=float, default=None,
                     help="X times real time (default: as fast as possible)")
    pub.add_argument("--records", choices=("bars", "bar"), default=None,
                     help="bars: several minutes of a symbol per record, replays 3-4x faster to the same "
                          "results; bar: one bar per record as `cuts stream` writes (default: bars, or bar "
                          "with --speed)")

    for name, text in (("halt", "kill switch: stop new entries in the running flow"),
                       ("resume", "lift a kill-switch halt")):
        ks = command(name, text)
        ks.add_argument("--kafka", metavar="BOOTSTRAP", help=KAFKA_HELP)
        ks.add_argument("--topic", default="bars", help="the bars topic the running flow reads")
        ks.add_argument("--why", required=True, help="the reason, recorded in ClickHouse")
        ks.add_argument("--who", help="who decided (default: the login name)")
        if name == "halt":
            ks.add_argument("--flatten", action="store_true",
                            help="also cancel pending entries and close every position at market "
                                 "(default: positions stay)")

    run_commands.register(sub)

    gen = command("generate", "write seeded synthetic minute bars")
    gen.add_argument("--symbols", type=_positive_int, required=True, help="how many symbols")
    gen.add_argument("--days", type=_positive_int, required=True, help="how many trading days")
    gen.add_argument("--seed", type=int, required=True, help="random seed: the same seed, the same bars")
    gen.add_argument("--start", default="2024-01-02", help="first session date (YYYY-MM-DD)")
    gen.add_argument("--out", metavar="PATH", required=True, type=bar_file_out_arg, help="output .parquet or .csv")

    live_commands.register(sub)
    reconcile_command.register(sub)
    sweep_command.register(sub)

    demo = command("demo", "generate a market, publish it to Kafka, replay it, print the report and write "
                           "DIR/report.html")
    demo.add_argument("--dir", default="data/demo", help="where the demo keeps its files")
    demo.add_argument("--symbols", type=_positive_int, default=31, help="symbols of the generated market")
    demo.add_argument("--days", type=_positive_int, default=20, help="days of the generated market")
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
    code = code if isinstance(code, int) else 0
    try:
        atexit._run_exitfuncs()
    except (Exception, KeyboardInterrupt, StopSignal):  # a handler's failure (or a late signal)
        pass  # does not change what the command did: main() already said it
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`cuts report | head`): the reader is gone
            if stream is sys.stdout and code == 0:
                code = exit_code(signal.SIGPIPE)
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    raise_on_signals()  # SIGTERM as SIGINT: one line and 128 + signal, never a traceback
    try:
        code = _main(argv)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return code
    except BrokenPipeError:
        # `cuts report | head`: the reader has what it wanted. Silence, as a
        # program killed by SIGPIPE; nothing more goes to the closed pipe.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return exit_code(signal.SIGPIPE)
    except StopSignal as stop:  # outside a flow (a flow's stop is RunInterrupted)
        print(f"cuts: interrupted by {signal_name(stop.signum)}", file=sys.stderr)
        return exit_code(stop.signum)
    except KeyboardInterrupt:
        print("cuts: interrupted", file=sys.stderr)
        return exit_code(signal.SIGINT)


def _os_error(exc: OSError) -> str:
    where = f": {exc.filename}" if exc.filename else ""
    return f"{exc.strerror or exc}{where}"


def _internal_error(exc: BaseException) -> int:
    """A bug, not an outside failure: the traceback of the error itself (not
    of Bytewax's wrapping around it), then one line saying what it is."""
    import traceback

    root, seen = exc, set()
    while id(root) not in seen and (root.__cause__ or root.__context__) is not None:
        seen.add(id(root))
        root = root.__cause__ or root.__context__
    traceback.print_exception(type(root), root, root.__traceback__, chain=False, file=sys.stderr)
    first = (str(root).strip().splitlines() or [""])[0]
    print(f"cuts: internal error: {type(root).__name__}: {first} (a bug in cuts: please report it with "
          f"the traceback above)", file=sys.stderr)
    return 1


# command -> the module of dataflows.cli that runs it (imported only for it:
# `cuts report` does not load pandas, Kafka or Bytewax)
COMMAND_MODULES = {
    "backtest": "commands", "run": "commands", "publish": "commands", "halt": "commands",
    "resume": "commands", "generate": "commands", "demo": "commands",
    "report": "run_commands", "runs": "run_commands",
    "stream": "live_commands", "backfill": "live_commands", "reconcile": "reconcile_command",
    "sweep": "sweep_command",
}


def _all_user_errors() -> tuple:
    """Every command module's one-line errors (imports them all: only on the
    way out with an error the command's own list did not name)."""
    out: tuple = (UsageError,)
    for name in sorted(set(COMMAND_MODULES.values())):
        out += importlib.import_module(f"dataflows.cli.{name}").USER_ERRORS
    return out


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # `cuts` alone: what it can do
        parser.print_help()
        return 0
    module = importlib.import_module(f"dataflows.cli.{COMMAND_MODULES[args.command]}")
    user_errors = module.USER_ERRORS + (UsageError,)
    try:
        return module.COMMANDS[args.command](args)
    except RunInterrupted as stopped:  # a clean stop of a flow: its rows are stored
        print(f"cuts: {stopped.line()}", file=sys.stderr)
        return stopped.exit_code
    except user_errors as exc:
        print(f"cuts: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        raise  # main: a closed stdout ends quietly
    except OSError as exc:  # the outside world: a file, a disk, a socket
        print(f"cuts: error: {_os_error(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:
        # Bytewax wraps what a worker raised: a user error inside is still one line.
        cause = _user_error_inside(exc, _all_user_errors() + (OSError,))
        if cause is None:
            return _internal_error(exc)
        print(f"cuts: error: {_os_error(cause) if isinstance(cause, OSError) else cause}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        if "connectors.clickhouse.client" in sys.modules:  # on the main thread (closing from a
            sys.modules["connectors.clickhouse.client"].close_clients()  # worker thread hangs)


if __name__ == "__main__":
    run()
