"""Kafka source without a broker: `_BarPartition`'s fast path is checked
against `decode_record` (parametrised and fuzzed), and its raw inner
partition against Bytewax's own (fake consumer).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import KafkaError as ConfluentKafkaError
from confluent_kafka import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import connectors.kafka.columns as kafka_columns
import connectors.kafka.partition as kafka_mod
from connectors.kafka.codec import (
    BarsRecord,
    WatermarkRecord,
    decode_record,
    encode_bar,
    encode_bars,
    encode_watermark,
)
from connectors.kafka.source import KafkaBarSource
from operators.columnar import BarBlock
from operators.ordering import END_OF_TIME, Chunk, Watermark
from operators.symbol_stage import bar_payload
from operators.types import Bar, DeadLetter

T0 = 1704205800  # 2024-01-02T14:30:00Z


sys.path.insert(0, str(Path(__file__).parent))
from test_kafka_codec import MALFORMED, RECORDED_BAR, _bar_json, bar  # noqa: E402

# ------------------------------------------------------------------ fast path = reference
# `_BarPartition.next_batch` decodes with msgspec and builds columns directly;
# `decode_record` (json + `_number`) defines what a record means. The oracle
# below is the source's algorithm written on `decode_record` (as it was before
# the fast path): both must give identical items, dead letters and copies.

def FakeMessage(key, value, offset, ts_ms=T0 * 1000 + 5, error=None, partition=0, topic="t"):  # noqa: N802
    """A real confluent_kafka.Message, as the consumer hands them out."""
    return Message(topic=topic, partition=partition, offset=offset, key=key, value=value, error=error,
                   timestamp=(1, ts_ms) if ts_ms is not None else (0, -1))


class FakeInner:
    def __init__(self, batches, eof_after=False):
        self.batches = list(batches)
        self.eof_after = eof_after
        self._eof = False

    def next_batch(self):
        if self._eof:
            raise StopIteration()
        batch = self.batches.pop(0)
        if not self.batches and self.eof_after:
            self._eof = True
        return batch

    def snapshot(self):
        return None

    def close(self):
        pass


class FakeWriter:
    def __init__(self):
        self.calls = []

    def __call__(self, topic, partition, copies):
        self.calls.append((topic, partition, list(copies)))

    def release(self):
        pass


def _reference_block(symbol, bars):
    n = len(bars)
    ts = np.fromiter((b.ts for b in bars), dtype=np.int64, count=n)
    cols = [np.fromiter((getattr(b, f) for b in bars), dtype=np.float64, count=n)
            for f in ("open", "high", "low", "close", "volume")]
    tc = [b.trade_count for b in bars]
    vw = [b.vwap for b in bars]
    tc = np.array(tc, dtype=np.float64) if any(x is not None for x in tc) else None
    vw = np.array(vw, dtype=np.float64) if any(x is not None for x in vw) else None
    return BarBlock(symbol, ts, *cols, tc, vw)


class ReferencePartition:
    """The source's batch -> items mapping, record by record through decode_record."""

    def __init__(self, topic, partition, tail, seq, watermark):
        self.partition, self.prefix, self.tail = partition, f"{topic}/{partition}@", tail
        self.seq, self.watermark, self.ended = seq, watermark, False
        self.copies = []

    def items(self, msgs, eof):
        p, prefix = self.partition, self.prefix
        groups, copies = {}, []
        start = watermark = self.watermark
        for m in msgs:
            rec = decode_record(m.key(), m.value())
            if isinstance(rec, Bar):
                g = groups.setdefault(rec.symbol, ([], [], []))
                if rec.ts < watermark:
                    g[2].append(DeadLetter(rec.symbol, rec.ts, "late", f"{prefix}{m.offset()}",
                                           bar_payload(rec)))
                else:
                    g[0].append(rec)
                    g[1].append(m.offset())
            elif isinstance(rec, BarsRecord):  # each bar at the record's position, origin offset#k
                g = groups.setdefault(rec.symbol, ([], [], []))
                for k, b in enumerate(rec.bars):
                    if b.ts < watermark:
                        g[2].append(DeadLetter(b.symbol, b.ts, "late", f"{prefix}{m.offset()}#{k}",
                                               bar_payload(b)))
                    else:
                        g[0].append(b)
                        g[1].append(f"{m.offset()}#{k}")
            elif isinstance(rec, WatermarkRecord):
                watermark = max(watermark, rec.ts)
            else:  # one group for undecodable records (None: no symbol's key), symbol ""
                g = groups.setdefault(None, ([], [], []))
                _, ms = m.timestamp()
                payload = json.dumps({"error": rec.reason, "key": kafka_mod._text(m.key()),
                                      "value": kafka_mod._text(m.value())})
                symbol = kafka_mod._text(m.key(), 40) if m.key() is not None else ""
                g[2].append(DeadLetter(symbol, ms // 1000 if ms > 0 else 0, "undecodable",
                                       f"{prefix}{m.offset()}", payload))
                copies.append((rec.reason, m.offset(), m.key(), m.value()))
        if copies:
            self.copies.append(copies)
        items, seq = [], self.seq
        for symbol, (bars, offsets, dead) in groups.items():
            symbol = "" if symbol is None else symbol
            block = _reference_block(symbol, bars) if bars else kafka_columns._empty_block(symbol)
            items.append(Chunk(p, seq, symbol, block, offsets, prefix, dead))
            seq += 1
        if watermark > start:
            items.append(Watermark(p, seq, watermark))
            seq += 1
        if not self.tail and not self.ended and eof:
            self.ended, watermark = True, END_OF_TIME
            items.append(Watermark(p, seq, END_OF_TIME))
            seq += 1
        self.seq, self.watermark = seq, watermark
        return items


