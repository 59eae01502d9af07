"""Bar files (Parquet or CSV with Alpaca bar columns) as an event-time source.

Mapping half: `connectors.files.reading` turns a file into columns and
`plan_emission` orders rows so that each symbol keeps its row order while
watermarks can advance. I/O half: `BarFileSource`, a Bytewax source emitting
`Chunk`s and `Watermark`s, over a file in memory or, when larger, put in
that order on disk (`connectors.files.spill`).
"""
from __future__ import annotations

import zlib

import numpy as np
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from connectors.files.reading import (  # noqa: F401  (what barfile always offered)
    OPTIONAL, REQUIRED, BarColumns, BarFileError, arrow_to_columns, concat_columns, frame_to_columns,
    read_bar_file, read_chunks,
)
from connectors.files.rows import RowBlock
from operators.columnar import BarBlock
from operators.ordering import END_OF_TIME, Chunk, Watermark


def partition_of(symbol: str, partitions: int) -> int:
    """Stable symbol -> partition assignment (process-independent, unlike hash())."""
    return zlib.crc32(symbol.encode()) % partitions


def plan_emission(cols: BarColumns) -> tuple[np.ndarray, np.ndarray]:
    """Row order for emission: by (suffix-min time of the symbol, symbol, row).

    A row's suffix-min is the earliest time among it and its symbol's later
    rows. It never decreases along a symbol's rows, so each symbol keeps its
    row order (which decides duplicates and late bars), and once the rows with
    suffix-min below W are out, every row to come has a time >= W: W is a
    watermark. Sorted files pass through in time order. (`spill` computes
    the same order for a file larger than memory.)
    """
    n = len(cols)
    if n == 0:
        cols.codes, cols.names = np.zeros(0, dtype=np.int64), []
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    if cols.codes is None or cols.names is None:  # (the Arrow reader gives them)
        import pandas as pd

        codes, names = pd.factorize(cols.symbol, sort=True)
        cols.codes, cols.names = codes, list(names)
    codes, ts = cols.codes, cols.ts
    if (ts[1:] >= ts[:-1]).all():  # a time-sorted file: each row is its symbol's earliest to come
        if ((ts[1:] > ts[:-1]) | (codes[1:] >= codes[:-1])).all():
            return np.arange(n), ts  # and already in (time, symbol) order
        return np.lexsort((np.arange(n), codes, ts)), ts
    import pandas as pd

    rev = pd.Series(ts[::-1])
    sufmin = rev.groupby(codes[::-1]).cummin().to_numpy()[::-1]
    return np.lexsort((np.arange(n), codes, sufmin)), sufmin


class PlannedRows:
    """A partition's rows of an in-memory file, in `plan_emission` order."""

    def __init__(self, cols: BarColumns, rows: np.ndarray, sufmin: np.ndarray, names: list):
        self.cols, self.rows, self.sufmin, self.names = cols, rows, sufmin, names
        self.pos = 0

    def take(self, n: int) -> RowBlock:
        c = self.cols
        r = self.rows[self.pos:self.pos + n]
        self.pos += len(r)
        return RowBlock(c.codes[r], self.names, r, c.ts[r], c.open[r], c.high[r], c.low[r], c.close[r],
                        c.volume[r], c.trade_count[r] if c.trade_count is not None else None,
                        c.vwap[r] if c.vwap is not None else None)

    def next_sufmin(self) -> int | None:
        return int(self.sufmin[self.rows[self.pos]]) if self.pos < len(self.rows) else None

    def close(self) -> None:
        pass


