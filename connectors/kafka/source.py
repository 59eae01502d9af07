"""Kafka `bars` topic: the Bytewax event-time source (`KafkaBarSource`), its
raw inner partition and the dead-letter writer. Record handling per
partition is in `connectors.kafka.partition`.
"""
from __future__ import annotations

import threading

from bytewax.connectors.kafka import (
    KafkaSource,  # needs confluent-kafka (bytewax[kafka])
    _KafkaSourcePartition,
)
from confluent_kafka import KafkaError as ConfluentKafkaError
from confluent_kafka import Message, TopicPartition
from kafka import KafkaProducer

from connectors.kafka.admin import (
    TopicChanged,
    _typed,
    ensure_topic,
    topic_identity,
    topic_partitions,
)
from connectors.kafka.codec import encode_dead_letter
from connectors.kafka.partition import _BarPartition

_message_error = Message.error


class _RawKafkaPartition(_KafkaSourcePartition):
    """Bytewax's Kafka source partition (its consumer, offset keeping and
    end-of-partition handling, unchanged) returning librdkafka's messages as
    they are instead of a `KafkaSourceMessage` per message.

    Same contract as the parent: the batch stops before the partition-EOF
    event (replay), after which the next call raises StopIteration; any other
    consumer error raises RuntimeError (KafkaBarSource never sets
    raise_on_errors=False); the snapshot is the offset after the last message
    returned."""

    def __init__(self, step_id: str, config: dict, topic: str, part_idx: int, starting_offset: int,
                 resume_state, batch_size: int, raise_on_errors: bool):
        super().__init__(step_id, config, topic, part_idx, starting_offset, resume_state, batch_size,
                         raise_on_errors)
        # The parent assigns the partition before the client knows its leader;
        # librdkafka then waits 500 ms before it asks for the start offset
        # (OFFSET_BEGINNING), which a replay pays every time. With the
        # metadata in, the same assignment starts at once. (Nothing was
        # consumed yet, so assigning again changes nothing else.)
        try:
            self._consumer.list_topics(topic, timeout=5.0)  # consumers never auto-create topics
        except Exception:  # only a shortcut: the first assignment stands
            return
        self._consumer.assign([TopicPartition(topic, part_idx, self._offset)])

    def next_batch(self) -> list:
        if self._eof:
            raise StopIteration()
        msgs = self._consumer.consume(self._batch_size, 0.001)
        # Errors are rare: find them in C (a KafkaError is always true). Never
        # compare one with None by value: its __eq__ leaves an exception set.
        if any(map(_message_error, msgs)):
            for i, m in enumerate(msgs):
                error = m.error()
                if error is None:
                    continue
                if error.code() == ConfluentKafkaError._PARTITION_EOF:
                    # As the parent: emit this batch, raise StopIteration next time.
                    self._eof = True
                    msgs = msgs[:i]
                    break
                raise RuntimeError(f"error consuming from Kafka topic `{self._topic!r}`: {error}")
        if msgs:
            self._offset = msgs[-1].offset() + 1  # resume after the last message handed out
        return msgs


class _DeadLetterWriter:
    """Copies undecodable records to the dead-letter topic, synchronously (the
    copy is acknowledged before the offset can reach a snapshot)."""

    def __init__(self, bootstrap: str, topic: str):
        self.bootstrap = bootstrap
        self.topic = topic
        self._producer = None
        self._lock = threading.Lock()
        self._users = 0  # open partitions; the producer closes with the last one

    def acquire(self) -> "_DeadLetterWriter":
        with self._lock:
            self._users += 1
        return self

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users <= 0 and self._producer is not None:
                self._producer.close(timeout=5)
                self._producer = None

    def __call__(self, source_topic: str, partition: int, copies: list) -> None:
        with self._lock:
            if self._producer is None:
                ensure_topic(self.bootstrap, self.topic, 1)
                try:
                    self._producer = KafkaProducer(
                        bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=True,
                        allow_auto_create_topics=False, client_id="thousandcuts-dead-letters",
                        max_block_ms=15_000, bootstrap_timeout_ms=15_000)
                except Exception as exc:
                    raise _typed(exc, self.bootstrap, "starting the dead-letter producer") from None
            try:
                futures = []
                for reason, offset, key, value in copies:
                    key, value = encode_dead_letter("undecodable", source_topic, partition, offset,
                                                    key, value, detail=reason)
                    futures.append(self._producer.send(self.topic, key=key, value=value))
                self._producer.flush(timeout=30)
                for f in futures:
                    f.get(timeout=0)
            except Exception as exc:
                raise _typed(exc, self.bootstrap, f"copying to dead-letter topic {self.topic}") from None


