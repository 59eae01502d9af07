"""A local stand-in for Alpaca's APIs, for tests that drive the REAL alpaca-py clients.

It speaks Alpaca's documented wire protocols so that production code can be pointed at it
with ``url_override=``:

* market-data stream (``StockDataStream(..., url_override=server.ws_url)``): msgpack (or JSON)
  frames, ``connected`` greeting, ``auth``, ``subscribe`` / ``unsubscribe`` with a
  ``subscription`` reply, bars/updated bars/any other data message, Alpaca's error messages;
* historical market data (``StockHistoricalDataClient(..., url_override=server.rest_url)``):
  ``GET /v2/stocks/bars`` with paging by opaque ``next_page_token``;
* trading API (``TradingClient(..., url_override=server.trading_url)``): ``/v2/account``,
  ``/v2/clock``, ``/v2/calendar`` always; with ``AlpacaServer(trading=True)`` (or
  ``enable_trading()``) also orders, positions, an account moved by fills and the trade-updates
  stream (``TradingStream(..., url_override=server.trading_stream_url)``), with controls for
  fills (``fill``, ``fill_on_bar``, ``set_auto_fill``), rejections (``reject_next_orders``,
  ``reject_order``) and stream drops (``drop_trading_streams``); see ``alpaca_trading.py``.
  (Opt-in only because an older test asserts ``GET /v2/orders`` is 404 by default.)

Everything runs in background threads of the test process: one asyncio loop thread for the
websocket server, one thread for the (stdlib) HTTP server, each on a free 127.0.0.1 port.
Control methods may be called from any thread; they are synchronous and return once the
server has acted. Every observation is recorded with ``time.monotonic()`` timestamps.

    with AlpacaServer() as server:
        stream = StockDataStream(server.key, server.secret, url_override=server.ws_url)
        ...
        server.push_bars([{"S": "AAPL", "t": ts, "o": 1, "h": 2, "l": 0.5, "c": 1.5, "v": 100}])
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import datetime as dt
import http.server
import json
import re
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional
from urllib.parse import parse_qsl, urlsplit
from zoneinfo import ZoneInfo

import msgpack
import websockets
from websockets.asyncio.server import ServerConnection, serve

try:
    from alpaca_trading import TradingMixin
except ImportError:  # imported as part of a package
    from .alpaca_trading import TradingMixin  # type: ignore[no-redef]

__all__ = [
    "AlpacaServer",
    "ClientMessage",
    "SentFrame",
    "StreamConnection",
    "RestRequest",
    "ERRORS",
]

UTC = dt.timezone.utc
NY = ZoneInfo("America/New_York")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)

# Alpaca market-data stream error codes and messages (docs: "Streaming market data" / Errors).
ERRORS = {
    400: "invalid syntax",
    401: "not authenticated",
    402: "auth failed",
    403: "already authenticated",
    404: "auth timeout",
    405: "symbol limit exceeded",
    406: "connection limit exceeded",
    407: "slow client",
    409: "insufficient subscription",
    410: "invalid subscribe action for this feed",
    429: "rate limit exceeded",
    500: "internal error",
}

# Stock stream channels, in the order Alpaca lists them in a "subscription" message.
STOCK_CHANNELS = (
    "trades", "quotes", "bars", "updatedBars", "dailyBars",
    "statuses", "lulds", "corrections", "cancelErrors",
)
# Wire "T" of a data message -> channel it is delivered on.
T_TO_CHANNEL = {
    "t": "trades", "q": "quotes", "b": "bars", "u": "updatedBars", "d": "dailyBars",
    "s": "statuses", "l": "lulds", "c": "corrections", "x": "cancelErrors",
}
# Subscribing to trades implicitly subscribes to corrections and cancel errors (Alpaca does this).
_IMPLIED = {"trades": ("corrections", "cancelErrors")}

_BAR_KEYS = {  # accepted input spelling -> wire key
    "S": "S", "symbol": "S",
    "o": "o", "open": "o",
    "h": "h", "high": "h",
    "l": "l", "low": "l",
    "c": "c", "close": "c",
    "v": "v", "volume": "v",
    "t": "t", "timestamp": "t", "time": "t",
    "n": "n", "trade_count": "n",
    "vw": "vw", "vwap": "vw",
}
_BAR_ORDER = ("o", "h", "l", "c", "v", "t", "n", "vw")

_TIMEFRAME_UNITS = {
    "min": "Min", "t": "Min", "minute": "Min",
    "h": "Hour", "hour": "Hour",
    "d": "Day", "day": "Day",
    "w": "Week", "week": "Week",
    "m": "Month", "month": "Month",
}

# NYSE full-day holidays and 13:00 early closes, 2024-2026 (nyse.com "Holidays & trading
# hours"). Best effort; tests that care can call set_calendar().
NYSE_HOLIDAYS = frozenset(dt.date.fromisoformat(d) for d in (
    "2024-01-01", "2024-01-15", "2024-02-19", "2024-03-29", "2024-05-27", "2024-06-19",
    "2024-07-04", "2024-09-02", "2024-11-28", "2024-12-25",
    "2025-01-01", "2025-01-09", "2025-01-20", "2025-02-17", "2025-04-18", "2025-05-26",
    "2025-06-19", "2025-07-04", "2025-09-01", "2025-11-27", "2025-12-25",
    "2026-01-01", "2026-01-19", "2026-02-16", "2026-04-03", "2026-05-25", "2026-06-19",
    "2026-07-03", "2026-09-07", "2026-11-26", "2026-12-25",
))
NYSE_EARLY_CLOSES = frozenset(dt.date.fromisoformat(d) for d in (
    "2024-07-03", "2024-11-29", "2024-12-24",
    "2025-07-03", "2025-11-28", "2025-12-24",
    "2026-11-27", "2026-12-24",
))


# --------------------------------------------------------------------------- records


@dataclass
class ClientMessage:
    """One frame received from a stream client."""

    t: float                 # time.monotonic() at receipt
    conn_id: int
    raw: bytes | str
    msg: Any                 # decoded msgpack/JSON, or None if undecodable

    @property
    def action(self) -> Optional[str]:
        return self.msg.get("action") if isinstance(self.msg, dict) else None


@dataclass
class SentFrame:
    """One frame the server sent (or would have sent, see ``suppressed``) to a stream client."""

    t: float
    conn_id: int
    msgs: Any                # the list of messages, or the raw bytes/str for send_raw()
    suppressed: bool = False  # True if swallowed because the server was silent


@dataclass
class StreamConnection:
    """One websocket connection to the market-data stream."""

    id: int
    path: str
    headers: dict
    encoding: str            # "msgpack" or "json" (from the Content-Type request header)
    opened_at: float
    closed_at: Optional[float] = None
    key: Optional[str] = None
    authenticated: bool = False
    subscriptions: dict = field(default_factory=lambda: {c: set() for c in STOCK_CHANNELS})
    ws: Any = field(default=None, repr=False)

    @property
    def feed(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def is_open(self) -> bool:
        return self.closed_at is None

    def subscribed(self) -> dict:
        """Current subscriptions, {channel: sorted symbols}, non-empty channels only."""
        return {c: sorted(s) for c, s in self.subscriptions.items() if s}


@dataclass
class RestRequest:
    """One HTTP request to the REST server."""

    t: float
    method: str
    path: str
    query: dict              # last value per key
    query_string: str
    headers: dict
    body: Any
    status: Optional[int] = None
    response: Any = None


@dataclass
class HttpRequest:
    """What a route handler gets (see ``add_route``)."""

    method: str
    path: str
    query: dict
    headers: dict
    body: Any
    match: Optional[re.Match] = None


class HttpError(Exception):
    """Raise from a route handler to answer ``status`` with a JSON ``body``."""

    def __init__(self, status: int, body: Any):
        super().__init__(status, body)
        self.status = status
        self.body = body


# --------------------------------------------------------------------------- helpers


def to_ns(t: Any) -> int:
    """Nanoseconds since the epoch from int ns / datetime (naive = UTC) / pandas or numpy
    timestamp / RFC 3339 string / msgpack Timestamp."""
    if isinstance(t, msgpack.Timestamp):
        return t.to_unix_nano()
    if isinstance(t, bool):
        raise TypeError(f"not a timestamp: {t!r}")
    if isinstance(t, int):
        return t
    if hasattr(t, "dtype") and str(getattr(t, "dtype", "")).startswith("datetime64"):
        return int(t.astype("datetime64[ns]").astype("int64"))
    if isinstance(t, str):
        return to_ns(parse_time(t))
    if isinstance(t, dt.datetime):
        if t.tzinfo is None:
            t = t.replace(tzinfo=UTC)
        us = (t - _EPOCH) // dt.timedelta(microseconds=1)
        return us * 1000 + int(getattr(t, "nanosecond", 0) or 0)
    raise TypeError(f"not a timestamp: {t!r}")


def parse_time(s: str) -> dt.datetime:
    """RFC 3339 (any precision, 'Z' or offset) or YYYY-MM-DD (midnight UTC)."""
    s = s.strip()
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", s):
        return dt.datetime.fromisoformat(s).replace(tzinfo=UTC)
    m = re.fullmatch(r"(.*T\d{2}:\d{2}:\d{2})(\.\d+)?(Z|[+-]\d{2}:?\d{2})?", s)
    if not m:
        raise ValueError(f"invalid time {s!r}")
    base, frac, tz = m.groups()
    frac = (frac or ".")[1:7].ljust(6, "0")
    tz = "+00:00" if tz in (None, "Z") else tz
    return dt.datetime.fromisoformat(f"{base}.{frac}{tz}").astimezone(UTC)


def rfc3339(ns: int) -> str:
    """Alpaca's timestamp format: '2024-01-02T14:30:00Z', fractional digits only if needed."""
    sec, frac = divmod(ns, 1_000_000_000)
    s = (_EPOCH + dt.timedelta(seconds=sec)).strftime("%Y-%m-%dT%H:%M:%S")
    if frac:
        s += "." + f"{frac:09d}".rstrip("0")
    return s + "Z"


