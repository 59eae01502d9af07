"""Alpaca live minute bars: the websocket (I/O half of `cuts stream`).

`BarStream`, alpaca-py's `StockDataStream` overridden where it handles the
protocol (`_auth`, `_dispatch`, `_send_subscribe_msg`, `_reconnect_delay`,
plus a `_FrameTap` on its websocket), so that Alpaca's error codes are seen
as data, subscriptions go out in batches and frames it would drop become
dead letters. `StreamSettings` configures it and the loop.

The pure rules are `connectors.alpaca.minutes` (completion, staleness,
batches, counters) and `connectors.alpaca.bars` (`parse_bar`, `Backoff`).
The loop that owns the Kafka producer is `connectors.alpaca.live.run_stream`.
Design: docs/streaming.md.
"""
from __future__ import annotations

import asyncio
import json
import logging
import queue
import random
import re
from dataclasses import dataclass
from typing import Callable

import msgpack
import websockets
from alpaca.data.live import StockDataStream

from connectors.alpaca.bars import Backoff, BarDecodeError, parse_bar
from connectors.alpaca.errors import StreamRejected  # noqa: F401 - re-exported
from connectors.alpaca.minutes import in_regular_session, subscribe_batches

log = logging.getLogger(__name__)

DEFAULT_WS_URL = "wss://stream.data.alpaca.markets"
# Codes retrying cannot fix: stop with the hint. Others: log, back off, retry.
FATAL = {409: "the account's market-data plan does not include this feed (try --feed iex)",
         410: "this feed does not offer bar subscriptions"}
HINTS = {402: "check ALPACA_API_KEY / ALPACA_SECRET_KEY", 404: "authentication took too long",
         405: "more symbols than the plan allows", 406: "another connection holds the account's "
         "only stream slot", 407: "this client reads too slowly", 429: "rate limited by Alpaca"}


class StreamFailure(websockets.WebSocketException):
    """A connection attempt failed (timeout, bad greeting). Raised inside
    alpaca-py's loop, which then closes, waits `_reconnect_delay` and retries."""


class StreamErrorMessage(StreamFailure):
    def __init__(self, code, text):
        super().__init__(f"Alpaca stream error {code} ({text})")
        self.code = code


@dataclass
class StreamSettings:
    symbols: list
    key: str
    secret: str
    bootstrap: str
    topic: str = "bars"
    partitions: int = 1  # when the topic is created
    dead_letter_topic: str | None = "bars.dead_letters"
    feed: str = "iex"
    ws_url: str | None = None  # base URL; /v2/<feed> is appended
    rest_url: str | None = None
    grace_s: float = 2.0
    batch_size: int = 10
    batch_delay_s: float = 1.0
    stale_after_s: float = 120.0
    connect_timeout_s: float = 10.0
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    stats_every_s: float = 60.0
    give_up_s: float = 300.0
    session: Callable[[int], bool] = in_regular_session
    max_catch_up_s: float = 72 * 3600.0  # a restart backfills at most this far back

    @property
    def endpoint(self) -> str:
        """alpaca-py's url_override is the whole endpoint: the feed goes in the path."""
        base = re.sub(r"/v2/[A-Za-z_]+/?$", "", (self.ws_url or DEFAULT_WS_URL).rstrip("/"))
        return f"{base}/v2/{self.feed}"


_EMPTY_FRAME = msgpack.packb([])


class _FrameTap:
    """alpaca-py's websocket, with frames it would drop handed to `dead`.

    A normal close that we asked for (`closing()`: a stop) reads as an empty
    frame, so alpaca-py's loop sees its stop request and ends quietly instead
    of logging "data websocket error, restarting connection: sent 1000 (OK)"."""

    def __init__(self, ws, dead: Callable[[str, bytes], None], closing: Callable[[], bool] = lambda: False):
        self._ws, self._dead, self._closing = ws, dead, closing

    def __getattr__(self, name):
        return getattr(self._ws, name)

    async def recv(self):
        try:
            raw = await self._ws.recv()
        except websockets.ConnectionClosedOK:
            if self._closing():
                return _EMPTY_FRAME
            raise
        if not isinstance(raw, bytes):
            self._dead("text frame (the stream speaks msgpack)", raw.encode("utf-8", "replace"))
            return _EMPTY_FRAME
        try:
            msgs = msgpack.unpackb(raw)
        except Exception as exc:  # msgpack's error types vary with the damage
            self._dead(f"frame is not msgpack ({type(exc).__name__})", raw)
            return _EMPTY_FRAME
        if not isinstance(msgs, list):
            self._dead("frame is not a list of messages", raw)
            return _EMPTY_FRAME
        ok = [isinstance(m, dict) and (m.get("T") not in ("b", "u") or "S" in m) for m in msgs]
        if all(ok):
            return raw
        for m, good in zip(msgs, ok):
            if not good:
                self._dead("not a message with a type and symbol", message_json(m))
        return msgpack.packb([m for m, good in zip(msgs, ok) if good])


