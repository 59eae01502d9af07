"""Kafka connectors, the pure mapping: encoding and decoding recorded and
malformed payloads, dead-letter records, and the publish plan. No broker.
(The broker half is tests/test_kafka.py; the source's fast path against
`decode_record` is tests/test_kafka_fastpath.py.)
"""
from __future__ import annotations

import base64
import json

import numpy as np
import pandas as pd
import pytest

from connectors.files.barfile import frame_to_columns
from connectors.kafka.codec import (
    BarsRecord,
    DecodeError,
    WatermarkRecord,
    decode_record,
    encode_bar,
    encode_bars,
    encode_dead_letter,
    encode_watermark,
)
from connectors.kafka.publish import publish_plan
from operators.types import Bar

T0 = 1704205800  # 2024-01-02T14:30:00Z



def bar(symbol, minute, close=100.0, n=None, vw=None) -> Bar:
    return Bar(symbol, T0 + 60 * minute, close, close + 1, close - 1, close, 1000.0, n, vw)


def columns(rows):
    df = pd.DataFrame(rows, columns=["symbol", "timestamp", "open", "high", "low", "close", "volume"])
    df["timestamp"] = pd.to_datetime(df["timestamp"], unit="s", utc=True)
    return frame_to_columns(df)


# ------------------------------------------------------------------ mapping half
RECORDED_BAR = (b"AAPL", b'{"T":"b","S":"AAPL","o":185.21,"h":185.3,"l":185.1,"c":185.25,'
                         b'"v":12345,"t":"2024-01-02T14:30:00Z","n":120,"vw":185.2231}')


def test_decodes_a_recorded_alpaca_bar():
    rec = decode_record(*RECORDED_BAR)
    assert rec == Bar("AAPL", T0, 185.21, 185.3, 185.1, 185.25, 12345.0, 120.0, 185.2231)
    assert type(rec.volume) is float


def test_bar_round_trips_exactly_with_and_without_optional_fields():
    for b in (Bar("BRK.B", T0, 0.1 + 0.2, 1e-7, 3.0, 123456.789012345, 0.0),
              bar("AAPL", 3, 185.25, n=120.0, vw=185.2231),
              Bar("X", T0, float("nan"), float("inf"), 1.0, 1.0, -1.0)):
        key, value = encode_bar(b)
        assert key == b.symbol.encode()
        obj = json.loads(value)
        assert obj["T"] == "b" and obj["t"] == "2024-01-02T14:30:00Z" or b.symbol == "AAPL"
        assert ("n" in obj) == (b.trade_count is not None) and ("vw" in obj) == (b.vwap is not None)
        back = decode_record(key, value)
        assert isinstance(back, Bar) and back.symbol == b.symbol and back.ts == b.ts
        for f in ("open", "high", "low", "close", "volume", "trade_count", "vwap"):
            x, y = getattr(b, f), getattr(back, f)
            assert x == y or (x != x and y != y), f  # exact floats (NaN stays NaN)


def test_bars_record_round_trips_exactly_with_unknown_trade_counts_and_vwaps():
    times = ["2024-01-02T14:30:00Z", "2024-01-02T14:31:00Z", "2024-01-02T14:30:00Z"]
    key, value = encode_bars("BRK.B", times, [0.1 + 0.2, 2.0, float("nan")], [3.0, 3.0, 3.0],
                             [1e-7, 1.0, 1.0], [2.0, 2.0, 2.0], [10.0, 0.0, -1.0],
                             [5.0, float("nan"), None], [float("nan")] * 3)
    obj = json.loads(value)
    assert key == b"BRK.B" and obj["T"] == "bars" and obj["t"] == times
    assert obj["n"] == [5.0, None, None] and "vw" not in obj  # all unknown: omitted
    rec = decode_record(key, value)
    assert isinstance(rec, BarsRecord) and rec.symbol == "BRK.B"
    assert [(b.ts, b.trade_count, b.vwap) for b in rec.bars] == [(T0, 5.0, None), (T0 + 60, None, None),
                                                                 (T0, None, None)]
    assert rec.bars[0].open == 0.1 + 0.2 and rec.bars[2].open != rec.bars[2].open  # exact; NaN stays NaN


