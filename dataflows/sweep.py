"""`cuts sweep`: many configurations over the same bars in one pass of the one
flow (spec section 8, docs/sweeps.md).

The grid is expanded and every configuration validated before any work.
The flow is `build_flow` with the sources of a backtest or a replay: the
symbol stage computes the union of the configurations' strategies once per
symbol, the portfolio stage evaluates the configurations in shards spread
over the workers (and processes). When the flow ends, the process that holds
the database computes the per-configuration metrics in SQL and the
walk-forward folds, and closes the sweep's row.
"""
from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass

from connectors.clickhouse import sweeps as records
from connectors.clickhouse.client import open_client
from dataflows.backtest import Progress
from dataflows.flow import SweepSettings
from dataflows.runner import RunSpec, config_hash, execute
from dataflows.stop import RunInterrupted
from operators.config import TradingConfig
from operators.grid import DEFAULT_MAX_CONFIGS, Grid, expand
from operators.walk_forward import walk_forward


@dataclass
class SweepSource:
    """A bar file, or a topic replayed from the beginning."""

    bars_path: str | None = None
    bootstrap: str | None = None
    topic: str | None = None

    def describe(self) -> str:
        return self.bars_path if self.bars_path else f"kafka {self.bootstrap} topic {self.topic}"


@dataclass
class SweepResult:
    sweep_id: str
    configs: int
    bars: int
    seconds: float
    resumed: bool
    owner: bool  # this process holds the database (and the results)


def default_sweep_id(identity: str, grid: Grid, base: TradingConfig) -> str:
    """Same bars, grid and base configuration -> same id: a rerun replaces itself."""
    h = hashlib.sha256(identity.encode())
    h.update(grid.to_json().encode())
    h.update(base.model_dump_json().encode())
    return "sw-" + h.hexdigest()[:12]


def _file_identity(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return "file:" + h.hexdigest()


def run_sweep(source: SweepSource, grid: Grid, base: TradingConfig, dsn: str, *,
              sweep_id: str | None = None, workers: int = 1, addresses=(), process_id: int = 0,
              max_configs: int = DEFAULT_MAX_CONFIGS, detail: bool = False, grid_name: str = "grid",
              recovery_dir: str | None = None, snapshot_s: int = 10,
              show_progress: bool = True) -> SweepResult:
    configs = expand(grid, base, max_configs, where=grid_name)  # a bad grid stops here
    addresses = list(addresses or [])
    worker_count = workers * max(1, len(addresses))
    shards = min(len(configs), worker_count)
    notice = (lambda text: print(text, file=sys.stderr, flush=True)) if show_progress else None
    if source.bars_path:
        from connectors.files.barfile import BarFileSource

        # in memory up to a constant number of bars, in event-time order on disk beyond
        flow_source = BarFileSource.from_file(source.bars_path, partitions=worker_count, notice=notice)
        identity = _file_identity(source.bars_path)
        flow_source.progress = Progress(flow_source.rows) if show_progress else None
    else:
        from connectors.kafka.admin import topic_identity
        from connectors.kafka.source import KafkaBarSource

        identity = "topic:" + topic_identity(source.bootstrap, source.topic)
        flow_source = KafkaBarSource(source.bootstrap, source.topic, tail=False,
                                     identity=identity[len("topic:"):])
    sweep_id = sweep_id or default_sweep_id(identity, grid, base)
    axes = [a.path for a in grid.axes]
    row = {"grid_json": grid.to_json(), "base_config_json": base.model_dump_json(),
           "source": source.describe(), "configs": len(configs), "shards": shards,
           "objective": grid.objective(), "detail": detail}

    started: list = []

    def on_start(client, resuming: bool) -> None:
        started.append(True)
        if not resuming:
            records.clear_sweep(client, sweep_id)
        records.record_sweep(client, sweep_id, status="running", fresh=not resuming, **row)
        records.record_configs(client, sweep_id, [(c.config_id, dict(zip(axes, c.values)), c.config)
                                                  for c in configs])

    where = (os.path.abspath(source.bars_path) if source.bars_path
             else f"topic {source.topic} at {source.bootstrap}")  # as a backtest's, for `cuts runs`
    spec = RunSpec(base, dsn, sweep_id, "sweep", workers=workers, recovery_dir=recovery_dir,
                   snapshot_s=snapshot_s, addresses=addresses, process_id=process_id, source=where,
                   source_identity={"source": identity, "grid": config_hash_of(grid),
                                    "detail": detail, "base": config_hash(base)},
                   sweep=SweepSettings(tuple((c.config_id, c.config) for c in configs), shards,
                                       worker_count, detail),
                   on_start=on_start)
    # a Kafka source shows stored bars; a file source its own progress
    try:
        result = execute(spec, flow_source, flow_source.partition_ids(),
                         show_progress=show_progress and not source.bars_path, notice=notice)
    except RunInterrupted:  # a clean stop (SIGINT / SIGTERM): rerun, or resume with --recovery-dir
        if spec.owner and started:
            records.record_sweep(open_client(dsn), sweep_id, status="interrupted", **row)
        raise
    except BaseException:
        if spec.owner and started:
            records.record_sweep(open_client(dsn), sweep_id, status="failed", **row)
        raise
    if not spec.owner:
        return SweepResult(sweep_id, len(configs), 0, result.seconds, result.resumed, False)
    client = open_client(dsn)
    records.compute_metrics(client, sweep_id)
    if grid.walk_forward is not None:
        records.record_walk_forward(client, sweep_id,
                                    walk_forward(records.series(client, sweep_id), grid.walk_forward))
    records.record_sweep(client, sweep_id, status="finished", bar_count=result.bars, **row)
    return SweepResult(sweep_id, len(configs), result.bars, result.seconds, result.resumed, True)


def config_hash_of(grid: Grid) -> str:
    return hashlib.sha256(grid.to_json().encode()).hexdigest()[:12]
