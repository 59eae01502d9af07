"""Bar files (Parquet or CSV with Alpaca bar columns) as an event-time source.

Mapping half: `read_bar_file` / `read_chunks` turn a file into columns
(epoch-second times, naive timestamps meaning UTC) and `plan_emission`
orders rows so that each symbol keeps its row order while watermarks can
advance. I/O half: `BarFileSource`, a Bytewax source emitting `Chunk`s and
`Watermark`s, over a file in memory or, when larger, put in that order on
disk (`connectors.files.spill`).
"""
from __future__ import annotations

import os
import zlib
from dataclasses import dataclass

import numpy as np
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from connectors.files.rows import RowBlock
from operators.columnar import BarBlock
from operators.ordering import END_OF_TIME, Chunk, Watermark

REQUIRED = ("symbol", "timestamp", "open", "high", "low", "close", "volume")
OPTIONAL = ("trade_count", "vwap")


class BarFileError(ValueError):
    """The file cannot be read as bars: stop with this one-line message."""


@dataclass
class BarColumns:
    symbol: np.ndarray  # object (str)
    ts: np.ndarray  # int64 epoch seconds
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    trade_count: np.ndarray | None
    vwap: np.ndarray | None
    codes: np.ndarray | None = None  # symbol codes (sorted symbol order): by the reader or plan_emission
    names: list | None = None  # symbol of each code

    def __len__(self) -> int:
        return len(self.ts)


def read_bar_file(path: str) -> BarColumns:
    if not os.path.exists(path):
        raise BarFileError(f"bar file not found: {path}")
    import pandas as pd  # imported where used: a Parquet backtest starts without it

    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".parquet":
            df = pd.read_parquet(path)
        elif ext == ".csv":
            df = pd.read_csv(path, dtype={"symbol": str})
        else:
            raise BarFileError(f"unsupported bar file type {ext or '(none)'}: use .parquet or .csv ({path})")
    except BarFileError:
        raise
    except Exception as exc:  # the reader's own error types vary by format
        raise _unreadable(path, exc) from None
    return frame_to_columns(df, path)


def read_chunks(path: str, chunk_rows: int):
    """The file's bars as BarColumns of at most `chunk_rows` rows each, in
    file order (Parquet record batches, CSV chunks): memory for one chunk."""
    if not os.path.exists(path):
        raise BarFileError(f"bar file not found: {path}")
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".parquet", ".csv"):
        raise BarFileError(f"unsupported bar file type {ext or '(none)'}: use .parquet or .csv ({path})")
    first = 0
    try:
        if ext == ".parquet":
            for batch in _parquet_frames(path, chunk_rows):
                cols = arrow_to_columns(batch, path, first)
                if cols is None:  # not the usual types: as pandas reads them
                    cols = frame_to_columns(batch.to_pandas(), path, first)
                first += len(cols)
                yield cols
            return
        import pandas as pd

        for frame in pd.read_csv(path, dtype={"symbol": str}, chunksize=chunk_rows):
            cols = frame_to_columns(frame, path, first)
            first += len(cols)
            yield cols
    except BarFileError:
        raise
    except Exception as exc:
        raise _unreadable(path, exc) from None