def _same_array(x, y):
    if x is None or y is None:
        return x is None and y is None
    return x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()  # exact bits


def assert_same_items(got, want):
    assert [type(i) for i in got] == [type(i) for i in want]
    for g, w in zip(got, want):
        if isinstance(w, Watermark):
            assert g == w
            continue
        assert (g.partition, g.seq, g.symbol) == (w.partition, w.seq, w.symbol)
        assert g.origin_prefix == w.origin_prefix
        assert len(g.origins) == len(w.origins) and list(g.origins) == w.origins
        assert all(type(o) in (int, str) for o in g.origins)
        assert g.dead_letters == w.dead_letters
        assert g.bars.symbol == w.bars.symbol
        for f in ("ts", "open", "high", "low", "close", "volume", "trade_count", "vwap"):
            assert _same_array(getattr(g.bars, f), getattr(w.bars, f)), (g.symbol, f)


def run_both(batches, *, watermark=-1, seq=0, tail=False, eof=True):
    """Feed the same message batches to the source partition and the oracle."""
    writer = FakeWriter()
    part = kafka_mod._BarPartition(FakeInner(batches, eof_after=eof), "bars", 2, tail, seq, watermark,
                                   "id", writer)
    ref = ReferencePartition("bars", 2, tail, seq, watermark)
    for batch in batches:
        got = part.next_batch()
        assert_same_items(got, ref.items(batch, eof and batch is batches[-1]))
        assert (part.seq, part.watermark) == (ref.seq, ref.watermark)
    assert [c for _, _, c in writer.calls] == ref.copies
    return part


def _decision(key, value):
    """What the source did with one record: its items (watermark reset to -1)."""
    return run_both([[FakeMessage(key, value, 7)]], eof=False)


RAW_BARS = [
    RECORDED_BAR,
    encode_bar(bar("BRK.B", 3, 0.1 + 0.2, n=5.0, vw=1e-7)),
    encode_bar(Bar("X", T0, float("nan"), float("inf"), -0.0, 1.0, -1.0)),  # NaN literals: json only
    (b"AAPL", _bar_json(v=12345, n=7)),  # ints for floats
    (b"AAPL", _bar_json(o=-0, h=-0.0, l=1e-400, c=1e308)),
    (b"AAPL", _bar_json(o=2**64 + 1, h=-(2**63) - 1, l=9007199254740993, c=10**300)),
    (b"AAPL", _bar_json(o=10**400)),  # out of range for a float
    (b"AAPL", b'{"T":"b","S":"AAPL","t":"2024-01-02T14:30:00Z","o":1e400,"h":1,"l":1,"c":1,"v":1}'),
    (b"AAPL", b' {"v":1,"c":1,"l":1,"h":1,"o":1,"t":"2024-01-02T14:30:00Z","S":"AAPL","T":"b"}\n'),
    (b"AAPL", b'{"T":"b","S":"AAPL","t":"2024-01-02T14:30:00Z","o":1,"o":true,"h":1,"l":1,"c":1,"v":1}'),
    (b"AAPL", b'{"T":"b","S":"AAPL","t":"2024-01-02T14:30:00Z","o":true,"o":1,"h":1,"l":1,"c":1,"v":1}'),
    (b"AAPL", b'{"T":"b","S":"MSFT","S":"AAPL","t":"2024-01-02T14:30:00Z","o":1,"h":1,"l":1,"c":1,"v":1}'),
    (b"AAPL", b'{"T":"w","T":"b","S":"AAPL","t":"2024-01-02T14:30:00Z","o":1,"h":1,"l":1,"c":1,"v":1}'),
    (b"AAPL", b'{"T":"b","S":"AAPL","t":"2024-01-02T14:30:00Z","o":1,"h":1,"l":1,"c":1,"v":1,"x":'
              + b"[" * 900 + b"]" * 900 + b"}"),  # json's recursion limit, not msgspec's
    (b"AAPL", b'{"T":"b","S":"AAPL","t":"2024-01-02T14:30:00Z","o":1,"h":1,"l":1,"c":1,"v":1,'
              b'"x":{"y":[1,"z"]}}'),
    (b"AAPL", b"\xef\xbb\xbf" + _bar_json()),  # a byte-order mark: json reads it
    (b"AAPL", _bar_json().decode().encode("utf-16")),  # json detects UTF-16
    ("\ud800".encode("utf-8", "surrogatepass"), _bar_json(S="\ud800")),  # a lone surrogate
    ("\ud800".encode("utf-8", "surrogatepass"), _bar_json(S="\ud800").replace(b"\\ud800", b"\xed\xa0\x80")),
    ("é".encode(), _bar_json(S="é")),
    (b"AAPL", _bar_json(t="2024-01-02T14:30:00+00:00", n=None, vw=None)),
    (b"AAPL", _bar_json(t="2024-01-02T14:30:17Z")),
    (b"AAPL", _bar_json(t="2024-01-02 14:30")),
    (b"AAPL", _bar_json(t="")),
    (b"AAPL", _bar_json(t="x" * 100)),
]
def _bars_json(count=2, **change):
    obj = {"T": "bars", "S": "AAPL", "t": [f"2024-01-02T14:{30 + i}:00Z" for i in range(count)],
           "o": [1.0] * count, "h": [2.0] * count, "l": [0.5] * count, "c": [1.5] * count,
           "v": [10] * count}
    obj.update(change)
    return json.dumps({k: v for k, v in obj.items() if v is not ...}).encode()


