"""Kafka connectors: the pure mapping on recorded and malformed payloads, and
the I/O half against a real broker (embedded Tansu, one per module). The
source's fast path is checked against `decode_record` (parametrised and
fuzzed), and its raw inner partition against Bytewax's own.

No consumer groups are used (the test reader and Bytewax's source assign
partitions), so no group join waits on a session timeout.
"""
from __future__ import annotations

import base64
import json
import os
import time
import uuid

import numpy as np
import pandas as pd
import pytest
from bytewax.dataflow import Dataflow
import bytewax.operators as op
from bytewax.testing import TestingSink, run_main
from confluent_kafka import KafkaError as ConfluentKafkaError, Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.partitioner.default import murmur2

import connectors.kafka as kafka_mod
from connectors.barfile import BarFileSource, frame_to_columns
from connectors.embedded_kafka import EmbeddedKafka, kafka_bootstrap_or_embedded
from connectors.kafka import (
    BarProducer, DecodeError, KafkaBarSource, KafkaUnavailable, TopicChanged, TopicMissing,
    WatermarkRecord, decode_record, encode_bar, encode_dead_letter, encode_watermark,
    ensure_topic, publish_columns, publish_plan, topic_identity, topic_partitions,
)
from operators.columnar import BarBlock
from operators.ordering import END_OF_TIME, Chunk, Watermark
from operators.symbol_stage import bar_payload
from operators.types import Bar, DeadLetter

T0 = 1704205800  # 2024-01-02T14:30:00Z


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def kafka():
    with EmbeddedKafka() as broker:
        yield broker


@pytest.fixture
def topic(request):
    return f"{request.node.name[:40]}-{uuid.uuid4().hex[:6]}".replace("[", "-").replace("]", "")


def read_all(bootstrap: str, topic: str, timeout: float = 15.0) -> dict:
    """partition -> [(offset, key, value)] up to the fetch high watermark
    (Tansu's ListOffsets(latest) is wrong, so not end_offsets())."""
    parts = topic_partitions(bootstrap, topic)
    tps = [TopicPartition(topic, p) for p in parts]
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             fetch_max_wait_ms=10, group_id=None)
    try:
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out = {p: [] for p in parts}
        deadline = time.monotonic() + timeout
        while True:
            for tp, records in consumer.poll(timeout_ms=50).items():
                out[tp.partition] += [(r.offset, r.key, r.value) for r in records]
            hw = [consumer.highwater(tp) for tp in tps]
            if all(h is not None and consumer.position(tp) >= h for tp, h in zip(tps, hw)):
                return out
            assert time.monotonic() < deadline, "reading the topic timed out"
    finally:
        consumer.close()


def run_source(source) -> list:
    out: list = []
    flow = Dataflow("kafka_bar_source_test")
    op.output("out", op.input("in", flow, source), TestingSink(out))
    run_main(flow)
    return out


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


# ------------------------------------------------------------------ broker
def test_embedded_broker_lifecycle(kafka):
    assert kafka.running() and kafka.bootstrap.startswith("127.0.0.1:")
    with kafka_bootstrap_or_embedded(kafka.bootstrap) as bs:
        assert bs == kafka.bootstrap  # given: passed through, nothing started
    with kafka_bootstrap_or_embedded(None) as bs:
        other = bs
        assert bs != kafka.bootstrap and ensure_topic(bs, "t", 1) == 1
    with pytest.raises(KafkaUnavailable, match=other):
        topic_partitions(other, "t", timeout_ms=1500)  # stopped
    broker = EmbeddedKafka().start()
    pid, log_path = broker.pid, broker.log_path
    broker.stop()
    broker.stop()  # idempotent
    assert not os.path.exists(f"/proc/{pid}")  # reaped: no zombie left
    assert "listening on" in open(log_path).read()  # the broker logged to its file


def test_ensure_topic_creates_once_and_never_auto_creates(kafka, topic):
    bs = kafka.bootstrap
    with pytest.raises(TopicMissing):
        topic_partitions(bs, topic)
    with pytest.raises(TopicMissing):
        BarProducer(bs, topic)
    admin = KafkaAdminClient(bootstrap_servers=bs)
    assert topic not in admin.list_topics()  # checking did not create it
    admin.close()
    assert ensure_topic(bs, topic, 3) == 3
    assert ensure_topic(bs, topic, 5) == 3  # existing topics keep their partitions
    assert topic_partitions(bs, topic) == [0, 1, 2]


def test_the_sources_consumer_does_not_auto_create_a_missing_topic(kafka, topic):
    source = KafkaBarSource(kafka.bootstrap, topic, tail=False, check_identity=False)
    part = source._raw_part("in", topic, 0, None)  # asks the broker for the topic's metadata
    try:
        assert part.next_batch() == []
    finally:
        part.close()
    with pytest.raises(TopicMissing):
        topic_partitions(kafka.bootstrap, topic)


