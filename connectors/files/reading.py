"""Reading bar files (Parquet or CSV with Alpaca bar columns) into columns:
the mapping half of `connectors.files.barfile` (epoch-second times, naive
timestamps meaning UTC; errors name the file's row).

`read_bar_file` reads a whole file (pandas); `read_chunks` reads it in
chunks with memory for one chunk (a Parquet row group at a time, straight
from Arrow for the usual column types, without pandas; CSV in pandas
chunks). `frame_to_columns` / `arrow_to_columns` give the same columns and
errors (tests/test_barfile_spill.py pins it). Column names are compared
without case and surrounding spaces. An error names its place in the file as
a person finds it: `bars.csv line 7` (an editor's line, the header is line
1) or `bars.parquet row 7` (rows from 1).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

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


def file_origin(path: str) -> tuple[str, int]:
    """(prefix, offset) of a file's row as a person finds it: a CSV's line in
    an editor (the header is line 1), a Parquet file's row counted from 1."""
    name = os.path.basename(path)
    if os.path.splitext(path)[1].lower() == ".csv":
        return f"{name} line ", 2
    return f"{name} row ", 1


def _check_path(path: str) -> str:
    """The file's extension, once it is known to be a bar file that exists."""
    if not os.path.exists(path):
        raise BarFileError(f"bar file not found: {path}")
    if os.path.isdir(path):
        raise BarFileError(f"{path} is a directory: pass a .parquet or .csv file")
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".parquet", ".csv"):
        raise BarFileError(f"unsupported bar file type {ext or '(none)'}: use .parquet or .csv ({path})")
    return ext


def _csv_column(path: str, name: str) -> str:
    """The header's spelling of column `name` (case and spaces aside)."""
    import csv

    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        header = next(csv.reader(fh), [])
    return next((c for c in header if c.strip().lower() == name), name)


def read_bar_file(path: str) -> BarColumns:
    ext = _check_path(path)
    import pandas as pd  # imported where used: a Parquet backtest starts without it

    try:
        if ext == ".parquet":
            df = pd.read_parquet(path)
        else:
            df = pd.read_csv(path, dtype={_csv_column(path, "symbol"): str})
    except pd.errors.EmptyDataError:
        raise BarFileError(f"{path}: empty file, no bars") from None
    except Exception as exc:  # the reader's own error types vary by format
        raise _unreadable(path, exc) from None
    if not len(df):
        what = "only a header" if ext == ".csv" and len(df.columns) else "no rows"
        raise BarFileError(f"{path}: no bars ({what})")
    return frame_to_columns(df, path, 0, *file_origin(path))


def read_chunks(path: str, chunk_rows: int):
    """The file's bars as BarColumns of at most `chunk_rows` rows each, in
    file order (Parquet record batches, CSV chunks): memory for one chunk.
    A file without bars yields nothing (`read_bar_file` says why)."""
    ext = _check_path(path)
    origin = file_origin(path)
    first = 0
    try:
        if ext == ".parquet":
            for batch in _parquet_frames(path, chunk_rows):
                cols = arrow_to_columns(batch, path, first, *origin)
                if cols is None:  # not the usual types or names: as pandas reads them
                    cols = frame_to_columns(batch.to_pandas(), path, first, *origin)
                first += len(cols)
                yield cols
            return
        import pandas as pd

        try:
            frames = pd.read_csv(path, dtype={_csv_column(path, "symbol"): str}, chunksize=chunk_rows)
        except pd.errors.EmptyDataError:
            return
        for frame in frames:
            cols = frame_to_columns(frame, path, first, *origin)
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
                                          "trade_count", "vwap")),
                      origin_prefix=chunks[0].origin_prefix, origin_offset=chunks[0].origin_offset)
    if all(c.codes is not None and c.names is not None for c in chunks):  # one set of codes
        cols.names = sorted({s for c in chunks for s in c.names})
        where = {s: i for i, s in enumerate(cols.names)}
        cols.codes = np.concatenate([np.array([where[s] for s in c.names], dtype=np.int64)[c.codes]
                                     for c in chunks])
    return cols


def _columns_by_name(df, path: str):
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


def frame_to_columns(df: pd.DataFrame, path: str = "bars", first_row: int = 0, origin_prefix: str = "row ",
                     origin_offset: int = 1) -> BarColumns:
    """Columns of a frame of bars; errors name the row's place,
    `origin_prefix` + (`first_row` + its position + `origin_offset`)
    (`first_row`: a chunk of a larger file)."""
    import pandas as pd

    if isinstance(df.index, pd.MultiIndex) and "symbol" in df.index.names:
        df = df.reset_index()  # alpaca-py's BarSet.df shape
    df = _columns_by_name(df, path)
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise BarFileError(f"{path}: missing column(s) {', '.join(missing)} (it has: {', '.join(map(str, df.columns))}; "
                           f"needed: {','.join(REQUIRED)}, optional: {','.join(OPTIONAL)})")

    def where(row: int) -> str:
        return f"{origin_prefix}{first_row + row + origin_offset}"

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


_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


def arrow_to_columns(batch, path: str = "bars", first_row: int = 0, origin_prefix: str = "row ",
                     origin_offset: int = 1) -> BarColumns | None:
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
        raise BarFileError(f"{origin_prefix}{first_row + row + origin_offset}: no timestamp")
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
                      cols["volume"], cols["trade_count"], cols["vwap"], codes, names, origin_prefix,
                      origin_offset)


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


def _epoch_seconds(col: pd.Series, where) -> np.ndarray:
    """UTC epoch seconds of a timestamp column; the first value that is not a
    time stops the read with its place in the file (`where(row)`) and the
    formats accepted."""
    import pandas as pd

    if pd.api.types.is_datetime64_any_dtype(col):
        stamps = col if getattr(col.dt, "tz", None) is not None else col.dt.tz_localize("UTC")
        stamps = stamps.dt.tz_convert("UTC")
    elif pd.api.types.is_numeric_dtype(col) and len(col):
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
    import pandas as pd

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