@pytest.mark.parametrize("change,reason", [
    ({"t": []}, "bars: field t: expected a non-empty list of times"),
    ({"t": ["2024-01-02T14:30:00Z", "x"]}, "bars: field t[1]: not a time: 'x'"),
    ({"l": [1.0]}, "bars: field l: expected a list of 2 numbers"),
    ({"c": [1.0, None]}, "bars: field c[1] is null"),
    ({"v": [1.0, True]}, "bars: field v[1]: expected a number, got bool"),
    ({"n": [1, "2"]}, "bars: field n[1]: expected a number, got str"),
    ({"x": 1}, "bars: unknown field 'x'"),
])
def test_a_malformed_bars_record_is_one_decode_error_naming_the_entry(change, reason):
    obj = {"T": "bars", "S": "AAPL", "t": ["2024-01-02T14:30:00Z", "2024-01-02T14:31:00Z"],
           "o": [1, 1], "h": [1, 1], "l": [1, 1], "c": [1, 1], "v": [1, 1], **change}
    assert decode_record(b"AAPL", json.dumps(obj).encode()) == DecodeError(reason)
    assert decode_record(b"MSFT", json.dumps({**obj, **change}).encode()).reason.startswith("bars: key")


def test_marker_encoding():
    value = encode_watermark(T0 + 60)
    assert json.loads(value) == {"T": "w", "t": "2024-01-02T14:30:00Z"}  # minute 14:30 complete
    assert decode_record(None, value) == WatermarkRecord(T0 + 60)
    assert decode_record(b"__watermark__", value) == WatermarkRecord(T0 + 60)
    with pytest.raises(ValueError):
        encode_watermark(T0 + 30)


def _bar_json(**change):
    obj = {"T": "b", "S": "AAPL", "t": "2024-01-02T14:30:00Z", "o": 1.0, "h": 2.0, "l": 0.5,
           "c": 1.5, "v": 10}
    obj.update(change)
    return json.dumps({k: v for k, v in obj.items() if v is not ...}).encode()


MALFORMED = [
    (b"AAPL", None, "tombstone"),
    (b"AAPL", b"", "not JSON"),
    (b"AAPL", b'{"T":"b",', "not JSON"),
    (b"AAPL", b"\xff\xfe\x00garbage", "not JSON"),
    (b"AAPL", b"[" * 100_000, "not JSON"),
    (b"AAPL", b"[1,2]", "not a JSON object"),
    (b"AAPL", b"null", "not a JSON object"),
    (b"AAPL", b'{"S":"AAPL"}', "missing field T"),
    (b"AAPL", b'{"T":"q","S":"AAPL"}', "unknown record type"),
    (b"AAPL", _bar_json(S=...), "missing field S"),
    (b"AAPL", _bar_json(S=7), "field S"),
    (None, _bar_json(), "without key"),
    (b"MSFT", _bar_json(), "not the symbol"),
    (b"AAPL", _bar_json(t=...), "missing field t"),
    (b"AAPL", _bar_json(t="yesterday"), "not a time"),
    (b"AAPL", _bar_json(t=1704205800), "not a time"),
    (b"AAPL", _bar_json(t=[1]), "not a time"),
    (b"AAPL", _bar_json(o="1.0"), "field o: expected a number"),
    (b"AAPL", _bar_json(h=True), "field h: expected a number"),
    (b"AAPL", _bar_json(v=None), "field v is null"),
    (b"AAPL", _bar_json(c=...), "missing field c"),
    (b"AAPL", _bar_json(n="12"), "field n"),
    (b"AAPL", _bar_json(vw=[1]), "field vw"),
    (b"AAPL", _bar_json(o=10**400), "out of range"),
    (None, b'{"T":"w"}', "marker: missing field t"),
    (None, b'{"T":"w","t":"2024-01-02T14:30:30Z"}', "not on a minute"),
    (None, b'{"T":"w","t":42}', "not a time"),
]


