"""Backtests: a bar file, or a Kafka topic replayed from the beginning."""
from __future__ import annotations

import hashlib
import os
import sys
import time

from connectors.files.barfile import BarFileSource
from dataflows.runner import RunResult, RunSpec, config_hash, execute
from operators.config import TradingConfig


def default_run_id(bars_path: str, config: TradingConfig) -> str:
    """Same file and configuration -> same run id, so a rerun overwrites itself."""
    h = hashlib.sha256(config.model_dump_json().encode())
    with open(bars_path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return "bt-" + h.hexdigest()[:12]


class Progress:
    """Bars emitted so far, printed to stderr at most twice a second."""

    def __init__(self, total: int, stream=sys.stderr):
        self.total, self.done, self.stream = total, 0, stream
        self.started = self.last = time.monotonic()
        self.open_line = False  # a terminal line not ended yet

    def __call__(self, partition: int, rows: int) -> None:
        self.done += rows
        now = time.monotonic()
        tty = self.stream.isatty()
        if now - self.last >= (0.5 if tty else 2.0) or self.done >= self.total:
            self.last = now
            rate = self.done / max(now - self.started, 1e-9)
            pct = 100.0 * self.done / max(self.total, 1)
            # a live line on a terminal, whole lines in logs
            self.open_line = tty and self.done < self.total
            cr = "\r" if tty else ""
            print(f"{cr}bars {self.done:,}/{self.total:,} ({pct:5.1f}%) {rate:,.0f} bars/s",
                  end="" if self.open_line else "\n", file=self.stream, flush=True)

    def close(self) -> None:
        """End a terminal line left open (a stopped or failed run)."""
        if self.open_line:
            print(file=self.stream, flush=True)
            self.open_line = False


def run_backtest(bars_path: str, config: TradingConfig, dsn: str, run_id: str | None = None,
                 workers: int = 1, show_progress: bool = True,
                 recovery_dir: str | None = None, snapshot_s: int = 10,
                 addresses=None, process_id: int = 0, memory_rows: int | None = None) -> RunResult:
    notice = (lambda text: print(text, file=sys.stderr, flush=True)) if show_progress else None
    addresses = list(addresses or [])
    # in memory up to a constant number of bars, in event-time order on disk beyond
    limits = {"memory_rows": memory_rows} if memory_rows else {}
    source = BarFileSource.from_file(bars_path, partitions=workers * max(1, len(addresses)),
                                     notice=notice, **limits)
    file_id = default_run_id(bars_path, config)
    run_id = run_id or file_id
    source.progress = Progress(source.rows) if show_progress else None
    spec = RunSpec(config, dsn, run_id, "backtest", workers=workers, recovery_dir=recovery_dir,
                   snapshot_s=snapshot_s, source_identity={"bars_file": file_id},
                   source=os.path.abspath(bars_path), addresses=addresses, process_id=process_id)
    try:
        return execute(spec, source, source.partition_ids(), notice=notice)
    finally:
        if source.progress is not None:
            source.progress.close()


def run_replay(bootstrap: str, topic: str, config: TradingConfig, dsn: str, run_id: str | None,
               workers: int = 1, recovery_dir: str | None = None, snapshot_s: int = 10,
               show_progress: bool = True, addresses=None, process_id: int = 0,
               live: bool = False, dead_letter_topic: str | None = None) -> RunResult:
    """A topic through the flow: replay (bounded, from the beginning) or live (tail)."""
    from connectors.kafka.admin import topic_identity
    from connectors.kafka.source import KafkaBarSource

    identity = topic_identity(bootstrap, topic)
    mode = "live" if live else "replay"
    run_id = run_id or f"{'live' if live else 'rp'}-{topic}-{identity[:8]}-{config_hash(config)[:6]}"
    source = KafkaBarSource(bootstrap, topic, tail=live, dead_letter_topic=dead_letter_topic,
                            identity=identity)
    spec = RunSpec(config, dsn, run_id, mode, workers=workers, recovery_dir=recovery_dir,
                   snapshot_s=snapshot_s, addresses=list(addresses or []), process_id=process_id,
                   source_identity={"topic": topic, "topic_identity": identity},
                   source=f"topic {topic} at {bootstrap}")
    notice = (lambda text: print(text, file=sys.stderr, flush=True)) if show_progress else None
    return execute(spec, source, source.partition_ids(), show_progress=show_progress, notice=notice)
