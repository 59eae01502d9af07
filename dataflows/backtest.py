"""Run the flow over a bar file with the simulated broker, into ClickHouse."""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass

from bytewax.testing import cluster_main, run_main

from connectors.barfile import BarFileSource, read_bar_file
from connectors.clickhouse import (
    ClickHouseSink, clear_run, ensure_schema, open_client, record_run_end, record_run_start,
)
from dataflows.flow import FlowSettings, build_flow
from operators.config import TradingConfig


@dataclass
class BacktestResult:
    run_id: str
    bars_read: int
    seconds: float


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

    def __call__(self, partition: int, rows: int) -> None:
        self.done += rows
        now = time.monotonic()
        if now - self.last >= 0.5 or self.done >= self.total:
            self.last = now
            rate = self.done / max(now - self.started, 1e-9)
            pct = 100.0 * self.done / max(self.total, 1)
            print(f"\rbars {self.done:,}/{self.total:,} ({pct:5.1f}%) {rate:,.0f} bars/s",
                  end="" if self.done < self.total else "\n", file=self.stream, flush=True)


def run_backtest(bars_path: str, config: TradingConfig, dsn: str, run_id: str | None = None,
                 workers: int = 1, show_progress: bool = True) -> BacktestResult:
    cols = read_bar_file(bars_path)
    run_id = run_id or default_run_id(bars_path, config)
    client = open_client(dsn)
    ensure_schema(client)
    clear_run(client, run_id)  # a fresh backtest replaces an older one of the same id
    record_run_start(client, run_id, config.model_dump_json(), "backtest")
    progress = Progress(len(cols)) if show_progress else None
    source = BarFileSource(cols, partitions=workers, progress=progress)
    flow = build_flow(FlowSettings(config, run_id), source, ClickHouseSink(dsn, run_id),
                      source.partition_ids())
    started = time.monotonic()
    try:
        if workers <= 1:
            run_main(flow)
        else:
            cluster_main(flow, [], 0, worker_count_per_proc=workers)
    except BaseException:
        record_run_end(client, run_id, len(cols), "failed")
        raise
    record_run_end(client, run_id, len(cols), "finished")
    return BacktestResult(run_id, len(cols), time.monotonic() - started)


def config_json(config: TradingConfig) -> str:
    return json.dumps(config.model_dump(mode="json"), sort_keys=True)


def ensure_parent(path: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
