"""What the core `cuts` subcommands do; `dataflows.cli.main` parses the arguments."""
from __future__ import annotations

import contextlib
import os
import sys
import time

from connectors.alpaca.errors import CalendarUnavailable, TradingStopped, TradingUsageError
from connectors.clickhouse import analytics
from connectors.clickhouse.client import (
    ClickHouseDsnError,
    ClickHouseUnavailable,
    open_client,
)
from connectors.clickhouse.runs import RunIdError
from connectors.config import clickhouse_dsn, kafka_bootstrap, load_trading_config
from connectors.files.barfile import BarFileError, read_bar_file
from connectors.kafka.errors import KafkaConnectorError
from dataflows.backtest import run_backtest, run_replay
from dataflows.cli.args import UsageError
from dataflows.cli.html_output import HtmlPathError, check_html_path
from dataflows.recovery import RecoveryMismatch
from operators.config import ConfigError


# Errors a user fixes by changing the command, file or setup: one line, exit 2.
# dataflows.trading (alpaca-py's trading client) is imported by `cuts run --alpaca` only
USER_ERRORS = (ConfigError, BarFileError, ClickHouseUnavailable, ClickHouseDsnError, UsageError,
               KafkaConnectorError, RecoveryMismatch, TradingUsageError, CalendarUnavailable, RunIdError,
               TradingStopped, HtmlPathError)


def _finish(client, run, out: str | None, quiet: bool, html: str | None = None) -> None:
    """After a finished run: its CSV files (`--out`), its report and its page
    (`--html`), all of exactly that attempt (`run`: the RunAttempt the runner
    returned)."""
    from connectors.clickhouse.report import build_report, format_text
    from dataflows.cli.run_commands import write_html

    if out:
        written = analytics.export_csv(client, run, out)
        if not quiet:
            print(f"wrote {', '.join(f'{k} ({v} rows)' for k, v in written.items())} to {out}",
                  file=sys.stderr)
    if not quiet:
        print(format_text(build_report(client, run)))
    if html:
        write_html(client, run, html)


def _config(path: str | None):
    """The trading configuration, with a warning for each strategy that can never enter."""
    from operators.config_checks import never_entering

    config = load_trading_config(path)
    for warning in never_entering(config):
        print(f"cuts: warning: {warning}", file=sys.stderr)
    return config


def cluster_addresses(args) -> list[str]:
    """-a/--addresses as a list; -i/--process-id must index it."""
    addresses = [a for a in args.addresses.split(";") if a]
    if addresses and not 0 <= args.process_id < len(addresses):
        raise UsageError(f"--process-id {args.process_id} is not an index of --addresses")
    if not addresses and args.process_id != 0:
        raise UsageError("--process-id needs --addresses (every process's host:port)")
    return addresses


def cmd_backtest(args) -> int:
    addresses = cluster_addresses(args)
    config = _config(args.config)
    dsn = clickhouse_dsn(args.clickhouse)
    if args.html:
        check_html_path(args.html)  # before the run, not after it
    if args.process_id == 0:  # only process 0 opens the database (docs/scaling.md)
        open_client(dsn)  # before any work: a bad DSN or an unreachable store is one line now
    if args.bars:
        result = run_backtest(args.bars, config, dsn, run_id=args.run_id, workers=args.workers,
                              show_progress=not args.quiet, recovery_dir=args.recovery_dir,
                              snapshot_s=args.snapshot_s, addresses=addresses, process_id=args.process_id,
                              memory_rows=args.memory_bars)
    else:
        result = run_replay(args.kafka, args.topic, config, dsn, args.run_id, workers=args.workers,
                            recovery_dir=args.recovery_dir, snapshot_s=args.snapshot_s,
                            show_progress=not args.quiet, addresses=addresses, process_id=args.process_id)
    if args.process_id != 0:
        print(f"run {result.run_id}: process {args.process_id} done; process 0 holds the results")
        return 0
    rate = result.bars / max(result.seconds, 1e-9)
    resumed = " (resumed from the recovery directory)" if result.resumed else ""
    print(f"run {result.run_id}: {result.bars:,} bars in {result.seconds:.1f} s "
          f"({rate:,.0f} bars/s){resumed}")
    _say_dead_letters(result, args.out)
    _finish(open_client(dsn), result.attempt or result.run_id, args.out, args.quiet, args.html)
    return 0