def message_json(obj) -> bytes:
    """A message as JSON text for a dead letter (msgpack times as RFC 3339)."""
    def plain(x):
        return x.to_datetime().isoformat() if isinstance(x, msgpack.Timestamp) else str(x)

    return json.dumps(obj, default=plain, separators=(",", ":")).encode()


class BarStream(StockDataStream):
    """The market-data stream for `settings.symbols` (bars + updatedBars).
    Puts ("bar", Bar, "b"|"u", t), ("dead", reason, raw), ("auth", t),
    ("covered", t), ("uncovered", t) and ("closed", t) on `events`."""

    def __init__(self, settings: StreamSettings, events: queue.Queue, clock: Callable[[], float]):
        super().__init__(settings.key, settings.secret, raw_data=True, url_override=settings.endpoint,
                         websocket_params={"ping_interval": 10, "ping_timeout": 20, "close_timeout": 2,
                                           "open_timeout": settings.connect_timeout_s, "max_queue": 1024})
        self._s, self._events, self._clock = settings, events, clock
        self._symbols = set(settings.symbols)
        self._batches = subscribe_batches(settings.symbols, settings.batch_size)
        self._backoff = Backoff(settings.backoff_base_s, settings.backoff_max_s)
        self._failures = 0
        self._subscriber: asyncio.Task | None = None
        self._covered = False
        self._closing = False
        self._starting: asyncio.Future | None = None
        self.fatal: StreamRejected | None = None
        # registers the symbols (nothing is sent before run)
        self.subscribe_bars(self._unused, *settings.symbols)
        self.subscribe_updated_bars(self._unused, *settings.symbols)

    async def _unused(self, _msg) -> None:  # _dispatch below delivers instead
        pass

    def _emit(self, *event) -> None:
        self._events.put(event)

    def _dead(self, reason: str, raw: bytes) -> None:
        self._emit("dead", reason, raw)

    # ---- alpaca-py hooks (run on the stream's event loop)
    async def _connect(self) -> None:
        if self._closing:
            self._should_run = False
            if self._stop_stream_event is not None:
                self._stop_stream_event.set()
            raise StreamFailure("stopping")
        try:
            await asyncio.wait_for(super()._connect(), self._s.connect_timeout_s)
        except asyncio.TimeoutError:
            raise StreamFailure(f"no greeting from {self._endpoint} within "
                                f"{self._s.connect_timeout_s:g} s") from None
        except websockets.WebSocketException:
            raise
        except Exception as exc:  # refused, DNS, bad greeting: one line, then backoff
            raise StreamFailure(f"cannot connect to {self._endpoint}: {type(exc).__name__}: {exc}") from None
        self._ws = _FrameTap(self._ws, self._dead, lambda: self._closing)

    async def _start_ws(self) -> None:
        """Connect and authenticate; a stop meanwhile ends it at once and
        quietly (alpaca-py would log the aborted connect as an error)."""
        self._starting = asyncio.ensure_future(super()._start_ws())
        try:
            await self._starting
        except asyncio.CancelledError:
            if not self._closing:
                raise
            # alpaca-py goes on to subscribe (nothing is sent without a socket)
            # and to read, finds its stop request and ends
        finally:
            self._starting = None

    async def _auth(self) -> None:
        await self._ws.send(msgpack.packb({"action": "auth", "key": self._api_key,
                                           "secret": self._secret_key}))
        try:
            reply = msgpack.unpackb(await asyncio.wait_for(self._ws.recv(), self._s.connect_timeout_s))
        except asyncio.TimeoutError:
            raise StreamFailure(f"no reply to auth within {self._s.connect_timeout_s:g} s") from None
        first = reply[0] if reply else {}
        if first.get("T") == "error":
            code = first.get("code")
            self._log_error(code, first.get("msg"), "reconnecting after a backoff")
            if code in FATAL:
                self._stop_fatal(code, first.get("msg"))
            raise StreamErrorMessage(code, first.get("msg"))
        if first.get("T") != "success":
            raise StreamFailure(f"unexpected reply to auth: {str(first)[:100]}")
        self._emit("auth", self._clock())

    async def _send_subscribe_msg(self) -> None:
        """Called by alpaca-py after every (re)connect: subscribe in batches."""
        self._subscribe_later(0.0)

    async def _dispatch(self, msg: dict) -> None:
        try:
            kind = msg.get("T")
            if kind in ("b", "u"):
                try:
                    bar = parse_bar(msg)
                except BarDecodeError as exc:
                    self._dead(str(exc), message_json(msg))
                    return
                if self._covered:
                    self._failures = 0  # bars flow on a complete subscription: healthy
                self._emit("bar", bar, kind, self._clock())
            elif kind == "subscription":
                if not self._covered and self._symbols.issubset(msg.get("bars") or ()):
                    self._covered = True
                    self._emit("covered", self._clock())
            elif kind == "error":
                self._on_stream_error(msg.get("code"), msg.get("msg"))
        except Exception:  # never into alpaca-py's loop: it would skip the rest of the frame
            log.exception("Alpaca stream: message not handled: %.200r", msg)

    def _reconnect_delay(self, retries: int) -> float:
        self._failures += 1
        delay = self._backoff.delay(self._failures, random.random())
        log.warning("Alpaca stream: reconnecting in %.1f s (failure %d in a row)", delay, self._failures)
        return delay

    async def close(self) -> None:
        if self._ws is not None:
            self._covered = False
            self._emit("closed", self._clock())
        if self._subscriber is not None:
            self._subscriber.cancel()
            self._subscriber = None
        await super().close()

    # ---- ours
    def _log_error(self, code, text, action: str) -> None:
        hint = FATAL.get(code) or HINTS.get(code) or "unexpected error"
        log.error("Alpaca stream error %s (%s): %s; %s", code, text, hint, action)

    def _on_stream_error(self, code, text) -> None:
        if code in FATAL:
            self._log_error(code, text, "stopping")
            self._stop_fatal(code, text)
            return
        # After auth, alpaca-py only logs it: the connection stays open with
        # the subscription refused. Subscribe again, after a backoff.
        self._failures += 1
        delay = self._backoff.delay(self._failures, random.random())
        self._log_error(code, text, f"subscribing again in {delay:.1f} s")
        self._covered = False
        self._emit("uncovered", self._clock())
        self._subscribe_later(delay)

    def _stop_fatal(self, code, text) -> None:
        self.fatal = StreamRejected(f"Alpaca stream error {code} ({text}): {FATAL[code]}")
        self._closing = True
        asyncio.get_running_loop().create_task(self._shutdown())

    def _subscribe_later(self, delay: float) -> None:
        if self._subscriber is not None:
            self._subscriber.cancel()
        self._subscriber = asyncio.get_running_loop().create_task(self._send_batches(self._ws, delay))

    async def _send_batches(self, ws, delay: float) -> None:
        try:
            await asyncio.sleep(delay)
            n = len(self._batches)
            for i, batch in enumerate(self._batches, 1):
                if i > 1:
                    await asyncio.sleep(self._s.batch_delay_s)
                if self._ws is not ws or ws is None:
                    return
                log.info("Subscribing batch %d/%d: %s", i, n, batch)
                await ws.send(msgpack.packb({"action": "subscribe", "bars": batch, "updatedBars": batch}))
        except websockets.WebSocketException:
            pass  # the connection went away; the reconnect subscribes again

    async def _abort(self, why: str) -> None:
        if self._ws is not None:
            log.warning("Alpaca stream: %s: reconnecting", why)
            self._ws.transport.abort()

    async def _shutdown(self) -> None:
        await self.stop_ws()
        if self._starting is not None:
            self._starting.cancel()
        if self._ws is not None:
            await self._ws.close()

    # ---- thread-safe controls
    def force_reconnect(self, why: str) -> None:
        if self._loop is not None and self._loop.is_running():
            asyncio.run_coroutine_threadsafe(self._abort(why), self._loop)

    def shutdown(self, timeout: float = 5.0) -> None:
        self._closing = True
        if self._loop is not None and self._loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout)
            except Exception as exc:  # closing anyway; report what went wrong
                log.warning("Alpaca stream: shutdown: %s", exc)