def normalize_timeframe(tf: str) -> str:
    """'1Min' / '1T' / '1Minute' -> '1Min'; '1Hour' / '1H' -> '1Hour'; etc."""
    m = re.fullmatch(r"(\d+)([A-Za-z]+)", str(tf).strip())
    unit = _TIMEFRAME_UNITS.get(m.group(2).lower()) if m else None
    if m and m.group(2) == "M":
        unit = "Month"
    if not unit or int(m.group(1)) < 1:
        raise ValueError(f"invalid timeframe {tf!r}")
    return f"{int(m.group(1))}{unit}"


def normalize_bar(bar: dict, symbol: Optional[str] = None) -> dict:
    """Any of the accepted spellings -> {'S', 'o','h','l','c','v','t'(ns int),'n','vw'}."""
    out: dict = {}
    for k, v in bar.items():
        key = _BAR_KEYS.get(k)
        if key is not None:
            out[key] = v
    if symbol is not None:
        out.setdefault("S", symbol)
    missing = {"S", "o", "h", "l", "c", "t"} - out.keys()
    if missing:
        raise ValueError(f"bar is missing {sorted(missing)}: {bar!r}")
    out["S"] = str(out["S"])
    out["t"] = to_ns(out["t"])
    for k in ("o", "h", "l", "c", "vw"):
        if k in out and out[k] is not None:
            out[k] = float(out[k])
    out.setdefault("v", 0)
    out.setdefault("n", 0)
    out["v"] = int(out["v"]) if float(out["v"]).is_integer() else float(out["v"])
    out["n"] = int(out["n"])
    out.setdefault("vw", out["c"])
    return out


