"""The ClickHouse sink of the dataflow (I/O): SymbolOutput / PortfolioOutput
items routed to their tables through the process's shared writer
(`connectors.clickhouse.client.shared_writer`)."""
from __future__ import annotations

import logging
from typing import Iterable

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from connectors.clickhouse.client import ClickHouseWriter, shared_writer
from connectors.clickhouse.schema import bar_block_columns
from operators.types import PortfolioOutput, SymbolOutput

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
    else:
        raise TypeError(f"ClickHouseSink cannot write {type(item).__name__}")


class _SinkPartition(StatelessSinkPartition):
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

    def close(self) -> None:
        if self.failed:
            # Bytewax closes the partition while the write's error unwinds: failing
            # again there aborts the process (a Rust panic) and hides that error.
            log.error("ClickHouse sink closed after a failed write: buffered rows not written")
            return
        self.writer.flush()  # the client stays open: close_clients() on the main thread


class ClickHouseSink(DynamicSink):
    """Bytewax sink of SymbolOutput / PortfolioOutput items; every worker of a
    process buffers through one shared ClickHouseWriter."""

    def __init__(self, dsn: str, run_id: str, batch_rows: int = 100_000,
                 flush_each_batch: bool = False):
        self.dsn, self.run_id, self.batch_rows = dsn, run_id, batch_rows
        self.flush_each_batch = flush_each_batch  # recovery and live runs

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _SinkPartition:
        return _SinkPartition(shared_writer(self.dsn, self.run_id, self.batch_rows),
                              self.flush_each_batch)
