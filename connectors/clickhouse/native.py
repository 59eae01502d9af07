"""Columns -> one block of ClickHouse's Native format (pure; sent with
clickhouse-connect's `raw_insert(..., fmt="Native")`).

Why not `client.insert`: it serialises value by value in Python (a
DateTime64 or Nullable column even from numpy goes through Python objects),
which cost more than ClickHouse's own work on a backtest's 725,400 bars
(bench/README.md). Here a numeric column is one `numpy.tobytes()`, and a
string column joins the encodings of its distinct values.

Native block: number of columns and of rows (LEB128), then per column its
name, its type name and its values: fixed-width little-endian numbers,
strings as LEB128 length + UTF-8 bytes, Nullable(T) as one null byte per
row followed by T's values (a placeholder where null).

Types: String, Float64, Int64, UInt64, UInt32, Bool, DateTime64(3, 'UTC')
(epoch milliseconds), Date (`datetime.date`s or days since 1970-01-01; a
UInt16 on the wire), and Nullable of the numeric ones. A column is a numpy array
or a list; in a Nullable column None, and NaN in a float column, are null.
"""
from __future__ import annotations

import numpy as np

_FIXED = {"Float64": "<f8", "Int64": "<i8", "UInt64": "<u8", "UInt32": "<u4", "Bool": "u1"}
_EPOCH_ORDINAL = 719163  # date(1970, 1, 1).toordinal()


def leb128(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _name(text: str) -> bytes:
    raw = text.encode()
    return leb128(len(raw)) + raw


def _dtype(ch_type: str) -> str:
    if ch_type.startswith("DateTime64"):
        return "<i8"
    return _FIXED[ch_type]


def _strings(values) -> bytes:
    if isinstance(values, list) and values and values.count(values[0]) == len(values):
        return _name(values[0]) * len(values)  # one value repeated (run_id, a block's symbol)
    encoded = {s: _name(s) for s in set(values)}
    return b"".join(map(encoded.__getitem__, values))


def _fixed(values, dtype: str) -> bytes:
    return np.ascontiguousarray(values, dtype=dtype).tobytes()


def _nullable(values, dtype: str) -> bytes:
    if isinstance(values, np.ndarray):
        arr = values.astype(np.float64 if dtype == "<f8" else dtype, copy=False)
        null = np.isnan(arr) if arr.dtype.kind == "f" else np.zeros(len(arr), dtype=bool)
    else:
        null = np.array([v is None or v != v for v in values], dtype=bool)
        arr = np.array([0 if n else v for v, n in zip(values, null.tolist())], dtype=dtype)
    if null.any():
        arr = np.where(null, 0, arr).astype(dtype, copy=False)
    return null.astype(np.uint8).tobytes() + np.ascontiguousarray(arr, dtype=dtype).tobytes()


def _dates(values) -> bytes:
    if not isinstance(values, np.ndarray):
        values = [v if isinstance(v, int) else v.toordinal() - _EPOCH_ORDINAL for v in values]
    return np.asarray(values, dtype=np.int64).astype("<u2").tobytes()


def encode_column(ch_type: str, values) -> bytes:
    if ch_type == "String":
        return _strings(values)
    if ch_type == "Date":
        return _dates(values)
    if ch_type.startswith("Nullable(") and ch_type.endswith(")"):
        return _nullable(values, _dtype(ch_type[len("Nullable("):-1]))
    return _fixed(values, _dtype(ch_type))


def encode_block(names: list, types: list, columns: list) -> bytes:
    """One Native block of equally long `columns` named `names` of ClickHouse
    `types`. A column may be a `Parts` list: its values in pieces, encoded one
    after the other (a string piece of one repeated value costs nothing)."""
    lengths = [sum(map(len, c)) if isinstance(c, Parts) else len(c) for c in columns]
    rows = lengths[0] if lengths else 0
    out = [leb128(len(names)), leb128(rows)]
    for name, ch_type, values, n in zip(names, types, columns, lengths):
        if n != rows:
            raise ValueError(f"column {name}: {n} values, expected {rows}")
        out += [_name(name), _name(ch_type)]
        if not isinstance(values, Parts):
            out.append(encode_column(ch_type, values))
        elif ch_type == "String":
            out += [_strings(part) for part in values]
        else:  # a Nullable column's null bytes come first: one piece
            out.append(encode_column(ch_type, _joined(values)))
    return b"".join(out)


class Parts(list):
    """A column given as a list of pieces (numpy arrays or lists)."""


def _joined(parts: list):
    if len(parts) == 1:
        return parts[0]
    if all(isinstance(p, np.ndarray) for p in parts):
        return np.concatenate(parts)
    return [v for p in parts for v in p]