class _FilePartition(StatefulSourcePartition):
    def __init__(self, rows, partition, block_rows, origin_prefix, progress, resume):
        self.rows = rows  # this partition's rows in emission order (PlannedRows | MergedRuns)
        self.partition = partition
        self.block_rows = block_rows
        self.prefix = origin_prefix
        self.progress = progress
        self.pos, self.seq = resume if resume is not None else (0, 0)
        skip = self.pos
        while skip > 0:  # a resumed run: past the rows emitted before the snapshot
            taken = len(self.rows.take(min(skip, block_rows)))
            skip = skip - taken if taken else 0
        self.done = False

    def next_batch(self):
        if self.done:
            raise StopIteration()
        rb = self.rows.take(self.block_rows)
        out = []
        if len(rb):
            # group the block's rows by symbol, each symbol keeping its row order
            by_symbol = np.argsort(rb.rank, kind="stable")
            ranks = rb.rank[by_symbol]
            bounds = (np.flatnonzero(ranks[1:] != ranks[:-1]) + 1).tolist()
            for lo, hi in zip([0, *bounds], [*bounds, len(ranks)]):
                i = by_symbol[lo:hi]
                block = BarBlock(
                    rb.names[ranks[lo]], rb.ts[i], rb.open[i], rb.high[i], rb.low[i], rb.close[i],
                    rb.volume[i], rb.trade_count[i] if rb.trade_count is not None else None,
                    rb.vwap[i] if rb.vwap is not None else None,
                )
                out.append(Chunk(self.partition, self.seq, block.symbol, block, rb.row[i], self.prefix))
                self.seq += 1
        following = self.rows.next_sufmin()
        out.append(Watermark(self.partition, self.seq, END_OF_TIME if following is None else following))
        self.seq += 1
        self.pos += len(rb)
        if self.progress is not None:
            self.progress(self.partition, len(rb))
        if following is None:
            self.done = True
        return out

    def snapshot(self):
        return (self.pos, self.seq)

    def close(self):
        self.rows.close()


class BarFileSource(FixedPartitionedSource):
    """Emits a bar file as `partitions` event-time partitions (symbols by crc32).

    `BarFileSource(cols)` emits columns already in memory; `from_file(path)`
    reads the file in chunks and keeps it in memory only up to
    `memory_rows` rows; a larger file is put in emission order on disk
    (`connectors.files.spill`), so memory does not grow with the file.
    """

    def __init__(self, cols: BarColumns | None, partitions: int = 1, block_rows: int = 1 << 17,
                 origin_prefix: str = "row ", progress=None, spilled=None, merge_rows: int = 1 << 19):
        self.partitions = max(1, partitions)
        self.block_rows = block_rows
        self.prefix = origin_prefix
        self.progress = progress
        self.spilled, self.merge_rows = spilled, merge_rows
        self.cols = cols
        if spilled is not None:
            self.rows = spilled.rows
            return
        self.rows = len(cols)
        order, self.sufmin = plan_emission(cols)
        self.names = cols.names
        part_of_code = np.array([partition_of(s, self.partitions) for s in self.names], dtype=np.int64)
        part = part_of_code[cols.codes[order]] if len(order) else order
        self.rows_by_part = {p: order[part == p] for p in range(self.partitions)}

    @classmethod
    def from_file(cls, path: str, partitions: int = 1, memory_rows: int = 1 << 20,
                  chunk_rows: int = 1 << 19, workdir: str | None = None, notice=None,
                  **kwargs) -> "BarFileSource":
        """`notice(text)` is told about a file put in order on disk."""
        from connectors.files.spill import SpilledFile

        held, spilled, rows = [], None, 0
        for cols in read_chunks(path, chunk_rows):
            rows += len(cols)
            if spilled is None and rows <= memory_rows:
                held.append(cols)
                continue
            if spilled is None:
                spilled = SpilledFile(workdir)
                if notice is not None:
                    notice(f"{path}: more than {memory_rows:,} bars: putting them in event-time "
                           f"order on disk ({spilled.dir})")
                for c in held:
                    spilled.add(c)
                held = []
            spilled.add(cols)
        if spilled is None:  # small enough: in memory (no rows at all: read whole, for its errors)
            return cls(concat_columns(held) if held else read_bar_file(path), partitions, **kwargs)
        parts = max(1, partitions)
        spilled.sort(parts, lambda s: partition_of(s, parts))
        return cls(None, partitions, spilled=spilled, **kwargs)

    def partition_ids(self) -> list:
        return list(range(self.partitions))

    def list_parts(self):
        return [str(p) for p in range(self.partitions)]

    def build_part(self, step_id, for_part, resume_state):
        p = int(for_part)
        if self.spilled is not None:
            rows = self.spilled.rows_of(p, self.merge_rows)
        else:
            rows = PlannedRows(self.cols, self.rows_by_part[p], self.sufmin, self.names)
        return _FilePartition(rows, p, self.block_rows, self.prefix, self.progress, resume_state)