RAW_BARS_RECORDS = [
    encode_bars("AAPL", ["2024-01-02T14:30:00Z", "2024-01-02T14:31:00Z"], [1.5, 2.5], [3.0, 3.0],
                [1.0, 1.0], [2.0, 2.0], [10.0, 20.0], [5.0, None], [float("nan"), 1.25]),
    encode_bars("BRK.B", ["2024-01-02T14:30:00Z"], [0.1 + 0.2], [1.0], [0.0], [0.5], [1.0]),
    (b"AAPL", _bars_json(count=3, v=[1, 2, 3])),
    (b"AAPL", _bars_json(count=2, n=[1, None], vw=None)),
    (b"AAPL", _bars_json(count=2, n=None, vw=[None, None])),
    (b"AAPL", _bars_json(count=2, t=["2024-01-02T14:30:00Z", "2024-01-02T14:29:00+00:00"])),  # out of order
    (b"AAPL", _bars_json(count=2, t=["2024-01-02T14:30:00Z", "2024-01-02T14:30:00Z"])),  # a duplicate
    (b"AAPL", _bars_json(count=2, t=["2024-01-02T14:30:00Z", "nope"])),
    (b"AAPL", _bars_json(count=2, t=["2024-01-02T14:30:00Z", 5])),
    (b"AAPL", _bars_json(count=2, t="2024-01-02T14:30:00Z")),
    (b"AAPL", _bars_json(count=0)),
    (b"AAPL", _bars_json(count=2, o=[1.0])),  # a short column
    (b"AAPL", _bars_json(count=2, n=[1.0])),
    (b"AAPL", _bars_json(count=2, c=[1.0, None])),
    (b"AAPL", _bars_json(count=2, c=[1.0, True])),
    (b"AAPL", _bars_json(count=2, c=[1.0, "2"])),
    (b"AAPL", _bars_json(count=2, c=[1.0, 10**400])),
    (b"AAPL", _bars_json(count=2, c=[1.0, float("inf")])),
    (b"AAPL", _bars_json(count=2, c=1.0)),
    (b"AAPL", _bars_json(count=2, v=...)),
    (b"AAPL", _bars_json(count=2, x=[1])),
    (b"MSFT", _bars_json(count=2)),
    (None, _bars_json(count=2)),
    (b"AAPL", _bars_json(count=2, S=5)),
]
RAW_MARKERS = [
    (None, encode_watermark(T0 + 120)),
    (b"AAPL", encode_watermark(T0 + 60)),
    (None, b'{"T":"w","t":"2024-01-02T14:30:00+01:00"}'),
    (None, b'{"T":"w","t":"2024-01-02T14:30:00","x":1}'),
    (None, b'{"t":"2024-01-02T14:30:00Z","T":"w","T":"w"}'),
    (None, b'{"T":"w","t":"2024-01-02T14:30:01Z"}'),
    (None, b'{"T":"w","t":null}'),
    (None, b'{"T":"w","t":"2024-13-02T14:30:00Z"}'),
]


