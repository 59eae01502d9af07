"""The ClickHouse sink of the dataflow (I/O): SymbolOutput / PortfolioOutput /
SweepOutput items routed to their tables through the process's shared writer
(`connectors.clickhouse.client.shared_writer`).

One partition, listed only by the process that holds the database (process
0): Bytewax routes every item to the worker that owns its partition, across
processes, so in a cluster every ClickHouse write happens in that one
process. An embedded chDB directory (one process per directory) then serves
several processes, and a server DSN works the same way (docs/scaling.md)."""
from __future__ import annotations

import logging
from typing import Iterable

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from connectors.clickhouse.client import ClickHouseWriter, shared_writer
from connectors.clickhouse.schema import bar_block_columns
from connectors.clickhouse.sweep_schema import config_event_columns, day_columns
from operators.types import PortfolioOutput, SweepOutput, SymbolOutput

log = logging.getLogger(__name__)


def write_output(writer: ClickHouseWriter, item) -> None:
    """Route one SymbolOutput / PortfolioOutput to its tables."""
    if isinstance(item, SymbolOutput):
        writer.add("bars", item.bars)
        for block in item.blocks:
            writer.add_columns("bars", bar_block_columns(writer.run_id, block))
        if item.signals:
            writer.add("signals", [s for sigs in item.signals.values() for s in sigs])
        writer.add("signals", item.filtered)
        writer.add("dead_letters", item.dead_letters)
    elif isinstance(item, PortfolioOutput):
        writer.add("orders", item.orders)
        writer.add("fills", item.fills)
        writer.add("trades", item.trades)
        writer.add("rejections", item.rejections)
        writer.add("equity", item.equity)
        writer.add("dead_letters", item.dead_letters)
        writer.add("controls", item.controls)
    elif isinstance(item, SweepOutput):
        sweep_id = writer.run_id
        for ev in item.configs:
            for table, events in (("sweep_trades", ev.trades), ("sweep_orders", ev.orders),
                                  ("sweep_fills", ev.fills), ("sweep_rejections", ev.rejections)):
                if events:
                    writer.add_columns(table, config_event_columns(table, sweep_id, ev.config_id, events))
        if item.days:
            writer.add_columns("sweep_daily", day_columns(sweep_id, item.days))
        bars = writer.shard_bars
        bars[item.shard] = max(bars.get(item.shard, 0), item.bars_applied)
    else:
        raise TypeError(f"ClickHouseSink cannot write {type(item).__name__}")


class _SinkPartition(StatefulSinkPartition):
    def __init__(self, writer: ClickHouseWriter, flush_each_batch: bool):
        self.writer = writer
        self.flush_each_batch = flush_each_batch
        self.failed = False

    def write_batch(self, items: Iterable) -> None:
        try:
            for item in items:
                write_output(self.writer, item)
            if self.flush_each_batch:
                # Durable before Bytewax can commit this epoch's snapshot: after a
                # crash, everything older than the snapshot is already stored.
                self.writer.flush()
        except BaseException:
            self.failed = True
            raise

    def snapshot(self) -> None:
        return None  # nothing to resume: with recovery every batch is flushed (flush_each_batch)

    def close(self) -> None:
        if self.failed:
            # Bytewax closes the partition while the write's error unwinds: failing
            # again there aborts the process (a Rust panic) and hides that error.
            log.error("ClickHouse sink closed after a failed write: buffered rows not written")
            return
        self.writer.flush()  # the client stays open: close_clients() on the main thread


class ClickHouseSink(FixedPartitionedSink):
    """Bytewax sink of SymbolOutput / PortfolioOutput / SweepOutput items, as
    (partition_key, item): one partition, built only in the process that
    holds the database (`owner`); its worker writes through the process's
    shared ClickHouseWriter."""

    partition_key = "clickhouse"

    def __init__(self, dsn: str, run_id: str, batch_rows: int = 100_000,
                 flush_each_batch: bool = False, owner: bool = True):
        self.dsn, self.run_id, self.batch_rows = dsn, run_id, batch_rows
        self.flush_each_batch = flush_each_batch  # recovery and live runs
        self.owner = owner  # this process holds the database (process 0)

    def list_parts(self) -> list[str]:
        return [self.partition_key] if self.owner else []

    def part_fn(self, item_key: str) -> int:
        return 0

    def build_part(self, step_id: str, for_part: str, resume_state) -> _SinkPartition:
        return _SinkPartition(shared_writer(self.dsn, self.run_id, self.batch_rows),
                              self.flush_each_batch)
