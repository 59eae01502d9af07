"""Kafka `bars` topic: where a restarted `cuts stream` picks up (I/O).

`read_resume_point(bootstrap, topic)` reads the tail of every partition and
returns the last event-time marker that every partition got (markers go to
all partitions, so a connector stopped while writing one leaves some
partitions a marker behind: the minimum is the one the flow has seen
everywhere), and the (symbol, minute) pairs of the bars in Kafka for
minutes from it on (also those before a later marker that only some
partitions got), which the connector must not write again.

The end of a partition is known from the fetch high watermark, not from
ListOffsets (wrong on Tansu: the first offset of the last batch + 1, never
past the real end); ListOffsets only chooses where to start reading: a
window before it, widened until it holds a marker.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from connectors.kafka.admin import _typed, topic_partitions
from connectors.kafka.codec import MINUTE, BarsRecord, WatermarkRecord, decode_record
from operators.types import Bar

MAX_WINDOW = 1_000_000  # records looked back per partition for a marker, at most


@dataclass
class ResumePoint:
    watermark: int | None  # the last marker every partition got (None: a partition has none)
    written: set = field(default_factory=set)  # (symbol, minute) of bars in Kafka from it on


def read_resume_point(bootstrap: str, topic: str, window: int = 2_000,
                      timeout_s: float = 60.0) -> ResumePoint:
    """The topic's resume point (`TopicMissing` when it does not exist)."""
    from kafka import KafkaConsumer, TopicPartition

    partitions = topic_partitions(bootstrap, topic)
    try:
        consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                                 fetch_max_wait_ms=10, client_id="thousandcuts-resume",
                                 request_timeout_ms=15_000)
    except Exception as exc:
        raise _typed(exc, bootstrap, "starting the resume reader") from None
    try:
        deadline = time.monotonic() + timeout_s
        tails = {p: _partition_tail(consumer, TopicPartition(topic, p), window, deadline) for p in partitions}
        if not tails or any(not marks for marks, _ in tails.values()):
            return ResumePoint(None)
        watermark = min(max(marks) for marks, _ in tails.values())
        for p, (marks, _) in tails.items():
            if min(marks) > watermark:  # a marker ahead of the others: read back to the common one
                tails[p] = _partition_tail(consumer, TopicPartition(topic, p), window, deadline,
                                           reach=watermark)
        # Bars of minutes from the watermark on, wherever they are: in a
        # partition that got a later marker, they lie before it.
        written = {(s, m) for _, bars in tails.values() for s, m in bars if m >= watermark}
        return ResumePoint(watermark, written)
    except Exception as exc:
        raise _typed(exc, bootstrap, f"reading the end of topic {topic}") from None
    finally:
        consumer.close()


def _partition_tail(consumer, tp, window: int, deadline: float, reach: int | None = None) -> tuple:
    """(markers, {(symbol, minute)} of bars) in the last records of one
    partition: a window widened until it holds a marker (with `reach`: a
    marker at or before it), or the whole partition."""
    consumer.assign([tp])
    first = consumer.beginning_offsets([tp])[tp]
    anchor = consumer.end_offsets([tp])[tp]
    while True:
        start = max(first, anchor - window)
        marks, bars = _scan(consumer, tp, start, deadline)
        if (marks and (reach is None or min(marks) <= reach)) or start <= first or window >= MAX_WINDOW:
            return marks, bars  # (no marker within MAX_WINDOW records: the topic is not resumed)
        window *= 8  # look further back


def _scan(consumer, tp, start: int, deadline: float) -> tuple:
    consumer.seek(tp, start)
    marks, bars = [], set()
    while True:
        for records in consumer.poll(timeout_ms=50, max_records=5_000).values():
            for r in records:
                rec = decode_record(r.key, r.value)
                if isinstance(rec, WatermarkRecord):
                    marks.append(rec.ts)
                elif isinstance(rec, Bar):
                    bars.add((rec.symbol, rec.ts - rec.ts % MINUTE))
                elif isinstance(rec, BarsRecord):
                    bars.update((b.symbol, b.ts - b.ts % MINUTE) for b in rec.bars)
        end = consumer.highwater(tp)
        if end is not None and consumer.position(tp) >= end:
            return marks, bars
        if time.monotonic() > deadline:
            raise TimeoutError(f"partition {tp.partition} not read to its end in time")