@pytest.mark.parametrize("key,value", RAW_BARS + RAW_BARS_RECORDS + RAW_MARKERS,
                         ids=range(len(RAW_BARS + RAW_BARS_RECORDS + RAW_MARKERS)))
def test_fast_path_decides_like_decode_record_on_recorded_and_odd_records(key, value):
    _decision(key, value)


@pytest.mark.parametrize("key,value,reason", MALFORMED)
def test_fast_path_decides_like_decode_record_on_malformed_records(key, value, reason):
    _decision(key, value)


def test_fast_path_late_bars_markers_and_groups_like_the_reference():
    enc = encode_bar
    batch1 = [FakeMessage(*enc(bar("AAA", 0)), 0), FakeMessage(*enc(bar("BBB", 0, n=3.0)), 1),
              FakeMessage(None, encode_watermark(T0 + 120), 2), FakeMessage(*enc(bar("AAA", 1)), 3),  # late
              FakeMessage(b"AAA", b"{broken", 4, ts_ms=None), FakeMessage(*enc(bar("CCC", 2)), 6),
              FakeMessage(b"ZZZ", enc(bar("AAA", 3))[1], 7), FakeMessage(None, encode_watermark(T0 + 60), 8),
              FakeMessage(*enc(bar("BBB", 2, vw=1.5)), 9)]
    batch2 = [FakeMessage(*enc(bar("BBB", 1)), 10), FakeMessage(None, None, 11),
              FakeMessage(*enc(bar("AAA", 4)), 12)]
    part = run_both([batch1, [], batch2])
    assert part.watermark == END_OF_TIME and part.ended
    run_both([batch1, batch2], tail=True, seq=40, watermark=T0 + 60)


class PollingInner(FakeInner):
    """FakeInner whose polls hold at most `_batch_size` messages (as `_RawKafkaPartition`)."""

    def __init__(self, polls, poll_size, eof_after=False):
        super().__init__(polls, eof_after)
        self._batch_size = poll_size
        self.calls = 0

    def next_batch(self):
        self.calls += 1
        batch = super().next_batch()
        assert len(batch) <= self._batch_size
        return batch


@pytest.mark.parametrize("tail", [False, True])
def test_full_polls_are_taken_into_one_batch_like_their_concatenation(tail):
    """While polls come back full, one batch takes several of them (up to
    max_batch): its items are those of the concatenated messages, so a batch
    boundary changes nothing but the item count."""
    enc = encode_bar
    msgs = [FakeMessage(*enc(bar("AAA", 0)), 0), FakeMessage(*enc(bar("BBB", 0, n=3.0)), 1),
            FakeMessage(None, encode_watermark(T0 + 60), 2), FakeMessage(*enc(bar("AAA", 0)), 3),  # late
            FakeMessage(b"AAA", b"{broken", 4), FakeMessage(*enc(bar("CCC", 1)), 5),
            FakeMessage(*enc(bar("AAA", 1, vw=2.5)), 6), FakeMessage(None, encode_watermark(T0 + 120), 7),
            FakeMessage(*enc(bar("BBB", 2)), 8), FakeMessage(*enc(bar("AAA", 2)), 9),
            FakeMessage(*enc(bar("CCC", 2)), 10)]
    polls = [msgs[0:3], msgs[3:6], msgs[6:9], msgs[9:10], msgs[10:11]]  # full, full, full, short | next batch
    inner = PollingInner(polls, 3, eof_after=not tail)
    writer = FakeWriter()
    part = kafka_mod._BarPartition(inner, "bars", 2, tail, 5, -1, "id", writer, max_batch=100)
    ref = ReferencePartition("bars", 2, tail, 5, -1)
    assert_same_items(part.next_batch(), ref.items(msgs[0:10], False))
    assert inner.calls == 4  # three full polls, then a short one ends the batch
    assert_same_items(part.next_batch(), ref.items(msgs[10:11], not tail))
    assert (part.seq, part.watermark) == (ref.seq, ref.watermark)
    assert [c for _, _, c in writer.calls] == ref.copies  # one copy call per batch


def test_a_batch_stops_at_max_batch_and_at_the_end_of_the_partition():
    msgs = [FakeMessage(*encode_bar(bar("AAA", i)), i) for i in range(7)]
    inner = PollingInner([msgs[0:2], msgs[2:4], msgs[4:6], msgs[6:7]], 2)
    part = kafka_mod._BarPartition(inner, "bars", 0, True, 0, -1, None, None, max_batch=4)
    ref = ReferencePartition("bars", 0, True, 0, -1)
    assert_same_items(part.next_batch(), ref.items(msgs[0:4], False))  # 4 messages: the cap
    assert_same_items(part.next_batch(), ref.items(msgs[4:7], False))  # full poll, then a short one
    assert inner.calls == 4
    inner = PollingInner([msgs[0:2], msgs[2:4], msgs[4:6]], 2, eof_after=True)
    inner.batches[1:] = []  # the partition ends after a full poll: nothing is asked after the end
    inner._eof = False
    part = kafka_mod._BarPartition(inner, "bars", 0, False, 0, -1, None, None, max_batch=100)
    ref = ReferencePartition("bars", 0, False, 0, -1)
    assert_same_items(part.next_batch(), ref.items(msgs[0:2], True))
    assert inner.calls == 1 and part.ended
    with pytest.raises(StopIteration):
        part.next_batch()