class TopicIdentityCache:
    """`identity()`: the topic id, read once (every partition's resume check
    needs it). Needs bootstrap, topic, _identity (None: not read) and _lock."""

    def identity(self) -> str:
        with self._lock:
            if self._identity is None:
                self._identity = topic_identity(self.bootstrap, self.topic)
            return self._identity


class KafkaBarSource(TopicIdentityCache, KafkaSource):
    """The bars topic as event-time partitions (`operators.ordering` protocol).

    Each Kafka partition is a source partition (id = partition number) that
    emits, with a contiguous `seq` kept in its snapshot:
      - `Chunk(partition, seq, symbol, bars=BarBlock, origins=[offsets],
        origin_prefix="topic/partition@", dead_letters=[...])` per symbol of
        a fetched batch (the symbol's bars in partition order); a bar whose
        time is below the partition's watermark at its position is not in
        `bars` but in `dead_letters` with reason `late`;
      - `Watermark(partition, seq, ts)` after a batch's chunks when the
        batch's markers advanced the partition's watermark (its last marker);
      - undecodable records as `dead_letters` (reason `undecodable`, ts =
        the record's Kafka timestamp in seconds, payload = JSON with the
        error, key and value text) of a chunk with symbol "" and no bars, plus
        a copy in `dead_letter_topic` (if given) with the original bytes,
        acknowledged before the batch is emitted.
    Emitting a batch's watermark after all its chunks only delays the
    promise (see `_BarPartition.next_batch`), and a live topic's marker per
    minute per partition does not cost an item each.
    `tail=False` (replay) stops at the end of every partition (fetch high
    watermark) and then emits `Watermark(END_OF_TIME)`; `tail=True` waits for
    more and never emits it.

    Offsets, seq and watermark live in Bytewax's recovery store (no consumer
    group). The snapshot also holds the topic id: resuming against a
    re-created topic raises `TopicChanged` instead of silently skipping its
    data.

    `poll_size` caps the messages taken per poll of a partition (a poll
    returns what has arrived within 1 ms); while polls come back full (a
    backlog), one batch takes several, up to `batch_size` messages. So a
    tailing flow pays no latency for large batches, and a replay works in
    large batches decoded one small poll at a time (see
    `_BarPartition.next_batch`). Records are decoded by a fast path with
    exactly `decode_record`'s decisions (see `connectors.kafka.codec`).
    """

    def __init__(self, bootstrap: str, topic: str, *, tail: bool = True,
                 dead_letter_topic: str | None = None, batch_size: int = 10_000, poll_size: int = 1_000,
                 fetch_wait_ms: int = 10, add_config: dict | None = None,
                 check_identity: bool = True, identity: str | None = None):
        brokers = [b.strip() for b in bootstrap.split(",") if b.strip()]
        config = {
            "fetch.wait.max.ms": str(fetch_wait_ms),
            # Once a partition's fetch queue holds queued.min.messages (100 k),
            # librdkafka waits this long before fetching more (1 s by default):
            # a replay drains 100 k messages in well under a second and then
            # stalled (0.2 s per large partition, measured).
            "fetch.queue.backoff.ms": "20",
            # The first metadata request races the switch from the bootstrap
            # connection to the broker's own; the retry waits about half of
            # this (100 ms by default) at every start. Still exponential, up to
            # reconnect.backoff.max.ms, when a broker is really down.
            "reconnect.backoff.ms": "10",
        }
        config.update(add_config or {})
        super().__init__(brokers, [topic], tail=tail, add_config=config, batch_size=batch_size)
        self.poll_size = max(1, min(poll_size, batch_size))
        self.bootstrap = bootstrap
        self.topic = topic
        self.tail = tail
        self.check_identity = check_identity
        self.dead_letter_topic = dead_letter_topic
        self._identity: str | None = identity  # the topic id, when the caller already read it
        self._partitions: list | None = None
        self._lock = threading.Lock()
        self._writer = _DeadLetterWriter(bootstrap, dead_letter_topic) if dead_letter_topic else None
        self._prefetched: dict = {}  # partition -> _RawKafkaPartition started early (see prefetch)

    def prefetch(self) -> None:
        """Start every partition's consumer now, from the beginning of the
        partition, so librdkafka fetches while the rest of the run is set up
        (ClickHouse, the flow): a replay's first bars are waiting when the
        flow starts, as a bar file is read before its flow. Only where this
        process builds every partition (one process); a partition resumed
        from recovery state gets a consumer at its stored offset instead."""
        for partition in self.partition_ids():
            with self._lock:
                if partition in self._prefetched:
                    continue
            raw = self._raw_part("prefetch", self.topic, partition, None)
            with self._lock:
                self._prefetched[partition] = raw

    def close_prefetched(self) -> None:
        """Close the consumers `prefetch` started that no partition took."""
        with self._lock:
            left, self._prefetched = list(self._prefetched.values()), {}
        for raw in left:
            raw.close()

    def partition_ids(self) -> list[int]:
        """The topic's partition numbers (`TopicMissing` when it does not exist)."""
        if self._partitions is None:
            self._partitions = topic_partitions(self.bootstrap, self.topic)
        return list(self._partitions)

    def list_parts(self) -> list[str]:
        # Not the librdkafka listing of KafkaSource: it would auto-create a missing topic.
        return [f"{p}-{self.topic}" for p in self.partition_ids()]

    def build_part(self, step_id: str, for_part: str, resume_state):
        idx, topic = for_part.split("-", 1)
        partition = int(idx)
        identity = self.identity() if self.check_identity else None
        offset, seq, watermark = resume_position(resume_state, identity, self.bootstrap, topic)
        with self._lock:
            inner = self._prefetched.pop(partition, None)
        if inner is not None and offset is not None:  # resuming: not from the beginning
            inner.close()
            inner = None
        if inner is None:
            inner = self._raw_part(step_id, topic, partition, offset)
        else:
            inner._metrics_labels["step_id"] = step_id
        writer = self._writer.acquire() if self._writer is not None else None
        return _BarPartition(inner, topic, partition, self.tail, seq, watermark, identity, writer,
                             max_batch=self._batch_size)

    def _raw_part(self, step_id: str, topic: str, partition: int, offset) -> _RawKafkaPartition:
        """`KafkaSource.build_part` of Bytewax 0.21.1 (same consumer config),
        building the partition that hands out librdkafka messages as they are.
        tests/test_kafka_fastpath.py checks the config against Bytewax's own."""
        return raw_partition(step_id, self._brokers, self._tail, self._add_config, topic, partition,
                             self._starting_offset, offset, self.poll_size, self._raise_on_errors)


