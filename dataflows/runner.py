"""Running the one flow: sources and sinks differ by mode, nothing else.

Modes: `backtest` (a bar file), `replay` (a Kafka topic from the beginning,
bounded) and `live` (tailing a topic). ClickHouse receives everything; with
recovery on, sink writes are durable before each snapshot.
"""
from __future__ import annotations

import contextlib
import gc
import hashlib
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Callable

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.testing import cluster_main, run_main

from connectors.clickhouse import analytics
from connectors.clickhouse.client import ensure_schema, open_client, shared_writer
from connectors.clickhouse.runs import RUNNING, RunAttempt, begin_attempt, current_attempt, end_attempt
from connectors.clickhouse.sink import ClickHouseSink
from dataflows import recovery as rec
from dataflows.flow import FlowSettings, SweepSettings, build_flow
from dataflows.stop import RunInterrupted, StopRequest, signal_name, stop_on_signals
from operators.config import TradingConfig
from operators.portfolio_step import portfolio_step

log = logging.getLogger(__name__)

@dataclass
class RunSpec:
    config: TradingConfig
    dsn: str
    run_id: str
    mode: str  # backtest | replay | live
    workers: int = 1
    recovery_dir: str | None = None
    snapshot_s: int = 10
    addresses: list = field(default_factory=list)  # multi-process: every process's host:port
    process_id: int = 0
    source_identity: dict = field(default_factory=dict)  # what a recovery dir is bound to
    source: str = ""  # where the bars come from, for people (`cuts runs`)
    sweep: SweepSettings | None = None  # several configurations (cuts sweep)
    # the owner's bookkeeping once the run's attempt is recorded, before the flow: (client, resuming)
    on_start: Callable | None = None

    @property
    def owner(self) -> bool:
        """This process holds the database: every ClickHouse write and the run
        bookkeeping happen here (the other processes never open it)."""
        return self.process_id == 0


@dataclass
class RunResult:
    run_id: str
    bars: int
    seconds: float
    resumed: bool
    attempt: RunAttempt | None = None  # the finished attempt (what its reports read)
    dead_letters: dict = field(default_factory=dict)  # bars set aside, by reason


def config_hash(config: TradingConfig) -> str:
    return hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:12]