class SlicingInner(FakeInner):
    """A partition holding `msgs`: each poll takes up to `_batch_size` of them."""

    def __init__(self, msgs, poll_size):
        super().__init__([])
        self.msgs, self._batch_size, self.polls = list(msgs), poll_size, []

    def next_batch(self):
        batch, self.msgs = self.msgs[:self._batch_size], self.msgs[self._batch_size:]
        self.polls.append(len(batch))
        return batch


def test_bars_records_shrink_the_polls_so_a_batch_holds_about_max_bars():
    """A poll of 1,000 bars records would be a batch of up to a million bars:
    after the first (small) poll the partition asks for as many records as
    fit the bar budget."""
    times = [f"2024-01-02T{14 + i // 60:02d}:{i % 60:02d}:00Z" for i in range(100)]
    msgs = [FakeMessage(*encode_bars(sym, times, *[[1.0] * 100] * 5), i)
            for i, sym in enumerate(["AAA", "BBB", "CCC"] * 10)]
    inner = SlicingInner(msgs, poll_size=10)
    part = kafka_mod._BarPartition(inner, "bars", 0, True, 0, -1, None, None, max_batch=1000, max_bars=250)
    ref = ReferencePartition("bars", 0, True, 0, -1)
    assert_same_items(part.next_batch(), ref.items(msgs[0:10], False))  # the first poll: 10 records
    assert_same_items(part.next_batch(), ref.items(msgs[10:13], False))  # 2 fit, 1 more to reach 250
    assert inner.polls == [10, 2, 1]
    one_bar = [FakeMessage(*encode_bar(bar("AAA", i)), 100 + i) for i in range(30)]
    inner.msgs = one_bar
    part.next_batch()
    assert inner.polls[3:] == [2, 4, 9, 10, 5]  # back to full polls as single bars keep coming


def test_a_keyless_bar_of_symbol_empty_after_an_undecodable_record_is_undecodable_too():
    """The undecodable records' group has symbol "": a keyless bar or bars
    record with S "" must not slip into it as a bar."""
    run_both([[FakeMessage(None, b"{broken", 0), FakeMessage(None, _bar_json(S=""), 1),
               FakeMessage(None, _bars_json(S=""), 2), FakeMessage(b"", _bar_json(S=""), 3)]])


def test_a_poll_of_markers_alone_does_not_open_the_next_poll_to_a_thousand_bars_records():
    """Published history: records of 1,000 bars, a marker after every two.
    When a batch's last small poll holds only a marker, the estimate of bars
    per message must survive it: every batch stays near max_bars (the first
    one, before anything is known, is one poll of 16 messages)."""
    minutes = [f"2024-01-{5 + i // 390:02d}T{14 + (i % 390) // 60:02d}:{i % 60:02d}:00Z" for i in range(1000)]
    msgs, offset = [], 0
    for step in range(30):
        for k in range(2):
            msgs.append(FakeMessage(*encode_bars(f"S{k}", minutes, *[[1.0] * 1000] * 5), offset))
            offset += 1
        msgs.append(FakeMessage(None, encode_watermark(T0 + 60 * (step + 1)), offset))
        offset += 1
    inner = SlicingInner(msgs, poll_size=1000)
    part = kafka_mod._BarPartition(inner, "bars", 0, True, 0, -1, None, None, max_batch=10_000, max_bars=1_500)
    sizes = []
    while inner.msgs:
        sizes.append(sum(len(i.bars) for i in part.next_batch() if isinstance(i, Chunk)))
    assert sum(sizes) == 60_000 and sizes[0] == 11_000, sizes
    assert max(sizes[1:]) <= 2_000, sizes  # without the rule: 11,000, 2,000, then 47,000


