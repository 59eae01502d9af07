"""Kafka `bars` topic: encoding, publishing, and a Bytewax event-time source.

Thin over kafka-python (producing, admin) and Bytewax's `KafkaSource`
(librdkafka, consuming; offsets live in Bytewax's recovery store). Two halves:

Pure mapping (tested without a broker)
  `encode_bar`, `encode_watermark`, `decode_record` (never raises: returns a
  `Bar`, a `WatermarkRecord` or a `DecodeError(reason)`; the definition the
  source's fast path is tested against), `encode_dead_letter`, `publish_plan`
  (which bars to send before which marker).

I/O
  `ensure_topic`, `topic_partitions`, `topic_identity`, `BarProducer`,
  `publish_columns`, `KafkaBarSource`.

Modules (this one re-exports every public name, so `from connectors.kafka
import ...` keeps working)
  `kafka_codec`      pure encode / decode, the fast-path msgspec structs
  `kafka_publish`    `publish_plan`, `PublishStep`, `publish_columns`
  `kafka_admin`      errors, `ensure_topic`, `topic_partitions`, `topic_identity`
  `kafka_partition`  `_BarPartition`: a fetched batch -> Chunk / Watermark items
  `kafka_columns`    `_Group` (a symbol's part of a batch as columns), `MessageOrigins`
  `kafka_resume`     `read_resume_point`: the last marker, where `cuts stream` restarts
  `kafka_source`     `KafkaBarSource`, its raw partition, the dead-letter writer
  here               `BarProducer`

Record format of the `bars` topic
  Bar:    key = symbol (utf-8), value = the bar in Alpaca's shape, as JSON:
          {"T":"b","S":"AAPL","t":"2024-01-02T14:30:00Z","o":..,"h":..,"l":..,
           "c":..,"v":..,"n":..,"vw":..}  (n / vw omitted when unknown).
          The key must equal S: it decides the partition, and a symbol's bars
          must all be in one partition to keep their order. A bar whose key is
          not its symbol is undecodable.
  Bars:   key = symbol, value = some of that symbol's bars (in its order) as
          columns, the same fields and values as a bar:
          {"T":"bars","S":"AAPL","t":["2024-01-02T14:30:00Z",..],"o":[..],
           "h":[..],"l":[..],"c":[..],"v":[..],"n":[..],"vw":[..]}
          (n / vw omitted when all unknown, null entries when one is).
          Stored history only (`cuts publish`, `cuts backfill --kafka`): a
          replay decodes it 3-4x faster than one bar per message. A live
          stream writes one bar per message. Each bar is judged on its own
          (late, invalid, duplicate); its origin is `offset#k`.
  Marker: key = None (null), value = {"T":"w","t":"2024-01-02T14:30:00Z"},
          written to EVERY partition (explicit partition number). It means
          "minute t is complete: every later bar in this partition has
          timestamp >= t + 60 s". In code a marker is its watermark: the
          exclusive bound t + 60 (epoch seconds), as `operators.ordering.
          Watermark.ts`. A null key cannot collide with any symbol, keyed
          tooling never groups markers with a symbol, and the partition is
          always explicit, so the key plays no part in routing.

Partitioning
  `BarProducer` uses kafka-python's default partitioner (murmur2 of the key,
  like the Java client). librdkafka's default (`consistent_random`, CRC32)
  hashes differently: any librdkafka producer (confluent-kafka, Bytewax's
  KafkaSink) writing to this topic must set `partitioner=murmur2_random`, or
  a symbol's bars split over two partitions and lose their order.

Late bars and replay
  `KafkaBarSource` flags a bar as `late` when its time is below the
  partition's watermark at the bar's position in the partition (not by wall
  clock), so a replay of the topic drops exactly the bars live dropped.
  A replay (`tail=False`) ends each partition with Watermark(END_OF_TIME) and
  keeps that watermark in its snapshot: resuming a finished replay's recovery
  state treats every newer record as late. A finished replay is final.

Tansu facts relied on (Tansu 0.6.0; see docs/ and shared platform notes)
  - Metadata v10+ reports topic ids (UUIDv7, new for every creation, also
    after a broker restart): `topic_identity` uses them.
  - ListOffsets(latest) is wrong (first offset of the last batch + 1); the
    fetch high watermark is right. Nothing here uses ListOffsets.
  - The broker auto-creates unknown topics (4 partitions) on a metadata
    request that allows it, and kafka-python 3.0.12 producers always allow it
    (their `allow_auto_create_topics=False` is not passed on), as does
    librdkafka's AdminClient.list_topics(topic). So every entry point checks
    the topic with an admin describe (which never creates) first.
"""
from __future__ import annotations