def _records(data: Any) -> list:
    """A list of dicts from a list of dicts or a pandas DataFrame (flat or indexed by
    symbol/timestamp, like alpaca-py's ``BarSet.df``)."""
    if hasattr(data, "reset_index") and hasattr(data, "to_dict"):
        df = data
        if any(name is not None for name in getattr(df.index, "names", [None])):
            df = df.reset_index()
        return df.to_dict("records")
    return list(data)


def _b64(s: str) -> str:
    return base64.urlsafe_b64encode(s.encode()).decode()


def _unb64(s: str) -> str:
    return base64.urlsafe_b64decode(s.encode()).decode()


# --------------------------------------------------------------------------- the server


class AlpacaServer(TradingMixin):
    """Local Alpaca: market-data websocket + historical REST + trading REST and stream.

    Args:
        key, secret: credentials accepted on the stream (``auth`` message) and on REST
            (``APCA-API-KEY-ID`` / ``APCA-API-SECRET-KEY`` headers).
        max_page_size: cap on bars per REST page whatever ``limit`` says (Alpaca's cap is
            10000 = the largest allowed ``limit``; lower it to test paging with little data).
        symbol_limit: if set, a subscribe that would take a connection past this many symbols
            (all channels) is answered with 405 "symbol limit exceeded".
        connection_limit: if set, authenticating while that many authenticated connections
            are open is answered with 406 "connection limit exceeded" (Alpaca's is 1 on most
            plans; default None = unlimited, so tests are deterministic).
        auth_timeout: seconds a client has to authenticate before 404 "auth timeout" + close.
        now: fixed "current time" (for the clock and the default bars start/end); default is
            the wall clock. See ``set_now``.
        trading: serve orders / positions / ``/stream`` (see ``alpaca_trading.TradingMixin``);
            same as calling ``enable_trading()``.
    """

    def __init__(
        self,
        key: str = "test-key",
        secret: str = "test-secret",
        *,
        max_page_size: int = 10_000,
        symbol_limit: Optional[int] = None,
        connection_limit: Optional[int] = None,
        auth_timeout: float = 10.0,
        now: Optional[dt.datetime] = None,
        host: str = "127.0.0.1",
        trading: bool = False,
    ) -> None:
        self.key = key
        self.secret = secret
        self.max_page_size = max_page_size
        self.symbol_limit = symbol_limit
        self.connection_limit = connection_limit
        self.auth_timeout = auth_timeout
        self.host = host
        self._now = now

        self._lock = threading.RLock()
        # recordings
        self._client_messages: list[ClientMessage] = []
        self._sent: list[SentFrame] = []
        self._connections: list[StreamConnection] = []
        self._requests: list[RestRequest] = []
        self._events: list[tuple] = []          # (t, conn_id, kind, detail)
        self.errors: list[str] = []             # server-side exceptions (should stay empty)
        # stream behaviour controls
        self._fail_auth = 0                     # >0: next N auths fail; -1: all fail
        self._reject_next = 0                   # next N auths get 406
        self._subscribe_errors: list[int] = []  # codes for the next subscribes
        self._drop_trigger: Optional[list] = None  # [remaining, "sent"|"received"]
        self._silent = False
        # REST behaviour controls
        self._http_failures: list[tuple] = []   # (status, body, path_prefix or None)
        # data
        self._history: dict[str, dict[str, dict[int, dict]]] = {}  # tf -> sym -> t -> bar
        self._sorted_ts: dict[tuple, list] = {}
        self.account: dict = _default_account()
        self._calendar: Optional[list] = None
        # routes (extension points)
        self._http_routes: list[tuple] = []     # (method, regex, handler, api)
        self._ws_routes: list[tuple] = []       # (regex, coroutine handler(conn, ws))
        self._init_trading()
        self._install_data_routes()
        self._install_trading_routes()
        if trading:
            self.enable_trading()

        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._loop_thread: Optional[threading.Thread] = None
        self._ws_server = None
        self._httpd: Optional[http.server.ThreadingHTTPServer] = None
        self._http_thread: Optional[threading.Thread] = None
        self._ws_port: Optional[int] = None
        self._started = False
        self._stopped = False

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "AlpacaServer":
        if self._started:
            return self
        self._started = True
        ready = threading.Event()
        failure: list = []

        def run_loop() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                async def start_ws():
                    return await serve(self._ws_handler, self.host, 0,
                                       process_request=self._ws_process_request,
                                       max_size=2**22, ping_interval=None)

                self._ws_server = loop.run_until_complete(start_ws())
                self._ws_port = self._ws_server.sockets[0].getsockname()[1]
            except BaseException as e:  # pragma: no cover
                failure.append(e)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for t in pending:
                    t.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._loop_thread = threading.Thread(target=run_loop, name="alpaca-server-ws", daemon=True)
        self._loop_thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]

        server = self

        class Handler(_HttpHandler):
            alpaca = server

        self._httpd = http.server.ThreadingHTTPServer((self.host, 0), Handler)
        self._httpd.daemon_threads = False
        self._httpd.block_on_close = True  # server_close() joins request threads
        self._http_thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
            name="alpaca-server-http", daemon=True,
        )
        self._http_thread.start()
        return self

    def stop(self) -> None:
        """Close every connection, stop both servers, join their threads. Idempotent."""
        if not self._started or self._stopped:
            self._stopped = True
            return
        self._stopped = True
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._http_thread.join(10)
        if self._loop is not None and self._loop.is_running():
            async def shutdown() -> None:
                self._ws_server.close(close_connections=True)
                await asyncio.wait_for(self._ws_server.wait_closed(), 5)

            try:
                asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
            except Exception:  # pragma: no cover - still stop the loop
                self.errors.append(traceback.format_exc())
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._loop_thread is not None:
            self._loop_thread.join(10)

    def __enter__(self) -> "AlpacaServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ urls

    @property
    def ws_url(self) -> str:
        """Market-data stream URL for the IEX feed (pass as ``url_override``: alpaca-py then
        ignores its ``feed=`` argument, the feed is the last path segment)."""
        return self.ws_url_for("iex")

    def ws_url_for(self, feed: str = "iex") -> str:
        return f"ws://{self.host}:{self._ws_port}/v2/{feed}"

    @property
    def ws_base_url(self) -> str:
        return f"ws://{self.host}:{self._ws_port}"

    @property
    def rest_url(self) -> str:
        """Historical market-data base URL (alpaca-py appends ``/v2/stocks/bars``)."""
        return f"http://{self.host}:{self._httpd.server_address[1]}"

    @property
    def trading_url(self) -> str:
        """Trading API base URL (alpaca-py appends ``/v2/account`` etc.)."""
        return self.rest_url

    @property
    def trading_stream_url(self) -> str:
        """Trade-updates websocket (``TradingStream(url_override=...)``); served once trading
        is enabled."""
        return f"{self.ws_base_url}/stream"

    # ------------------------------------------------------------------ time

    def now(self) -> dt.datetime:
        return self._now if self._now is not None else dt.datetime.now(UTC)

    def set_now(self, now: Optional[dt.datetime]) -> None:
        """Fix the server's "current time" (aware datetime; naive = UTC); None = wall clock."""
        if now is not None and now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        self._now = now

    # ------------------------------------------------------------------ stream controls

    def set_credentials(self, key: str, secret: str) -> None:
        with self._lock:
            self.key, self.secret = key, secret

    def fail_auth(self, n: Optional[int] = 1) -> None:
        """Answer the next ``n`` auth messages with 402 "auth failed" (and close), whatever the
        credentials; ``n=None``: every auth until ``fail_auth(0)``."""
        with self._lock:
            self._fail_auth = -1 if n is None else n

    def reject_connections(self, n: int = 1) -> None:
        """Answer the auth of the next ``n`` connections with 406 "connection limit exceeded"
        and close them (credentials are checked first)."""
        with self._lock:
            self._reject_next = n

    def fail_subscribe(self, code: int = 405, n: int = 1) -> None:
        """Answer the next ``n`` subscribe messages with error ``code`` (405 symbol limit,
        429 rate limit, 409 insufficient subscription, ...) without applying them."""
        with self._lock:
            self._subscribe_errors.extend([code] * n)

    def drop_connections(self, abrupt: bool = True) -> int:
        """Close every open stream connection now: ``abrupt`` aborts the TCP connection (the
        client sees a connection error), else a normal close handshake (code 1000).
        Returns how many were closed."""
        async def go() -> int:
            conns = [c for c in self._open_connections() if c.ws is not None]
            for c in conns:
                await self._drop(c, abrupt)
            return len(conns)

        return self._call(go())

    def drop_after(self, k: int, counting: str = "sent") -> None:
        """Arm a one-shot trigger: once ``k`` more frames have been ``"sent"`` by the server
        (or ``"received"`` from clients), across all connections, abort the connection that
        carried the k-th frame."""
        if counting not in ("sent", "received"):
            raise ValueError("counting must be 'sent' or 'received'")
        with self._lock:
            self._drop_trigger = [k, counting]

    def set_silent(self, silent: bool = True) -> None:
        """While silent the server sends nothing on any stream connection (no greeting, no
        replies, no data; suppressed frames are recorded with ``suppressed=True``) but keeps
        the sockets open and keeps recording what clients send. Websocket pings are still
        answered by the protocol layer."""
        with self._lock:
            self._silent = silent

    def push(self, messages: Iterable[dict], batch: bool = True) -> int:
        """Send data messages (each with ``T`` and ``S``; see T_TO_CHANNEL) to every
        authenticated connection subscribed to that channel and symbol (or ``*``). ``t`` (and
        any datetime value) may be given as datetime/ns/str; it is sent as a msgpack
        Timestamp (RFC 3339 string on JSON connections). With ``batch`` a connection gets one
        frame holding all its messages (Alpaca batches too), else one frame per message.
        Returns the number of messages delivered."""
        msgs = [dict(m) for m in messages]
        for m in msgs:
            if m.get("T") not in T_TO_CHANNEL or "S" not in m:
                raise ValueError(f"data message needs T in {sorted(T_TO_CHANNEL)} and S: {m!r}")
            if "t" in m:
                m["t"] = to_ns(m["t"])

        async def go() -> int:
            delivered = 0
            for conn in self._open_connections():
                if not conn.authenticated:
                    continue
                mine = [m for m in msgs if self._wants(conn, m)]
                if not mine:
                    continue
                delivered += len(mine)
                frames = [mine] if batch else [[m] for m in mine]
                for f in frames:
                    if not await self._send(conn, f):
                        break
            return delivered

        return self._call(go())

    def push_bars(self, bars: Iterable[dict], kind: str = "b", batch: bool = True) -> int:
        """Push minute bars (``kind="b"``), updated bars (``"u"``) or daily bars (``"d"``).
        Bars may use wire keys (S,o,h,l,c,v,t,n,vw) or alpaca-py/DataFrame names (symbol,
        open, ..., timestamp, trade_count, vwap). Returns the number of messages delivered."""
        if kind not in ("b", "u", "d"):
            raise ValueError("kind must be 'b', 'u' or 'd'")
        out = []
        for b in bars:
            nb = normalize_bar(b)
            out.append({"T": kind, "S": nb.pop("S"), **{k: nb[k] for k in _BAR_ORDER if k in nb}})
        return self.push(out, batch=batch)

    def send_raw(self, data: bytes | str, conn_id: Optional[int] = None) -> int:
        """Send ``data`` as one frame (bytes -> binary, str -> text), unvalidated, to every open
        connection (or just ``conn_id``). Returns the number of connections it went to."""
        async def go() -> int:
            n = 0
            for conn in self._open_connections():
                if conn_id is None or conn.id == conn_id:
                    if await self._send(conn, data, raw=True):
                        n += 1
            return n

        return self._call(go())

    def send_messages(self, msgs: list, conn_id: Optional[int] = None) -> int:
        """Send an arbitrary list of messages, encoded for each connection, as one frame."""
        async def go() -> int:
            n = 0
            for conn in self._open_connections():
                if conn_id is None or conn.id == conn_id:
                    if await self._send(conn, msgs):
                        n += 1
            return n

        return self._call(go())

    # ------------------------------------------------------------------ stream recordings

    def client_messages(self, action: Optional[str] = None, conn_id: Optional[int] = None) -> list:
        """Every frame received from stream clients (``ClientMessage``), optionally filtered by
        ``action`` ("auth", "subscribe", ...) and connection."""
        with self._lock:
            return [m for m in self._client_messages
                    if (action is None or m.action == action)
                    and (conn_id is None or m.conn_id == conn_id)]

    def sent_frames(self, conn_id: Optional[int] = None) -> list:
        with self._lock:
            return [f for f in self._sent if conn_id is None or f.conn_id == conn_id]

    def sent_errors(self) -> list:
        """(t, conn_id, code, msg) of every error message the stream sent."""
        out = []
        with self._lock:
            for f in self._sent:
                if isinstance(f.msgs, list) and not f.suppressed:
                    for m in f.msgs:
                        if isinstance(m, dict) and m.get("T") == "error":
                            out.append((f.t, f.conn_id, m.get("code"), m.get("msg")))
        return out

    @property
    def events(self) -> list:
        """(t, conn_id, kind, detail): connect, auth_ok, auth_failed, rejected, subscribed,
        subscribe_error, unsubscribed, dropped, closed, auth_timeout, invalid."""
        with self._lock:
            return list(self._events)

    def events_of(self, kind: str) -> list:
        """The ``events`` of one kind."""
        return [e for e in self.events if e[2] == kind]

    def connections(self) -> list:
        """All stream connections ever accepted (``StreamConnection``, live objects: their
        ``closed_at`` / ``subscriptions`` keep changing), oldest first; ``id`` = 1, 2, ..."""
        with self._lock:
            return list(self._connections)

    @property
    def connection_count(self) -> int:
        """Stream connections accepted so far."""
        with self._lock:
            return len(self._connections)

    @property
    def open_connection_count(self) -> int:
        return len(self._open_connections())

    def subscriptions(self) -> dict:
        """{conn_id: {channel: [symbols]}} for every open connection."""
        with self._lock:
            return {c.id: c.subscribed() for c in self._connections if c.is_open}

    # ------------------------------------------------------------------ REST controls

    def fail_requests(self, n: int = 1, status: int = 429, body: Any = None,
                      path_prefix: Optional[str] = None) -> None:
        """Answer the next ``n`` REST requests (whose path starts with ``path_prefix``, if
        given) with ``status`` (default 429 {"message": "too many requests."})."""
        if body is None:
            body = {"message": "too many requests."} if status == 429 else {"message": "error"}
        with self._lock:
            self._http_failures.extend([(status, body, path_prefix)] * n)

    def load_history(self, data: Any, timeframe: str = "1Min") -> int:
        """Add bars served by ``GET /v2/stocks/bars`` for ``timeframe``. ``data``: list of
        bar dicts (see ``push_bars``) or a DataFrame (flat, or indexed by symbol/timestamp
        like alpaca-py's ``BarSet.df``). A bar with the same symbol and time replaces the
        earlier one. Returns the number of bars loaded."""
        tf = normalize_timeframe(timeframe)
        n = 0
        with self._lock:
            store = self._history.setdefault(tf, {})
            for rec in _records(data):
                b = normalize_bar(rec)
                store.setdefault(b["S"], {})[b["t"]] = b
                self._sorted_ts.pop((tf, b["S"]), None)
                n += 1
        return n

    def clear_history(self) -> None:
        with self._lock:
            self._history.clear()
            self._sorted_ts.clear()

    def requests(self, path: Optional[str] = None) -> list:
        """Every REST request (``RestRequest``), optionally only those with this exact path."""
        with self._lock:
            return [r for r in self._requests if path is None or r.path == path]

    # ------------------------------------------------------------------ trading controls

    def update_account(self, **fields: Any) -> None:
        """Set account fields (strings, as Alpaca sends them). With trading enabled, a derived
        field set here (equity, buying_power, ...) stays pinned at that value until set to None
        (which releases it), and the others are recomputed (e.g. from a new ``cash``)."""
        with self._lock:
            for k, v in fields.items():
                if v is None:
                    self._pinned_account.discard(k)
                else:
                    self.account[k] = v
                    if k != "cash":
                        self._pinned_account.add(k)
            if self.trading_enabled:
                self._recompute_account()

    def set_calendar(self, days: Optional[list]) -> None:
        """Replace the trading calendar: list of {"date": "YYYY-MM-DD", "open": "HH:MM",
        "close": "HH:MM", ...}; None restores the built-in 2024-2026 NYSE calendar."""
        with self._lock:
            self._calendar = None if days is None else [dict(d) for d in days]

    # ------------------------------------------------------------------ misc

    def wait_until(self, predicate: Callable[[], Any], timeout: float = 5.0,
                   interval: float = 0.01) -> Any:
        """Poll ``predicate`` until truthy; return its value or raise TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            v = predicate()
            if v:
                return v
            if time.monotonic() >= deadline:
                raise TimeoutError(f"condition not met within {timeout}s")
            time.sleep(interval)

    def add_route(self, method: str, pattern: str,
                  handler: Callable[["AlpacaServer", HttpRequest], Any], api: str = "trading") -> None:
        """Register an HTTP route: ``handler(server, req)`` returns a JSON-able body (status
        200) or ``(status, body)``, or raises ``HttpError``. ``pattern`` is a regex matched
        against the whole path. ``api`` ("trading" or "data") selects the auth error style.
        Later registrations win."""
        with self._lock:
            self._http_routes.insert(0, (method.upper(), re.compile(pattern + r"\Z"), handler, api))

    def add_ws_route(self, pattern: str, handler: Callable[["AlpacaServer", ServerConnection], Any]) -> None:
        """Register a websocket path: ``async handler(server, ws)`` runs on the server loop."""
        with self._lock:
            self._ws_routes.insert(0, (re.compile(pattern + r"\Z"), handler))

    # ================================================================== internals: stream

    def _call(self, coro, timeout: float = 10.0):
        if self._loop is None or not self._loop.is_running():
            coro.close()
            raise RuntimeError("AlpacaServer is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _open_connections(self) -> list:
        with self._lock:
            return [c for c in self._connections if c.is_open]

    def _event(self, conn: Optional[StreamConnection], kind: str, detail: Any = None) -> None:
        with self._lock:
            self._events.append((time.monotonic(), conn.id if conn else None, kind, detail))

    def _ws_process_request(self, connection: ServerConnection, request):
        path = urlsplit(request.path).path
        if self._ws_route(path) is None:
            return connection.respond(404, "Not Found\n")
        return None

    def _ws_route(self, path: str):
        with self._lock:
            routes = list(self._ws_routes)
        for rx, handler in routes:
            if rx.match(path):
                return handler
        return None

    async def _ws_handler(self, ws: ServerConnection) -> None:
        path = urlsplit(ws.request.path).path
        handler = self._ws_route(path)
        try:
            await handler(self, ws)
        except websockets.ConnectionClosed:
            pass
        except Exception:
            self.errors.append(traceback.format_exc())
            raise

    async def _market_data_stream(self, ws: ServerConnection) -> None:
        headers = {k: v for k, v in ws.request.headers.raw_items()}
        ctype = ws.request.headers.get("Content-Type", "")
        with self._lock:
            conn = StreamConnection(
                id=len(self._connections) + 1, path=urlsplit(ws.request.path).path,
                headers=headers, encoding="msgpack" if "msgpack" in ctype else "json",
                opened_at=time.monotonic(), ws=ws,
            )
            self._connections.append(conn)
        self._event(conn, "connect", conn.path)
        try:
            if not await self._send(conn, [{"T": "success", "msg": "connected"}]):
                return
            while True:
                try:
                    if conn.authenticated:
                        raw = await ws.recv()
                    else:
                        raw = await asyncio.wait_for(ws.recv(), self.auth_timeout)
                except asyncio.TimeoutError:
                    self._event(conn, "auth_timeout")
                    await self._send_error(conn, 404)
                    await ws.close()
                    return
                msg = self._decode(raw)
                with self._lock:
                    self._client_messages.append(ClientMessage(time.monotonic(), conn.id, raw, msg))
                if self._tick_drop("received"):
                    await self._drop(conn, True)
                    return
                if self._silent:
                    continue
                if not await self._on_client_message(conn, msg):
                    return
        except websockets.ConnectionClosed:
            pass
        finally:
            with self._lock:
                if conn.closed_at is None:
                    conn.closed_at = time.monotonic()
            self._event(conn, "closed", ws.close_code)

    @staticmethod
    def _decode(raw: bytes | str) -> Any:
        try:
            return msgpack.unpackb(raw) if isinstance(raw, bytes) else json.loads(raw)
        except Exception:
            return None

    async def _on_client_message(self, conn: StreamConnection, msg: Any) -> bool:
        """Handle one client message; False = the connection is finished."""
        action = msg.get("action") if isinstance(msg, dict) else None
        if action == "auth":
            return await self._on_auth(conn, msg)
        if action in ("subscribe", "unsubscribe"):
            if not conn.authenticated:
                return await self._send_error(conn, 401)
            return await self._on_subscribe(conn, msg, action == "subscribe")
        self._event(conn, "invalid", msg)
        return await self._send_error(conn, 400)

    async def _on_auth(self, conn: StreamConnection, msg: dict) -> bool:
        if conn.authenticated:
            return await self._send_error(conn, 403)
        with self._lock:
            ok = msg.get("key") == self.key and msg.get("secret") == self.secret
            if self._fail_auth:
                ok = False
                if self._fail_auth > 0:
                    self._fail_auth -= 1
            reject = False
            if ok and self._reject_next > 0:
                self._reject_next -= 1
                reject = True
            if ok and not reject and self.connection_limit is not None:
                live = sum(1 for c in self._connections if c.is_open and c.authenticated)
                reject = live >= self.connection_limit
        if not ok:
            self._event(conn, "auth_failed", msg.get("key"))
            await self._send_error(conn, 402)
            await conn.ws.close()
            return False
        if reject:
            self._event(conn, "rejected", 406)
            await self._send_error(conn, 406)
            await conn.ws.close()
            return False
        with self._lock:
            conn.authenticated = True
            conn.key = msg.get("key")
        self._event(conn, "auth_ok", conn.key)
        return await self._send(conn, [{"T": "success", "msg": "authenticated"}])

    async def _on_subscribe(self, conn: StreamConnection, msg: dict, add: bool) -> bool:
        changes = {}
        for k, v in msg.items():
            if k == "action":
                continue
            if k not in STOCK_CHANNELS:
                continue  # Alpaca ignores channels it doesn't serve on this feed
            if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
                self._event(conn, "invalid", msg)
                return await self._send_error(conn, 400)
            changes[k] = v
        with self._lock:
            code = self._subscribe_errors.pop(0) if (add and self._subscribe_errors) else None
            if code is None and add and self.symbol_limit is not None:
                union = set().union(*conn.subscriptions.values(), *map(set, changes.values()))
                if len(union) > self.symbol_limit:
                    code = 405
            if code is None:
                for ch, syms in changes.items():
                    for c in (ch, *_IMPLIED.get(ch, ())):
                        if add:
                            conn.subscriptions[c].update(syms)
                        else:
                            conn.subscriptions[c].difference_update(syms)
            reply = {"T": "subscription",
                     **{c: sorted(conn.subscriptions[c]) for c in STOCK_CHANNELS}}
        if code is not None:
            self._event(conn, "subscribe_error", code)
            return await self._send_error(conn, code)
        self._event(conn, "subscribed" if add else "unsubscribed", changes)
        return await self._send(conn, [reply])

    def _wants(self, conn: StreamConnection, m: dict) -> bool:
        subs = conn.subscriptions[T_TO_CHANNEL[m["T"]]]
        return m["S"] in subs or "*" in subs

    async def _send_error(self, conn: StreamConnection, code: int) -> bool:
        return await self._send(conn, [{"T": "error", "code": code, "msg": ERRORS.get(code, "error")}])

    def _encode(self, conn: StreamConnection, msgs: list) -> bytes | str:
        if conn.encoding == "msgpack":
            wire = [{k: (msgpack.Timestamp.from_unix_nano(v) if k == "t" and isinstance(v, int) else v)
                     for k, v in m.items()} if isinstance(m, dict) else m for m in msgs]
            return msgpack.packb(wire)
        wire = [{k: (rfc3339(v) if k == "t" and isinstance(v, int) else v)
                 for k, v in m.items()} if isinstance(m, dict) else m for m in msgs]
        return json.dumps(wire, separators=(",", ":"))

    async def _send(self, conn: StreamConnection, msgs: Any, raw: bool = False) -> bool:
        """Send one frame; False if the connection is (now) closed."""
        if not conn.is_open:
            return False
        with self._lock:
            silent = self._silent
            self._sent.append(SentFrame(time.monotonic(), conn.id, msgs, suppressed=silent))
        if silent:
            return True
        try:
            await conn.ws.send(msgs if raw else self._encode(conn, msgs))
        except websockets.ConnectionClosed:
            return False
        if self._tick_drop("sent"):
            await self._drop(conn, True)
            return False
        return True

    def _tick_drop(self, direction: str) -> bool:
        with self._lock:
            trig = self._drop_trigger
            if trig is None or trig[1] != direction:
                return False
            trig[0] -= 1
            if trig[0] > 0:
                return False
            self._drop_trigger = None
            return True

    async def _drop(self, conn: StreamConnection, abrupt: bool) -> None:
        self._event(conn, "dropped", "abort" if abrupt else "close")
        with self._lock:
            if conn.closed_at is None:
                conn.closed_at = time.monotonic()
        if abrupt:
            conn.ws.transport.abort()
        else:
            await conn.ws.close()

    # ================================================================== internals: HTTP

    def _install_data_routes(self) -> None:
        self.add_route("GET", r"/v2/stocks/bars", _route_stock_bars, api="data")
        self.add_ws_route(r"/v2/[A-Za-z_]+", AlpacaServer._market_data_stream)

    def _install_trading_routes(self) -> None:
        """Trading API: account, clock, calendar. Orders, positions and ``/stream`` are added
        by ``enable_trading()`` (alpaca_trading.py); more routes can be registered with
        ``add_route`` (api="trading") / ``add_ws_route``."""
        self.add_route("GET", r"/v2/account", _route_account)
        self.add_route("GET", r"/v2/clock", _route_clock)
        self.add_route("GET", r"/v2/calendar", _route_calendar)

    def _check_auth(self, headers: dict, api: str) -> Optional[tuple]:
        key = headers.get("apca-api-key-id")
        secret = headers.get("apca-api-secret-key")
        if key == self.key and secret == self.secret:
            return None
        if api == "data":
            # Alpaca market data: 401 without credentials, 403 with wrong ones.
            if not key or not secret:
                return 401, {"message": "unauthorized."}
            return 403, {"message": "forbidden."}
        return 401, {"code": 40110000, "message": "request is not authorized"}

    def _handle_http(self, method: str, target: str, headers: dict, body: Any) -> tuple:
        parts = urlsplit(target)
        path = parts.path
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        rec = RestRequest(time.monotonic(), method, path, query, parts.query, headers, body)
        with self._lock:
            self._requests.append(rec)
            failure = None
            for i, (status, fbody, prefix) in enumerate(self._http_failures):
                if prefix is None or path.startswith(prefix):
                    failure = self._http_failures.pop(i)
                    break
            routes = list(self._http_routes)
        try:
            if failure is not None:
                status, out = failure[0], failure[1]
            else:
                status, out = 404, {"message": "not found"}
                for m, rx, handler, api in routes:
                    match = rx.match(path)
                    if not match:
                        continue
                    if m != method:
                        status, out = 405, {"message": "method not allowed"}
                        continue
                    denied = self._check_auth(headers, api)
                    if denied:
                        status, out = denied
                        break
                    try:
                        res = handler(self, HttpRequest(method, path, query, headers, body, match))
                    except HttpError as e:
                        status, out = e.status, e.body
                    else:
                        status, out = res if isinstance(res, tuple) else (200, res)
                    break
        except Exception:
            self.errors.append(traceback.format_exc())
            status, out = 500, {"message": "internal server error"}
        rec.status, rec.response = status, out
        return status, out


class _HttpHandler(http.server.BaseHTTPRequestHandler):
    alpaca: AlpacaServer
    protocol_version = "HTTP/1.0"  # one request per connection: no lingering handler threads

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, out = self.alpaca._handle_http(self.command, self.path, headers, body)
        payload = b"" if out is None else json.dumps(out, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_DELETE = do_PATCH = do_PUT = _serve

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


# --------------------------------------------------------------------------- data routes


def _route_stock_bars(server: AlpacaServer, req: HttpRequest) -> Any:
    q = req.query
    syms = [s.strip() for s in q.get("symbols", "").split(",") if s.strip()]
    if not syms:
        raise HttpError(400, {"message": "missing symbols"})
    try:
        tf = normalize_timeframe(q.get("timeframe", ""))
    except ValueError:
        raise HttpError(400, {"message": "invalid timeframe"})
    try:
        limit = int(q.get("limit") or 1000)
    except ValueError:
        raise HttpError(400, {"message": "invalid limit"})
    if limit < 1 or limit > 10_000:
        raise HttpError(400, {"message": "invalid limit: must be between 1 and 10000"})
    sort = q.get("sort") or "asc"
    if sort not in ("asc", "desc"):
        raise HttpError(400, {"message": "invalid sort"})
    now = server.now()
    try:
        start = to_ns(parse_time(q["start"])) if q.get("start") else to_ns(
            now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0))
        end = to_ns(parse_time(q["end"])) if q.get("end") else to_ns(now)
    except ValueError:
        raise HttpError(400, {"message": "invalid start or end"})
    desc = sort == "desc"
    resume = None
    if q.get("page_token"):
        try:
            sym, t = _unb64(q["page_token"]).split("|")
            resume = (sym, -int(t) if desc else int(t))
        except (ValueError, binascii.Error, UnicodeDecodeError):
            raise HttpError(400, {"message": "invalid page token"})

    page_size = min(limit, server.max_page_size)
    out: dict = {}
    taken = 0
    next_token = None
    with server._lock:
        store = server._history.get(tf, {})
        for sym in sorted(set(syms)):
            bars = store.get(sym)
            if not bars:
                continue
            if resume is not None and sym < resume[0]:
                continue
            key = (tf, sym)
            ts = server._sorted_ts.get(key)
            if ts is None:
                ts = server._sorted_ts[key] = sorted(bars)
            lo, hi = bisect.bisect_left(ts, start), bisect.bisect_right(ts, end)
            window = ts[lo:hi]
            if desc:
                window = window[::-1]
            if resume is not None and sym == resume[0]:
                if desc:
                    window = [t for t in window if t <= -resume[1]]
                else:
                    window = window[bisect.bisect_left(window, resume[1]):]
            for t in window:
                if taken == page_size:
                    next_token = _b64(f"{sym}|{t}")
                    break
                b = bars[t]
                out.setdefault(sym, []).append({
                    "t": rfc3339(t), "o": b["o"], "h": b["h"], "l": b["l"], "c": b["c"],
                    "v": b["v"], "n": b["n"], "vw": b["vw"],
                })
                taken += 1
            if next_token is not None:
                break
    return {"bars": out, "next_page_token": next_token}


# --------------------------------------------------------------------------- trading routes


def _default_account() -> dict:
    return {
        "id": "9c1d4f6e-7a52-4c8e-9a11-3f0e2b7d5a10",
        "account_number": "PA3TESTACCT1",
        "status": "ACTIVE",
        "crypto_status": "ACTIVE",
        "options_approved_level": 0,
        "options_trading_level": 0,
        "currency": "USD",
        "buying_power": "200000",
        "regt_buying_power": "200000",
        "non_marginable_buying_power": "100000",
        "options_buying_power": "100000",
        "cash": "100000",
        "accrued_fees": "0",
        "pending_transfer_in": "0",
        "portfolio_value": "100000",
        "trading_blocked": False,
        "transfers_blocked": False,
        "account_blocked": False,
        "created_at": "2024-01-02T15:00:00.000000Z",
        "trade_suspended_by_user": False,
        "multiplier": "2",
        "shorting_enabled": True,
        "equity": "100000",
        "last_equity": "100000",
        "long_market_value": "0",
        "short_market_value": "0",
        "position_market_value": "0",
        "initial_margin": "0",
        "maintenance_margin": "0",
        "last_maintenance_margin": "0",
        "sma": "0",
        "balance_asof": "2024-01-02",
    }


def _route_account(server: AlpacaServer, req: HttpRequest) -> Any:
    with server._lock:
        return dict(server.account)


def _builtin_calendar() -> list:
    days = []
    d = dt.date(2024, 1, 1)
    while d <= dt.date(2026, 12, 31):
        if d.weekday() < 5 and d not in NYSE_HOLIDAYS:
            days.append({
                "date": d.isoformat(), "open": "09:30",
                "close": "13:00" if d in NYSE_EARLY_CLOSES else "16:00",
                "session_open": "0400", "session_close": "2000",
            })
        d += dt.timedelta(days=1)
    # settlement date = T+1 trading day
    for a, b in zip(days, days[1:]):
        a["settlement_date"] = b["date"]
    days[-1]["settlement_date"] = days[-1]["date"]
    return days


_BUILTIN_CALENDAR: Optional[list] = None


def _calendar(server: AlpacaServer) -> list:
    global _BUILTIN_CALENDAR
    with server._lock:
        if server._calendar is not None:
            return server._calendar
    if _BUILTIN_CALENDAR is None:
        _BUILTIN_CALENDAR = _builtin_calendar()
    return _BUILTIN_CALENDAR


def _route_calendar(server: AlpacaServer, req: HttpRequest) -> Any:
    try:
        start = req.query.get("start") and req.query["start"][:10]
        end = req.query.get("end") and req.query["end"][:10]
        for s in (start, end):
            if s:
                dt.date.fromisoformat(s)
    except ValueError:
        raise HttpError(400, {"code": 40010000, "message": "invalid date"})
    return [dict(d) for d in _calendar(server)
            if (not start or d["date"] >= start) and (not end or d["date"] <= end)]


def _session_bounds(day: dict) -> tuple:
    d = dt.date.fromisoformat(day["date"])
    o = dt.datetime.combine(d, dt.time.fromisoformat(day["open"]), NY)
    c = dt.datetime.combine(d, dt.time.fromisoformat(day["close"]), NY)
    return o, c


def _route_clock(server: AlpacaServer, req: HttpRequest) -> Any:
    now = server.now().astimezone(NY)
    is_open = False
    next_open = next_close = None
    for day in _calendar(server):
        o, c = _session_bounds(day)
        if c <= now:
            continue
        if o <= now < c:
            is_open = True
            next_close = next_close or c
        else:  # session in the future
            next_open = next_open or o
            next_close = next_close or c
        if next_open is not None and next_close is not None:
            break
    if next_open is None or next_close is None:
        raise HttpError(500, {"message": "server calendar does not cover now"})
    fmt = lambda t: t.isoformat()  # noqa: E731  e.g. 2024-01-02T09:30:00-05:00
    return {"timestamp": fmt(now), "is_open": is_open,
            "next_open": fmt(next_open), "next_close": fmt(next_close)}


def new_id() -> str:
    """Helper for future order routes."""
    return str(uuid.uuid4())