def test_fast_path_takes_published_records_and_leaves_the_rest_to_decode_record(monkeypatch):
    slow = []
    real = kafka_mod._BarPartition._decode_slow
    monkeypatch.setattr(kafka_mod._BarPartition, "_decode_slow",
                        lambda self, m, *a: (slow.append(m.offset()), real(self, m, *a))[1])
    published = [encode_bar(bar("AAA", 0)), encode_bar(bar("BBB", 0, n=4.0, vw=1.5)),
                 (None, encode_watermark(T0 + 60)), (b"AAA", _bar_json(S="AAA", v=12, n=3)),
                 (b"AAA", _bar_json(S="AAA", t="2024-01-02T14:31:00", n=None)),
                 encode_bars("AAA", ["2024-01-02T14:32:00Z", "2024-01-02T14:33:00Z"], [1.0, 2], [3.0, 3],
                             [0.5, 0.5], [1.0, 1], [7.0, 8], None, [None, 1.5])]
    other = [(b"AAA", _bar_json(S="AAA", x=[])),  # an unknown field: never skipped unread
             (b"AAA", _bar_json(S="AAA", o=float("nan"))), (b"AAB", _bar_json(S="AAA")),
             (None, b'{"T":"w","t":"2024-01-02T14:30:00Z","x":1}'), (b"AAA", None),
             (b"AAA", _bars_json(S="AAA", o=[1.0]))]  # a short column
    run_both([[FakeMessage(k, v, i) for i, (k, v) in enumerate(published + other)]])
    assert slow == list(range(len(published), len(published) + len(other)))


def test_a_bars_record_across_the_watermark_dead_letters_its_late_bars_each_with_its_own_origin():
    times = ["2024-01-02T14:29:00Z", "2024-01-02T14:31:00Z", "2024-01-02T14:28:00Z", "2024-01-02T14:32:00Z"]
    record = encode_bars("AAA", times, [1.0, 2.0, 3.0, 4.0], [5.0] * 4, [0.5] * 4, [1.0] * 4, [9.0] * 4,
                         [1.0, None, 3.0, 4.0])
    batch = [FakeMessage(*record, 40), FakeMessage(*encode_bar(bar("AAA", 4)), 41)]
    run_both([batch], watermark=T0 + 60)  # the fast path = the reference
    p = kafka_mod._BarPartition(FakeInner([batch]), "bars", 0, True, 0, T0 + 60, None, None)
    chunk = p.next_batch()[0]
    assert [d.source for d in chunk.dead_letters] == ["bars/0@40#0", "bars/0@40#2"]  # minutes 14:29, 14:28
    assert [d.reason for d in chunk.dead_letters] == ["late", "late"]
    assert list(chunk.origins) == ["40#1", "40#3", 41] and chunk.bars.ts.tolist() == [T0 + 60, T0 + 120, T0 + 240]


def _valid_number_text(draw):
    """JSON number text both decoders take, in many spellings."""
    kind = draw(st.sampled_from(["repr", "int", "bigint", "text"]))
    if kind == "repr":
        return repr(draw(st.floats(allow_nan=False, allow_infinity=False)))
    if kind == "int":
        return str(draw(st.integers(-(2**70), 2**70)))
    if kind == "bigint":  # beyond 64 bits, below float overflow
        return str(draw(st.integers(2**64, 10**300)) * draw(st.sampled_from([1, -1])))
    digits = draw(st.text("0123456789", min_size=1, max_size=25)).lstrip("0") or "0"
    frac = draw(st.text("0123456789", min_size=1, max_size=25))
    exp = draw(st.sampled_from(["", "e", "E", "e+", "e-", "E-"]))
    exp = f"{exp}{draw(st.integers(0, 300))}" if exp else ""
    return f"{draw(st.sampled_from(['', '-']))}{digits}.{frac}{exp}"


def _number_text(draw):
    if draw(st.integers(0, 2)):
        return _valid_number_text(draw)
    kind = draw(st.sampled_from(["float", "special", "overflow"]))
    if kind == "float":
        return json.dumps(draw(st.floats(allow_nan=True, allow_infinity=True)))  # NaN/Infinity tokens
    if kind == "overflow":
        return draw(st.sampled_from(["1e400", "-1e400", str(10**400), "1e-400", str(2**1024)]))
    return draw(st.sampled_from(["-0", "0", "-0.0", "1E5", "2.5e+3", "true", "false", "null", '"1.5"',
                                 "[]", "{}", "1.", ".5", "01", "+1", "0x10"]))


VALID_TIMES = ["2024-01-02T14:30:00Z", "2024-01-02T14:31:00Z", "2024-01-02T14:29:00Z",
               "2024-01-02T14:30:00", "2024-01-02T09:30:00-05:00", "2024-01-02T14:30:00.250Z"]
TIMES = VALID_TIMES + ["2024-01-02T14:30:30Z", "nope", "", "2024-01-02T14:30:00ZZ"]


def _json_object(draw, fields):
    fields = draw(st.permutations(fields))
    sep = draw(st.sampled_from([",", ", ", ",\n"]))
    return "{" + sep.join(f"{json.dumps(k)}:{v}" for k, v in fields) + "}"


