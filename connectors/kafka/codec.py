"""Kafka `bars` topic: the pure mapping (no I/O, tested without a broker).

`encode_bar`, `encode_bars` (several minutes of one symbol as columns),
`encode_watermark`, `decode_record` (never raises: returns a `Bar`, a
`BarsRecord`, a `WatermarkRecord`, a `ControlRecord` or a
`DecodeError(reason)`; the definition the
source's fast path is tested against), `encode_dead_letter`, `iso_minute`,
`iso_times`, and the msgspec structs of the source's fast decode path. The
record format is described in `connectors.kafka`.
"""
from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone

import msgspec
import numpy as np

from operators.types import Bar

MINUTE = 60


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


@dataclass(slots=True, frozen=True)
class WatermarkRecord:
    """A marker: every later bar of its partition has timestamp >= ts."""

    ts: int  # exclusive bound: start of the completed minute + 60


@dataclass(slots=True, frozen=True)
class BarsRecord:
    """A bars record: one symbol's bars (in the record's order)."""

    symbol: str
    bars: list  # [Bar]


@dataclass(slots=True, frozen=True)
class DecodeError:
    """A record that is neither a bar nor a marker, and why."""

    reason: str


_ISO_CACHE: dict = {}


def iso_minute(ts: int) -> str:
    """'2024-01-02T14:30:00Z' for epoch seconds `ts`."""
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(text) -> int | None:
    """Epoch seconds of an RFC 3339 / ISO 8601 time (naive means UTC; sub-second
    parts are dropped, as for bar files); None when not a time."""
    if not isinstance(text, str):
        return None
    ts = _ISO_CACHE.get(text)
    if ts is not None:
        return ts
    if len(text) > 64:
        return None
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    ts = math.floor(dt.timestamp())
    if len(_ISO_CACHE) > 200_000:  # bars share few distinct minutes; keep it bounded
        _ISO_CACHE.clear()
    _ISO_CACHE[text] = ts
    return ts


def _json_number(x: float) -> str:
    if math.isfinite(x):
        return repr(float(x))
    return json.dumps(float(x))  # NaN / Infinity / -Infinity, as Python's json reads them


def _bar_json(symbol_json: str, iso: str, o, h, lo, c, v, n, vw) -> str:
    text = (f'{{"T":"b","S":{symbol_json},"t":"{iso}","o":{_json_number(o)},"h":{_json_number(h)},'
            f'"l":{_json_number(lo)},"c":{_json_number(c)},"v":{_json_number(v)}')
    if n is not None and n == n:  # None or NaN: unknown, omitted
        text += f',"n":{_json_number(n)}'
    if vw is not None and vw == vw:
        text += f',"vw":{_json_number(vw)}'
    return text + "}"


def encode_bar(bar: Bar) -> tuple[bytes, bytes]:
    """(key, value) of a bar: key = symbol, value = Alpaca-shaped JSON."""
    value = _bar_json(json.dumps(bar.symbol), iso_minute(bar.ts), bar.open, bar.high, bar.low,
                      bar.close, bar.volume, bar.trade_count, bar.vwap)
    return bar.symbol.encode(), value.encode()


def encode_bars(symbol: str, times: list, o: list, h: list, lo: list, c: list, v: list,
                n: list | None = None, vw: list | None = None) -> tuple[bytes, bytes]:
    """(key, value) of a bars record: some of one symbol's bars as columns,
    in that symbol's order (stored history: `cuts publish`, `cuts backfill`).
    `times`: ISO texts; `n` / `vw`: None when all unknown, else lists with
    None (or NaN) for unknown entries. Same field names and values as a bar:
    {"T":"bars","S":"AAPL","t":[..],"o":[..],"h":[..],"l":[..],"c":[..],"v":[..],"n":[..],"vw":[..]}"""
    obj = {"T": "bars", "S": symbol, "t": times, "o": o, "h": h, "l": lo, "c": c, "v": v}
    for name, col in (("n", n), ("vw", vw)):
        if col is not None:
            col = [None if x is None or x != x else x for x in col]
            if any(x is not None for x in col):
                obj[name] = col
    # json writes floats as repr (exact) and non-finite ones as NaN / Infinity, as encode_bar
    return symbol.encode(), json.dumps(obj, separators=(",", ":")).encode()


def encode_watermark(ts: int) -> bytes:
    """Value of the marker for watermark `ts` (a minute start): "minute ts - 60
    is complete". Its key is None."""
    ts = int(ts)
    if ts % MINUTE:
        raise ValueError(f"watermark {ts} is not on a minute")
    return f'{{"T":"w","t":"{iso_minute(ts - MINUTE)}"}}'.encode()


def _number(obj: dict, name: str, optional: bool = False):
    x = obj.get(name)
    if x is None and name not in obj:
        return (None, None) if optional else (None, f"missing field {name}")
    return _number_value(x, name, optional)