import json
import threading
from typing import Iterable

import numpy as np
from kafka import KafkaProducer

from connectors.kafka_admin import (  # noqa: F401 - re-exported
    KafkaConnectorError, KafkaRejected, KafkaUnavailable, TopicChanged, TopicMissing, _typed,
    ensure_topic, topic_identity, topic_partitions,
)
from connectors.kafka_codec import ControlRecord, encode_control  # noqa: F401 - re-exported
from connectors.kafka_codec import (  # noqa: F401 - re-exported
    _ISO_CACHE, MINUTE, DecodeError, WatermarkRecord, _bar_json, _one_line, _parse_time,
    BarsRecord, decode_record, encode_bar, encode_bars, encode_dead_letter, encode_watermark, iso_minute, iso_times,
)
from connectors.kafka_columns import MessageOrigins, _empty_block, _Group  # noqa: F401
from connectors.kafka_partition import _BarPartition, _text  # noqa: F401
from connectors.kafka_publish import PublishStep, publish_columns, publish_plan  # noqa: F401
from connectors.kafka_source import KafkaBarSource  # noqa: F401 - re-exported
from operators.types import Bar


# ---------------------------------------------------------------- producing
class BarProducer:
    """Publishes bars and markers to the bars topic (kafka-python).

    acks=all, idempotent (no duplicates or reordering on internal retries),
    retries until `delivery_timeout_ms`, batched with `linger_ms`, lz4-compressed
    batches. Retriable
    failures are retried inside the client; what is left when its time is up
    is raised as `KafkaUnavailable` (or `KafkaRejected`) from the next send
    or `flush`. `send_*` only queue: call `flush()` for delivery.
    """

    def __init__(self, bootstrap: str, topic: str, *, linger_ms: int = 10,
                 batch_size: int = 512 * 1024, delivery_timeout_ms: int = 60_000,
                 request_timeout_ms: int = 15_000, max_block_ms: int = 15_000,
                 client_id: str = "thousandcuts-bars", **producer_config):
        self.bootstrap = bootstrap
        self.topic = topic
        # Checked with admin first: the producer's own metadata request would
        # auto-create a missing topic (see module notes).
        self.partitions = topic_partitions(bootstrap, topic, timeout_ms=max_block_ms)
        config = dict(
            bootstrap_servers=bootstrap, client_id=client_id, acks="all", enable_idempotence=True,
            max_in_flight_requests_per_connection=5, linger_ms=linger_ms, batch_size=batch_size,
            delivery_timeout_ms=delivery_timeout_ms, request_timeout_ms=request_timeout_ms,
            max_block_ms=max_block_ms, bootstrap_timeout_ms=max_block_ms,
            allow_auto_create_topics=False,
            # JSON numbers compress well: less for the broker to store and
            # send, publishing ~40 % faster; a replay is as fast as without
            # (librdkafka decompresses in C; bench/README.md)
            compression_type="lz4",
        )
        config.update(producer_config)
        try:
            self._producer = KafkaProducer(**config)
        except Exception as exc:
            raise _typed(exc, bootstrap, "starting the producer") from None
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._keys: dict = {}
        self._symbol_json: dict = {}
        self.bars_sent = 0
        self.records_sent = 0  # bars records (several bars each)
        self.markers_sent = 0

    # errors of queued records arrive on the client's I/O thread
    def _on_error(self, exc: BaseException) -> None:
        with self._lock:
            if self._error is None:
                self._error = exc

    def _check(self) -> None:
        if self._error is not None:
            raise _typed(self._error, self.bootstrap, f"delivering to topic {self.topic}")

    def _send(self, key, value, partition=None) -> None:
        try:
            future = self._producer.send(self.topic, key=key, value=value, partition=partition)
        except Exception as exc:
            raise _typed(exc, self.bootstrap, f"sending to topic {self.topic}") from None
        future.add_errback(self._on_error)

    def send_bars(self, bars: Iterable[Bar]) -> int:
        """Queue bars (partition by key = symbol). Returns how many."""
        self._check()
        n = 0
        for bar in bars:
            key, value = encode_bar(bar)
            self._send(key, value)
            n += 1
        self.bars_sent += n
        return n

    def send_rows(self, cols, rows: np.ndarray, iso: np.ndarray | None = None) -> int:
        """Queue rows `rows` of `BarColumns` in that order (the fast path for
        files). `iso`: optional precomputed time text of every row of `cols`."""
        self._check()
        if not len(rows):
            return 0
        rows = np.asarray(rows)
        times = iso[rows] if iso is not None else iso_times(cols.ts[rows])
        syms = cols.symbol[rows].tolist()
        nan = np.full(len(rows), np.nan)
        n_col = cols.trade_count[rows] if cols.trade_count is not None else nan
        vw_col = cols.vwap[rows] if cols.vwap is not None else nan
        keys, sj = self._keys, self._symbol_json
        send = self._send
        for sym, t, o, h, lo, c, v, n, vw in zip(
                syms, times.tolist(), cols.open[rows].tolist(), cols.high[rows].tolist(),
                cols.low[rows].tolist(), cols.close[rows].tolist(), cols.volume[rows].tolist(),
                n_col.tolist(), vw_col.tolist()):
            key = keys.get(sym)
            if key is None:
                key = keys[sym] = sym.encode()
                sj[sym] = json.dumps(sym)
            send(key, _bar_json(sj[sym], t, o, h, lo, c, v, n, vw).encode())
        self.bars_sent += len(rows)
        return len(rows)

    def send_bars_records(self, cols, rows: np.ndarray, iso: np.ndarray | None = None,
                          max_bars: int = 1_000) -> int:
        """Queue rows `rows` of `BarColumns` as bars records: per symbol, its
        rows in the given order, up to `max_bars` per record (~100 KB).
        Symbols' records may interleave in any order: only a symbol's own
        order matters between two markers. Returns the bars queued."""
        self._check()
        rows = np.asarray(rows)
        if not len(rows):
            return 0
        symbols, code = np.unique(cols.symbol[rows], return_inverse=True)
        order = np.argsort(code, kind="stable")  # by symbol, each symbol's rows in their order
        bounds = np.flatnonzero(np.diff(code[order])) + 1
        times = iso if iso is not None else iso_times(cols.ts)
        for sym, part in zip(symbols.tolist(), np.split(rows[order], bounds)):
            for start in range(0, len(part), max_bars):
                r = part[start:start + max_bars]
                key, value = encode_bars(
                    sym, times[r].tolist(), cols.open[r].tolist(), cols.high[r].tolist(),
                    cols.low[r].tolist(), cols.close[r].tolist(), cols.volume[r].tolist(),
                    cols.trade_count[r].tolist() if cols.trade_count is not None else None,
                    cols.vwap[r].tolist() if cols.vwap is not None else None)
                self._send(key, value)
                self.records_sent += 1
        self.bars_sent += len(rows)
        return len(rows)

    def send_watermark(self, ts: int) -> None:
        """Queue the marker for watermark `ts` to every partition (explicit
        partition, key None), after everything queued before it."""
        self._check()
        value = encode_watermark(ts)
        for p in self.partitions:
            self._send(None, value, partition=p)
        self.markers_sent += len(self.partitions)

    def send_control(self, rec) -> None:
        """Queue a kill-switch record (`ControlRecord`) to every partition."""
        self._check()
        value = encode_control(rec)
        for p in self.partitions:
            self._send(None, value, partition=p)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until everything queued is acknowledged; raise if any failed."""
        try:
            self._producer.flush(timeout=timeout)
        except Exception as exc:
            raise _typed(exc, self.bootstrap, f"flushing to topic {self.topic}") from None
        self._check()

    def close(self, timeout: float = 10.0, check: bool = True) -> None:
        """Send what is queued (within `timeout`) and close; then, with
        `check`, raise if any record failed."""
        producer, self._producer = getattr(self, "_producer", None), None
        if producer is not None:
            producer.close(timeout=timeout)
        if check:
            self._check()

    def __enter__(self) -> "BarProducer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(check=exc_type is None)  # never mask the error in flight