@pytest.mark.parametrize("key,value,reason", MALFORMED)
def test_malformed_records_are_decode_errors_not_exceptions(key, value, reason):
    rec = decode_record(key, value)
    assert isinstance(rec, DecodeError), rec
    assert reason in rec.reason


def test_lenient_parts_of_decoding():
    # optional fields null, naive and offset times, sub-second parts dropped (as bar files)
    assert decode_record(b"AAPL", _bar_json(n=None, vw=None)).trade_count is None
    assert decode_record(b"AAPL", _bar_json(t="2024-01-02T14:30:00")).ts == T0
    assert decode_record(b"AAPL", _bar_json(t="2024-01-02T09:30:00-05:00")).ts == T0
    assert decode_record(b"AAPL", _bar_json(t="2024-01-02T14:30:00.999Z")).ts == T0
    # values are not validated here: the symbol stage gives the invalid_* reasons
    assert isinstance(decode_record(b"AAPL", _bar_json(o=-5, t="2024-01-02T14:30:17Z")), Bar)


def test_dead_letter_record_carries_reason_and_original_bytes():
    key, value = encode_dead_letter("undecodable", "bars", 2, 17, b"\xffK", b"{oops", detail="not JSON")
    assert key == b"bars/2@17"
    obj = json.loads(value)
    assert obj["reason"] == "undecodable" and obj["detail"] == "not JSON"
    assert (obj["topic"], obj["partition"], obj["offset"]) == ("bars", 2, 17)
    assert base64.b64decode(obj["key_b64"]) == b"\xffK"
    assert base64.b64decode(obj["value_b64"]) == b"{oops"
    assert json.loads(encode_dead_letter("undecodable", "bars", 0, 0, None, None)[1])["key_b64"] is None


def _check_plan(cols, steps, parts):
    sent = np.concatenate([s.rows for s in steps])
    assert sorted(sent.tolist()) == list(range(len(cols)))  # every row exactly once
    pos = np.empty(len(cols), dtype=np.int64)
    pos[sent] = np.arange(len(sent))
    for sym in set(cols.symbol.tolist()):  # each symbol keeps its row order
        rows = np.flatnonzero(cols.symbol == sym)
        assert (np.diff(pos[rows]) > 0).all()
    done = 0
    marks = [s.watermark for s in steps]
    assert all(b > a for a, b in zip(marks, marks[1:])) and all(m % 60 == 0 for m in marks)
    for s in steps:
        done += len(s.rows)
        assert s.partitions == parts
        assert (cols.ts[sent[done:]] >= s.watermark).all()  # the marker is true
    assert marks[-1] > cols.ts.max()


@pytest.mark.parametrize("seed", range(6))
def test_publish_plan_markers_are_true_and_keep_each_symbols_order(seed):
    rng = np.random.default_rng(seed)
    n = 400
    rows = [(str(rng.choice(["AAA", "BB", "C.X", "DDDD"])), T0 + 60 * int(rng.integers(0, 40))
             + (17 if rng.random() < 0.05 else 0), 1.0, 2.0, 0.5, 1.5, 10.0) for _ in range(n)]
    if seed % 2:  # sorted by symbol, like alpaca-py's BarSet.df
        rows.sort(key=lambda r: r[0])
    cols = columns(rows)
    steps = list(publish_plan(cols, 3))
    _check_plan(cols, steps, (0, 1, 2))
    coarse = list(publish_plan(cols, [0, 1, 2], min_rows=50))
    _check_plan(cols, coarse, (0, 1, 2))
    assert all(len(s.rows) >= 50 for s in coarse[:-1]) and len(coarse) < len(steps)


def test_publish_plan_on_a_time_sorted_file_is_one_marker_per_minute():
    cols = columns([(s, T0 + 60 * m, 1.0, 2.0, 0.5, 1.5, 10.0) for m in range(5) for s in "AB"])
    steps = list(publish_plan(cols, 2))
    assert [s.watermark for s in steps] == [T0 + 60 * (m + 1) for m in range(5)]
    assert [cols.ts[s.rows].tolist() for s in steps] == [[T0 + 60 * m] * 2 for m in range(5)]