def _number_value(x, label: str, optional: bool = False):
    """(float, None) or (None, error) for a JSON value (None: null)."""
    if x is None:
        return None, None if optional else f"field {label} is null"
    if type(x) is float:
        return x, None
    if type(x) is int:  # not bool: type() is exact
        try:
            return float(x), None
        except OverflowError:
            return None, f"field {label}: number out of range"
    return None, f"field {label}: expected a number, got {type(x).__name__}"


def decode_record(key: bytes | None, value: bytes | None):
    """A record of the bars topic -> `Bar` | `WatermarkRecord` | `DecodeError`.
    Never raises. The reference: `KafkaBarSource` decodes the common case
    faster (msgspec, columns) and sends everything else here; both must
    decide alike (tests/test_kafka_fastpath.py compares them)."""
    try:
        return _decode(key, value)
    except Exception as exc:  # pragma: no cover - safety net: malformed input must not stop the flow
        return DecodeError(f"unexpected {_one_line(exc)}")


def _decode(key, value):
    if value is None:
        return DecodeError("no value (tombstone)")
    try:
        obj = json.loads(value)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        return DecodeError(f"not JSON: {_one_line(exc)}"[:200])
    if not isinstance(obj, dict):
        return DecodeError(f"not a JSON object: {type(obj).__name__}")
    kind = obj.get("T")
    if kind == "b":
        symbol = _symbol_of(key, obj, "bar")
        if type(symbol) is DecodeError:
            return symbol
        t = obj.get("t")
        if t is None:
            return DecodeError("missing field t")
        ts = _parse_time(t)
        if ts is None:
            return DecodeError(f"field t: not a time: {str(t)[:40]!r}")
        o, err = _number(obj, "o")
        if err:
            return DecodeError(err)
        h, err = _number(obj, "h")
        if err:
            return DecodeError(err)
        lo, err = _number(obj, "l")
        if err:
            return DecodeError(err)
        c, err = _number(obj, "c")
        if err:
            return DecodeError(err)
        v, err = _number(obj, "v")
        if err:
            return DecodeError(err)
        n, err = _number(obj, "n", optional=True)
        if err:
            return DecodeError(err)
        vw, err = _number(obj, "vw", optional=True)
        if err:
            return DecodeError(err)
        return Bar(symbol, ts, o, h, lo, c, v, n, vw)
    if kind == "bars":
        return _decode_bars(key, obj)
    if kind == "w":
        t = obj.get("t")
        if t is None:
            return DecodeError("marker: missing field t")
        ts = _parse_time(t)
        if ts is None:
            return DecodeError(f"marker: field t: not a time: {str(t)[:40]!r}")
        if ts % MINUTE:
            return DecodeError(f"marker: field t not on a minute: {t!r}")
        return WatermarkRecord(ts + MINUTE)
    if kind == "c":
        return _decode_control(obj)
    if kind is None:
        return DecodeError("missing field T")
    return DecodeError(f"unknown record type T={str(kind)[:20]!r}")


def _symbol_of(key, obj: dict, kind: str):
    """The record's symbol S, which its key must be (it decides the
    partition), or a DecodeError naming what is wrong."""
    prefix = "" if kind == "bar" else f"{kind}: "
    symbol = obj.get("S")
    if not isinstance(symbol, str):
        return DecodeError(f"{prefix}missing field S" if symbol is None else f"{prefix}field S: expected a string")
    if key is None:
        return DecodeError(f"{kind} without key (the key must be the symbol)")
    if key != symbol.encode("utf-8", "surrogatepass"):
        return DecodeError(f"{prefix}key {key[:40]!r} is not the symbol {symbol[:40]!r}")
    return symbol


def _decode_bars(key, obj: dict):
    symbol = _symbol_of(key, obj, "bars")
    if type(symbol) is DecodeError:
        return symbol
    unknown = set(obj) - {"T", "S", "t", "o", "h", "l", "c", "v", "n", "vw"}
    if unknown:
        return DecodeError(f"bars: unknown field {sorted(unknown)[0][:20]!r}")
    times = obj.get("t")
    if not isinstance(times, list) or not times:
        return DecodeError("bars: field t: expected a non-empty list of times")
    ts = []
    for i, text in enumerate(times):
        t = _parse_time(text)
        if t is None:
            return DecodeError(f"bars: field t[{i}]: not a time: {str(text)[:40]!r}")
        ts.append(t)
    cols = {}
    for name in ("o", "h", "l", "c", "v", "n", "vw"):
        optional = name in ("n", "vw")
        col = obj.get(name)
        if col is None and optional:
            cols[name] = [None] * len(ts)
            continue
        if not isinstance(col, list) or len(col) != len(ts):
            return DecodeError(f"bars: field {name}: expected a list of {len(ts)} numbers")
        values = []
        for i, x in enumerate(col):
            x, err = _number_value(x, f"{name}[{i}]", optional)
            if err:
                return DecodeError(f"bars: {err}")
            values.append(x)
        cols[name] = values
    return BarsRecord(symbol, [Bar(symbol, *row) for row in zip(
        ts, cols["o"], cols["h"], cols["l"], cols["c"], cols["v"], cols["n"], cols["vw"])])