def _say_dead_letters(result, out: str | None) -> None:
    line = analytics.dead_letter_line(result.dead_letters)
    if line:
        where = "dead_letters.csv and " if out else ""
        print(f"{line}: see {where}`cuts report`")


def cmd_run(args) -> int:
    bootstrap = kafka_bootstrap(args.kafka)
    if bootstrap is None:
        raise UsageError("no broker: pass --kafka BOOTSTRAP or set KAFKA_BOOTSTRAP")
    addresses = cluster_addresses(args)
    config = _config(args.config)
    dsn = clickhouse_dsn(args.clickhouse)
    if args.live and not args.alpaca:
        raise UsageError("--live trades through Alpaca: add --alpaca")
    if args.process_id == 0:  # only process 0 opens the database (docs/scaling.md)
        open_client(dsn)  # before any work: a bad DSN or an unreachable store is one line now
    if args.alpaca:
        if addresses:
            raise UsageError("--alpaca runs in one process (the broker sink and relay are one each)")
        from dataflows.trading import run_trading

        result = run_trading(args, config, dsn, bootstrap)
        print(f"run {result.run_id} stopped after {result.bars:,} bars")
        return 0
    print(f"live run on {bootstrap} topic {args.topic}: simulated broker (paper)", file=sys.stderr)
    result = run_replay(bootstrap, args.topic, config, dsn, args.run_id, workers=args.workers,
                        recovery_dir=args.recovery_dir, snapshot_s=args.snapshot_s,
                        show_progress=True, addresses=addresses, process_id=args.process_id,
                        live=True, dead_letter_topic=args.dead_letter_topic)
    if args.process_id != 0:
        print(f"run {result.run_id}: process {args.process_id} stopped; process 0 holds the results")
    else:
        print(f"run {result.run_id} stopped after {result.bars:,} bars")
    return 0


def cmd_publish(args) -> int:
    bootstrap = kafka_bootstrap(args.kafka)
    if bootstrap is None:
        raise UsageError("no broker: pass --kafka BOOTSTRAP or set KAFKA_BOOTSTRAP")
    if args.speed is not None and args.speed <= 0:
        raise UsageError(f"--speed must be above 0: {args.speed}")
    records = args.records or ("bar" if args.speed is not None else "bars")
    publish_file(bootstrap, args.bars, args.topic, args.partitions, args.speed, records)
    return 0


def publish_file(bootstrap: str, bars_path: str, topic: str, partitions: int,
                 speed: float | None = None, records: str = "bars") -> None:
    """A bar file into `topic` (created with `partitions` when missing) with
    event-time markers, as fast as possible or at `speed` times real time."""
    from connectors.kafka.admin import ensure_topic
    from connectors.kafka.producer import BarProducer
    from connectors.kafka.publish import publish_columns

    cols = read_bar_file(bars_path)
    existing = ensure_topic(bootstrap, topic, partitions)
    if existing != partitions:
        print(f"topic {topic} exists with {existing} partitions; publishing into those",
              file=sys.stderr)
    started = time.monotonic()
    pace = _pacer(started, speed) if speed is not None else None
    with BarProducer(bootstrap, topic) as producer:
        bars, markers = publish_columns(producer, cols, progress=_publish_progress(started), pace=pace,
                                        records=records)
    shape = "one bar per record" if records == "bar" else f"{producer.records_sent:,} bars records"
    print(f"published {bars:,} bars ({shape}) and {markers:,} event-time markers to {topic} "
          f"({existing} partitions) in {time.monotonic() - started:.1f} s")


def _pacer(started: float, speed: float):
    """Wait until a step is due: the marker for watermark W goes out when
    minute W - 60 ends, at `speed` times real time from the first marker."""
    first: list = []

    def pace(step) -> None:
        if not first:
            first.append(step.watermark)
        time.sleep(max(0.0, started + (step.watermark - first[0]) / speed - time.monotonic()))
    return pace


