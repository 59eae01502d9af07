"""The `trade_updates` topic as event-time partitions of the flow
(`TradeUpdateSource`, Bytewax). Record format: `connectors.alpaca.trade_updates`.

Kafka partition p is source partition `TRADE_UPDATES_PARTITION_BASE + p`
(`operators.ordering`: never the same id as a bars partition). It emits,
with a contiguous `seq` from 0 kept in its snapshot:
  - `BrokerEvent(BASE + p, seq, update)` per update, in partition order. An
    update below the partition's watermark is emitted all the same (the
    broker's truth is never dropped; the portfolio applies it at the next
    minute it completes);
  - `Watermark(BASE + p, seq, ts)` after a fetched batch whose markers
    advanced the watermark, ts = the last marker's time floored to its minute
    (an update of minute m applies before the bars of minute m, so a marker
    at 10:02:00.4 completes minute 10:01). Emitting it after the batch's
    updates only delays the promise.
Undecodable records are skipped with a warning and counted (`undecodable`
on the partition); the flow never stops on one.

`tail=True` waits for more records; `tail=False` (replay) stops at the end of
every partition (fetch high watermark) and then emits `Watermark(END_OF_TIME)`.
Offsets, seq and watermark live in Bytewax's recovery store, with the topic
id: resuming against a re-created topic raises `TopicChanged`.
"""
from __future__ import annotations

import logging
import threading

from bytewax.inputs import FixedPartitionedSource
from confluent_kafka import OFFSET_BEGINNING

from connectors.kafka.admin import topic_partitions
from connectors.kafka.partition import EventTimeKafkaPartition
from connectors.kafka.source import TopicIdentityCache, raw_partition, resume_position
from connectors.kafka.trade_topic import TradeMarker, decode_trade_record
from operators.ordering import TRADE_UPDATES_PARTITION_BASE, BrokerEvent, Watermark
from operators.types import TradeUpdate

log = logging.getLogger(__name__)

MINUTE = 60


class _TradePartition(EventTimeKafkaPartition):
    """One Kafka partition -> BrokerEvent / Watermark items. State (the
    snapshot): (next offset, next seq, watermark, topic id)."""

    def __init__(self, inner, topic: str, partition: int, tail: bool, seq: int, watermark: int,
                 identity: str | None):
        self.inner, self.topic, self.tail = inner, topic, tail
        self.kafka_partition = partition
        self.partition = TRADE_UPDATES_PARTITION_BASE + partition
        self.seq, self.watermark, self.identity = seq, watermark, identity
        self.ended = False
        self.undecodable = 0

    def next_batch(self) -> list:
        msgs = self.inner.next_batch()  # raises StopIteration after the end in replay mode
        p, seq, watermark = self.partition, self.seq, self.watermark
        items: list = []
        for m in msgs:
            rec = decode_trade_record(m.value())
            kind = type(rec)
            if kind is TradeUpdate:
                items.append(BrokerEvent(p, seq, rec))
                seq += 1
            elif kind is TradeMarker:
                minute = rec.ts - rec.ts % MINUTE
                if minute > watermark:  # in its position: an update's minute depends on it
                    watermark = minute
                    items.append(Watermark(p, seq, watermark))
                    seq += 1
            else:
                self.undecodable += 1
                log.warning("%s/%d@%d: undecodable trade-updates record skipped (%d so far): %s",
                            self.topic, self.kafka_partition, m.offset(), self.undecodable, rec.reason)
        self.seq, self.watermark = self._end_of_replay(items, seq, watermark)
        return items


class TradeUpdateSource(TopicIdentityCache, FixedPartitionedSource):
    """Bytewax source of the trade_updates topic (see the module doc)."""

    def __init__(self, bootstrap: str, topic: str = "trade_updates", *, tail: bool = True,
                 batch_size: int = 1000, fetch_wait_ms: int = 10, add_config: dict | None = None,
                 check_identity: bool = True):
        self.bootstrap, self.topic, self.tail = bootstrap, topic, tail
        self.batch_size, self.check_identity = batch_size, check_identity
        self._brokers = [b.strip() for b in bootstrap.split(",") if b.strip()]
        self._config = {"fetch.wait.max.ms": str(fetch_wait_ms), "reconnect.backoff.ms": "10"}
        self._config.update(add_config or {})
        self._partitions: list | None = None
        self._identity: str | None = None
        self._lock = threading.Lock()

    def kafka_partitions(self) -> list[int]:
        """The topic's partition numbers (`TopicMissing` when it does not exist)."""
        if self._partitions is None:
            self._partitions = topic_partitions(self.bootstrap, self.topic)
        return list(self._partitions)

    def partition_ids(self) -> list[int]:
        """The ids of the items' partitions: BASE + each Kafka partition."""
        return [TRADE_UPDATES_PARTITION_BASE + p for p in self.kafka_partitions()]

    def list_parts(self) -> list[str]:
        return [f"{p}-{self.topic}" for p in self.kafka_partitions()]

    def build_part(self, step_id: str, for_part: str, resume_state) -> _TradePartition:
        idx, topic = for_part.split("-", 1)
        partition = int(idx)
        identity = self.identity() if self.check_identity else None
        offset, seq, watermark = resume_position(resume_state, identity, self.bootstrap, topic)
        inner = raw_partition(step_id, self._brokers, self.tail, self._config, topic, partition,
                              OFFSET_BEGINNING, offset, self.batch_size, True)
        return _TradePartition(inner, topic, partition, self.tail, seq, watermark, identity)