def _parquet_frames(path: str, chunk_rows: int):
    """A Parquet file a row group at a time, in frames of at most
    `chunk_rows` rows. (pyarrow's `iter_batches` kept about 15 MB per
    1M-row batch resident until the reader was done: 30 M bars grew the
    process by 0.5 GB; a row group read and dropped leaves nothing behind.)
    A row group larger than 8 chunks is streamed in batches instead."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    if "symbol" in pf.schema_arrow.names:  # its dictionary as stored: codes without pyarrow.compute
        pf = pq.ParquetFile(path, read_dictionary=["symbol"])
    for group in range(pf.num_row_groups):
        if pf.metadata.row_group(group).num_rows > 8 * chunk_rows:
            batches = pf.iter_batches(batch_size=chunk_rows, row_groups=[group])
        else:
            batches = pf.read_row_group(group).to_batches(chunk_rows)
        for batch in batches:
            yield batch
        del batches
        pa.default_memory_pool().release_unused()


def _unreadable(path: str, exc: Exception) -> BarFileError:
    first = str(exc).splitlines()[0] if str(exc) else ""
    return BarFileError(f"cannot read {path}: {type(exc).__name__}: {first}")


def concat_columns(chunks: list) -> BarColumns:
    if len(chunks) == 1:
        return chunks[0]

    def cat(f):
        parts = [getattr(c, f) for c in chunks]
        if any(p is None for p in parts):  # a column missing from the file is missing throughout
            return None
        return np.concatenate(parts)

    cols = BarColumns(*(cat(f) for f in ("symbol", "ts", "open", "high", "low", "close", "volume",
                                          "trade_count", "vwap")))
    if all(c.codes is not None and c.names is not None for c in chunks):  # one set of codes
        cols.names = sorted({s for c in chunks for s in c.names})
        where = {s: i for i, s in enumerate(cols.names)}
        cols.codes = np.concatenate([np.array([where[s] for s in c.names], dtype=np.int64)[c.codes]
                                     for c in chunks])
    return cols


def frame_to_columns(df: pd.DataFrame, path: str = "bars", first_row: int = 0) -> BarColumns:
    """Columns of a frame of bars; errors name the row as `first_row` + its
    position (a chunk of a larger file)."""
    import pandas as pd

    if isinstance(df.index, pd.MultiIndex) and "symbol" in df.index.names:
        df = df.reset_index()  # alpaca-py's BarSet.df shape
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise BarFileError(f"{path}: missing column(s) {', '.join(missing)}")
    ts = _epoch_seconds(df["timestamp"], path, first_row)
    cols = {}
    for c in ("open", "high", "low", "close", "volume") + OPTIONAL:
        if c not in df.columns:
            cols[c] = None
            continue
        values = pd.to_numeric(df[c], errors="coerce")
        bad = values.isna() & df[c].notna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise BarFileError(f"{path}: column {c} row {first_row + row}: not a number: {df[c].iloc[row]!r}")
        cols[c] = values.to_numpy(dtype="float64")
    symbol = df["symbol"].astype(object).where(df["symbol"].notna(), "").astype(str).to_numpy(dtype=object)
    return BarColumns(symbol, ts, cols["open"], cols["high"], cols["low"], cols["close"],
                      cols["volume"], cols["trade_count"], cols["vwap"])


_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


def arrow_to_columns(batch, path: str = "bars", first_row: int = 0) -> BarColumns | None:
    """`frame_to_columns` of an Arrow record batch of the usual types (string
    symbols, a timestamp column, integer or float prices), without pandas:
    the same columns and errors. None for anything else (use pandas)."""
    import pyarrow as pa  # (not pyarrow.compute: ~70 ms to import)

    schema = batch.schema
    if any(c not in schema.names for c in REQUIRED):
        return None
    symbol_type = schema.field("symbol").type
    if pa.types.is_dictionary(symbol_type):
        symbol_type = symbol_type.value_type
    numeric = [c for c in ("open", "high", "low", "close", "volume") + OPTIONAL if c in schema.names]
    if not (pa.types.is_timestamp(schema.field("timestamp").type)
            and (pa.types.is_string(symbol_type) or pa.types.is_large_string(symbol_type))
            and all(pa.types.is_integer(schema.field(c).type) or pa.types.is_floating(schema.field(c).type)
                    for c in numeric)):
        return None
    stamps = batch.column("timestamp")
    if stamps.null_count:
        row = int(np.flatnonzero(stamps.is_null().to_numpy(zero_copy_only=False))[0])
        raise BarFileError(f"{path}: column timestamp row {first_row + row}: missing time")
    # UTC ticks whatever the zone (a naive time means UTC); whole seconds, floored
    ts = _numpy(stamps, np.int64) // _PER_SECOND[stamps.type.unit]
    cols = {}
    for c in ("open", "high", "low", "close", "volume") + OPTIONAL:
        if c not in numeric:
            cols[c] = None
            continue
        values = batch.column(c)  # a null is NaN (absent), as pandas reads it
        cols[c] = _numpy(values, _dtype(values.type)).astype(np.float64)
        if values.null_count:
            cols[c] = np.where(_valid(values), cols[c], np.nan)
    symbols = batch.column("symbol")
    if not pa.types.is_dictionary(symbols.type):  # (a Parquet file read with read_dictionary is)
        symbols = symbols.cast(pa.string()).dictionary_encode()
    indices = symbols.indices
    seen = symbols.dictionary.to_pylist()  # in order of first appearance
    present = _numpy(indices, _dtype(indices.type)).astype(np.int64)
    if indices.null_count:  # a missing symbol reads as "" (refused later as invalid)
        seen.append("")
        present = np.where(_valid(indices), present, len(seen) - 1)
    names = sorted(set(seen))
    where = {s: i for i, s in enumerate(names)}
    codes = np.array([where[s] for s in seen], dtype=np.int64)[present] if seen else present
    symbol = np.array(names, dtype=object)[codes] if seen else np.array([], dtype=object)
    return BarColumns(symbol, ts.astype(np.int64), cols["open"], cols["high"], cols["low"], cols["close"],
                      cols["volume"], cols["trade_count"], cols["vwap"], codes, names)


def _numpy(array, dtype) -> np.ndarray:
    """A null-free primitive Arrow array's values (a view of its buffer):
    pyarrow's `to_numpy` goes through its pandas conversion and imports
    pandas, which a Parquet backtest otherwise never needs."""
    return np.frombuffer(array.buffers()[1], dtype=dtype, count=len(array),
                         offset=array.offset * np.dtype(dtype).itemsize)


def _dtype(arrow_type) -> np.dtype:
    """The numpy type of a primitive Arrow type's values."""
    import pyarrow as pa

    if pa.types.is_floating(arrow_type):
        return np.dtype(f"<f{arrow_type.bit_width // 8}")
    kind = "i" if pa.types.is_signed_integer(arrow_type) else "u"
    return np.dtype(f"<{kind}{arrow_type.bit_width // 8}")


def _valid(array) -> np.ndarray:
    """Which values of an Arrow array are not null (from its validity bitmap)."""
    n = len(array)
    if not array.null_count:
        return np.ones(n, dtype=bool)
    bits = np.unpackbits(np.frombuffer(array.buffers()[0], dtype=np.uint8), bitorder="little")
    return bits[array.offset:array.offset + n].astype(bool)


def _epoch_seconds(col: pd.Series, path: str, first_row: int = 0) -> np.ndarray:
    import pandas as pd

    try:
        if pd.api.types.is_datetime64_any_dtype(col):
            stamps = col if getattr(col.dt, "tz", None) is not None else col.dt.tz_localize("UTC")
            stamps = stamps.dt.tz_convert("UTC")
        else:
            stamps = pd.to_datetime(col, utc=True, format="ISO8601")
    except (ValueError, TypeError) as exc:
        raise BarFileError(f"{path}: column timestamp: unparseable time ({exc})".splitlines()[0]) from None
    if stamps.isna().any():
        row = int(np.flatnonzero(stamps.isna().to_numpy())[0])
        raise BarFileError(f"{path}: column timestamp row {first_row + row}: missing time")
    ns = stamps.dt.as_unit("ns").astype("int64").to_numpy()
    return ns // 1_000_000_000  # whole seconds (sub-second parts are dropped)


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