@dataclass(frozen=True)
class ControlRecord:
    """A kill-switch message (`cuts halt` / `cuts resume`) in every partition."""

    control_id: str
    action: str  # halt | resume
    flatten: bool
    who: str
    why: str


def encode_control(rec: ControlRecord) -> bytes:
    return json.dumps({"T": "c", "id": rec.control_id, "action": rec.action, "flatten": rec.flatten,
                       "who": rec.who, "why": rec.why}, separators=(",", ":")).encode()


def _decode_control(obj: dict):
    cid, action, flatten = obj.get("id"), obj.get("action"), obj.get("flatten", False)
    who, why = obj.get("who", ""), obj.get("why", "")
    if not isinstance(cid, str) or not cid:
        return DecodeError("control: field id: expected a non-empty string")
    if action not in ("halt", "resume"):
        return DecodeError(f"control: field action: expected halt or resume, not {str(action)[:20]!r}")
    if not isinstance(flatten, bool) or not isinstance(who, str) or not isinstance(why, str):
        return DecodeError("control: flatten must be a boolean, who and why strings")
    return ControlRecord(cid, action, flatten, who[:200], why[:500])


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def encode_dead_letter(reason: str, topic: str, partition: int, offset: int,
                       key: bytes | None, value: bytes | None, detail: str = "") -> tuple[bytes, bytes]:
    """(key, value) of a dead-letter-topic record. The key is the origin
    `topic/partition@offset`, so a copy written again after a restart
    (at-least-once) is recognisably the same; the value carries the reason and
    the original bytes (base64; null stays null)."""
    origin = f"{topic}/{partition}@{offset}"
    value = {"reason": reason, "detail": detail, "topic": topic, "partition": int(partition),
             "offset": int(offset), "key_b64": _b64(key), "value_b64": _b64(value)}
    return origin.encode(), json.dumps(value, separators=(",", ":")).encode()


def iso_times(ts: np.ndarray) -> np.ndarray:
    """ISO text ('...Z') of epoch seconds, vectorised over distinct values."""
    ts = np.asarray(ts, dtype=np.int64)
    if not len(ts):
        return np.zeros(0, dtype=object)
    uniq, inverse = np.unique(ts, return_inverse=True)
    text = np.char.add(np.datetime_as_string(uniq.astype("datetime64[s]"), unit="s"), "Z")
    return text.astype(object)[inverse]



# The fast path of the source. `decode_record` is the definition of what a
# record means; `_BarPartition.next_batch` decodes the common case faster with
# the same decisions:
#   - msgspec decodes a value straight into `_WireBar` / `_WireMarker`, checking
#     the JSON and the field types in C (a float field takes a JSON int, as
#     `_number` does, and refuses bools, strings and nulls). Only what it
#     accepts takes the fast path; anything it refuses (malformed JSON, a wrong
#     type, a missing field, an unknown `T`, an unknown field, NaN/Infinity
#     literals, numbers out of range, byte-order marks, lone surrogates, ...)
#     goes through `decode_record`, so every error and every lenient case is
#     decided there, once. Unknown fields are refused so that nothing is ever
#     skipped unread (json.loads fails on deep nesting, a skipper would not).
#   - the key, the time text and the marker's minute are checked in Python as
#     in `_decode`; a key seen before maps to its symbol through the batch's
#     group table, a time text to epoch seconds through `_ISO_CACHE`.
# tests/test_kafka_fastpath.py runs both paths on valid, malformed and fuzzed
# payloads and requires identical items.
class _WireBar(msgspec.Struct, tag_field="T", tag="b", forbid_unknown_fields=True, gc=False):
    S: str
    t: str
    o: float
    h: float
    l: float  # noqa: E741 - the wire name
    c: float
    v: float
    n: float | None = None
    vw: float | None = None


class _WireMarker(msgspec.Struct, tag_field="T", tag="w", forbid_unknown_fields=True, gc=False):
    t: str


class _WireBars(msgspec.Struct, tag_field="T", tag="bars", forbid_unknown_fields=True, gc=False):
    # column lengths, empty blocks and time texts are checked in Python
    S: str
    t: list[str]
    o: list[float]
    h: list[float]
    l: list[float]  # noqa: E741 - the wire name
    c: list[float]
    v: list[float]
    n: list[float | None] | None = None
    vw: list[float | None] | None = None


_WIRE = msgspec.json.Decoder(_WireBar | _WireMarker | _WireBars)
