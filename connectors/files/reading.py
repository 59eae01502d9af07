"""Reading bar files (Parquet or CSV with Alpaca bar columns) into columns:
the mapping half of `connectors.files.barfile` (epoch-second times, naive
timestamps meaning UTC; errors name the file's row).

`read_bar_file` reads a whole file (pandas); `read_chunks` reads it in
chunks with memory for one chunk (a Parquet row group at a time, straight
from Arrow for the usual column types, without pandas; CSV in pandas
chunks). `frame_to_columns` / `arrow_to_columns` give the same columns and
errors (tests/test_barfile_spill.py pins it).
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
