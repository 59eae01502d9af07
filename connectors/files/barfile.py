"""Bar files (Parquet or CSV with Alpaca bar columns) as an event-time source.

Mapping half: `read_bar_file` turns a file into columns (epoch-second times,
naive timestamps meaning UTC) and `plan_emission` orders rows so that each
symbol keeps its row order while watermarks can advance. I/O half:
`BarFileSource`, a Bytewax source emitting `Chunk`s and `Watermark`s.
"""
from __future__ import annotations

import os
import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

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
    codes: np.ndarray | None = None  # symbol codes (sorted symbol order), set by plan_emission

    def __len__(self) -> int:
        return len(self.ts)


def read_bar_file(path: str) -> BarColumns:
    if not os.path.exists(path):
        raise BarFileError(f"bar file not found: {path}")
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
        raise BarFileError(f"cannot read {path}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    return frame_to_columns(df, path)


def frame_to_columns(df: pd.DataFrame, path: str = "bars") -> BarColumns:
    if isinstance(df.index, pd.MultiIndex) and "symbol" in df.index.names:
        df = df.reset_index()  # alpaca-py's BarSet.df shape
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise BarFileError(f"{path}: missing column(s) {', '.join(missing)}")
    ts = _epoch_seconds(df["timestamp"], path)
    cols = {}
    for c in ("open", "high", "low", "close", "volume") + OPTIONAL:
        if c not in df.columns:
            cols[c] = None
            continue
        values = pd.to_numeric(df[c], errors="coerce")
        bad = values.isna() & df[c].notna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise BarFileError(f"{path}: column {c} row {row}: not a number: {df[c].iloc[row]!r}")
        cols[c] = values.to_numpy(dtype="float64")
    symbol = df["symbol"].astype(object).where(df["symbol"].notna(), "").astype(str).to_numpy(dtype=object)
    return BarColumns(symbol, ts, cols["open"], cols["high"], cols["low"], cols["close"],
                      cols["volume"], cols["trade_count"], cols["vwap"])


def _epoch_seconds(col: pd.Series, path: str) -> np.ndarray:
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
        raise BarFileError(f"{path}: column timestamp row {row}: missing time")
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
    watermark. Sorted files pass through in time order.
    """
    n = len(cols)
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    codes, _ = pd.factorize(cols.symbol, sort=True)
    cols.codes = codes
    rev = pd.Series(cols.ts[::-1])
    sufmin = rev.groupby(codes[::-1]).cummin().to_numpy()[::-1]
    return np.lexsort((np.arange(n), codes, sufmin)), sufmin


class _FilePartition(StatefulSourcePartition):
    def __init__(self, cols, rows, sufmin, partition, block_rows, origin_prefix, progress, resume):
        self.cols = cols
        self.rows = rows  # this partition's rows in emission order
        self.sufmin = sufmin
        self.partition = partition
        self.block_rows = block_rows
        self.prefix = origin_prefix
        self.progress = progress
        self.pos, self.seq = resume if resume is not None else (0, 0)
        self.done = False

    def next_batch(self):
        if self.done:
            raise StopIteration()
        c = self.cols
        start, end = self.pos, min(self.pos + self.block_rows, len(self.rows))
        rows = self.rows[start:end]
        out = []
        if len(rows):
            # group the block's rows by symbol, each symbol keeping its row order
            rows = rows[np.argsort(c.codes[rows], kind="stable")]
            codes = c.codes[rows]
            bounds = (np.flatnonzero(codes[1:] != codes[:-1]) + 1).tolist()
            for lo, hi in zip([0, *bounds], [*bounds, len(rows)]):
                r = rows[lo:hi]
                block = BarBlock(
                    c.symbol[r[0]], c.ts[r], c.open[r], c.high[r], c.low[r], c.close[r], c.volume[r],
                    c.trade_count[r] if c.trade_count is not None else None,
                    c.vwap[r] if c.vwap is not None else None,
                )
                out.append(Chunk(self.partition, self.seq, block.symbol, block, r, self.prefix))
                self.seq += 1
        wm = int(self.sufmin[self.rows[end]]) if end < len(self.rows) else END_OF_TIME
        out.append(Watermark(self.partition, self.seq, wm))
        self.seq += 1
        self.pos = end
        if self.progress is not None:
            self.progress(self.partition, end - start)
        if end >= len(self.rows):
            self.done = True
        return out

    def snapshot(self):
        return (self.pos, self.seq)


class BarFileSource(FixedPartitionedSource):
    """Emits a bar file as `partitions` event-time partitions (symbols by crc32)."""

    def __init__(self, cols: BarColumns, partitions: int = 1, block_rows: int = 16_384,
                 origin_prefix: str = "row ", progress=None):
        self.cols = cols
        self.partitions = max(1, partitions)
        self.block_rows = block_rows
        self.prefix = origin_prefix
        self.progress = progress
        order, self.sufmin = plan_emission(cols)
        codes, uniques = pd.factorize(cols.symbol, sort=True)
        part_of_code = np.array([partition_of(s, self.partitions) for s in uniques], dtype=np.int64)
        part = part_of_code[codes[order]] if len(order) else order
        self.rows_by_part = {p: order[part == p] for p in range(self.partitions)}

    def partition_ids(self) -> list:
        return list(range(self.partitions))

    def list_parts(self):
        return [str(p) for p in range(self.partitions)]

    def build_part(self, step_id, for_part, resume_state):
        p = int(for_part)
        return _FilePartition(self.cols, self.rows_by_part[p], self.sufmin, p, self.block_rows,
                              self.prefix, self.progress, resume_state)