@st.composite
def raw_records(draw):
    """(key, value): half clean bars (any field order, numbers in any valid
    spelling, optional fields present, null or missing), markers, and odd
    records: wrong types, odd numbers and times, wrong keys, duplicate or
    extra fields, arbitrary JSON, byte damage, tombstones."""
    symbol = draw(st.sampled_from(["AAA", "BBB", "C.X", "é"]))
    key = symbol.encode()
    mode = draw(st.sampled_from(["clean"] * 5 + ["marker"] * 2 + ["odd"] * 3 + ["bars"] * 3))
    if mode == "bars":  # a bars record: clean, or with odd entries, lengths or keys
        return _bars_record(draw, symbol)
    if mode == "clean":
        t = json.dumps(draw(st.sampled_from(VALID_TIMES)))
        fields = [("T", '"b"'), ("S", json.dumps(symbol)), ("t", t)]
        fields += [(f, _valid_number_text(draw)) for f in ("o", "h", "l", "c", "v")]
        for f in ("n", "vw"):
            choice = draw(st.integers(0, 2))
            if choice:
                fields.append((f, "null" if choice == 1 else _valid_number_text(draw)))
        return key, _json_object(draw, fields).encode()
    if mode == "marker":
        t = draw(st.sampled_from(TIMES + [1704205800, None]))
        value = _json_object(draw, [("T", '"w"'), ("t", json.dumps(t))])
        return draw(st.sampled_from([None, None, key])), value.encode()
    symbol = draw(st.sampled_from(["AAA", "BBB", "\ud800"]))
    kind = draw(st.sampled_from(["bar"] * 4 + ["marker", "json"]))
    if kind == "json":
        value = json.dumps(draw(st.recursive(
            st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=5),
            lambda c: st.lists(c, max_size=3) | st.dictionaries(st.sampled_from("TSt"), c, max_size=3),
            max_leaves=6)))
    else:
        if kind == "marker":
            fields = [("T", '"w"'), ("t", json.dumps(draw(st.sampled_from(TIMES))))]
        else:
            t = json.dumps(draw(st.sampled_from(TIMES)))
            fields = [("T", '"b"'), ("S", json.dumps(symbol)), ("t", t)]
            fields += [(f, _number_text(draw)) for f in ("o", "h", "l", "c", "v")]
            for f in ("n", "vw"):
                choice = draw(st.integers(0, 3))
                if choice:
                    fields.append((f, "null" if choice == 1 else _number_text(draw)))
        if draw(st.integers(0, 3)) == 0:  # a duplicate of some field
            fields.append((draw(st.sampled_from(["T", "S", "t", "o", "n"])), draw(st.sampled_from(
                ['"b"', '"w"', '"AAA"', "1", "true", "null", '"2024-01-02T14:30:00Z"']))))
        if draw(st.integers(0, 5)) == 0:  # an unknown field
            fields.append(("x", draw(st.sampled_from(["1", "[[[]]]", '{"a":null}']))))
        value = _json_object(draw, fields)
    data = value.encode("utf-8", "surrogatepass")
    damage = draw(st.integers(0, 7))
    if damage == 0 and data:
        i = draw(st.integers(0, len(data) - 1))
        data = data[:i] + data[i + 1:]
    elif damage == 1 and data:
        i = draw(st.integers(0, len(data) - 1))
        data = data[:i] + bytes([draw(st.integers(0, 255))]) + data[i + 1:]
    elif damage == 2:
        data = None
    key = draw(st.sampled_from([None, b"AAA", symbol.encode("utf-8", "surrogatepass")] * 2 + [b"\xff"]))
    return key, data


def _bars_record(draw, symbol):
    count = draw(st.integers(1, 4))
    odd = draw(st.integers(0, 2)) == 0
    number = _number_text if odd else _valid_number_text
    times = [draw(st.sampled_from(TIMES if odd else VALID_TIMES)) for _ in range(count)]
    fields = [("T", '"bars"'), ("S", json.dumps(symbol)), ("t", json.dumps(times))]
    for f in ("o", "h", "l", "c", "v", "n", "vw"):
        if f in ("n", "vw") and draw(st.integers(0, 2)) == 0:
            continue  # absent
        size = count + (draw(st.sampled_from([0, 0, 0, -1, 1])) if odd else 0)
        if f in ("n", "vw"):
            entries = [draw(st.sampled_from(["null", number(draw)])) for _ in range(max(0, size))]
        else:
            entries = [number(draw) for _ in range(max(0, size))]
        fields.append((f, "[" + ",".join(entries) + "]"))
    if odd and draw(st.integers(0, 3)) == 0:
        fields.append(("x", "1"))
    key = draw(st.sampled_from([symbol.encode(), symbol.encode(), b"AAA", None])) if odd else symbol.encode()
    return key, _json_object(draw, fields).encode()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(raw_records(), max_size=12), min_size=1, max_size=4),
       st.sampled_from([-1, T0 + 60, T0 + 120]), st.booleans())
