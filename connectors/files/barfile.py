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
    # where a row is in the file, as a person finds it: "bars.csv line " + (row + 2)
    # for a CSV (an editor's line, after the header), "bars.parquet row " + (row + 1)
    origin_prefix: str = "row "
    origin_offset: int = 1

    def __len__(self) -> int:
        return len(self.ts)

    def where(self, row: int) -> str:
        return f"{self.origin_prefix}{row + self.origin_offset}"


TIME_FORMATS = ("ISO 8601 times, e.g. 2024-01-02T14:30:00Z, 2024-01-02 09:30:00-05:00 or 2024-01-02 14:30 "
                "(no zone: UTC), or a Parquet timestamp column")


def read_bar_file(path: str) -> BarColumns:
    if not os.path.exists(path):
        raise BarFileError(f"bar file not found: {path}")
    if os.path.isdir(path):
        raise BarFileError(f"{path} is a directory: pass a .parquet or .csv file")
    ext = os.path.splitext(path)[1].lower()
    name = os.path.basename(path)
    try:
        if ext == ".parquet":
            df = pd.read_parquet(path)
            where = (f"{name} row ", 1)
        elif ext == ".csv":
            df = pd.read_csv(path, dtype={_csv_column(path, "symbol"): str})
            where = (f"{name} line ", 2)  # an editor's line numbers: the header is line 1
        else:
            raise BarFileError(f"unsupported bar file type {ext or '(none)'}: use .parquet or .csv ({path})")
    except BarFileError:
        raise
    except pd.errors.EmptyDataError:
        raise BarFileError(f"{path}: empty file, no bars") from None
    except Exception as exc:  # the reader's own error types vary by format
        raise BarFileError(f"cannot read {path}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    if not len(df):
        what = "only a header" if ext == ".csv" and len(df.columns) else "no rows"
        raise BarFileError(f"{path}: no bars ({what})")
    return frame_to_columns(df, path, *where)


def _csv_column(path: str, name: str) -> str:
    """The header's spelling of column `name` (case and spaces aside)."""
    import csv

    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        header = next(csv.reader(fh), [])
    return next((c for c in header if c.strip().lower() == name), name)


def _columns_by_name(df: pd.DataFrame, path: str) -> pd.DataFrame:
    """Column names compared without case and surrounding spaces
    (`Symbol,Timestamp,Open,...` is accepted); two names that differ only
    that way are refused."""
    seen: dict[str, str] = {}
    for c in map(str, df.columns):
        key = c.strip().lower()
        if key in seen:
            raise BarFileError(f"{path}: columns {seen[key]!r} and {c!r} differ only in case or spaces: keep one")
        seen[key] = c
    return df.rename(columns={c: c.strip().lower() for c in seen.values()})


def frame_to_columns(df: pd.DataFrame, path: str = "bars", origin_prefix: str = "row ",
                     origin_offset: int = 1) -> BarColumns:
    if isinstance(df.index, pd.MultiIndex) and "symbol" in df.index.names:
        df = df.reset_index()  # alpaca-py's BarSet.df shape
    df = _columns_by_name(df, path)
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise BarFileError(f"{path}: missing column(s) {', '.join(missing)} (it has: {', '.join(map(str, df.columns))}; "
                           f"needed: {','.join(REQUIRED)}, optional: {','.join(OPTIONAL)})")

    def where(row: int) -> str:
        return f"{origin_prefix}{row + origin_offset}"

    ts = _epoch_seconds(df["timestamp"], where)
    cols = {}
    for c in ("open", "high", "low", "close", "volume") + OPTIONAL:
        if c not in df.columns:
            cols[c] = None
            continue
        values = pd.to_numeric(df[c], errors="coerce")
        bad = values.isna() & df[c].notna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise BarFileError(f"{where(row)}: column {c}: not a number: {df[c].iloc[row]!r}")
        cols[c] = values.to_numpy(dtype="float64")
    symbol = df["symbol"].astype(object).where(df["symbol"].notna(), "").astype(str).to_numpy(dtype=object)
    return BarColumns(symbol, ts, cols["open"], cols["high"], cols["low"], cols["close"],
                      cols["volume"], cols["trade_count"], cols["vwap"], origin_prefix=origin_prefix,
                      origin_offset=origin_offset)


def _epoch_seconds(col: pd.Series, where) -> np.ndarray:
    """UTC epoch seconds of a timestamp column; the first value that is not a
    time stops the read with its place in the file and the formats accepted."""
    if pd.api.types.is_datetime64_any_dtype(col):
        stamps = col if getattr(col.dt, "tz", None) is not None else col.dt.tz_localize("UTC")
        stamps = stamps.dt.tz_convert("UTC")
    elif pd.api.types.is_numeric_dtype(col):
        raise BarFileError(f"{where(0)}: timestamp {str(col.iloc[0])!r} is a number: write {TIME_FORMATS}")
    else:
        try:
            stamps = pd.to_datetime(col, utc=True, format="ISO8601")
        except (ValueError, TypeError, OverflowError):
            stamps = _parse_each(col, where)
    if stamps.isna().any():
        row = int(np.flatnonzero(stamps.isna().to_numpy())[0])
        raise BarFileError(f"{where(row)}: no timestamp")
    ns = stamps.dt.as_unit("ns").astype("int64").to_numpy()
    return ns // 1_000_000_000  # whole seconds (sub-second parts are dropped)


def _parse_each(col: pd.Series, where) -> pd.Series:
    """The column parsed value by value: the first bad one is the error."""
    for row, value in enumerate(col.tolist()):
        if value is None or (isinstance(value, float) and value != value):
            continue  # missing: reported as "no timestamp"
        try:
            pd.to_datetime(value, utc=True, format="ISO8601")
        except (ValueError, TypeError, OverflowError):
            raise BarFileError(f"{where(row)}: timestamp {str(value)[:60]!r} is not a time: use "
                               f"{TIME_FORMATS}") from None
    # each value alone is fine, together they are not (mixed forms): per value, in UTC
    return pd.Series([pd.to_datetime(v, utc=True, format="ISO8601") if v == v and v is not None else pd.NaT
                      for v in col.tolist()], index=col.index, dtype="datetime64[ns, UTC]")


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
        self.offset = cols.origin_offset
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
                out.append(Chunk(self.partition, self.seq, block.symbol, block, r + self.offset, self.prefix))
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
    """Emits a bar file as `partitions` event-time partitions (symbols by crc32).
    A dead letter's origin is its place in the file (`BarColumns.where`)."""

    def __init__(self, cols: BarColumns, partitions: int = 1, block_rows: int = 16_384,
                 origin_prefix: str | None = None, progress=None):
        self.cols = cols
        self.partitions = max(1, partitions)
        self.block_rows = block_rows
        self.prefix = cols.origin_prefix if origin_prefix is None else origin_prefix
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