def resume_position(resume_state, identity: str | None, bootstrap: str, topic: str) -> tuple:
    """(offset, seq, watermark) to start a partition from; `TopicChanged`
    when the snapshot was taken from another incarnation of the topic
    (`identity` None: not checked). Snapshots are (offset, seq, watermark, topic id)."""
    if resume_state is None:
        return None, 0, -1
    offset, seq, watermark, stored = resume_state
    if identity is not None and stored is not None and stored != identity:
        raise TopicChanged(
            f"Kafka at {bootstrap}: topic {topic} is not the one the recovery state "
            f"was taken from (topic id {stored}, now {identity}); it was re-created or the "
            f"broker restarted: start with a fresh recovery directory")
    return offset, seq, watermark


def raw_partition(step_id: str, brokers: list, tail: bool, add_config: dict, topic: str, partition: int,
                  starting_offset, offset, batch_size: int, raise_on_errors: bool) -> _RawKafkaPartition:
    """A `_RawKafkaPartition` with Bytewax 0.21.1's consumer config (offsets in the recovery store)."""
    config = {
        "group.id": "BYTEWAX_IGNORED",  # offsets live in the recovery store
        "enable.auto.commit": "false",
        "bootstrap.servers": ",".join(brokers),
        "enable.partition.eof": str(not tail),
        "statistics.interval.ms": 1000,
    }
    config.update(add_config)
    return _RawKafkaPartition(step_id, config, topic, partition, starting_offset, offset, batch_size,
                              raise_on_errors)