class BarsWrittenProgress:
    """For sources without a known total: bars stored so far, every second."""

    def __init__(self, writer, stream=sys.stderr, count=None):
        self.writer, self.stream = writer, stream
        self.count = count or (lambda w: w.written.get("bars", 0))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="progress", daemon=True)

    def _run(self) -> None:
        started = time.monotonic()
        while not self.stop.wait(1.0):
            n = self.count(self.writer)
            rate = n / max(time.monotonic() - started, 1e-9)
            tty = self.stream.isatty()  # a live line on a terminal, one line a second in logs
            cr = "\r" if tty else ""
            print(f"{cr}bars stored {n:,} ({rate:,.0f} bars/s)", end="" if tty else "\n",
                  file=self.stream, flush=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        if self.stream.isatty():
            print("", file=self.stream)


class _StoppablePartition(StatefulSourcePartition):
    def __init__(self, inner, stop: StopRequest):
        self.inner, self.stop = inner, stop

    def next_batch(self):
        if self.stop.requested:
            self.stop.cut_short = True
            raise StopIteration()
        return self.inner.next_batch()

    def next_awake(self):
        return None if self.stop.requested else self.inner.next_awake()

    def snapshot(self):
        return self.inner.snapshot()

    def close(self) -> None:
        self.inner.close()


class StoppableSource(FixedPartitionedSource):
    """Wraps a source: each partition ends (EOF) at its next batch once
    `stop` is requested; otherwise it is the wrapped source unchanged."""

    def __init__(self, inner: FixedPartitionedSource, stop: StopRequest):
        if not isinstance(inner, FixedPartitionedSource):
            raise TypeError(f"StoppableSource wraps a FixedPartitionedSource, not {type(inner).__name__}")
        self.inner, self.stop = inner, stop

    def list_parts(self):
        return self.inner.list_parts()

    def build_part(self, step_id, for_part, resume_state):
        return _StoppablePartition(self.inner.build_part(step_id, for_part, resume_state), self.stop)


@dataclass
class Trading:
    """Paper / live trading: the broker's trade updates in, orders out."""

    trade_source: object  # BrokerEvent / Watermark items of the trade_updates topic
    trade_partitions: list
    broker_sink: object  # PortfolioOutputs -> the broker
    sessions: dict = field(default_factory=dict)  # market sessions from the broker's calendar
    blocked: frozenset = frozenset()  # unreconciled symbols: no orders


def _run_each_kernel_entry() -> None:
    """Each entry point of the compiled step (and a sweep's day ledger) once, on two bars."""
    from operators.compiled_portfolio import BarBatch, CompiledPortfolio, new_outputs
    from operators.ordering import Control

    book = CompiledPortfolio.new(TradingConfig())
    code = book.code("WARM")
    batch = BarBatch.build([code, code], [0, 60], [10.0, 10.0], [10.0, 10.0], [10.0, 10.0],
                           [10.0, 10.0], [0], [0], [False], [10.0])
    outs = new_outputs(1)
    book.apply_batch(batch, 0, len(batch), outs)
    book.apply_control(Control(0, 0, "warm", "halt", True, 120, "", ""), outs)
    book.close_minute(outs)
    book.equity()
    from operators.day_ledger import DayLedgers  # a sweep's daily rows

    ledgers = DayLedgers(["warm"], [1.0])
    ledgers.fold([0], [1], [1.0], [0], [0.0])
    ledgers.finish()


# Loading the cached step takes ~0.5 s, over 1.5 s on a busy machine;
# compiling it takes 6-12 s. The notice needs both an invalid cache and a
# wait longer than this.
COMPILE_NOTICE_S = 3.0


def _portfolio_step_cached() -> bool:
    """Whether the step is built ahead of time for this source, or numba's
    cache holds every kernel entry (its index is stamped with the source
    file's time). Loading a cache can take over a second on a busy machine:
    that must not read as compiling."""
    if portfolio_step().ahead_of_time:
        return True
    try:
        from numba.core.registry import CPUDispatcher

        import operators.portfolio_kernel as kernel

        entries = [f for f in vars(kernel).values() if isinstance(f, CPUDispatcher)]
        # _load_index is numba's own check (empty when missing or stale); any
        # surprise there counts as "not cached", which only shows the notice.
        return bool(entries) and all(f._cache._cache_file._load_index() for f in entries)
    except Exception:
        return False


def warm_portfolio_step(notice=None) -> None:
    """Load the compiled portfolio step before the flow starts; the first
    run in a fresh checkout compiles it (seconds), and says so via `notice`
    (a load from numba's cache says nothing, however long it takes)."""
    timer = None
    if notice is not None and _portfolio_step_cached():
        notice = None
    if notice is not None:
        timer = threading.Timer(COMPILE_NOTICE_S, notice, ("compiling the portfolio step (once per checkout, "
                                              "cached in operators/__pycache__) ...",))
        timer.daemon = True
        timer.start()
    started = time.monotonic()
    try:
        _run_each_kernel_entry()
    finally:
        if timer is not None:
            timer.cancel()
    seconds = time.monotonic() - started
    if notice is not None and seconds > COMPILE_NOTICE_S:
        notice(f"compiled the portfolio step in {seconds:.1f} s")


def execute(spec: RunSpec, source, partitions, show_progress: bool = False,
            trading: Trading | None = None, notice=None) -> RunResult:
    """Run the flow over `source` into ClickHouse; returns when the source ends.
    `notice(text)`: one-off lines for the user (None: quiet).

    SIGINT / SIGTERM stop the run cleanly (`dataflows.stop`): the sources
    end, every row is written, the status says so and `RunInterrupted` is
    raised; a recovery directory resumes from where it stopped."""
    stop = StopRequest()
    with stop_on_signals(stop):
        prefetch = getattr(source, "prefetch", None)  # Kafka: consumers fetch while the rest is set up
        try:
            # one process, from the beginning (a resume starts at its stored offsets)
            if prefetch is not None and not spec.addresses and not rec.has_state(spec.recovery_dir):
                prefetch()
            if trading is None:  # the simulated broker: the compiled portfolio step
                warm_portfolio_step(notice)
            return _execute(spec, source, partitions, show_progress, trading, stop)
        finally:
            close = getattr(source, "close_prefetched", None)
            if close is not None:
                close()


def _execute(spec: RunSpec, source, partitions, show_progress: bool, trading: Trading | None,
             stop: StopRequest) -> RunResult:
    identity = {"run_id": spec.run_id, "config": config_hash(spec.config), **spec.source_identity}
    if not spec.owner:  # it never opens the database: process 0 writes and records everything
        return _run_attempt(spec, RunAttempt(spec.run_id, 0, spec.run_id, spec.mode, RUNNING), None,
                            source, partitions, show_progress, trading, stop, identity)
    client = open_client(spec.dsn)
    ensure_schema(client)
    resume = rec.check(spec.recovery_dir, identity) if spec.recovery_dir else None
    # A fresh bounded run is a new attempt, under its own data id: the run's
    # previous complete results stay current until it finishes (runs.py).
    attempt = begin_attempt(client, spec.run_id, spec.mode, spec.config.model_dump_json(), spec.source,
                            resume=resume, resuming=rec.has_state(spec.recovery_dir))
    try:
        return _run_attempt(spec, attempt, client, source, partitions, show_progress, trading, stop,
                            identity)
    except RunInterrupted:
        raise
    except BaseException as exc:
        _record_failure(client, attempt, exc)
        raise


def root_cause(exc: BaseException) -> BaseException:
    """The error underneath Bytewax's wrapping (`error calling next_batch ...`)."""
    seen = set()
    while id(exc) not in seen and (exc.__cause__ or exc.__context__) is not None:
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return exc


def _record_failure(client, attempt: RunAttempt, exc: BaseException) -> None:
    exc = root_cause(exc)
    first = (str(exc).strip().splitlines() or [""])[0]
    try:
        bars = analytics.stored_bars(client, attempt)
    except Exception:  # ClickHouse may be what failed
        bars = 0
    try:
        end_attempt(client, attempt, "failed", bars, f"{type(exc).__name__}: {first}"[:500])
    except Exception:  # the failure itself is what the user needs to see
        log.warning("run %s: could not record its failure in ClickHouse", attempt.run_id, exc_info=True)


def _run_attempt(spec: RunSpec, attempt: RunAttempt, client, source, partitions, show_progress: bool,
                 trading: Trading | None, stop: StopRequest, identity: dict) -> RunResult:
    owner = client is not None
    if owner:
        shared_writer(spec.dsn, attempt.data_id, schema_ready=True)  # the sink's, without a second ensure_schema
    recovery = None
    if spec.recovery_dir:
        total_workers = spec.workers * max(1, len(spec.addresses))
        recovery = rec.prepare(spec.recovery_dir, identity, total_workers,
                               attempt=attempt.attempt if owner else None)
    resuming = recovery is not None and recovery.resuming
    if owner and spec.on_start is not None:
        spec.on_start(client, resuming)
    durable = recovery is not None or spec.mode == "live"
    sink = ClickHouseSink(spec.dsn, attempt.data_id, flush_each_batch=durable, owner=owner)
    settings = FlowSettings(spec.config, spec.run_id, broker_fills=trading is not None,
                            sessions=trading.sessions if trading is not None else None,
                            blocked=trading.blocked if trading is not None else frozenset(),
                            sweep=spec.sweep, stop=stop)
    source = StoppableSource(source, stop)
    if trading is None:
        flow = build_flow(settings, source, sink, partitions)
    else:
        flow = build_flow(settings, source, sink, partitions,
                          trade_source=StoppableSource(trading.trade_source, stop),
                          trade_partitions=trading.trade_partitions, broker_sink=trading.broker_sink)
    kwargs = {}
    if recovery is not None:
        kwargs = {"epoch_interval": timedelta(seconds=spec.snapshot_s),
                  "recovery_config": recovery.config}
    # Everything built so far (modules, clients, the bar file's columns)
    # lives as long as the run: out of the cyclic GC's sight, the full
    # collections during the flow scan only what the flow makes (~8 % of a
    # backtest's time, bench/README.md). Refcounting still frees them.
    gc.freeze()
    started = time.monotonic()
    try:
        with contextlib.ExitStack() as stack:
            if show_progress and owner:
                count = (lambda w: w.shard_bars.get(0, 0)) if spec.sweep else None
                stack.enter_context(BarsWrittenProgress(shared_writer(spec.dsn, attempt.data_id), count=count))
            if spec.workers <= 1 and not spec.addresses:
                run_main(flow, **kwargs)
            else:
                cluster_main(flow, spec.addresses, spec.process_id,
                             worker_count_per_proc=spec.workers, **kwargs)
    finally:
        gc.unfreeze()  # a process that goes on (tests, the CLI's report) collects as usual
    seconds = time.monotonic() - started
    status = "stopped" if spec.mode == "live" else "interrupted"
    if not owner:  # process 0 holds the rows and counts them
        if stop.cut_short:
            raise RunInterrupted(spec.run_id, stop.signum, status, 0, spec.recovery_dir)
        return RunResult(spec.run_id, 0, seconds, resuming)
    if spec.sweep is not None:  # a sweep stores no bars: the bars its shard 0 applied
        bars = shared_writer(spec.dsn, attempt.data_id).shard_bars.get(0, 0)
    elif not resuming and recovery is None and not spec.addresses and spec.mode != "live":
        # a fresh attempt of one process (its data id cleared at its start) wrote no row twice
        bars = shared_writer(spec.dsn, attempt.data_id).written.get("bars", 0)
    else:  # replayed rows are stored twice until merged: count them once
        bars = analytics.stored_bars(client, attempt)
    dead = analytics.dead_letters_by_reason(client, attempt)
    if stop.cut_short:
        end_attempt(client, attempt, status, bars, f"on {signal_name(stop.signum)}")
        current = current_attempt(client, spec.run_id)
        previous = current.attempt if current is not None and current.complete else None
        raise RunInterrupted(spec.run_id, stop.signum, status, bars, spec.recovery_dir, previous,
                             sum(dead.values()))
    ended = end_attempt(client, attempt, "finished", bars)
    return RunResult(spec.run_id, bars, seconds, resuming, ended, dead)