def test_unreachable_broker_is_kafka_unavailable_naming_it():
    with pytest.raises(KafkaUnavailable, match="127.0.0.1:9") as info:
        BarProducer("127.0.0.1:9", "bars", max_block_ms=1000)
    assert "\n" not in str(info.value)


def test_topic_identity_changes_when_the_topic_is_recreated(kafka, topic):
    bs = kafka.bootstrap
    ensure_topic(bs, topic, 2)
    first = topic_identity(bs, topic)
    assert first == topic_identity(bs, topic)
    admin = KafkaAdminClient(bootstrap_servers=bs)
    admin.delete_topics([topic])
    admin.close()
    with pytest.raises(TopicMissing):
        topic_identity(bs, topic)
    ensure_topic(bs, topic, 2)
    assert topic_identity(bs, topic) != first


def test_published_file_lands_by_symbol_with_markers_in_every_partition(kafka, topic):
    from connectors.synthetic import generate_bars

    bs = kafka.bootstrap
    df = generate_bars(symbols=7, days=1, seed=3)
    df = df.sort_values("symbol", kind="stable")  # symbol-sorted, like alpaca-py BarSet.df
    cols = frame_to_columns(df)
    assert ensure_topic(bs, topic, 3) == 3
    with BarProducer(bs, topic) as producer:
        bars, markers = publish_columns(producer, cols)
        assert (producer.bars_sent, producer.markers_sent) == (bars, markers) == (len(cols), 3 * 390)
    records = read_all(bs, topic)
    decoded = {p: [(off, decode_record(k, v)) for off, k, v in recs] for p, recs in records.items()}
    got = []
    for p, recs in decoded.items():
        marks = [r.ts for _, r in recs if isinstance(r, WatermarkRecord)]
        assert len(marks) == 390 and marks == sorted(marks)
        assert isinstance(recs[-1][1], WatermarkRecord)  # the last marker follows the bars
        wm = -1
        for _, r in recs:
            assert not isinstance(r, DecodeError)
            if isinstance(r, WatermarkRecord):
                wm = r.ts
            else:
                assert r.ts >= wm  # no bar behind a marker: publishing makes no late bars
                assert (murmur2(r.symbol.encode()) & 0x7FFFFFFF) % 3 == p  # murmur2 partitioner
                got.append(r)
    assert len({(b.symbol) for b in got}) == 7
    want = sorted(zip(cols.symbol.tolist(), cols.ts.tolist(), cols.close.tolist(), cols.vwap.tolist()))
    assert sorted((b.symbol, b.ts, b.close, b.vwap) for b in got) == want  # exact floats


