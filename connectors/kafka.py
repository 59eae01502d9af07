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

Record format of the `bars` topic
  Bar:    key = symbol (utf-8), value = the bar in Alpaca's shape, as JSON:
          {"T":"b","S":"AAPL","t":"2024-01-02T14:30:00Z","o":..,"h":..,"l":..,
           "c":..,"v":..,"n":..,"vw":..}  (n / vw omitted when unknown).
          The key must equal S: it decides the partition, and a symbol's bars
          must all be in one partition to keep their order. A bar whose key is
          not its symbol is undecodable.
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

import base64
import gc
import json
import math
import threading
from array import array
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Iterable, Iterator

import msgspec
import numpy as np
from bytewax.connectors.kafka import KafkaSource  # needs confluent-kafka (bytewax[kafka])
from bytewax.connectors.kafka import _KafkaSourcePartition
from bytewax.inputs import StatefulSourcePartition
from confluent_kafka import KafkaError as ConfluentKafkaError, Message, TopicPartition
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaConnectionError, KafkaTimeoutError, TopicAlreadyExistsError

from connectors.barfile import plan_emission
from operators.columnar import BarBlock
from operators.ordering import END_OF_TIME, Chunk, Watermark
from operators.symbol_stage import bar_payload
from operators.types import Bar, DeadLetter

MINUTE = 60


# ---------------------------------------------------------------- errors
class KafkaConnectorError(RuntimeError):
    """Base of this module's errors; the message is one line naming the bootstrap."""


class KafkaUnavailable(KafkaConnectorError):
    """Kafka cannot be reached, or did not acknowledge within the client's own
    retries (delivery timeout): stop with this message, check the broker."""


class KafkaRejected(KafkaConnectorError):
    """The broker refused a request for a reason retrying cannot fix (record
    too large, bad configuration, ...): stop with this message, fix the cause."""


class TopicMissing(KafkaRejected):
    """The topic does not exist (create it with `ensure_topic`)."""


class TopicChanged(KafkaConnectorError):
    """The topic was deleted and re-created (or the in-memory broker restarted)
    since the recovery snapshot was taken: the stored offsets belong to another
    topic. Start with a fresh recovery directory."""


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _typed(exc: BaseException, bootstrap: str, what: str) -> KafkaConnectorError:
    """kafka-python error -> KafkaUnavailable (retriable kinds: the client's
    retries already ran out) or KafkaRejected (the rest)."""
    if isinstance(exc, KafkaConnectorError):
        return exc
    retriable = getattr(exc, "retriable", False)
    if retriable or isinstance(exc, (KafkaTimeoutError, KafkaConnectionError,
                                     ConnectionError, TimeoutError)):
        return KafkaUnavailable(f"Kafka at {bootstrap} unavailable while {what}: {_one_line(exc)}")
    return KafkaRejected(f"Kafka at {bootstrap} rejected {what}: {_one_line(exc)}")


# ---------------------------------------------------------------- pure mapping
@dataclass(slots=True, frozen=True)
class WatermarkRecord:
    """A marker: every later bar of its partition has timestamp >= ts."""

    ts: int  # exclusive bound: start of the completed minute + 60


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


def encode_watermark(ts: int) -> bytes:
    """Value of the marker for watermark `ts` (a minute start): "minute ts - 60
    is complete". Its key is None."""
    ts = int(ts)
    if ts % MINUTE:
        raise ValueError(f"watermark {ts} is not on a minute")
    return f'{{"T":"w","t":"{iso_minute(ts - MINUTE)}"}}'.encode()


def _number(obj: dict, name: str, optional: bool = False):
    x = obj.get(name)
    if x is None:
        if optional:
            return None, None
        return None, f"missing field {name}" if name not in obj else f"field {name} is null"
    if type(x) is float:
        return x, None
    if type(x) is int:  # not bool: type() is exact
        try:
            return float(x), None
        except OverflowError:
            return None, f"field {name}: number out of range"
    return None, f"field {name}: expected a number, got {type(x).__name__}"