def test_fast_path_equals_reference_on_fuzzed_batches(batches, watermark, tail):
    offset, msgs = 0, []
    for batch in batches:
        ms = []
        for key, value in batch:
            ms.append(FakeMessage(key, value, offset))
            offset += 1 + (offset % 3 == 0)  # offsets need not be contiguous
        msgs.append(ms)
    run_both(msgs, watermark=watermark, tail=tail, eof=not tail)


@settings(max_examples=200, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False), st.integers(-(2**80), 2**80))
def test_fast_path_reads_every_float_and_int_like_json(x, i):
    for text in (repr(x), json.dumps(x), str(i), f"{x:.17e}", f"{x:.3g}"):
        _decision(b"AAPL", _bar_json().replace(b'"o": 1.0', f'"o": {text}'.encode()))


# ------------------------------------------------------------------ the raw inner partition
class FakeConsumer:
    """Stands in for confluent_kafka.Consumer inside Bytewax's partition."""

    script: list = []
    configs: list = []

    def __init__(self, config):
        self.config = config
        FakeConsumer.configs.append(config)
        self.batches = [list(b) for b in FakeConsumer.script]
        self.assigned = []

    def assign(self, tps):
        self.assigned.append([(tp.topic, tp.partition, tp.offset) for tp in tps])

    def list_topics(self, topic=None, timeout=-1):
        return None

    def consume(self, num, timeout):
        return self.batches.pop(0) if self.batches else []

    def close(self):
        pass


def _eof_message(offset):
    return FakeMessage(None, None, offset, error=ConfluentKafkaError(ConfluentKafkaError._PARTITION_EOF))


def _drain(part):
    out, offsets = [], []
    try:
        while True:
            out.append([(m.key(), m.value(), m.offset()) if isinstance(m, Message)
                        else (m.key, m.value, m.offset) for m in part.next_batch()])
            offsets.append(part.snapshot())
    except StopIteration:
        return out, offsets


@pytest.mark.parametrize("script", [
    [[FakeMessage(b"k", b"v0", 0), FakeMessage(b"k", b"v1", 1)], [],
     [FakeMessage(None, b"v2", 2), _eof_message(3)]],
    [[FakeMessage(b"k", b"v0", 5), _eof_message(6), FakeMessage(b"k", b"v7", 7)],  # EOF mid-batch
     [FakeMessage(b"k", b"v8", 8)]],
    [[_eof_message(0)]],
])
def test_raw_partition_hands_out_what_bytewaxs_partition_does(monkeypatch, script):
    import bytewax.connectors.kafka as bwk

    monkeypatch.setattr(bwk, "Consumer", FakeConsumer)
    monkeypatch.setattr(FakeConsumer, "script", script)
    monkeypatch.setattr(FakeConsumer, "configs", [])
    source = KafkaBarSource("127.0.0.1:9", "bars", tail=False, batch_size=7, add_config={"x.y": "1"},
                            check_identity=False)
    theirs = bwk.KafkaSource.build_part(source, "step", "3-bars", None)
    ours = source._raw_part("step", "bars", 3, None)
    assert isinstance(ours, bwk._KafkaSourcePartition)
    cfg_theirs, cfg_ours = FakeConsumer.configs
    assert set(cfg_theirs) == set(cfg_ours)
    assert {k: v for k, v in cfg_theirs.items() if k != "stats_cb"} == {
        k: v for k, v in cfg_ours.items() if k != "stats_cb"}
    assert ours._consumer.assigned[-1] == theirs._consumer.assigned[-1] == [("bars", 3, -2)]  # BEGINNING
    assert _drain(ours) == _drain(theirs)  # same messages, same snapshots, StopIteration after EOF
    resumed = source._raw_part("step", "bars", 3, 42)
    assert resumed._consumer.assigned[-1] == [("bars", 3, 42)] and resumed.snapshot() == 42


def test_raw_partition_raises_on_consumer_errors(monkeypatch):
    import bytewax.connectors.kafka as bwk

    error = ConfluentKafkaError(ConfluentKafkaError._TRANSPORT)
    monkeypatch.setattr(bwk, "Consumer", FakeConsumer)
    monkeypatch.setattr(FakeConsumer, "script",
                        [[FakeMessage(b"k", b"v", 0), FakeMessage(None, None, 1, error=error)]])
    source = KafkaBarSource("127.0.0.1:9", "bars", tail=True, check_identity=False)
    part = source._raw_part("s", "bars", 0, None)
    with pytest.raises(RuntimeError, match="error consuming"):
        part.next_batch()
    assert bool(error) and bool(ConfluentKafkaError(ConfluentKafkaError._PARTITION_EOF))  # found by any()
