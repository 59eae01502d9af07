"""Kafka `bars` topic: where a restarted `cuts stream` picks up (I/O).

`read_resume_point(bootstrap, topic)` reads the tail of every partition and
returns the last event-time marker that every partition got (markers go to
all partitions, so a connector stopped while writing one leaves some
partitions a marker behind: the minimum is the one the flow has seen
everywhere), and the (symbol, minute) pairs of the bars written after it,
which the connector must not write again.

The end of a partition is known from the fetch high watermark, not from
ListOffsets (wrong on Tansu: the first offset of the last batch + 1, never
past the real end); ListOffsets only chooses where to start reading: a
window before it, widened until it holds a marker.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from connectors.kafka_admin import _typed, topic_partitions
from connectors.kafka_codec import MINUTE, BarsRecord, WatermarkRecord, decode_record
from operators.types import Bar


@dataclass
class ResumePoint:
    watermark: int | None  # the last marker every partition got (None: a partition has none)
    written: set = field(default_factory=set)  # (symbol, minute) of bars after it


def read_resume_point(bootstrap: str, topic: str, window: int = 2_000,
                      timeout_s: float = 30.0) -> ResumePoint:
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
        marks, written = [], set()
        for p in partitions:
            tp = TopicPartition(topic, p)
            mark, after = _partition_tail(consumer, tp, window, time.monotonic() + timeout_s)
            marks.append(mark)
            written |= after
        if not marks or any(m is None for m in marks):
            return ResumePoint(None, written)
        watermark = min(marks)
        return ResumePoint(watermark, {(s, m) for s, m in written if m >= watermark})
    except Exception as exc:
        raise _typed(exc, bootstrap, f"reading the end of topic {topic}") from None
    finally:
        consumer.close()


def _partition_tail(consumer, tp, window: int, deadline: float) -> tuple:
    """(last marker, {(symbol, minute) of bars after it}) of one partition."""
    consumer.assign([tp])
    first = consumer.beginning_offsets([tp])[tp]
    anchor = consumer.end_offsets([tp])[tp]
    while True:
        start = max(first, anchor - window)
        mark, after = _scan(consumer, tp, start, deadline)
        if mark is not None or start <= first:
            return mark, after
        window *= 8  # no marker in the window: look further back


def _scan(consumer, tp, start: int, deadline: float) -> tuple:
    consumer.seek(tp, start)
    mark, after = None, set()
    while True:
        for records in consumer.poll(timeout_ms=50, max_records=5_000).values():
            for r in records:
                rec = decode_record(r.key, r.value)
                if isinstance(rec, WatermarkRecord):
                    if mark is None or rec.ts >= mark:
                        mark, after = rec.ts, set()
                elif isinstance(rec, Bar):
                    after.add((rec.symbol, rec.ts - rec.ts % MINUTE))
                elif isinstance(rec, BarsRecord):
                    after.update((b.symbol, b.ts - b.ts % MINUTE) for b in rec.bars)
        end = consumer.highwater(tp)
        if end is not None and consumer.position(tp) >= end:
            return mark, after
        if time.monotonic() > deadline:
            raise TimeoutError(f"partition {tp.partition} not read to its end in time")