def decode_record(key: bytes | None, value: bytes | None):
    """A record of the bars topic -> `Bar` | `WatermarkRecord` | `DecodeError`.
    Never raises. The reference: `KafkaBarSource` decodes the common case
    faster (msgspec, columns) and sends everything else here; both must
    decide alike (tests/test_kafka.py compares them)."""
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
        symbol = obj.get("S")
        if not isinstance(symbol, str):
            return DecodeError("missing field S" if symbol is None else "field S: expected a string")
        if key is None:
            return DecodeError("bar without key (the key must be the symbol)")
        if key != symbol.encode("utf-8", "surrogatepass"):
            return DecodeError(f"key {key[:40]!r} is not the symbol {symbol[:40]!r}")
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
    if kind is None:
        return DecodeError("missing field T")
    return DecodeError(f"unknown record type T={str(kind)[:20]!r}")


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


@dataclass(frozen=True)
class PublishStep:
    """Send `rows` (indices into the columns, in this order), then the marker
    for `watermark` to every partition in `partitions`."""

    rows: np.ndarray
    watermark: int
    partitions: tuple


def publish_plan(cols, partitions, min_rows: int = 1) -> Iterator[PublishStep]:
    """The steps that publish a bar file as live would have: bars in
    `connectors.barfile.plan_emission` order, with a marker after each
    distinct suffix-min minute (or, with `min_rows` > 1, after the first
    minute boundary once at least `min_rows` bars were sent since the last
    marker).

    Why the markers are true. Rows go out sorted by their suffix-min s (the
    earliest time among the row and its symbol's later rows), so each symbol
    keeps its row order. Let M(r) = floor(s(r) / 60) * 60, non-decreasing in
    send order. A step ends after the last row with M = m; the next row to
    send has M = m' > m, and every row still to come has s >= m' (sorted),
    hence time >= s >= m'. The marker therefore carries watermark m' ("minute
    m' - 60 is complete"), the tightest minute bound; after the last row any
    bound holds and the marker covers the latest bar (its minute + 60: a
    symbol's out-of-order rows can put its largest time before its last row,
    so this can exceed the last M + 60). The bound is global, so it holds in
    every partition, whatever partition a row's key hashes to; and the
    producer keeps per-partition order (idempotent, acks=all), so a marker
    lands after the bars sent before it. No row is ever behind a marker when
    it arrives: publishing a file makes no source-`late` bars (a symbol's own
    out-of-order rows are still judged by the symbol stage, as for the file).

    `partitions`: the topic's partition count or partition numbers.
    """
    parts = tuple(range(partitions)) if isinstance(partitions, int) else tuple(partitions)
    order, sufmin = plan_emission(cols)
    n = len(order)
    if n == 0:
        return
    minute = (sufmin[order] // MINUTE) * MINUTE
    ends = np.flatnonzero(minute[1:] != minute[:-1]) + 1  # first row of each later minute
    bounds = ends.tolist() + [n]
    # After the last row nothing follows: declare every minute up to the latest bar complete.
    last = (int(cols.ts.max()) // MINUTE) * MINUTE + MINUTE
    start = 0
    for end in bounds:
        if end - start < min_rows and end < n:
            continue
        watermark = int(minute[end]) if end < n else last
        yield PublishStep(order[start:end], watermark, parts)
        start = end


# ---------------------------------------------------------------- admin I/O
def _admin(bootstrap: str, timeout_ms: int):
    try:
        return KafkaAdminClient(bootstrap_servers=bootstrap, bootstrap_timeout_ms=timeout_ms,
                                request_timeout_ms=timeout_ms, client_id="thousandcuts-admin")
    except Exception as exc:
        raise _typed(exc, bootstrap, "connecting") from None


def _describe(admin, bootstrap: str, topic: str) -> dict | None:
    """The topic's metadata, None when it does not exist (never creates it)."""
    try:
        (meta,) = admin.describe_topics([topic])
    except Exception as exc:
        raise _typed(exc, bootstrap, f"describing topic {topic}") from None
    if meta.get("error_code") == 3:  # UNKNOWN_TOPIC_OR_PARTITION
        return None
    if meta.get("error_code"):
        raise KafkaRejected(f"Kafka at {bootstrap}: topic {topic}: error code {meta['error_code']}")
    return meta


def topic_partitions(bootstrap: str, topic: str, timeout_ms: int = 10_000) -> list[int]:
    """The topic's partition numbers; `TopicMissing` when it does not exist."""
    admin = _admin(bootstrap, timeout_ms)
    try:
        meta = _describe(admin, bootstrap, topic)
    finally:
        admin.close()
    if meta is None:
        raise TopicMissing(f"Kafka at {bootstrap}: topic {topic} does not exist")
    return sorted(p["partition_index"] for p in meta["partitions"])


def ensure_topic(bootstrap: str, topic: str, partitions: int, replication_factor: int = 1,
                 timeout_ms: int = 10_000) -> int:
    """Create `topic` with `partitions` partitions when missing; return its
    partition count. An existing topic keeps its own count (Kafka cannot
    shrink one, and growing it would move symbols to other partitions):
    compare the returned count with what you asked for."""
    admin = _admin(bootstrap, timeout_ms)
    try:
        meta = _describe(admin, bootstrap, topic)
        if meta is None:
            try:
                admin.create_topics([NewTopic(topic, partitions, replication_factor)],
                                    timeout_ms=timeout_ms)
            except TopicAlreadyExistsError:
                pass  # created concurrently: report what exists
            except Exception as exc:
                raise _typed(exc, bootstrap, f"creating topic {topic}") from None
            meta = _describe(admin, bootstrap, topic)
            if meta is None:
                raise KafkaRejected(f"Kafka at {bootstrap}: topic {topic} missing right after creation")
        return len(meta["partitions"])
    finally:
        admin.close()


def topic_identity(bootstrap: str, topic: str, timeout_ms: int = 10_000) -> str:
    """The topic's id (KIP-516 UUID, from metadata v10+). It changes whenever
    the topic is deleted and re-created, and on Tansu (memory storage) when
    the broker restarts, because the topic is then created anew: store it
    with recovery state and compare at start."""
    admin = _admin(bootstrap, timeout_ms)
    try:
        meta = _describe(admin, bootstrap, topic)
    finally:
        admin.close()
    if meta is None:
        raise TopicMissing(f"Kafka at {bootstrap}: topic {topic} does not exist")
    tid = meta.get("topic_id")
    if tid is None or str(tid) == "00000000-0000-0000-0000-000000000000":
        raise KafkaRejected(f"Kafka at {bootstrap} does not report topic ids (needs metadata v10+)")
    return str(tid)


# ---------------------------------------------------------------- producing
class BarProducer:
    """Publishes bars and markers to the bars topic (kafka-python).

    acks=all, idempotent (no duplicates or reordering on internal retries),
    retries until `delivery_timeout_ms`, batched with `linger_ms`. Retriable
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

    def send_watermark(self, ts: int) -> None:
        """Queue the marker for watermark `ts` to every partition (explicit
        partition, key None), after everything queued before it."""
        self._check()
        value = encode_watermark(ts)
        for p in self.partitions:
            self._send(None, value, partition=p)
        self.markers_sent += len(self.partitions)

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


def iso_times(ts: np.ndarray) -> np.ndarray:
    """ISO text ('...Z') of epoch seconds, vectorised over distinct values."""
    ts = np.asarray(ts, dtype=np.int64)
    if not len(ts):
        return np.zeros(0, dtype=object)
    uniq, inverse = np.unique(ts, return_inverse=True)
    text = np.char.add(np.datetime_as_string(uniq.astype("datetime64[s]"), unit="s"), "Z")
    return text.astype(object)[inverse]


def publish_columns(producer: BarProducer, cols, min_rows: int = 1,
                    progress: Callable[[int, int], None] | None = None) -> tuple[int, int]:
    """Publish a whole bar file through `producer` by `publish_plan`, then
    flush. Returns (bars, markers) sent. `progress(bars_so_far, total)` is
    called after each step."""
    iso = iso_times(cols.ts)
    bars = markers = 0
    for step in publish_plan(cols, producer.partitions, min_rows=min_rows):
        bars += producer.send_rows(cols, step.rows, iso)
        producer.send_watermark(step.watermark)
        markers += len(step.partitions)
        if progress is not None:
            progress(bars, len(cols))
    producer.flush()
    return bars, markers


# ---------------------------------------------------------------- consuming
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
# tests/test_kafka.py runs both paths on valid, malformed and fuzzed
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


_WIRE = msgspec.json.Decoder(_WireBar | _WireMarker)
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


def _text(data: bytes | None, limit: int = 2000) -> str | None:
    return None if data is None else data[:limit].decode("utf-8", "backslashreplace")


class _Group:
    """One symbol's part of a batch, as columns (symbol "" gathers the
    undecodable records, and has no bars)."""

    __slots__ = ("symbol", "o", "h", "l", "c", "v", "n", "vw", "ts", "offsets", "dead")

    def __init__(self, symbol: str):
        self.symbol = symbol
        # array('d') holds the prices as C doubles (the decoded floats die at
        # once) and hands them to numpy without a copy
        self.o, self.h, self.l, self.c, self.v = (array("d") for _ in range(5))  # noqa: E741
        self.n: list = []  # trade count / vwap: None when unknown
        self.vw: list = []
        self.ts: list = []
        self.offsets: list = []
        self.dead: list = []

    def add(self, ts: int, offset: int, o, h, lo, c, v, n, vw) -> None:
        self.o.append(o)
        self.h.append(h)
        self.l.append(lo)
        self.c.append(c)
        self.v.append(v)
        self.n.append(n)
        self.vw.append(vw)
        self.ts.append(ts)
        self.offsets.append(offset)

    def block(self) -> BarBlock:
        n = len(self.ts)
        if not n:
            return _empty_block(self.symbol)
        f8 = np.float64
        tc, vw = self.n, self.vw
        tc = None if tc.count(None) == n else np.array(tc, dtype=f8)  # None -> NaN
        vw = None if vw.count(None) == n else np.array(vw, dtype=f8)
        return BarBlock(self.symbol, np.array(self.ts, dtype=np.int64), np.frombuffer(self.o, f8),
                        np.frombuffer(self.h, f8), np.frombuffer(self.l, f8),
                        np.frombuffer(self.c, f8), np.frombuffer(self.v, f8), tc, vw)


def _late(symbol: str, ts: int, source: str, r: _WireBar) -> DeadLetter:
    bar = Bar(symbol, ts, r.o, r.h, r.l, r.c, r.v, r.n, r.vw)
    return DeadLetter(symbol, ts, "late", source, bar_payload(bar))


class _BarPartition(StatefulSourcePartition):
    """Wraps Bytewax's Kafka partition: records -> Chunk / Watermark items.

    State (the snapshot): (next offset, next seq, watermark, topic id). All of
    a fetched batch is turned into items inside `next_batch`, so the state is
    consistent at every snapshot.
    """

    def __init__(self, inner, topic: str, partition: int, tail: bool, seq: int, watermark: int,
                 identity: str | None, dead_letter: Callable | None):
        self.inner = inner
        self.topic = topic
        self.partition = partition
        self.prefix = f"{topic}/{partition}@"
        self.tail = tail
        self.seq = seq
        self.watermark = watermark
        self.identity = identity
        self.dead_letter = dead_letter  # (topic, partition, [(reason, offset, key, value)])
        self.ended = False

    def next_batch(self) -> list:
        """One fetched batch -> a Chunk per symbol (and one for undecodable
        records), then one Watermark when markers in the batch advanced it.

        Late is decided per bar with the watermark at its position; emitting
        the batch's watermark after all its chunks only delays the promise,
        which keeps it true: a non-late bar after a marker has ts >= that
        marker, and bars before it are emitted before the Watermark item.
        So a batch costs a few items however many markers it holds (live
        topics carry a marker per minute per partition).

        The cyclic GC is paused for the batch: librdkafka's messages are
        GC-tracked objects that live exactly as long as the batch and hold no
        cycles, but a collection during the batch would promote them to the
        old generation and trigger full collections of the whole heap (a
        fifth of a replay's time). Freed with the batch, they never reach it.
        Collections resume after, for everything else."""
        enabled = gc.isenabled()
        gc.disable()
        try:
            return self._next_batch()
        finally:
            if enabled:
                gc.enable()

    def _next_batch(self) -> list:
        msgs = self.inner.next_batch()  # raises StopIteration after the end in replay mode
        prefix = self.prefix
        groups: dict = {}  # key bytes -> _Group (None -> the undecodable records)
        copies: list = []
        start_watermark = watermark = self.watermark
        decode, iso, wire_bar, wire_marker = _WIRE.decode, _ISO_CACHE, _WireBar, _WireMarker
        for m in msgs:
            try:
                r = decode(m.value())
            except Exception:  # malformed, a tombstone (None), too deep...: decode_record says why
                r = None
            kind = type(r)
            if kind is wire_bar:
                ts = iso.get(r.t)
                if ts is None:
                    ts = _parse_time(r.t)
                    if ts is None:
                        watermark = self._decode_slow(m, groups, watermark, copies)
                        continue
                key = m.key()
                g = groups.get(key)
                if g is None or g.symbol != r.S:
                    # first bar of this key in the batch, or a key that is not its symbol
                    if key is None or key != r.S.encode("utf-8", "surrogatepass"):
                        watermark = self._decode_slow(m, groups, watermark, copies)
                        continue
                    g = groups[key] = _Group(r.S)
                if ts < watermark:
                    g.dead.append(_late(g.symbol, ts, f"{prefix}{m.offset()}", r))
                else:  # _Group.add, inlined
                    g.o.append(r.o)
                    g.h.append(r.h)
                    g.l.append(r.l)
                    g.c.append(r.c)
                    g.v.append(r.v)
                    g.n.append(r.n)
                    g.vw.append(r.vw)
                    g.ts.append(ts)
                    g.offsets.append(m.offset())
            elif kind is wire_marker:
                ts = iso.get(r.t)
                if ts is None:
                    ts = _parse_time(r.t)
                if ts is None or ts % MINUTE:
                    watermark = self._decode_slow(m, groups, watermark, copies)
                elif ts + MINUTE > watermark:  # an older or repeated marker promises nothing new
                    watermark = ts + MINUTE
            else:
                watermark = self._decode_slow(m, groups, watermark, copies)
        if copies and self.dead_letter is not None:
            self.dead_letter(self.topic, self.partition, copies)  # before the offsets can reach a snapshot
        return self._items(groups, start_watermark, watermark)

    def _decode_slow(self, m, groups: dict, watermark: int, copies: list) -> int:
        """One record the fast path did not take, by `decode_record`; returns
        the watermark after it."""
        key, value, offset = m.key(), m.value(), m.offset()
        rec = decode_record(key, value)
        kind = type(rec)
        if kind is Bar:
            g = groups.get(key)
            if g is None:
                g = groups[key] = _Group(rec.symbol)
            if rec.ts < watermark:
                g.dead.append(DeadLetter(rec.symbol, rec.ts, "late", f"{self.prefix}{offset}",
                                         bar_payload(rec)))
            else:
                g.add(rec.ts, offset, rec.open, rec.high, rec.low, rec.close, rec.volume,
                      rec.trade_count, rec.vwap)
        elif kind is WatermarkRecord:
            if rec.ts > watermark:
                watermark = rec.ts
        else:
            g = groups.get(None)  # one group for all undecodable records
            if g is None:
                g = groups[None] = _Group("")
            _, ms = m.timestamp()
            ts = ms // 1000 if ms > 0 else 0
            payload = json.dumps({"error": rec.reason, "key": _text(key), "value": _text(value)})
            symbol = _text(key, 40) if key is not None else ""
            g.dead.append(DeadLetter(symbol, ts, "undecodable", f"{self.prefix}{offset}", payload))
            copies.append((rec.reason, offset, key, value))
        return watermark

    def _items(self, groups: dict, start_watermark: int, watermark: int) -> list:
        p, prefix = self.partition, self.prefix
        items: list = []
        seq = self.seq
        for g in groups.values():
            items.append(Chunk(p, seq, g.symbol, g.block(), g.offsets, prefix, g.dead))
            seq += 1
        if watermark > start_watermark:
            items.append(Watermark(p, seq, watermark))
            seq += 1
        if not self.tail and not self.ended and getattr(self.inner, "_eof", False):
            # End of the partition in replay: nothing more will come.
            self.ended = True
            watermark = END_OF_TIME
            items.append(Watermark(p, seq, END_OF_TIME))
            seq += 1
        self.seq, self.watermark = seq, watermark
        return items

    def next_awake(self):
        return self.inner.next_awake()

    def snapshot(self):
        return (self.inner.snapshot(), self.seq, self.watermark, self.identity)

    def close(self) -> None:
        self.inner.close()
        if self.dead_letter is not None:
            self.dead_letter.release()


def _empty_block(symbol: str) -> BarBlock:
    z = np.zeros(0, dtype=np.float64)
    return BarBlock(symbol, np.zeros(0, dtype=np.int64), z, z, z, z, z)


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


class KafkaBarSource(KafkaSource):
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

    `batch_size` caps the messages taken per poll of a partition (a poll
    returns what has arrived within 1 ms), so a large cap costs a tailing
    flow no latency and lets a replay work in large batches. Records are
    decoded by a fast path with exactly `decode_record`'s decisions (see
    "consuming" below).
    """

    def __init__(self, bootstrap: str, topic: str, *, tail: bool = True,
                 dead_letter_topic: str | None = None, batch_size: int = 10_000,
                 fetch_wait_ms: int = 10, add_config: dict | None = None,
                 check_identity: bool = True):
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
        self.bootstrap = bootstrap
        self.topic = topic
        self.tail = tail
        self.check_identity = check_identity
        self.dead_letter_topic = dead_letter_topic
        self._identity: str | None = None
        self._partitions: list | None = None
        self._lock = threading.Lock()
        self._writer = _DeadLetterWriter(bootstrap, dead_letter_topic) if dead_letter_topic else None

    def partition_ids(self) -> list[int]:
        """The topic's partition numbers (`TopicMissing` when it does not exist)."""
        if self._partitions is None:
            self._partitions = topic_partitions(self.bootstrap, self.topic)
        return list(self._partitions)

    def identity(self) -> str:
        with self._lock:
            if self._identity is None:
                self._identity = topic_identity(self.bootstrap, self.topic)
            return self._identity

    def list_parts(self) -> list[str]:
        # Not the librdkafka listing of KafkaSource: it would auto-create a missing topic.
        return [f"{p}-{self.topic}" for p in self.partition_ids()]

    def build_part(self, step_id: str, for_part: str, resume_state):
        idx, topic = for_part.split("-", 1)
        partition = int(idx)
        identity = self.identity() if self.check_identity else None
        offset, seq, watermark = None, 0, -1
        if resume_state is not None:
            offset, seq, watermark, stored = resume_state
            if self.check_identity and stored is not None and stored != identity:
                raise TopicChanged(
                    f"Kafka at {self.bootstrap}: topic {topic} is not the one the recovery state "
                    f"was taken from (topic id {stored}, now {identity}); it was re-created or the "
                    f"broker restarted: start with a fresh recovery directory")
        inner = self._raw_part(step_id, topic, partition, offset)
        writer = self._writer.acquire() if self._writer is not None else None
        return _BarPartition(inner, topic, partition, self.tail, seq, watermark, identity, writer)

    def _raw_part(self, step_id: str, topic: str, partition: int, offset) -> _RawKafkaPartition:
        """`KafkaSource.build_part` of Bytewax 0.21.1 (same consumer config),
        building the partition that hands out librdkafka messages as they are.
        tests/test_kafka.py checks the config against Bytewax's own."""
        config = {
            "group.id": "BYTEWAX_IGNORED",  # offsets live in the recovery store
            "enable.auto.commit": "false",
            "bootstrap.servers": ",".join(self._brokers),
            "enable.partition.eof": str(not self._tail),
            "statistics.interval.ms": 1000,
        }
        config.update(self._add_config)
        return _RawKafkaPartition(step_id, config, topic, partition, self._starting_offset, offset,
                                  self._batch_size, self._raise_on_errors)
