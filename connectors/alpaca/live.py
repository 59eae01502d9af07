"""Alpaca live minute bars: the loop of `cuts stream` (I/O).

`run_stream(settings, stop)` streams until `stop` (a `threading.Event`) is
set, then flushes the producer and closes the stream. The alpaca-py stream
(`connectors.alpaca.stream.BarStream`) runs on its own thread and only
decodes and queues; this thread owns the Kafka producer, so stream bars,
backfilled bars and markers leave in the order decided here: events are
drained first, then `MinuteCompleter.step` (`connectors.alpaca.minutes`)
decides (backfill the exposed minutes with `connectors.alpaca.history`,
then write the marker), then the watchdog and the periodic counts.
Undecodable messages go to the dead-letter topic. Design: docs/streaming.md.
"""
from __future__ import annotations

import logging
import queue
import random
import threading
import time
from typing import Callable

from connectors.alpaca.bars import Backoff
from connectors.alpaca.history import AlpacaHistory, AlpacaRejected, AlpacaUnavailable
from connectors.alpaca.minutes import (
    MinuteCompleter,
    SentBars,
    StreamCounters,
    is_stale,
    resume_from,
)
from connectors.alpaca.stream import (
    BarStream,
    StreamRejected,
    StreamSettings,
    message_json,
)
from operators.types import iso

log = logging.getLogger(__name__)
MINUTE = 60


class _DeadLetters:
    """Undecodable stream messages to the dead-letter topic (the value format
    of `connectors.kafka.encode_dead_letter`; origin alpaca/<feed>@n)."""

    def __init__(self, bootstrap: str, topic: str, feed: str):
        from kafka import KafkaProducer

        from connectors.kafka.admin import KafkaUnavailable, ensure_topic

        ensure_topic(bootstrap, topic, 1)
        self.topic, self.origin = topic, f"alpaca/{feed}"
        try:
            self._producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=10,
                                           allow_auto_create_topics=False, max_block_ms=15_000,
                                           client_id="thousandcuts-alpaca-dead-letters")
        except Exception as exc:  # kafka-python's errors: cannot reach the broker
            raise KafkaUnavailable(f"Kafka at {bootstrap} unavailable while starting the dead-letter "
                                   f"producer: {type(exc).__name__}: {exc}") from None

    def send(self, reason: str, raw: bytes, n: int) -> None:
        from connectors.kafka.codec import encode_dead_letter

        key, value = encode_dead_letter("undecodable", self.origin, 0, n, None, raw, detail=reason)
        self._producer.send(self.topic, key=key, value=value).add_errback(
            lambda exc: log.error("dead letter %s@%d not delivered to %s: %s",
                                  self.origin, n, self.topic, exc))

    def close(self) -> None:
        self._producer.flush(timeout=10)
        self._producer.close(timeout=10)