def _publish_progress(started: float):
    state = {"last": 0.0}

    def show(done: int, total: int) -> None:
        now = time.monotonic()
        tty = sys.stderr.isatty()
        if now - state["last"] >= (0.5 if tty else 2.0) or done >= total:
            state["last"] = now
            rate = done / max(now - started, 1e-9)
            end = "" if tty and done < total else "\n"
            cr = "\r" if tty else ""
            print(f"{cr}published {done:,}/{total:,} bars ({rate:,.0f}/s)", end=end,
                  file=sys.stderr, flush=True)
    return show


def cmd_control(args) -> int:
    """`cuts halt` / `cuts resume`: a control record in every partition of the
    bars topic; the flow obeys it from the partition's current minute on."""
    import uuid

    from connectors.config import operator_name
    from connectors.kafka.admin import topic_partitions
    from connectors.kafka.codec import ControlRecord
    from connectors.kafka.producer import BarProducer

    bootstrap = kafka_bootstrap(args.kafka)
    if bootstrap is None:
        raise UsageError("no broker: pass --kafka BOOTSTRAP or set KAFKA_BOOTSTRAP")
    topic_partitions(bootstrap, args.topic)  # TopicMissing: one line, exit 2
    rec = ControlRecord(f"{args.command}-{uuid.uuid4().hex[:12]}", args.command,
                        bool(getattr(args, "flatten", False)), operator_name(args.who), args.why)
    with BarProducer(bootstrap, args.topic) as producer:
        producer.send_control(rec)
        producer.flush()
    flat = " with flatten" if rec.flatten else ""
    print(f"{rec.action}{flat} sent to every partition of {args.topic} as {rec.control_id} "
          f"(by {rec.who}: {rec.why})")
    return 0


def cmd_generate(args) -> int:
    from connectors.files.synthetic import generate_bars, write_bars

    df = generate_bars(args.symbols, args.days, args.seed, start=args.start)
    write_bars(df, args.out)
    print(f"wrote {len(df):,} bars ({args.symbols} symbols x {args.days} days) to {args.out}")
    return 0


def cmd_demo(args) -> int:
    """Generated market -> the real producer code -> Kafka -> the flow -> ClickHouse -> report."""
    from connectors.files.synthetic import generate_bars, write_bars
    from connectors.kafka.embedded import EmbeddedKafka

    os.makedirs(args.dir, exist_ok=True)
    bars = os.path.join(args.dir, "bars.parquet")
    if not os.path.exists(bars):
        print(f"generating {args.symbols} symbols x {args.days} days of minute bars -> {bars}")
        write_bars(generate_bars(args.symbols, args.days, seed=7), bars)
    dsn = "chdb://" + os.path.abspath(os.path.join(args.dir, "clickhouse"))
    bootstrap = kafka_bootstrap(None)
    with contextlib.ExitStack() as stack:
        if bootstrap is None:
            broker = stack.enter_context(EmbeddedKafka(log_path=os.path.join(args.dir, "tansu.log")))
            bootstrap = broker.bootstrap
            print(f"embedded Kafka (Tansu) on {bootstrap}")
        topic = f"demo-bars-{int(time.time())}"
        publish_file(bootstrap, bars, topic, partitions=3)
        result = run_replay(bootstrap, topic, load_trading_config(None), dsn, "demo", workers=1)
    rate = result.bars / max(result.seconds, 1e-9)
    print(f"run {result.run_id}: {result.bars:,} bars from Kafka in {result.seconds:.1f} s "
          f"({rate:,.0f} bars/s)")
    _say_dead_letters(result, os.path.join(args.dir, "out"))
    _finish(open_client(dsn), result.attempt or result.run_id, os.path.join(args.dir, "out"), False)
    print(f"\nCSV files in {os.path.join(args.dir, 'out')}; ClickHouse data in {dsn}")
    from dataflows.cli.run_commands import write_html
    write_html(open_client(dsn), result.attempt or result.run_id, os.path.join(args.dir, "report.html"))
    return 0


COMMANDS = {
    "backtest": cmd_backtest,
    "run": cmd_run,
    "publish": cmd_publish,
    "halt": cmd_control,
    "resume": cmd_control,
    "generate": cmd_generate,
    "demo": cmd_demo,
}
