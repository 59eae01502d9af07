"""Kafka connectors: the I/O half against a real broker (embedded Tansu, one
per module). The pure mapping is tests/test_kafka_codec.py; the source's fast
path and raw inner partition are tests/test_kafka_fastpath.py.

No consumer groups are used (the test reader and Bytewax's source assign
partitions), so no group join waits on a session timeout.
"""
from __future__ import annotations

import base64
import json
import os
import sys
import time
import uuid
from pathlib import Path

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, run_main
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.partitioner.default import murmur2

from connectors.files.barfile import BarFileSource, frame_to_columns
from connectors.kafka.admin import (
    KafkaUnavailable,
    TopicChanged,
    TopicMissing,
    ensure_topic,
    topic_identity,
    topic_partitions,
)
from connectors.kafka.codec import (
    BarsRecord,
    DecodeError,
    WatermarkRecord,
    decode_record,
    encode_bar,
    encode_watermark,
)
from connectors.kafka.embedded import EmbeddedKafka, kafka_bootstrap_or_embedded
from connectors.kafka.producer import BarProducer
from connectors.kafka.publish import publish_columns, publish_plan
from connectors.kafka.source import KafkaBarSource
from operators.ordering import END_OF_TIME, Chunk, Watermark
from operators.types import Bar

T0 = 1704205800  # 2024-01-02T14:30:00Z


sys.path.insert(0, str(Path(__file__).parent))
from test_kafka_codec import bar  # noqa: E402


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


@pytest.mark.parametrize("records,min_rows", [("bar", None), ("bars", None), ("bars", 1000)])
def test_published_file_lands_by_symbol_with_markers_in_every_partition(kafka, topic, records, min_rows):
    from connectors.files.synthetic import generate_bars

    bs = kafka.bootstrap
    df = generate_bars(symbols=7, days=1, seed=3)
    df = df.sort_values("symbol", kind="stable")  # symbol-sorted, like alpaca-py BarSet.df
    cols = frame_to_columns(df)
    steps = len(list(publish_plan(cols, 3, min_rows=min_rows or (1 if records == "bar" else 8192))))
    assert steps == {"bar": 390, "bars": 1 if min_rows is None else 3}[records]
    assert ensure_topic(bs, topic, 3) == 3
    with BarProducer(bs, topic) as producer:
        bars, markers = publish_columns(producer, cols, min_rows=min_rows, records=records)
        assert (producer.bars_sent, producer.markers_sent) == (bars, markers) == (len(cols), 3 * steps)
        assert producer.records_sent == (0 if records == "bar" else 7 * steps)  # a record per symbol and step
    records_read = read_all(bs, topic)
    decoded = {p: [(off, decode_record(k, v)) for off, k, v in recs] for p, recs in records_read.items()}
    got = []
    for p, recs in decoded.items():
        marks = [r.ts for _, r in recs if isinstance(r, WatermarkRecord)]
        assert len(marks) == steps and marks == sorted(marks)
        assert isinstance(recs[-1][1], WatermarkRecord)  # the last marker follows the bars
        wm = -1
        for _, r in recs:
            assert not isinstance(r, DecodeError)
            if isinstance(r, WatermarkRecord):
                wm = r.ts
                continue
            assert isinstance(r, BarsRecord if records == "bars" else Bar)
            for b in (r.bars if records == "bars" else [r]):
                assert b.ts >= wm  # no bar behind a marker: publishing makes no late bars
                assert (murmur2(b.symbol.encode()) & 0x7FFFFFFF) % 3 == p  # murmur2 partitioner
                got.append(b)
    assert len({(b.symbol) for b in got}) == 7
    want = sorted(zip(cols.symbol.tolist(), cols.ts.tolist(), cols.close.tolist(), cols.vwap.tolist()))
    assert sorted((b.symbol, b.ts, b.close, b.vwap) for b in got) == want  # exact floats
    # each symbol's bars in its file order (the file is symbol-sorted, each symbol by time)
    for sym in set(cols.symbol.tolist()):
        times = [b.ts for b in got if b.symbol == sym]
        assert times == sorted(times)


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
    source.prefetch()  # a consumer from the beginning is waiting: a resume must not take it
    part = source.build_part("in", f"0-{topic}", state)
    assert source._prefetched.keys() == {1, 2}
    source.close_prefetched()
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


def test_a_prefetched_partition_starts_from_the_beginning_with_the_consumer_started_early(kafka, topic):
    bs = kafka.bootstrap
    _scenario(bs, topic)
    source = KafkaBarSource(bs, topic, tail=False)
    source.prefetch()
    early = dict(source._prefetched)
    assert sorted(early) == [0, 1, 2]
    parts = {p: source.build_part("in", f"{p}-{topic}", None) for p in (0, 1, 2)}
    assert source._prefetched == {} and all(parts[p].inner is early[p] for p in parts)
    items = []
    for part in parts.values():
        try:
            while True:
                items += part.next_batch()
        except StopIteration:
            part.close()
    offsets = sorted(o for it in items if isinstance(it, Chunk) and it.partition == 0 for o in it.origins)
    assert offsets == [0, 1, 2, 5, 8] and all(check_protocol(v) for v in _by_partition(items).values())


def test_kafka_replay_trades_like_the_file_backtest(kafka, topic):
    """The whole flow over Kafka (3 partitions) decides what it decides over the file."""
    from connectors.files.synthetic import generate_bars
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