class _Pump:
    """Owns the producer: stream events in arrival order, backfills and
    markers, the watchdog and the periodic counts. Runs on one thread."""

    def __init__(self, s: StreamSettings, producer, dead_letters, history, stream: BarStream,
                 clock: Callable[[], float], resume=None, stop: threading.Event | None = None):
        self.s, self.producer, self.dlq = s, producer, dead_letters
        self.stop = stop or threading.Event()
        self.history, self.stream = history, stream
        self.clock = clock
        self.counters = StreamCounters()
        self.sent = SentBars()
        start = self._resume_from(resume, clock())
        self.completer = MinuteCompleter.starting(clock(), s.grace_s, resume_from=start,
                                                  in_session=s.session, give_up_s=s.give_up_s)
        self.connected_at = self.last_bar_at = None
        self.backoff, self.fill_failures = Backoff(s.backoff_base_s, s.backoff_max_s), 0
        self.next_stats = clock() + s.stats_every_s

    def _resume_from(self, point, now: float) -> int | None:
        """A restart continues after the topic's last marker (`connectors.
        kafka_resume.ResumePoint`): the minutes since are backfilled, and
        bars already written after the marker are not written again."""
        if point is None or point.watermark is None:
            log.info("no event-time marker in topic %s: starting at the current minute", self.s.topic)
            return None
        start = resume_from(point.watermark, now, self.s.max_catch_up_s)
        last = iso(point.watermark - MINUTE)
        if start is None:
            log.warning("topic %s is complete up to minute %s, more than %g h ago (or ahead of the "
                        "clock): starting at the current minute; fill the gap with `cuts backfill "
                        "--start %s`", self.s.topic, last, self.s.max_catch_up_s / 3600, last)
            return None
        for symbol, minute in point.written:
            self.sent.first(symbol, minute)
        log.info("resuming topic %s after its last complete minute %s: the minutes since are "
                 "backfilled before they are declared complete (%d bars after it already written)",
                 self.s.topic, last, len(point.written))
        return start

    def tick(self, events: queue.Queue, timeout: float) -> None:
        try:
            item = events.get(timeout=timeout)
            while True:
                self._handle(item)
                item = events.get_nowait()
        except queue.Empty:
            pass
        now = self.clock()
        self._complete(now)
        if is_stale(now, self.connected_at, self.last_bar_at, self.s.session(int(now)),
                    self.s.stale_after_s):
            self.connected_at = None  # once per connection
            self.stream.force_reconnect(f"no bars for {self.s.stale_after_s:g} s during the session")
        if now >= self.next_stats:
            self.next_stats = now + self.s.stats_every_s
            log.info("stream: %s; complete up to %s", self.counters.line(), iso(self.completer.declared))

    def _handle(self, item: tuple) -> None:
        kind, c = item[0], self.counters
        if kind == "bar":
            _, bar, t, at = item
            c.received += 1
            self.last_bar_at = at
            if t == "u":
                c.updated += 1
            else:
                self.completer.saw_bar(bar.ts)
            self._write(bar, correction=(t == "u"))
        elif kind == "dead":
            c.dead_letters += 1
            log.error("undecodable Alpaca stream message (%s): %.200r", item[1], item[2])
            if self.dlq is not None:
                self.dlq.send(item[1], item[2], c.dead_letters)
        elif kind == "auth":
            self.connected_at = item[1]
            c.connections += 1
        elif kind == "covered":
            self.completer.covered(item[1])
        elif kind in ("uncovered", "closed"):
            self.completer.uncovered(item[1])
            if kind == "closed":
                self.connected_at = None

    def _write(self, bar, correction: bool = False, backfill: bool = False) -> bool:
        if not self.sent.first(bar.symbol, bar.ts) and not correction:
            self.counters.duplicates += 1
            return False
        self.producer.send_bars([bar])
        self.counters.produced += 1
        self.counters.backfilled += backfill
        self.counters.late += bar.ts < self.completer.declared
        return True

    def _complete(self, now: float) -> None:
        done = self.completer
        for _ in range(1000):
            if self.stop.is_set():  # a long catch-up: the restart backfills the rest again
                return
            action = done.step(now)
            if action is None:
                return
            if action[0] == "watermark":
                self.producer.send_watermark(action[1])
                self.producer.flush(timeout=30)
                self.counters.markers += 1
                done.declare(action[1])
                self.sent.forget_before(action[1] - 3600)
            elif action[0] == "give_up":
                log.error("minute %s declared complete WITHOUT its backfill (REST failing for %g s): "
                          "bars of it may be missing", iso(action[1]), self.s.give_up_s)
                done.give_up(action[1])
                self.counters.unverified = done.unverified
            else:
                if not self._backfill(now, action[1], action[2]):
                    return

    def _backfill(self, now: float, lo: int, hi: int) -> bool:
        try:
            bars = self.history.fetch(self.s.symbols, lo, hi, on_bad=self._bad_rest_bar)
        except (AlpacaUnavailable, AlpacaRejected) as exc:
            self.fill_failures += 1
            delay = self.backoff.delay(self.fill_failures, random.random())
            log.error("backfill of %s..%s failed (%s); minute held, retrying in %.1f s",
                      iso(lo), iso(hi), exc, delay)
            self.completer.fill_failed(now, delay)
            return False
        self.fill_failures = 0
        new = sum(self._write(b, backfill=True) for b in sorted(bars, key=lambda b: (b.ts, b.symbol)))
        log.info("backfilled %s..%s (%d minute(s)): %d bars fetched, %d new",
                 iso(lo), iso(hi), (hi - lo) // MINUTE, len(bars), new)
        self.completer.filled(lo, hi)
        return True

    def _bad_rest_bar(self, symbol: str, raw, reason: str) -> None:
        self._handle(("dead", f"REST bar of {symbol}: {reason}", message_json(raw)))

    def drain(self, events: queue.Queue) -> None:
        while True:
            try:
                self._handle(events.get_nowait())
            except queue.Empty:
                return


def run_stream(s: StreamSettings, stop: threading.Event,
               clock: Callable[[], float] = time.time) -> StreamCounters:
    """Stream until `stop` is set (anything with `is_set()`: a `threading.Event`,
    `dataflows.stop.StopRequest`; then flush and close; counters returned).
    Raises `StreamRejected` (fatal Alpaca error), Kafka connector errors."""
    from connectors.kafka.admin import ensure_topic
    from connectors.kafka.producer import BarProducer
    from connectors.kafka.resume import read_resume_point

    ensure_topic(s.bootstrap, s.topic, s.partitions)
    resume = read_resume_point(s.bootstrap, s.topic)
    history = AlpacaHistory(s.key, s.secret, url=s.rest_url, feed=s.feed, attempts=3, timeout_s=10.0,
                            backoff=Backoff(s.backoff_base_s, min(s.backoff_max_s, 10.0)))
    producer = BarProducer(s.bootstrap, s.topic)
    dlq = None
    ok = False
    try:
        dlq = _DeadLetters(s.bootstrap, s.dead_letter_topic, s.feed) if s.dead_letter_topic else None
        events: queue.Queue = queue.Queue()
        stream = BarStream(s, events, clock)
        pump = _Pump(s, producer, dlq, history, stream, clock, resume, stop)
        thread = threading.Thread(target=stream.run, name="alpaca-stream", daemon=True)
        thread.start()
        try:
            while not stop.is_set():
                pump.tick(events, 0.05)
                if stream.fatal is not None:
                    raise stream.fatal
                if not thread.is_alive():
                    raise StreamRejected("the Alpaca stream stopped unexpectedly (see the log)")
            ok = True
        finally:
            stream.shutdown()
            thread.join(10)
            try:
                pump.drain(events)  # what arrived before the close is written too
            except Exception as exc:  # don't mask the error that stopped us
                if ok:
                    raise
                log.error("bars still queued at the stop were not all written: %s", exc)
        return pump.counters
    finally:
        if dlq is not None:
            dlq.close()
        producer.close(check=ok)
