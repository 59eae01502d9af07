"""alpaca-py's `TradingStream` as the trade-updates relay needs it (raw
messages onto a queue, a bounded authentication, a stop that works at once).
Used by `connectors.alpaca.trade_relay`."""
from __future__ import annotations

import asyncio
import json
import logging
import queue

import websockets
from alpaca.trading.stream import TradingStream

from connectors.alpaca.history import AlpacaRejected
from connectors.kafka.codec import _one_line

log = logging.getLogger(__name__)


class AlpacaAuthFailed(AlpacaRejected):
    """Alpaca refused the API keys (trading REST or trade-updates stream)."""



# ---------------------------------------------------------------- the stream
class _QuietClose:
    """alpaca-py's websocket; a normal close we asked for (a stop) reads as an
    empty message, so alpaca-py's loop sees its stop request and ends quietly
    instead of logging "trading stream websocket error, restarting
    connection: sent 1000 (OK)"."""

    def __init__(self, ws, closing):
        self._ws, self._closing = ws, closing

    def __getattr__(self, name):
        return getattr(self._ws, name)

    async def recv(self):
        try:
            return await self._ws.recv()
        except websockets.ConnectionClosedOK:
            if self._closing():
                return "{}"
            raise


class _StreamFailure(websockets.WebSocketException):
    """Raised inside alpaca-py's loop: it closes, backs off and reconnects."""


class RelayStream(TradingStream):
    """alpaca-py's TradingStream putting ("update", msg), ("listening",),
    ("closed",) and ("fatal", exc) on `events`. Overrides: `_auth` (a timeout;
    `unauthorized` is fatal, not retried forever), `_dispatch` (sees
    `listening`), `close`, `_connect` (refuses once stopping; our own close
    is no error: `_QuietClose`)."""

    def __init__(self, key: str, secret: str, events: queue.Queue, *, paper: bool = True,
                 url: str | None = None, connect_timeout_s: float = 10.0):
        super().__init__(key, secret, paper=paper, raw_data=True, url_override=url,
                         websocket_params={"ping_interval": 10, "ping_timeout": 20, "close_timeout": 2,
                                           "open_timeout": connect_timeout_s, "max_queue": 1024})
        self._events, self._timeout = events, connect_timeout_s
        self._closing = False
        self._starting: asyncio.Future | None = None
        self.subscribe_trade_updates(self._unused)  # alpaca-py listens only with a handler

    async def _unused(self, _msg) -> None:  # _dispatch below delivers instead
        pass

    def _halt(self) -> None:
        self._should_run = False
        if self._stop_stream_event is not None:
            self._stop_stream_event.set()

    async def _connect(self) -> None:
        if self._closing:
            self._halt()
            raise _StreamFailure("stopping")
        await super()._connect()
        self._ws = _QuietClose(self._ws, lambda: self._closing)

    async def _start_ws(self) -> None:
        """Connect, authenticate, listen; a stop meanwhile ends it at once and
        quietly (alpaca-py would log the aborted connect as an error)."""
        self._starting = asyncio.ensure_future(super()._start_ws())
        try:
            await self._starting
        except asyncio.CancelledError:
            if not self._closing:
                raise
            # alpaca-py goes on to read, finds its stop request and ends
        finally:
            self._starting = None

    async def _auth(self) -> None:
        await self._ws.send(json.dumps({"action": "authenticate", "data": {
            "key_id": self._api_key, "secret_key": self._secret_key}}))
        try:
            reply = json.loads(await asyncio.wait_for(self._ws.recv(), self._timeout))
        except asyncio.TimeoutError:
            raise _StreamFailure(f"no reply to authenticate within {self._timeout:g} s") from None
        except ValueError:
            raise _StreamFailure("reply to authenticate is not JSON") from None
        if not isinstance(reply, dict) or not isinstance(reply.get("data"), dict):
            raise _StreamFailure(f"unexpected reply to authenticate: {str(reply)[:100]}")
        status = reply["data"].get("status")
        if reply.get("stream") == "authorization" and status == "authorized":
            return
        if reply.get("stream") == "authorization" and status == "unauthorized":
            self._events.put(("fatal", AlpacaAuthFailed(
                f"Alpaca trade-updates stream at {self._endpoint} refused the keys "
                f"(check ALPACA_API_KEY / ALPACA_SECRET_KEY)")))
            self._halt()
        raise _StreamFailure(f"unexpected reply to authenticate: {str(reply)[:100]}")

    async def _dispatch(self, msg: dict) -> None:
        stream = msg.get("stream") if isinstance(msg, dict) else None
        if stream == "trade_updates":
            self._events.put(("update", msg))
        elif stream == "listening":
            streams = (msg.get("data") or {}).get("streams") or []
            if "trade_updates" in streams:
                self._events.put(("listening",))
            else:
                log.error("trade-updates stream: listen refused: %.200r", msg)

    async def close(self) -> None:
        had = self._ws is not None
        await super().close()
        if had:
            self._events.put(("closed",))

    async def _shutdown(self) -> None:
        await self.stop_ws()
        if self._starting is not None:
            self._starting.cancel()
        if self._ws is not None:
            await self._ws.close()

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop from any thread, at once (alpaca-py's stop() waits for a receive, up to 5 s)."""
        self._closing = True
        loop = self._loop
        if loop is not None and loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout)
            except Exception as exc:  # closing anyway
                log.warning("trade-updates stream: shutdown: %s", _one_line(exc))
