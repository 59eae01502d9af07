"""The `trade_updates` topic's writers (I/O half; mapping and record format:
`connectors.alpaca.trade_updates`).

`TradeUpdatesWriter` (kafka-python, acks=all, idempotent): updates keyed by
symbol, markers to every partition; each call returns once acknowledged. The
broker sink uses it for `submit_failed`.

`TradeUpdateRelay` runs two threads. The stream thread runs alpaca-py's
`TradingStream` (own asyncio loop, raw messages) and queues what it receives.
The clock thread is the only Kafka writer: it maps each queued message
(`to_trade_update`) and publishes it at once, and every `clock_poll_s` reads
the broker's clock (`TradingClient.get_clock().timestamp`); a reading T is
written as the marker T `grace_s` (wall clock) later, after everything
received until then: "updates stamped before T have arrived by T + grace".
Markers are only written while the stream listens and nothing was missed: a
reading from before a disconnect is dropped, and after every (re)connect the
relay first catches up from the order list (`catch_up_updates` over
`GET /v2/orders?status=all&nested=true&after=since`, paged by 500). Alpaca
does not replay events sent while nobody listened; the order list is the truth.

Errors (typed; nothing here branches on message text): the writer's Kafka
errors are `connectors.kafka.admin`'s (`KafkaUnavailable`, `KafkaRejected`,
`TopicMissing`); `AlpacaAuthFailed` (an `AlpacaRejected`): the keys were
refused (REST 401 / 403, or the stream's `unauthorized`): stop, check them;
`AlpacaUnavailable`: the stream did not listen, or the clock or order list
could not be read at start: retry later. A relay stopped by an error keeps it
in `error`; `check()` raises it.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from datetime import datetime, timezone
from typing import Callable

from alpaca.common.enums import Sort
from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import QueryOrderStatus
from alpaca.trading.requests import GetOrdersRequest
from kafka import KafkaProducer

from connectors.alpaca.history import AlpacaUnavailable
from connectors.alpaca.trade_stream import AlpacaAuthFailed, RelayStream  # noqa: F401 (re-exported)
from connectors.alpaca.trade_updates import catch_up_updates, to_trade_update
from connectors.kafka.admin import _typed, ensure_topic, topic_partitions
from connectors.kafka.codec import _one_line
from connectors.kafka.trade_topic import encode_trade_marker, encode_trade_update
from operators.types import TradeUpdate

log = logging.getLogger(__name__)

ORDERS_PAGE = 500  # Alpaca's largest page of GET /v2/orders


# ---------------------------------------------------------------- Kafka writer
class TradeUpdatesWriter:
    """Writes the trade_updates topic (created with `partitions` when missing)."""

    def __init__(self, bootstrap: str, topic: str = "trade_updates", *, partitions: int = 1,
                 create: bool = True, delivery_timeout_ms: int = 30_000, request_timeout_ms: int = 10_000,
                 max_block_ms: int = 15_000, client_id: str = "thousandcuts-trade-updates"):
        self.bootstrap, self.topic = bootstrap, topic
        if create:
            ensure_topic(bootstrap, topic, partitions, timeout_ms=max_block_ms)
        self.partitions = topic_partitions(bootstrap, topic, timeout_ms=max_block_ms)
        self._timeout_s = delivery_timeout_ms / 1000 + 5
        try:
            self._producer = KafkaProducer(
                bootstrap_servers=bootstrap, client_id=client_id, acks="all", enable_idempotence=True,
                max_in_flight_requests_per_connection=5, linger_ms=0,
                delivery_timeout_ms=delivery_timeout_ms, request_timeout_ms=request_timeout_ms,
                max_block_ms=max_block_ms, bootstrap_timeout_ms=max_block_ms,
                allow_auto_create_topics=False)
        except Exception as exc:
            raise _typed(exc, bootstrap, "starting the trade-updates producer") from None
        self._lock = threading.Lock()
        self.updates_sent = 0
        self.markers_sent = 0

    def _write(self, records: list, what: str) -> None:
        """Send (key, value, partition) records in order and wait for every ack."""
        with self._lock:
            if self._producer is None:
                raise RuntimeError("trade-updates writer is closed")
            try:
                futures = [self._producer.send(self.topic, key=k, value=v, partition=p)
                           for k, v, p in records]
                self._producer.flush(timeout=self._timeout_s)
                for f in futures:
                    f.get(timeout=0)
            except Exception as exc:
                raise _typed(exc, self.bootstrap, f"{what} to topic {self.topic}") from None

    def publish(self, update: TradeUpdate) -> None:
        """Write one update (key = symbol); durable when this returns."""
        self.publish_many([update])

    def publish_many(self, updates) -> None:
        records = [(*encode_trade_update(u), None) for u in updates]
        if records:
            self._write(records, "writing trade updates")
            self.updates_sent += len(records)

    def mark(self, ts: int) -> None:
        """Write the marker "every later update has ts >= `ts`" to every partition."""
        value = encode_trade_marker(int(ts))
        self._write([(None, value, p) for p in self.partitions], "writing a marker")
        self.markers_sent += 1

    def close(self, timeout: float = 10.0) -> None:
        with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            producer.close(timeout=timeout)

    def __enter__(self) -> "TradeUpdatesWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------- the relay
class TradeUpdateRelay:
    """Alpaca trade updates of run `run_id` -> `writer` (see the module doc).

    Injectable for tests: `trading_client` (get_clock, get_orders),
    `broker_clock()` (epoch seconds, default: the trading client's clock),
    `stream_factory(events)` (an object with run() and shutdown() putting the
    `RelayStream` events on `events`), `wall()` (monotonic seconds).
    `on_update(update)` runs after each live update is written (e.g.
    `connectors.alpaca.broker_sink.ProtectOnFill`); its errors are logged only.
    `on_published(updates, source)` runs after each write of the broker's
    updates (source `trade_updates`: the stream; `order_list`: a catch-up),
    e.g. to record the order history; its errors are logged only.
    `since`: orders submitted after it are caught up (default: `catch_up_s`
    before the broker's time at start)."""

    def __init__(self, key: str, secret: str, run_id: str, writer: TradeUpdatesWriter, *,
                 paper: bool = True, stream_url: str | None = None, rest_url: str | None = None,
                 clock_poll_s: float = 1.0, grace_s: float = 1.5, since: datetime | None = None,
                 catch_up_s: float = 86_400.0, connect_timeout_s: float = 10.0,
                 on_update: Callable[[TradeUpdate], None] | None = None,
                 on_published: Callable[[list, str], None] | None = None, trading_client=None,
                 broker_clock: Callable[[], float] | None = None,
                 stream_factory: Callable[[queue.Queue], object] | None = None,
                 wall: Callable[[], float] = time.monotonic):
        self.run_id, self.writer = run_id, writer
        self.clock_poll_s, self.grace_s = clock_poll_s, grace_s
        self.since, self.catch_up_s, self.connect_timeout_s = since, catch_up_s, connect_timeout_s
        self.on_update, self.on_published, self.wall = on_update, on_published, wall
        self.client = trading_client or TradingClient(key, secret, paper=paper, url_override=rest_url)
        self._broker_clock = broker_clock or (lambda: self.client.get_clock().timestamp.timestamp())
        self._stream_factory = stream_factory or (lambda events: RelayStream(
            key, secret, events, paper=paper, url=stream_url, connect_timeout_s=connect_timeout_s))
        self.leg_parents: dict = {}
        self.error: BaseException | None = None
        self.last_marker: int | None = None
        self.counts = {"updates": 0, "skipped": 0, "caught_up": 0, "markers": 0, "reconnects": 0}
        self._events: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._stream = None
        self._threads: list = []
        self._listening = False
        self._epoch = 0  # +1 per stream close: clock readings from before are void
        self._catch_up_pending = False  # markers wait until the order list was read
        self._catch_up_since: int | None = None  # only orders updated since (None: all)
        self._failing: set = set()  # REST calls failing now (logged once)

    # -- control ----------------------------------------------------------------
    def start(self) -> "TradeUpdateRelay":
        """Start both threads; returns once the stream listens and the first
        catch-up is written (or raises the typed error that prevented it)."""
        now = self._read_clock(fatal=True)
        if self.since is None:
            self.since = datetime.fromtimestamp(now - self.catch_up_s, tz=timezone.utc)
        self._stream = self._stream_factory(self._events)
        self._threads = [threading.Thread(target=self._stream.run, name="trade-updates-stream", daemon=True),
                         threading.Thread(target=self._pump, name="trade-updates-clock", daemon=True)]
        for t in self._threads:
            t.start()
        deadline = self.wall() + self.connect_timeout_s + 30.0
        try:
            while not self._ready.wait(0.05):
                if self.error is not None or self.wall() > deadline:
                    if self.error is None:
                        raise AlpacaUnavailable("the trade-updates stream did not start listening within "
                                                f"{self.connect_timeout_s:g} s (+ the catch-up)")
                    raise self.error
        except BaseException:  # that error, or a stop (SIGINT / SIGTERM) while it connects
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the stream, write what it delivered, stop the clock thread."""
        if self._stream is not None:
            self._stream.shutdown()
        if self._threads:
            self._threads[0].join(timeout)  # the stream first: nothing arrives after the last drain
        self._stop.set()
        for t in self._threads[1:]:
            t.join(timeout)

    def check(self) -> None:
        """Raise the error that stopped the relay, if any."""
        if self.error is not None:
            raise self.error

    @property
    def alive(self) -> bool:
        return self.error is None and all(t.is_alive() for t in self._threads)

    def __enter__(self) -> "TradeUpdateRelay":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- the clock thread -------------------------------------------------------
    def _pump(self) -> None:
        pending: deque = deque()  # (due wall time, broker time, epoch)
        next_read = self.wall()
        try:
            while not self._stop.is_set():
                now = self.wall()
                if now >= next_read:
                    next_read = now + self.clock_poll_s
                    if self._catch_up_pending and self._listening:
                        self._catch_up()  # a failed one, again
                    if self._listening and not self._catch_up_pending:
                        t = self._read_clock()
                        if t is not None:
                            pending.append((now + self.grace_s, int(t), self._epoch))
                due = min(next_read, pending[0][0]) if pending else next_read
                self._drain(max(0.0, due - self.wall()))
                while pending and pending[0][0] <= self.wall():
                    _, t, epoch = pending.popleft()
                    self._drain(0.0)  # everything received until now goes first
                    if epoch == self._epoch and self._listening and not self._catch_up_pending:
                        self._mark(t)
            self._drain(0.0)  # the stream stopped first: what it delivered is written
        except Exception as exc:  # kept for check(); the relay stops
            self.error = exc
            log.error("trade-updates relay stopped: %s", _one_line(exc))
            if self._stream is not None:
                self._stream.shutdown()

    def _drain(self, timeout: float) -> None:
        try:
            item = self._events.get(timeout=timeout) if timeout > 0 else self._events.get_nowait()
        except queue.Empty:
            return
        while True:
            self._handle(item)
            try:
                item = self._events.get_nowait()
            except queue.Empty:
                return

    def _handle(self, item: tuple) -> None:
        kind = item[0]
        if kind == "update":
            try:
                u = to_trade_update(item[1], self.run_id, self.leg_parents)
            except Exception:  # a shape the mapping does not know: logged, never fatal
                log.exception("trade-updates relay: message not mapped: %.300r", item[1])
                u = None
            if u is None:
                self.counts["skipped"] += 1
                return
            self.writer.publish(u)
            self.counts["updates"] += 1
            if self.on_update is not None:
                try:
                    self.on_update(u)
                except Exception as exc:  # a reaction must never stop the relay
                    log.warning("trade-updates relay: on_update(%s) failed: %s", u.order_id, _one_line(exc))
            self._published([u], "trade_updates")
        elif kind == "listening":
            self._listening = True
            # what happened while nobody listened is only in the order list:
            # at start everything since `since`, after a reconnect what changed
            # since a minute before the last marker
            self._catch_up_pending = True
            self._catch_up_since = (None if not self._ready.is_set() or self.last_marker is None
                                    else self.last_marker - 60)
            self._catch_up(raise_errors=not self._ready.is_set())
        elif kind == "closed":
            if self._listening:
                self.counts["reconnects"] += 1
            self._listening = False
            self._epoch += 1
        elif kind == "fatal":
            raise item[1]

    def _published(self, updates: list, source: str) -> None:
        if self.on_published is not None and updates:
            try:
                self.on_published(updates, source)
            except Exception as exc:  # a record of what happened must never stop the relay
                log.error("trade-updates relay: on_published failed: %s", _one_line(exc))

    def _mark(self, t: int) -> None:
        if self.last_marker is not None and t <= self.last_marker:
            return
        self.writer.mark(t)
        self.last_marker = t
        self.counts["markers"] += 1

    # -- REST -------------------------------------------------------------------
    def _rest(self, call, what: str, fatal: bool):
        """call(); refused keys raise `AlpacaAuthFailed`; other failures raise
        `AlpacaUnavailable` when `fatal`, else are logged (once per streak) and
        give None: markers hold until it works again."""
        try:
            result = call()
        except APIError as exc:
            if exc.status_code in (401, 403):
                raise AlpacaAuthFailed(f"Alpaca trading API refused the keys while {what} (HTTP "
                                       f"{exc.status_code}): check ALPACA_API_KEY / ALPACA_SECRET_KEY") from None
            failure = exc
        except Exception as exc:  # network, timeouts
            failure = exc
        else:
            self._failing.discard(what)
            return result
        if fatal:
            raise AlpacaUnavailable(f"Alpaca trading API unavailable while {what}: {_one_line(failure)}")
        if what not in self._failing:
            self._failing.add(what)
            log.warning("trade-updates relay: %s failed, markers held: %s", what, _one_line(failure))
        return None

    def _read_clock(self, fatal: bool = False) -> float | None:
        t = self._rest(self._broker_clock, "reading the clock", fatal)
        return None if t is None else float(t)

    def _catch_up(self, raise_errors: bool = False) -> None:
        """Publish what the order list shows (orders updated since `_catch_up_since`)."""
        orders = self._rest(self._list_orders, "reading the order list", raise_errors)
        if orders is None:
            return  # again at the next clock tick
        updates = catch_up_updates(orders, self.run_id, self.leg_parents, self._catch_up_since)
        self.writer.publish_many(updates)
        self.counts["caught_up"] += len(updates)
        self._published(updates, "order_list")
        log.info("trade-updates relay: caught up %d updates from the order list", len(updates))
        self._catch_up_pending = False
        self._ready.set()

    def _list_orders(self) -> list:
        """Every order submitted after `since`, oldest first, nested (paged by
        submission time, `after` exclusive: of orders submitted at the very
        same instant across a page boundary only the first page's are seen),
        then the open orders submitted before (up to 500): their legs must
        resolve however old the protective OCO is."""
        out: list = []
        after = self.since
        while True:
            page = self.client.get_orders(GetOrdersRequest(
                status=QueryOrderStatus.ALL, after=after, nested=True, limit=ORDERS_PAGE,
                direction=Sort.ASC))
            out.extend(page)
            if len(page) < ORDERS_PAGE:
                break
            submitted = _field(page[-1], "submitted_at")
            if isinstance(submitted, str):
                submitted = datetime.fromisoformat(submitted)
            if not isinstance(submitted, datetime) or (after is not None and submitted <= after):
                break  # cannot page further
            after = submitted
        seen = {str(_field(o, "id")) for o in out}
        older = self.client.get_orders(GetOrdersRequest(
            status=QueryOrderStatus.OPEN, until=self.since, nested=True, limit=ORDERS_PAGE))
        return out + [o for o in older if str(_field(o, "id")) not in seen]


def _field(order, name: str):
    return order.get(name) if isinstance(order, dict) else getattr(order, name, None)