# ------------------------------------------------------------------ KafkaBarSource
def _produce_raw(bs, topic, records):
    """records: (partition, key, value) in order."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bs, acks="all")
    for p, k, v in records:
        producer.send(topic, key=k, value=v, partition=p)
    producer.flush()
    producer.close()


def _scenario(bs, topic):
    """Three partitions: p0 normal + late + undecodable, p1 only markers, p2 empty
    of bars and then one bar, so each partition ends in its own way."""
    ensure_topic(bs, topic, 3)
    enc = lambda b: encode_bar(b)  # noqa: E731
    mark = lambda m: encode_watermark(T0 + 60 * m)  # noqa: E731 - "minute m-1 complete"
    recs = [
        (0, *enc(bar("AAA", 0))), (0, *enc(bar("BBB", 0))), (0, *enc(bar("AAA", 1))),  # 0,1,2
        (0, None, mark(2)), (1, None, mark(2)), (2, None, mark(2)),                     # 3
        (0, *enc(bar("AAA", 1, 99.0))),   # 4: late (minute 1 < watermark minute 2)
        (0, *enc(bar("BBB", 2))),         # 5
        (0, b"AAA", b"{broken"),          # 6: undecodable
        (0, b"ZZZ", enc(bar("AAA", 3))[1]),  # 7: key is not the symbol: undecodable
        (0, *enc(bar("AAA", 2))),         # 8
        (0, None, mark(3)), (0, None, mark(4)),  # 9, 10: adjacent markers
        (1, None, mark(4)),
        (2, *enc(bar("CCC", 5))),
    ]
    _produce_raw(bs, topic, [(p, k, v) for p, k, v in recs])


def _by_partition(items):
    out: dict = {}
    for it in items:
        out.setdefault(it.partition, []).append(it)
    for v in out.values():
        v.sort(key=lambda it: it.seq)
    return out


def check_protocol(items: list) -> list:
    """One partition's items (seq order) keep the event-time promises; returns
    its watermarks."""
    assert [it.seq for it in items] == list(range(len(items)))  # contiguous seq
    marks, wm = [], -1
    for it in items:
        if isinstance(it, Watermark):
            assert it.ts > wm
            wm = it.ts
            marks.append(wm)
        else:
            assert (it.bars.ts >= wm).all(), "a bar behind an emitted watermark"
            assert len(it.bars) == len(it.origins)
    return marks


@pytest.mark.parametrize("batch_size", [1, 1000])
def test_source_emits_event_time_protocol_with_late_and_undecodable_dead_letters(kafka, topic, batch_size):
    bs = kafka.bootstrap
    _scenario(bs, topic)
    dlq = topic + "-dead"
    source = KafkaBarSource(bs, topic, tail=False, dead_letter_topic=dlq, batch_size=batch_size)
    assert source.partition_ids() == [0, 1, 2]
    parts = _by_partition(run_source(source))
    marks = {p: check_protocol(items) for p, items in parts.items()}
    # each partition ends with END_OF_TIME after its last marker; a fetched batch
    # emits one Watermark (its last marker), so one-record batches show them all
    assert {p: m[-2:] for p, m in marks.items()} == {
        0: [T0 + 240, END_OF_TIME], 1: [T0 + 240, END_OF_TIME], 2: [T0 + 120, END_OF_TIME]}
    if batch_size == 1:
        assert marks[0] == [T0 + 120, T0 + 180, T0 + 240, END_OF_TIME]
        assert marks[1] == [T0 + 120, T0 + 240, END_OF_TIME]

    chunks = [it for it in parts[0] if isinstance(it, Chunk)]
    assert all(c.origin_prefix == f"{topic}/0@" for c in chunks)
    dead = [d for c in chunks for d in c.dead_letters]
    late = [d for d in dead if d.reason == "late"]
    assert [(d.symbol, d.ts, d.source) for d in late] == [("AAA", T0 + 60, f"{topic}/0@4")]
    assert '"c":99.0' in late[0].payload
    undecodable = sorted((d for d in dead if d.reason == "undecodable"), key=lambda d: d.source)
    assert [d.source for d in undecodable] == [f"{topic}/0@6", f"{topic}/0@7"]
    assert "not JSON" in json.loads(undecodable[0].payload)["error"]
    assert "not the symbol" in json.loads(undecodable[1].payload)["error"]
    # the undecodable ones ride in bar-less chunks under the symbol ""
    assert all(len(c.bars) == 0 for c in chunks if c.symbol == "")
    accepted = [(c.symbol, t, o) for c in chunks for t, o in zip(c.bars.ts.tolist(), c.origins)]
    assert sorted(accepted) == [("AAA", T0, 0), ("AAA", T0 + 60, 2), ("AAA", T0 + 120, 8),
                                ("BBB", T0, 1), ("BBB", T0 + 120, 5)]
    assert [a for a in accepted if a[0] == "AAA"] == sorted(a for a in accepted if a[0] == "AAA")
    assert [it.symbol for it in parts[2] if isinstance(it, Chunk)] == ["CCC"]

    copies = [json.loads(v) for _, _, v in read_all(bs, dlq)[0]]
    assert [c["offset"] for c in copies] == [6, 7]
    assert (copies[0]["reason"], base64.b64decode(copies[0]["value_b64"])) == ("undecodable", b"{broken")


def test_source_resumes_seq_watermark_and_offset_from_its_snapshot(kafka, topic):
    bs = kafka.bootstrap
    _scenario(bs, topic)
    source = KafkaBarSource(bs, topic, tail=False, batch_size=4)
    part = source.build_part("in", f"0-{topic}", None)
    first = part.next_batch()
    while not first:  # the consumer may need a poll or two to fetch
        first = part.next_batch()
    state = part.snapshot()
    part.close()
    offset, seq, wm, ident = state
    assert seq == len(first) and ident == topic_identity(bs, topic)

    rest = []
    part = source.build_part("in", f"0-{topic}", state)
    try:
        while True:
            rest += part.next_batch()
    except StopIteration:
        part.close()
    assert [it.seq for it in rest] == list(range(seq, seq + len(rest)))
    offsets = [o for it in first + rest if isinstance(it, Chunk) for o in it.origins]
    assert sorted(offsets) == [0, 1, 2, 5, 8]  # each accepted bar exactly once
    assert 0 < offset <= 4 and all(o >= offset for it in rest if isinstance(it, Chunk) for o in it.origins)
    # the late bar is late after the resume too: the watermark was restored
    assert any(d.reason == "late" for it in first + rest if isinstance(it, Chunk) for d in it.dead_letters)

    admin = KafkaAdminClient(bootstrap_servers=bs)
    admin.delete_topics([topic])
    admin.close()
    ensure_topic(bs, topic, 3)
    with pytest.raises(TopicChanged, match="re-created"):
        KafkaBarSource(bs, topic, tail=False).build_part("in", f"0-{topic}", state)


def test_kafka_replay_trades_like_the_file_backtest(kafka, topic):
    """The whole flow over Kafka (3 partitions) decides what it decides over the file."""
    from connectors.synthetic import generate_bars
    from dataflows.flow import FlowSettings, build_flow
    from operators.config import TradingConfig
    from operators.types import PortfolioOutput, SymbolOutput

    bs = kafka.bootstrap
    df = generate_bars(symbols=5, days=2, seed=7)
    bad = df.index[::997]  # some invalid bars, dead-lettered by the symbol stage
    df.loc[bad, "high"] = df.loc[bad, "low"] - 1
    cols = frame_to_columns(df)
    ensure_topic(bs, topic, 3)
    with BarProducer(bs, topic) as producer:
        publish_columns(producer, cols, min_rows=20)
        # a straggler after its minute was declared complete: late, by position
        straggler = Bar(cols.symbol[0], int(cols.ts[0]), 10.0, 11.0, 9.0, 10.0, 5.0)
        producer.send_bars([straggler])

    def run(source, partitions):
        out: list = []
        settings = FlowSettings(config=TradingConfig(), run_id="kafka-test")
        run_main(build_flow(settings, source, TestingSink(out), partitions))
        trades = [t for o in out if isinstance(o, PortfolioOutput) for t in o.trades]
        dead = sorted((d.symbol, d.ts, d.reason) for o in out
                      if isinstance(o, (SymbolOutput, PortfolioOutput)) for d in o.dead_letters)
        return trades, dead

    kafka_source = KafkaBarSource(bs, topic, tail=False)
    via_kafka = run(kafka_source, kafka_source.partition_ids())
    via_file = run(BarFileSource(frame_to_columns(df), partitions=1), [0])
    assert via_file[0], "the generated market should trade"
    assert via_kafka[0] == via_file[0]
    assert via_kafka[1] == sorted(via_file[1] + [(straggler.symbol, straggler.ts, "late")])
    assert len(via_file[1]) == len(bad)


def test_tail_mode_waits_for_new_records_and_never_ends(kafka, topic):
    bs = kafka.bootstrap
    ensure_topic(bs, topic, 1)
    part = KafkaBarSource(bs, topic, tail=True).build_part("in", f"0-{topic}", None)
    try:
        items, deadline = [], time.monotonic() + 0.5
        while time.monotonic() < deadline:
            items += part.next_batch()  # an empty topic: nothing, and no END_OF_TIME
        assert items == []
        with BarProducer(bs, topic) as producer:
            producer.send_bars([bar("AAA", 0)])
            producer.send_watermark(T0 + 60)
        sent = time.monotonic()
        while not any(isinstance(it, Watermark) for it in items):
            items += part.next_batch()
            assert time.monotonic() - sent < 5, "tail did not pick up new records"
        assert [type(it) for it in items] == [Chunk, Watermark] and items[1].ts == T0 + 60
        assert [it.seq for it in items] == [0, 1]
    finally:
        part.close()


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
            elif isinstance(rec, WatermarkRecord):
                watermark = max(watermark, rec.ts)
            else:
                g = groups.setdefault("", ([], [], []))
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
            block = _reference_block(symbol, bars) if bars else kafka_mod._empty_block(symbol)
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
        assert g.origins == w.origins and all(type(o) is int for o in g.origins)
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


@pytest.mark.parametrize("key,value", RAW_BARS + RAW_MARKERS, ids=range(len(RAW_BARS + RAW_MARKERS)))
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


def test_fast_path_takes_published_records_and_leaves_the_rest_to_decode_record(monkeypatch):
    slow = []
    real = kafka_mod._BarPartition._decode_slow
    monkeypatch.setattr(kafka_mod._BarPartition, "_decode_slow",
                        lambda self, m, *a: (slow.append(m.offset()), real(self, m, *a))[1])
    published = [encode_bar(bar("AAA", 0)), encode_bar(bar("BBB", 0, n=4.0, vw=1.5)),
                 (None, encode_watermark(T0 + 60)), (b"AAA", _bar_json(S="AAA", v=12, n=3)),
                 (b"AAA", _bar_json(S="AAA", t="2024-01-02T14:31:00", n=None))]
    other = [(b"AAA", _bar_json(S="AAA", x=[])),  # an unknown field: never skipped unread
             (b"AAA", _bar_json(S="AAA", o=float("nan"))), (b"AAB", _bar_json(S="AAA")),
             (None, b'{"T":"w","t":"2024-01-02T14:30:00Z","x":1}'), (b"AAA", None)]
    run_both([[FakeMessage(k, v, i) for i, (k, v) in enumerate(published + other)]])
    assert slow == list(range(len(published), len(published) + len(other)))


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
    mode = draw(st.sampled_from(["clean"] * 5 + ["marker"] * 2 + ["odd"] * 3))
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
