"""The trading half of the local Alpaca (see ``alpaca_server.AlpacaServer``): orders, positions,
an account moved by fills, and the trade-updates websocket, in Alpaca's documented shapes, so the
REAL alpaca-py ``TradingClient`` / ``TradingStream`` work against it with ``url_override=``.

It is a mixin of ``AlpacaServer`` (enabled with ``AlpacaServer(trading=True)`` or
``server.enable_trading()``); it uses the server's lock, event loop, clock and account dict.

Wire shapes (checked against alpaca-py 0.44 ``alpaca/trading/{client,stream,models,requests}.py``
and Alpaca's API reference):

* ``POST /v2/orders`` -> 200 Order. Body as alpaca-py sends it (``to_request_fields()``: numbers
  as JSON numbers, enums as strings, ``take_profit: {limit_price}``, ``stop_loss: {stop_price[,
  limit_price]}``); numbers given as strings are accepted too.
* ``GET /v2/orders`` (status=open|closed|all, limit<=500, after, until, direction, nested, side,
  symbols) -> [Order]; ``GET /v2/orders/{id}``, ``GET /v2/orders:by_client_order_id`` -> Order
  (with ``legs``); ``PATCH /v2/orders/{id}`` -> the NEW Order (``replaces`` = old id);
  ``DELETE /v2/orders/{id}`` -> 204 empty; ``DELETE /v2/orders`` -> 207 [{id, status}].
* ``GET /v2/positions`` -> [Position]; ``GET|DELETE /v2/positions/{symbol}``; ``DELETE
  /v2/positions[?cancel_orders=true]`` -> 207 [{symbol, status, body: Order | error}].
* Errors are ``{"code": <8 digits>, "message": ...}`` (alpaca-py's ``APIError.code`` /
  ``.message`` parse that body; ``.status_code`` is the HTTP status).
* ``/stream``: JSON in BINARY frames (Alpaca's paper stream uses binary frames; alpaca-py
  ``json.loads`` either kind). ``{"action":"authenticate","data":{"key_id","secret_key"}}`` (what
  alpaca-py sends; ``{"action":"auth","key","secret"}`` is accepted too) ->
  ``{"stream":"authorization","data":{"status":"authorized","action":"authenticate"}}``;
  ``{"action":"listen","data":{"streams":["trade_updates"]}}`` -> ``{"stream":"listening",
  "data":{"streams":["trade_updates"]}}``; then ``{"stream":"trade_updates","data":{"event",
  "execution_id","order","timestamp"[,"price","qty","position_qty"]}}``. Events are not
  replayed: an event emitted while no connection listens is lost (as with Alpaca).

Simplifications (documented, deliberate): no market-hours gating (orders are accepted and fill
whenever the test says so), no wash-trade rule, no PDT, ``DELETE`` goes straight to
``canceled`` (no ``pending_cancel``), replace goes straight to ``replaced`` (no
``pending_replace``), bracket/OTO legs activate when the parent is completely filled, a partial
fill of an exit leg does not resize its OCO sibling, error messages other than the ones named in
the brief are close paraphrases of Alpaca's (the HTTP status and ``code`` are what to rely on).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import time
import traceback
import uuid
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from typing import Any, Iterable, Optional

import websockets

__all__ = ["TradingMixin", "SimOrder", "TradeEventRecord", "TradingConnection",
           "TradingStreamMessage", "OrderReject", "OPEN_STATUSES", "CLOSED_STATUSES"]

UTC = dt.timezone.utc
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
ZERO = Decimal(0)
CENT = Decimal("0.01")

# GET /v2/orders?status=open|closed
OPEN_STATUSES = frozenset({
    "new", "partially_filled", "accepted", "pending_new", "held", "pending_cancel",
    "pending_replace", "accepted_for_bidding", "calculated", "done_for_day", "stopped",
    "suspended", "pending_review",
})
CLOSED_STATUSES = frozenset({"filled", "canceled", "expired", "replaced", "rejected"})
ORDER_TYPES = ("market", "limit", "stop", "stop_limit", "trailing_stop")
TIFS = ("day", "gtc", "opg", "cls", "ioc", "fok")
ORDER_CLASSES = ("simple", "bracket", "oco", "oto")

# Alpaca's error bodies (status, body) for the rejections the brief names.
ERR_DUPLICATE_CID = {"code": 40010001, "message": "client_order_id must be unique"}
ERR_BUYING_POWER = {"code": 40310000, "message": "insufficient buying power"}
DEFAULT_REJECT_BODIES = {
    400: {"code": 40010000, "message": "request body format is invalid"},
    401: {"code": 40110000, "message": "request is not authorized"},
    403: ERR_BUYING_POWER,
    404: {"code": 40410000, "message": "resource not found"},
    422: {"code": 42210000, "message": "order rejected"},
    429: {"code": 42910000, "message": "rate limit exceeded"},
    500: {"code": 50010000, "message": "internal server error occurred"},
    502: {"message": "bad gateway"},
    503: {"code": 50310000, "message": "service unavailable"},
    504: {"message": "gateway timeout"},
}


# --------------------------------------------------------------------------- records


@dataclass
class SimOrder:
    """The server's state of one order (``server.order(ref)`` gives its JSON)."""

    id: str
    client_order_id: str
    symbol: str
    side: str
    type: str
    time_in_force: str
    order_class: str
    qty: Optional[Decimal]
    notional: Optional[Decimal]
    limit_price: Optional[Decimal]
    stop_price: Optional[Decimal]
    trail_price: Optional[Decimal]
    trail_percent: Optional[Decimal]
    extended_hours: bool
    position_intent: Optional[str]
    status: str
    created_at: int
    seq: int
    updated_at: int = 0
    submitted_at: int = 0
    filled_qty: Decimal = ZERO
    filled_avg_price: Optional[Decimal] = None
    filled_at: Optional[int] = None
    expired_at: Optional[int] = None
    canceled_at: Optional[int] = None
    failed_at: Optional[int] = None
    replaced_at: Optional[int] = None
    replaced_by: Optional[str] = None
    replaces: Optional[str] = None
    hwm: Optional[Decimal] = None
    parent_id: Optional[str] = None       # set on bracket / oco / oto legs
    leg_ids: list = field(default_factory=list)
    triggered: bool = False               # stop_limit whose stop was hit (now a limit)

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    @property
    def remaining(self) -> Optional[Decimal]:
        return None if self.qty is None else self.qty - self.filled_qty


@dataclass
class TradeEventRecord:
    """One trade update the server emitted (``delivered_to``: the connection ids that were
    listening at that moment; empty = lost, as with Alpaca)."""

    t: float
    seq: int
    event: str
    order_id: str
    client_order_id: str
    data: dict
    delivered_to: list = field(default_factory=list)


@dataclass
class TradingConnection:
    """One connection to the trade-updates stream."""

    id: int
    path: str
    headers: dict
    opened_at: float
    closed_at: Optional[float] = None
    key: Optional[str] = None
    authenticated: bool = False
    streams: list = field(default_factory=list)
    ws: Any = field(default=None, repr=False)
    queue: Any = field(default=None, repr=False)

    @property
    def is_open(self) -> bool:
        return self.closed_at is None

    @property
    def listening(self) -> bool:
        return self.is_open and self.authenticated and "trade_updates" in self.streams


@dataclass
class TradingStreamMessage:
    """One frame received from a trade-updates stream client."""

    t: float
    conn_id: int
    raw: Any
    msg: Any

    @property
    def action(self) -> Optional[str]:
        return self.msg.get("action") if isinstance(self.msg, dict) else None


@dataclass
class OrderReject:
    """A queued answer for a coming ``POST /v2/orders`` (see ``reject_next_orders``)."""

    status: Any                 # HTTP status, or "rejected"
    body: Any
    accept: bool = False        # process the order anyway, then answer the error


class ApiError(Exception):
    def __init__(self, status: int, body: Any):
        super().__init__(status, body)
        self.status, self.body = status, body


# --------------------------------------------------------------------------- helpers


def _ts(ns: Optional[int]) -> Optional[str]:
    """Alpaca's RFC 3339 with up to nanoseconds, 'Z'."""
    if ns is None:
        return None
    sec, frac = divmod(ns, 1_000_000_000)
    s = (_EPOCH + dt.timedelta(seconds=sec)).strftime("%Y-%m-%dT%H:%M:%S")
    if frac:
        s += "." + f"{frac:09d}".rstrip("0")
    return s + "Z"


def _ns(t: Any) -> int:
    if isinstance(t, int) and not isinstance(t, bool):
        return t
    if isinstance(t, str):
        t = dt.datetime.fromisoformat(t.replace("Z", "+00:00"))
    if hasattr(t, "to_pydatetime"):
        t = t.to_pydatetime()
    if isinstance(t, dt.datetime):
        if t.tzinfo is None:
            t = t.replace(tzinfo=UTC)
        return (t - _EPOCH) // dt.timedelta(microseconds=1) * 1000
    raise TypeError(f"not a time: {t!r}")


def _fmt(d: Optional[Decimal]) -> Optional[str]:
    """Decimal -> Alpaca's decimal string ('10', '101.25', '-3')."""
    if d is None:
        return None
    s = format(d.normalize(), "f")
    return "0" if s in ("-0", "0E-9") else s


def _dec(v: Any, name: str) -> Decimal:
    if isinstance(v, bool) or v is None or isinstance(v, (dict, list)):
        raise ApiError(422, {"code": 40010000, "message": f"invalid {name}"})
    try:
        d = Decimal(str(v))
    except InvalidOperation:
        raise ApiError(422, {"code": 40010000, "message": f"invalid {name}"}) from None
    if not d.is_finite():
        raise ApiError(422, {"code": 40010000, "message": f"invalid {name}"})
    return d


def _opt_dec(body: dict, key: str, name: Optional[str] = None) -> Optional[Decimal]:
    v = body.get(key)
    return None if v is None or v == "" else _dec(v, name or key)


def _check_tick(price: Optional[Decimal], name: str) -> None:
    """Alpaca's sub-penny rule: 2 decimals at or above $1.00, 4 below."""
    if price is None:
        return
    if price <= 0:
        raise ApiError(422, {"code": 40010000, "message": f"{name} must be > 0"})
    places = 2 if price >= 1 else 4
    if price != price.quantize(Decimal(1).scaleb(-places)):
        raise ApiError(422, {"code": 42210000, "message": (
            f"invalid {name} {_fmt(price)}. sub-penny increment does not fulfill minimum "
            "pricing criteria")})


def _bool(v: Any) -> bool:
    if isinstance(v, str):
        return v.lower() == "true"
    return bool(v)


def _asset_id(symbol: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"alpaca-asset:{symbol}"))


def _bar_fields(bar: dict) -> tuple:
    keys = {"S": "S", "symbol": "S", "o": "o", "open": "o", "h": "h", "high": "h",
            "l": "l", "low": "l", "c": "c", "close": "c", "t": "t", "timestamp": "t"}
    b = {keys[k]: v for k, v in bar.items() if k in keys}
    missing = {"S", "o", "h", "l", "c"} - b.keys()
    if missing:
        raise ValueError(f"bar is missing {sorted(missing)}: {bar!r}")
    return (str(b["S"]), Decimal(str(b["o"])), Decimal(str(b["h"])), Decimal(str(b["l"])),
            Decimal(str(b["c"])), b.get("t"))


def _wrap(method_name: str):
    """A route handler (server, req) -> (status, body) calling ``server.<method_name>(req)``."""
    def handler(server, req):
        try:
            return getattr(server, method_name)(req)
        except ApiError as e:
            return e.status, e.body
    handler.__name__ = method_name
    return handler


# --------------------------------------------------------------------------- the mixin


class TradingMixin:
    """Orders, positions, account and the trade-updates stream for ``AlpacaServer``."""

    # host attributes used: _lock, _loop, now(), account, key, secret, add_route,
    # add_ws_route, errors, _requests

    def _init_trading(self) -> None:
        self.trading_enabled = False
        self._orders: dict[str, SimOrder] = {}
        self._cid_index: dict[str, str] = {}
        self._order_seq = 0
        self._positions: dict[str, dict] = {}      # sym -> {"qty": D, "avg": D}
        self._prices: dict[str, Decimal] = {}       # last price per symbol
        self._lastday: dict[str, Decimal] = {}
        self._order_rejects: list[OrderReject] = []
        self._auto_fill: Any = None                 # None/False, True, Decimal, {sym: Decimal}
        self._pinned_account: set = set()
        self.check_buying_power = True
        self.check_qty_available = True
        self.asset_exchange: dict[str, str] = {}    # symbol -> exchange (default NASDAQ)
        # trade-updates stream
        self.trading_stream_binary = True
        self._trade_events: list[TradeEventRecord] = []
        self._trading_conns: list[TradingConnection] = []
        self._trading_msgs: list[TradingStreamMessage] = []
        self._trading_sent: list[tuple] = []        # (t, conn_id, msg)
        self._fail_trading_auth = 0

    def enable_trading(self) -> None:
        """Serve orders/positions and ``/stream`` (idempotent)."""
        with self._lock:
            if self.trading_enabled:
                return
            self.trading_enabled = True
        R = self.add_route
        R("POST", r"/v2/orders", _wrap("_r_post_order"))
        R("GET", r"/v2/orders", _wrap("_r_list_orders"))
        R("DELETE", r"/v2/orders", _wrap("_r_cancel_all"))
        R("GET", r"/v2/orders:by_client_order_id", _wrap("_r_get_by_cid"))
        R("GET", r"/v2/orders/(?P<id>[^/]+)", _wrap("_r_get_order"))
        R("PATCH", r"/v2/orders/(?P<id>[^/]+)", _wrap("_r_replace"))
        R("DELETE", r"/v2/orders/(?P<id>[^/]+)", _wrap("_r_cancel"))
        R("GET", r"/v2/positions", _wrap("_r_positions"))
        R("DELETE", r"/v2/positions", _wrap("_r_close_all"))
        R("GET", r"/v2/positions/(?P<symbol>[^/]+)", _wrap("_r_position"))
        R("DELETE", r"/v2/positions/(?P<symbol>[^/]+)", _wrap("_r_close_position"))
        self.add_ws_route(r"/stream", TradingMixin._trading_stream)

    # ================================================================== controls

    def fill(self, order: Any, qty: Any = None, price: Any = None, at: Any = None) -> dict:
        """Fill ``qty`` (default: all that remains) of an open order (id, client_order_id or an
        alpaca-py Order) at ``price`` (default: its limit, else stop, else the last price).
        A fill short of the order's qty leaves it ``partially_filled``. Moves the position and
        the account, emits ``fill`` / ``partial_fill``, activates bracket/OTO legs once the
        parent is completely filled and cancels the OCO sibling of a filled exit leg.
        Returns the order's JSON after the fill."""
        with self._lock:
            od = self._resolve(order)
            if od is None:
                raise KeyError(f"no such order: {order!r}")
            if not od.is_open or od.status == "held":
                raise ValueError(f"order {od.client_order_id} is {od.status}: cannot fill")
            if price is None:
                price = od.limit_price if od.type in ("limit", "stop_limit") else (
                    od.stop_price if od.type == "stop" else self._prices.get(od.symbol))
                if price is None:
                    raise ValueError(f"no price to fill {od.client_order_id} at")
            price = Decimal(str(price))
            q = None if qty is None else Decimal(str(qty))
            if q is not None and od.remaining is not None and q > od.remaining:
                raise ValueError(f"fill qty {q} > remaining {od.remaining}")
            self._apply_fill(od, q, price, self._at(at))
            return self._order_json(od)

    def fill_on_bar(self, bar: dict, at: Any = None) -> list:
        """A small matching engine for one bar of one symbol (keys S/symbol, o/open, h/high,
        l/low, c/close; ``t`` unused): open market orders fill at the open; then each resting
        order (an OCO group - bracket exit legs, an oco pair - as one) fills at most once, by
        priority: a stop gapped through at the open fills at the open, a limit gapped through
        at the open fills at the open, a stop touched (low <= stop for a sell, high >= stop for
        a buy) fills at the stop, a limit touched (high >= limit for a sell, low <= limit for a
        buy) fills at the limit. Legs activated by a fill in this bar are evaluated in the same
        bar (an exit can happen on the entry bar). Trailing stops use ``hwm`` (updated with the
        bar after it did not trigger). The symbol's last price becomes the close.
        Returns [{"id", "client_order_id", "qty", "price"}] of the fills made, in order."""
        sym, o, h, l, c, _t = _bar_fields(bar)
        ts = self._at(at)
        fills: list = []
        with self._lock:
            if sym not in self._prices:
                self._set_price_locked(sym, o)
            for od in self._working(sym):
                if od.type == "market" and od.is_open and od.status != "held":
                    fills.append(self._fill_record(od, o, ts))
            seen: set = set()
            for _ in range(4):  # newly activated legs get another pass in the same bar
                todo = [od for od in self._working(sym)
                        if od.id not in seen and od.type != "market"]
                if not todo:
                    break
                for od in todo:
                    if od.id in seen or not od.is_open or od.status == "held":
                        continue
                    group = self._oco_group(od)
                    seen.update(g.id for g in group)
                    hit = self._match(group, o, h, l)
                    if hit is not None:
                        fills.append(self._fill_record(hit[0], hit[1], ts))
                    else:
                        for g in group:
                            self._update_trail(g, h, l)
            self._set_price_locked(sym, c)
            self._recompute_account()
        return fills

    def reject_next_orders(self, n: int = 1, status: Any = 403, body: Any = None,
                           accept: bool = False) -> None:
        """Answer the next ``n`` ``POST /v2/orders`` with HTTP ``status`` and ``body`` (default:
        Alpaca's body for that status; 403 = ``{"code":40310000,"message":"insufficient buying
        power"}``). ``accept=True``: the order is created anyway and only the response is the
        error (an ambiguous failure, e.g. a 504 from a gateway after the broker took the order).
        ``status="rejected"``: the POST succeeds (order ``pending_new``) and the order is then
        rejected (status ``rejected``, ``failed_at``, trade update ``rejected``)."""
        if status != "rejected" and body is None:
            body = DEFAULT_REJECT_BODIES.get(int(status), {"code": int(status) * 100000,
                                                           "message": "error"})
        with self._lock:
            self._order_rejects.extend(OrderReject(status, body, accept) for _ in range(n))

    def reject_order(self, order: Any, at: Any = None) -> dict:
        """Reject an open order now (status ``rejected``, event ``rejected``; its held legs are
        canceled)."""
        with self._lock:
            od = self._resolve(order)
            if od is None or not od.is_open:
                raise ValueError(f"cannot reject {order!r}")
            self._reject_locked(od, self._at(at))
            return self._order_json(od)

    def cancel(self, order: Any, at: Any = None) -> dict:
        """Cancel an open order from the broker side (as ``DELETE /v2/orders/{id}``)."""
        with self._lock:
            od = self._resolve(order)
            if od is None or not od.is_open:
                raise ValueError(f"cannot cancel {order!r}")
            self._cancel_locked(od, self._at(at))
            return self._order_json(od)

    def expire_orders(self, time_in_force: str = "day", at: Any = None) -> list:
        """Expire every open order with this ``time_in_force`` (end of day): status ``expired``,
        event ``expired``. Returns their ids."""
        out = []
        with self._lock:
            ts = self._at(at)
            for od in sorted(self._orders.values(), key=lambda x: x.seq):
                if od.is_open and od.time_in_force == time_in_force:
                    self._close_order(od, "expired", ts)
                    out.append(od.id)
            self._recompute_account()
        return out

    def set_auto_fill(self, price: Any = True) -> None:
        """Auto-fill market orders right after they are accepted (the POST response still
        shows ``new``; the stream gets ``new`` then ``fill``): ``price`` a number (every
        symbol), ``{symbol: price}``, ``True`` (the symbol's last price, see ``set_price`` /
        ``fill_on_bar``; left open if none) or ``False``/``None`` to stop."""
        with self._lock:
            if isinstance(price, dict):
                self._auto_fill = {k: Decimal(str(v)) for k, v in price.items()}
            elif price is None or price is False or price is True:
                self._auto_fill = price or None
            else:
                self._auto_fill = Decimal(str(price))

    def set_price(self, symbol: str, price: Any, lastday: Any = None) -> None:
        """The symbol's current price (positions' market value, buying-power estimate of market
        orders, bracket base price, auto-fill with ``True``)."""
        with self._lock:
            self._set_price_locked(symbol, Decimal(str(price)))
            if lastday is not None:
                self._lastday[symbol] = Decimal(str(lastday))
            self._recompute_account()

    def set_position(self, symbol: str, qty: Any, avg_entry_price: Any) -> None:
        """Put a position in place without an order (cash unchanged); qty 0 removes it."""
        with self._lock:
            q = Decimal(str(qty))
            if q == 0:
                self._positions.pop(symbol, None)
            else:
                self._positions[symbol] = {"qty": q, "avg": Decimal(str(avg_entry_price))}
                self._prices.setdefault(symbol, Decimal(str(avg_entry_price)))
            self._recompute_account()

    def fail_trading_auth(self, n: Optional[int] = 1) -> None:
        """Answer the next ``n`` stream authentications ``unauthorized`` (and close);
        ``None``: all until ``fail_trading_auth(0)``."""
        with self._lock:
            self._fail_trading_auth = -1 if n is None else n

    def drop_trading_streams(self, abrupt: bool = True) -> int:
        """Close every open trade-updates connection (``abrupt``: TCP abort, else a close
        handshake). alpaca-py's TradingStream reconnects after 0.5-1 s. Returns how many."""
        async def go() -> int:
            conns = [c for c in self.trading_connections() if c.is_open and c.ws is not None]
            for c in conns:
                with self._lock:
                    c.closed_at = c.closed_at or time.monotonic()
                if abrupt:
                    c.ws.transport.abort()
                else:
                    await c.ws.close()
            return len(conns)

        return self._call(go())

    # ================================================================== observations

    def order(self, ref: Any) -> Optional[dict]:
        """An order's JSON (with legs) by id / client_order_id, or None."""
        with self._lock:
            od = self._resolve(ref)
            return None if od is None else self._order_json(od)

    def orders(self, status: Optional[str] = None) -> list:
        """Every order's JSON, oldest first (legs listed on their own too); ``status`` filters
        by exact order status or "open" / "closed"."""
        with self._lock:
            out = []
            for od in sorted(self._orders.values(), key=lambda x: x.seq):
                if status is None or od.status == status or (
                        status == "open" and od.is_open) or (
                        status == "closed" and not od.is_open):
                    out.append(self._order_json(od))
            return out

    def positions(self) -> dict:
        """{symbol: Position JSON}."""
        with self._lock:
            return {s: self._position_json(s) for s in sorted(self._positions)}

    def trade_events(self, event: Optional[str] = None) -> list:
        """Every trade update emitted (``TradeEventRecord``), optionally one kind."""
        with self._lock:
            return [e for e in self._trade_events if event is None or e.event == event]

    def trading_connections(self) -> list:
        with self._lock:
            return list(self._trading_conns)

    def trading_stream_messages(self, action: Optional[str] = None) -> list:
        """Frames received from trade-updates clients (``TradingStreamMessage``)."""
        with self._lock:
            return [m for m in self._trading_msgs if action is None or m.action == action]

    def trading_stream_sent(self, conn_id: Optional[int] = None) -> list:
        """(t, conn_id, message) of everything sent on trade-updates connections."""
        with self._lock:
            return [s for s in self._trading_sent if conn_id is None or s[1] == conn_id]

    def trading_requests(self, method: Optional[str] = None, path: Optional[str] = None) -> list:
        """Every trading-API request (``RestRequest``: t, method, path, query, headers, body,
        status, response), optionally by method and exact path or path regex."""
        with self._lock:
            reqs = [r for r in self._requests if not r.path.startswith("/v2/stocks")]
        rx = re.compile(path + r"\Z") if path else None
        return [r for r in reqs if (method is None or r.method == method.upper())
                and (rx is None or rx.match(r.path))]

    def order_posts(self, client_order_id: Optional[str] = None) -> list:
        """Every ``POST /v2/orders`` (optionally only those carrying ``client_order_id``)."""
        return [r for r in self.trading_requests("POST", "/v2/orders")
                if client_order_id is None
                or (isinstance(r.body, dict) and r.body.get("client_order_id") == client_order_id)]

    # ================================================================== REST routes

    def _r_post_order(self, req) -> Any:
        body = req.body
        if not isinstance(body, dict):
            raise ApiError(422, {"code": 40010000, "message": "request body format is invalid"})
        with self._lock:
            reject = self._order_rejects.pop(0) if self._order_rejects else None
            if reject is not None and reject.status != "rejected" and not reject.accept:
                return int(reject.status), reject.body
            rejecting = reject is not None and reject.status == "rejected"
            od = self._submit_locked(body, self._at(None), announce=not rejecting)
            out = self._order_json(od)
            if rejecting:
                out["status"] = "pending_new"
                self._reject_locked(od, self._at(None))
            else:
                self._maybe_auto_fill(od)
            if reject is not None and reject.accept:
                return int(reject.status), reject.body
            return 200, out

    def _r_list_orders(self, req) -> Any:
        q = req.query
        status = q.get("status") or "open"
        if status not in ("open", "closed", "all"):
            raise ApiError(422, {"code": 40010000, "message": "invalid status"})
        try:
            limit = int(q.get("limit") or 50)
        except ValueError:
            raise ApiError(422, {"code": 40010000, "message": "invalid limit"}) from None
        limit = max(1, min(limit, 500))
        direction = q.get("direction") or "desc"
        nested = _bool(q.get("nested", False))
        after = _ns(q["after"]) if q.get("after") else None
        until = _ns(q["until"]) if q.get("until") else None
        side = q.get("side")
        symbols = {s for s in (q.get("symbols") or "").split(",") if s}
        with self._lock:
            out = []
            for od in sorted(self._orders.values(), key=lambda x: (x.submitted_at, x.seq),
                             reverse=direction == "desc"):
                if nested and od.parent_id is not None:
                    continue
                if status == "open" and not od.is_open or status == "closed" and od.is_open:
                    continue
                if after is not None and od.submitted_at <= after:
                    continue
                if until is not None and od.submitted_at > until:
                    continue
                if side and od.side != side or symbols and od.symbol not in symbols:
                    continue
                out.append(self._order_json(od, legs=nested))
                if len(out) == limit:
                    break
            return out

    def _r_get_order(self, req) -> Any:
        with self._lock:
            return self._order_json(self._find(req.match.group("id")))

    def _r_get_by_cid(self, req) -> Any:
        cid = req.query.get("client_order_id", "")
        with self._lock:
            oid = self._cid_index.get(cid)
            if oid is None:
                raise ApiError(404, {"code": 40410000, "message": "order not found"})
            return self._order_json(self._orders[oid])

    def _r_cancel(self, req) -> Any:
        with self._lock:
            od = self._find(req.match.group("id"))
            if not od.is_open:
                raise ApiError(422, {"code": 42210000,
                                     "message": f'order is already in "{od.status}" state'})
            self._cancel_locked(od, self._at(None))
            return 204, None

    def _r_cancel_all(self, req) -> Any:
        with self._lock:
            ts = self._at(None)
            out = []
            for od in sorted(self._orders.values(), key=lambda x: x.seq):
                if od.is_open and od.parent_id is None:
                    self._cancel_locked(od, ts)
                    out.append({"id": od.id, "status": 200})
            for od in sorted(self._orders.values(), key=lambda x: x.seq):
                if od.is_open:  # orphaned legs
                    self._cancel_locked(od, ts)
                    out.append({"id": od.id, "status": 200})
            return 207, out

    def _r_replace(self, req) -> Any:
        body = req.body if isinstance(req.body, dict) else {}
        with self._lock:
            old = self._find(req.match.group("id"))
            new = self._replace_locked(old, body, self._at(None))
            return 200, self._order_json(new)

    def _r_positions(self, req) -> Any:
        with self._lock:
            return [self._position_json(s) for s in sorted(self._positions)]

    def _r_position(self, req) -> Any:
        sym = self._position_symbol(req.match.group("symbol"))
        with self._lock:
            if sym not in self._positions:
                raise ApiError(404, {"code": 40410000, "message": "position does not exist"})
            return self._position_json(sym)

    def _r_close_position(self, req) -> Any:
        sym = self._position_symbol(req.match.group("symbol"))
        with self._lock:
            if sym not in self._positions:
                raise ApiError(404, {"code": 40410000, "message": "position does not exist"})
            od = self._close_locked(sym, req.query)
            return 200, self._order_json(od)

    def _r_close_all(self, req) -> Any:
        with self._lock:
            ts = self._at(None)
            if _bool(req.query.get("cancel_orders", False)):
                for od in sorted(self._orders.values(), key=lambda x: x.seq):
                    if od.is_open:
                        self._cancel_locked(od, ts)
            out = []
            for sym in sorted(self._positions):
                try:
                    od = self._close_locked(sym, {})
                except ApiError as e:
                    out.append({"symbol": sym, "status": e.status, "body": e.body})
                else:
                    out.append({"symbol": sym, "status": 200, "body": self._order_json(od)})
            return 207, out

    # ================================================================== order logic

    def _at(self, at: Any) -> int:
        return _ns(self.now()) if at is None else _ns(at)

    def _resolve(self, ref: Any) -> Optional[SimOrder]:
        if isinstance(ref, dict):
            ref = ref.get("id")
        elif hasattr(ref, "id") and not isinstance(ref, (str, uuid.UUID)):
            ref = ref.id
        ref = str(ref)
        if ref in self._orders:
            return self._orders[ref]
        oid = self._cid_index.get(ref)
        return self._orders.get(oid) if oid else None

    def _find(self, oid: str) -> SimOrder:
        od = self._orders.get(oid)
        if od is None:
            raise ApiError(404, {"code": 40410000, "message": f"order not found for {oid}"})
        return od

    def _position_symbol(self, ref: str) -> str:
        for s in self._positions:
            if _asset_id(s) == ref:
                return s
        return ref.upper()

    def _new_order(self, ts: int, **kw) -> SimOrder:
        self._order_seq += 1
        od = SimOrder(id=str(uuid.uuid4()), created_at=ts, updated_at=ts, submitted_at=ts,
                      seq=self._order_seq, **kw)
        self._orders[od.id] = od
        self._cid_index[od.client_order_id] = od.id
        return od

    def _take_cid(self, cid: Any) -> str:
        if cid is None or cid == "":
            return str(uuid.uuid4())
        cid = str(cid)
        if len(cid) > 128:
            raise ApiError(422, {"code": 40010001,
                                 "message": "client_order_id must be no more than 128 characters"})
        if cid in self._cid_index:
            raise ApiError(422, dict(ERR_DUPLICATE_CID))
        return cid

    def _submit_locked(self, body: dict, ts: int, *, check: bool = True,
                       announce: bool = True) -> SimOrder:
        def bad(msg: str, code: int = 40010000):
            raise ApiError(422, {"code": code, "message": msg})

        sym = body.get("symbol")
        if not sym or not isinstance(sym, str):
            bad("symbol is required")
        sym = sym.upper()
        side = body.get("side")
        if side not in ("buy", "sell"):
            bad("side is required" if side is None else f"invalid side: {side}")
        otype = body.get("type") or body.get("order_type")
        if otype not in ORDER_TYPES:
            bad("type is required" if otype is None else f"invalid order type: {otype}")
        tif = body.get("time_in_force")
        if tif not in TIFS:
            bad("time_in_force is required" if tif is None else f"invalid time_in_force: {tif}")
        oclass = body.get("order_class") or "simple"
        if oclass not in ORDER_CLASSES:
            bad(f"invalid order_class: {oclass}")
        qty, notional = _opt_dec(body, "qty"), _opt_dec(body, "notional")
        if qty is None and notional is None:
            bad("qty or notional is required")
        if qty is not None and notional is not None:
            bad("only one of qty or notional may be given")
        if qty is not None and qty <= 0:
            bad("qty must be > 0")
        if notional is not None and notional <= 0:
            bad("notional must be > 0")
        limit_price, stop_price = _opt_dec(body, "limit_price"), _opt_dec(body, "stop_price")
        trail_price, trail_percent = _opt_dec(body, "trail_price"), _opt_dec(body, "trail_percent")
        tp = body.get("take_profit") if isinstance(body.get("take_profit"), dict) else None
        sl = body.get("stop_loss") if isinstance(body.get("stop_loss"), dict) else None
        tp_limit = _opt_dec(tp, "limit_price", "take_profit.limit_price") if tp else None
        sl_stop = _opt_dec(sl, "stop_price", "stop_loss.stop_price") if sl else None
        sl_limit = _opt_dec(sl, "limit_price", "stop_loss.limit_price") if sl else None
        if oclass == "oco" and limit_price is None:
            limit_price = tp_limit
        if otype in ("limit", "stop_limit") and limit_price is None:
            bad("limit_price is required")
        if otype in ("stop", "stop_limit") and stop_price is None:
            bad("stop_price is required")
        if otype == "trailing_stop" and (trail_price is None) == (trail_percent is None):
            bad("exactly one of trail_price or trail_percent is required")
        for name, p in (("limit_price", limit_price), ("stop_price", stop_price),
                        ("take_profit.limit_price", tp_limit), ("stop_loss.stop_price", sl_stop),
                        ("stop_loss.limit_price", sl_limit)):
            _check_tick(p, name)
        ext = _bool(body.get("extended_hours", False))
        if ext and not (otype == "limit" and tif == "day"):
            bad("extended hours order must be DAY limit orders", 42210000)
        if notional is not None and (otype != "market" or oclass != "simple"):
            bad("notional orders must be simple market orders", 42210000)
        fractional = qty is not None and qty != qty.to_integral_value()
        if (fractional or notional is not None) and tif != "day":
            bad("fractional orders must be DAY orders", 42210000)
        if fractional and oclass != "simple":
            bad("fractional orders must be simple orders", 42210000)
        if oclass in ("bracket", "oco"):
            if tp_limit is None:
                bad(f"{oclass} orders require take_profit.limit_price", 42210000)
            if sl_stop is None:
                bad(f"{oclass} orders require stop_loss.stop_price", 42210000)
        if oclass == "oto" and tp_limit is None and sl_stop is None:
            bad("oto orders require take_profit or stop_loss", 42210000)
        if oclass != "simple" and tif not in ("day", "gtc"):
            bad(f"{oclass} orders must be DAY or GTC orders", 42210000)
        if oclass == "oco" and otype != "limit":
            bad("oco orders must be limit orders", 42210000)
        if oclass in ("bracket", "oto"):
            base = limit_price if otype in ("limit", "stop_limit") else (
                stop_price if otype == "stop" else self._prices.get(sym))
            sign = 1 if side == "buy" else -1
            if base is not None and tp_limit is not None and sign * (tp_limit - base) < CENT:
                bad(f"take_profit.limit_price must be {'>=' if sign > 0 else '<='} "
                    f"base_price {'+' if sign > 0 else '-'} 0.01", 42210000)
            if base is not None and sl_stop is not None and sign * (base - sl_stop) < CENT:
                bad(f"stop_loss.stop_price must be {'<=' if sign > 0 else '>='} "
                    f"base_price {'-' if sign > 0 else '+'} 0.01", 42210000)
        cid = self._take_cid(body.get("client_order_id"))

        # risk checks (403)
        if check:
            self._check_risk(sym, side, qty, notional, otype, limit_price, stop_price, oclass)

        pos = self._positions.get(sym, {}).get("qty", ZERO)
        intent = body.get("position_intent") or (
            ("buy_to_close" if pos < 0 else "buy_to_open") if side == "buy"
            else ("sell_to_close" if pos > 0 else "sell_to_open"))
        common = dict(symbol=sym, time_in_force=tif, extended_hours=ext, trail_price=None,
                      trail_percent=None)
        parent = self._new_order(
            ts, client_order_id=cid, side=side, type=otype, order_class=oclass, qty=qty,
            notional=notional, limit_price=limit_price, stop_price=stop_price,
            position_intent=intent, status="new",
            **{**common, "trail_price": trail_price, "trail_percent": trail_percent})
        if otype == "trailing_stop":
            parent.hwm = self._prices.get(sym)
        exit_side = "sell" if side == "buy" else "buy"
        exit_intent = "sell_to_close" if side == "buy" else "buy_to_close"
        legs = []
        if oclass in ("bracket", "oto") and tp_limit is not None:
            legs.append(dict(type="limit", limit_price=tp_limit, stop_price=None))
        if oclass in ("bracket", "oto", "oco") and sl_stop is not None:
            legs.append(dict(type="stop_limit" if sl_limit is not None else "stop",
                             limit_price=sl_limit, stop_price=sl_stop))
        for leg in legs:
            lo = self._new_order(
                ts, client_order_id=str(uuid.uuid4()), order_class=oclass, qty=qty,
                notional=None, position_intent=exit_intent if oclass != "oco" else intent,
                side=exit_side if oclass != "oco" else side,
                status="new" if oclass == "oco" else "held", **common, **leg)
            lo.parent_id = parent.id
            parent.leg_ids.append(lo.id)
        if announce:
            self._emit("new", parent, ts)
            for lid in parent.leg_ids:
                if self._orders[lid].status == "new":
                    self._emit("new", self._orders[lid], ts)
        self._recompute_account()
        return parent

    def _check_risk(self, sym, side, qty, notional, otype, limit_price, stop_price, oclass,
                    exclude: Iterable[str] = (), buying_power: bool = True) -> None:
        pos = self._positions.get(sym, {}).get("qty", ZERO)
        closing = ZERO
        if qty is not None and self.check_qty_available and (
                side == "sell" and pos > 0 or side == "buy" and pos < 0):
            held = self._held_for_orders(sym, side, exclude)
            available = abs(pos) - held
            if qty > available:
                raise ApiError(403, {
                    "code": 40310000,
                    "message": f"insufficient qty available for order (requested: {_fmt(qty)}, "
                               f"available: {_fmt(max(available, ZERO))})",
                    "available": _fmt(max(available, ZERO)), "existing_qty": _fmt(abs(pos)),
                    "held_for_orders": _fmt(held), "symbol": sym})
            closing = qty
        if side == "sell" and pos <= 0 and not self.account.get("shorting_enabled", True):
            raise ApiError(403, {"code": 40310000, "message": "account is not allowed to short"})
        if not (self.check_buying_power and buying_power):
            return
        price = self._price_estimate(sym, otype, limit_price, stop_price)
        if notional is not None:
            cost = notional
        elif price is None:
            return
        else:
            cost = (qty - closing) * price
        bp = Decimal(str(self.account.get("buying_power", "0")))
        if cost > 0 and cost > bp:
            raise ApiError(403, {**ERR_BUYING_POWER, "buying_power": _fmt(bp),
                                 "cost_basis": _fmt(cost)})

    def _price_estimate(self, sym, otype, limit_price, stop_price) -> Optional[Decimal]:
        if otype in ("limit", "stop_limit"):
            return limit_price
        if otype == "stop":
            return stop_price
        return self._prices.get(sym)

    def _held_for_orders(self, sym: str, side: str, exclude: Iterable[str] = ()) -> Decimal:
        """Qty of open (not held) orders of ``side`` on ``sym``; an OCO group counts once."""
        exclude = set(exclude)
        held, seen = ZERO, set()
        for od in self._orders.values():
            if (od.symbol != sym or od.side != side or not od.is_open or od.status == "held"
                    or od.id in seen or od.id in exclude or od.remaining is None):
                continue
            group = [g for g in self._oco_group(od) if g.id not in exclude]
            seen.update(g.id for g in group)
            held += max((g.remaining for g in group if g.remaining is not None), default=ZERO)
        return held

    def _maybe_auto_fill(self, od: SimOrder) -> None:
        af = self._auto_fill
        if af is None or od.type != "market" or not od.is_open:
            return
        price = af.get(od.symbol) if isinstance(af, dict) else (
            self._prices.get(od.symbol) if af is True else af)
        if price is not None:
            self._apply_fill(od, None, price, self._at(None))

    def _working(self, sym: str) -> list:
        return sorted((od for od in self._orders.values()
                       if od.symbol == sym and od.is_open and od.status != "held"),
                      key=lambda x: x.seq)

    def _oco_group(self, od: SimOrder) -> list:
        """The open orders that cancel each other with ``od``: bracket/OTO exit legs (siblings),
        an OCO pair (parent + its leg); else just ``od``."""
        if od.order_class == "oco":
            root = self._orders[od.parent_id] if od.parent_id else od
            members = [root] + [self._orders[i] for i in root.leg_ids]
        elif od.parent_id is not None:
            members = [self._orders[i] for i in self._orders[od.parent_id].leg_ids]
        else:
            return [od]
        return [m for m in members if m.is_open and m.status != "held"] or [od]

    @staticmethod
    def _stop_of(od: SimOrder) -> Optional[Decimal]:
        if od.type in ("stop", "stop_limit"):
            return od.stop_price
        if od.type == "trailing_stop" and od.hwm is not None:
            if od.trail_price is not None:
                return od.hwm - od.trail_price if od.side == "sell" else od.hwm + od.trail_price
            pct = od.trail_percent / 100
            return od.hwm * (1 - pct) if od.side == "sell" else od.hwm * (1 + pct)
        return None

    def _match(self, group: list, o: Decimal, h: Decimal, l: Decimal) -> Optional[tuple]:
        """(order, price) of the first fill in the group by priority, or None."""
        stops = [(g, self._stop_of(g)) for g in group
                 if g.type in ("stop", "stop_limit", "trailing_stop") and not g.triggered]
        stops = [(g, s) for g, s in stops if s is not None]
        limits = [g for g in group if g.type == "limit" or g.type == "stop_limit" and g.triggered]

        def stop_hit(g, s, gap: bool) -> Optional[tuple]:
            if g.triggered:
                return None
            sell = g.side == "sell"
            if gap and (o <= s if sell else o >= s):
                px = o
            elif not gap and (l <= s if sell else h >= s):
                px = s
            else:
                return None
            if g.type == "stop_limit":
                if (px >= g.limit_price) if sell else (px <= g.limit_price):
                    return g, px
                g.triggered = True       # now a resting limit
                return None
            return g, px

        def limit_hit(g, gap: bool) -> Optional[tuple]:
            sell, lp = g.side == "sell", g.limit_price
            if gap and (o >= lp if sell else o <= lp):
                return g, o
            if not gap and (h >= lp if sell else l <= lp):
                return g, lp
            return None

        for gap in (True, False):
            for g, s in stops:
                hit = stop_hit(g, s, gap)
                if hit:
                    return hit
            for g in limits + [g for g, _ in stops if g.triggered]:
                hit = limit_hit(g, gap)
                if hit:
                    return hit
        return None

    @staticmethod
    def _update_trail(od: SimOrder, h: Decimal, l: Decimal) -> None:
        if od.type != "trailing_stop":
            return
        if od.hwm is None:
            od.hwm = h if od.side == "sell" else l
        elif od.side == "sell" and h > od.hwm or od.side == "buy" and l < od.hwm:
            od.hwm = h if od.side == "sell" else l

    def _fill_record(self, od: SimOrder, price: Decimal, ts: int) -> dict:
        q = self._apply_fill(od, None, price, ts)
        return {"id": od.id, "client_order_id": od.client_order_id, "qty": Decimal(_fmt(q)),
                "price": Decimal(_fmt(price))}

    def _apply_fill(self, od: SimOrder, qty: Optional[Decimal], price: Decimal,
                    ts: int) -> Decimal:
        if qty is None:
            qty = od.remaining if od.qty is not None else (
                od.notional / price).quantize(Decimal("1e-9"), ROUND_DOWN)
        if qty <= 0:
            raise ValueError("fill qty must be > 0")
        total = od.filled_qty + qty
        od.filled_avg_price = price if not od.filled_qty else (
            (od.filled_avg_price * od.filled_qty + price * qty) / total)
        od.filled_qty = total
        od.updated_at = ts
        done = od.qty is None or total >= od.qty
        od.status = "filled" if done else "partially_filled"
        if done:
            od.filled_at = ts
        # position and cash
        signed = qty if od.side == "buy" else -qty
        cash = Decimal(str(self.account.get("cash", "0")))
        self.account["cash"] = _fmt(cash - signed * price)
        p = self._positions.get(od.symbol)
        if p is None:
            p = self._positions[od.symbol] = {"qty": ZERO, "avg": price}
        old = p["qty"]
        new = old + signed
        if old == 0 or (old > 0) == (signed > 0):
            p["avg"] = (abs(old) * p["avg"] + qty * price) / abs(new)
        elif (old > 0) != (new > 0) and new != 0:
            p["avg"] = price                 # flipped through zero
        p["qty"] = new
        if new == 0:
            del self._positions[od.symbol]
        self._set_price_locked(od.symbol, price)
        self._emit("fill" if done else "partial_fill", od, ts, price=price, qty=qty,
                   position_qty=new)
        if done:
            for lid in od.leg_ids:            # bracket / oto legs go live
                leg = self._orders[lid]
                if leg.status == "held":
                    leg.status, leg.updated_at = "new", ts
                    if leg.type == "trailing_stop":
                        leg.hwm = price
                    self._emit("new", leg, ts)
            if od.order_class in ("bracket", "oco", "oto") and (
                    od.parent_id is not None or od.order_class == "oco"):
                for sib in self._oco_group(od):
                    if sib.id != od.id and sib.is_open:
                        self._close_order(sib, "canceled", ts)
        self._recompute_account()
        return qty

    def _close_order(self, od: SimOrder, status: str, ts: int) -> None:
        """canceled / expired / rejected: the order and its still-open legs."""
        od.status, od.updated_at = status, ts
        setattr(od, {"canceled": "canceled_at", "expired": "expired_at",
                     "rejected": "failed_at"}[status], ts)
        self._emit(status, od, ts)
        for lid in od.leg_ids:
            leg = self._orders[lid]
            if leg.is_open and (leg.status == "held" or status != "canceled"
                                or od.order_class == "oco" or od.filled_qty == 0):
                leg.status, leg.updated_at = "canceled", ts
                leg.canceled_at = ts
                self._emit("canceled", leg, ts)

    def _cancel_locked(self, od: SimOrder, ts: int) -> None:
        self._close_order(od, "canceled", ts)
        self._recompute_account()

    def _reject_locked(self, od: SimOrder, ts: int) -> None:
        self._close_order(od, "rejected", ts)
        self._recompute_account()

    def _replace_locked(self, old: SimOrder, body: dict, ts: int) -> SimOrder:
        if not old.is_open or old.status in ("pending_cancel", "pending_replace"):
            raise ApiError(422, {"code": 42210000,
                                 "message": f'order is already in "{old.status}" state'})
        qty = _opt_dec(body, "qty")
        tif = body.get("time_in_force")
        limit_price, stop_price = _opt_dec(body, "limit_price"), _opt_dec(body, "stop_price")
        trail = _opt_dec(body, "trail")
        if qty is not None and qty <= 0:
            raise ApiError(422, {"code": 40010000, "message": "qty must be > 0"})
        if tif is not None and tif not in TIFS:
            raise ApiError(422, {"code": 40010000, "message": f"invalid time_in_force: {tif}"})
        if limit_price is not None and old.type not in ("limit", "stop_limit"):
            raise ApiError(422, {"code": 42210000,
                                 "message": f"cannot set limit_price on a {old.type} order"})
        if stop_price is not None and old.type not in ("stop", "stop_limit"):
            raise ApiError(422, {"code": 42210000,
                                 "message": f"cannot set stop_price on a {old.type} order"})
        if trail is not None and old.type != "trailing_stop":
            raise ApiError(422, {"code": 42210000,
                                 "message": f"cannot set trail on a {old.type} order"})
        _check_tick(limit_price, "limit_price")
        _check_tick(stop_price, "stop_price")
        if old.notional is not None and qty is not None:
            raise ApiError(422, {"code": 42210000, "message": "cannot replace notional with qty"})
        changes = {
            "qty": qty if qty is not None and qty != old.qty else None,
            "time_in_force": tif if tif is not None and tif != old.time_in_force else None,
            "limit_price": limit_price if limit_price is not None
            and limit_price != old.limit_price else None,
            "stop_price": stop_price if stop_price is not None
            and stop_price != old.stop_price else None,
        }
        if trail is not None:
            cur = old.trail_price if old.trail_price is not None else old.trail_percent
            if trail != cur:
                changes["trail"] = trail
        if all(v is None for v in changes.values()):
            raise ApiError(403, {"code": 40310000, "message": "order parameters are not changed"})
        new_qty = changes["qty"] if changes["qty"] is not None else (
            old.remaining if old.qty is not None else None)
        if changes["qty"] is not None and old.qty is not None:
            self._check_risk(old.symbol, old.side, new_qty, None, old.type,
                             changes["limit_price"] or old.limit_price,
                             changes["stop_price"] or old.stop_price, old.order_class,
                             exclude=[g.id for g in self._oco_group(old)], buying_power=False)
        cid = self._take_cid(body.get("client_order_id"))
        trail_price, trail_percent = old.trail_price, old.trail_percent
        if "trail" in changes:
            if trail_price is not None:
                trail_price = changes["trail"]
            else:
                trail_percent = changes["trail"]
        new = self._new_order(
            ts, client_order_id=cid, symbol=old.symbol, side=old.side, type=old.type,
            time_in_force=changes["time_in_force"] or old.time_in_force,
            order_class=old.order_class, qty=new_qty, notional=old.notional,
            limit_price=changes["limit_price"] or old.limit_price,
            stop_price=changes["stop_price"] or old.stop_price, trail_price=trail_price,
            trail_percent=trail_percent, extended_hours=old.extended_hours,
            position_intent=old.position_intent,
            status="held" if old.status == "held" else "new")
        new.replaces, new.hwm, new.triggered = old.id, old.hwm, old.triggered
        new.parent_id, new.leg_ids = old.parent_id, list(old.leg_ids)
        old.leg_ids = []
        for lid in new.leg_ids:
            self._orders[lid].parent_id = new.id
        if old.parent_id is not None:
            siblings = self._orders[old.parent_id].leg_ids
            siblings[siblings.index(old.id)] = new.id
        old.status, old.replaced_at, old.replaced_by, old.updated_at = "replaced", ts, new.id, ts
        self._emit("replaced", old, ts)
        if new.status == "new":
            self._emit("new", new, ts)
        self._recompute_account()
        return new

    def _close_locked(self, sym: str, query: dict) -> SimOrder:
        pos = self._positions[sym]["qty"]
        qty = abs(pos)
        if query.get("qty"):
            qty = _dec(query["qty"], "qty")
        elif query.get("percentage"):
            pct = _dec(query["percentage"], "percentage")
            qty = (abs(pos) * pct / 100).quantize(Decimal("1e-9"), ROUND_DOWN)
        if qty <= 0 or qty > abs(pos):
            raise ApiError(422, {"code": 40010000, "message": "invalid qty"})
        side = "sell" if pos > 0 else "buy"
        od = self._submit_locked({"symbol": sym, "side": side, "type": "market",
                                  "qty": _fmt(qty), "time_in_force": "day"},
                                 self._at(None))
        self._maybe_auto_fill(od)
        return od

    # ================================================================== account / positions

    def _set_price_locked(self, sym: str, price: Decimal) -> None:
        self._prices[sym] = price
        self._lastday.setdefault(sym, price)

    def _recompute_account(self) -> None:
        a = self.account
        cash = Decimal(str(a.get("cash", "0")))
        long_mv = short_mv = ZERO
        for sym, p in self._positions.items():
            mv = p["qty"] * self._prices.get(sym, p["avg"])
            if mv > 0:
                long_mv += mv
            else:
                short_mv += mv
        equity = cash + long_mv + short_mv
        gross = long_mv - short_mv
        m = Decimal(str(a.get("multiplier", "1") or "1"))
        reserved = ZERO
        for od in self._orders.values():
            if not od.is_open or od.status == "held" or od.parent_id is not None:
                continue
            if od.order_class == "oco":
                continue                      # exits
            pos = self._positions.get(od.symbol, {}).get("qty", ZERO)
            if (od.side == "buy") == (pos >= 0) or pos == 0:
                px = self._price_estimate(od.symbol, od.type, od.limit_price, od.stop_price)
                if od.notional is not None:
                    reserved += od.notional
                elif px is not None and od.remaining is not None:
                    reserved += od.remaining * px
        derived = {
            "equity": equity, "portfolio_value": equity,
            "long_market_value": long_mv, "short_market_value": short_mv,
            "position_market_value": gross,
            "buying_power": max(ZERO, m * equity - gross - reserved),
            "regt_buying_power": max(ZERO, m * equity - gross - reserved),
            "non_marginable_buying_power": max(ZERO, cash - reserved),
            "initial_margin": gross / m,
            "maintenance_margin": long_mv * Decimal("0.25") - short_mv * Decimal("0.3"),
        }
        for k, v in derived.items():
            if k not in self._pinned_account:
                a[k] = _fmt(v.quantize(Decimal("1e-6")).normalize() if v else ZERO)

    def _position_json(self, sym: str) -> dict:
        p = self._positions[sym]
        qty, avg = p["qty"], p["avg"]
        price = self._prices.get(sym, avg)
        last = self._lastday.get(sym, price)
        mv, cost = qty * price, qty * avg
        upl = mv - cost
        plpc = upl / abs(cost) if cost else ZERO
        held = self._held_for_orders(sym, "sell" if qty > 0 else "buy")
        q6 = lambda d: _fmt(d.quantize(Decimal("1e-10")).normalize())  # noqa: E731
        intraday = qty * (price - last)
        return {
            "asset_id": _asset_id(sym), "symbol": sym,
            "exchange": self.asset_exchange.get(sym, "NASDAQ"), "asset_class": "us_equity",
            "asset_marginable": True, "qty": _fmt(qty),
            "qty_available": _fmt(qty - held if qty > 0 else qty + held),
            "avg_entry_price": q6(avg), "side": "long" if qty > 0 else "short",
            "market_value": q6(mv), "cost_basis": q6(cost), "unrealized_pl": q6(upl),
            "unrealized_plpc": q6(plpc), "unrealized_intraday_pl": q6(intraday),
            "unrealized_intraday_plpc": q6(intraday / abs(qty * last) if last else ZERO),
            "current_price": _fmt(price), "lastday_price": _fmt(last),
            "change_today": q6((price - last) / last if last else ZERO),
        }

    # ================================================================== JSON

    def _order_json(self, od: SimOrder, legs: bool = True) -> dict:
        return {
            "id": od.id,
            "client_order_id": od.client_order_id,
            "created_at": _ts(od.created_at),
            "updated_at": _ts(od.updated_at),
            "submitted_at": _ts(od.submitted_at),
            "filled_at": _ts(od.filled_at),
            "expired_at": _ts(od.expired_at),
            "canceled_at": _ts(od.canceled_at),
            "failed_at": _ts(od.failed_at),
            "replaced_at": _ts(od.replaced_at),
            "replaced_by": od.replaced_by,
            "replaces": od.replaces,
            "asset_id": _asset_id(od.symbol),
            "symbol": od.symbol,
            "asset_class": "us_equity",
            "notional": _fmt(od.notional),
            "qty": _fmt(od.qty),
            "filled_qty": _fmt(od.filled_qty),
            "filled_avg_price": _fmt(od.filled_avg_price),
            "order_class": od.order_class,
            "order_type": od.type,
            "type": od.type,
            "side": od.side,
            "position_intent": od.position_intent,
            "time_in_force": od.time_in_force,
            "limit_price": _fmt(od.limit_price),
            "stop_price": _fmt(od.stop_price),
            "status": od.status,
            "extended_hours": od.extended_hours,
            "legs": [self._order_json(self._orders[i]) for i in od.leg_ids]
            if legs and od.leg_ids else None,
            "trail_percent": _fmt(od.trail_percent),
            "trail_price": _fmt(od.trail_price),
            "hwm": _fmt(od.hwm) if od.type == "trailing_stop" else None,
            "expires_at": None,
            "subtag": None,
            "source": None,
        }

    # ================================================================== trade-updates stream

    def _emit(self, event: str, od: SimOrder, ts: int, **fill) -> None:
        """Record one trade update and hand it to the loop (call with the lock held: events
        reach every connection in emission order)."""
        data = {"event": event, "execution_id": str(uuid.uuid4()), "order": self._order_json(od),
                "timestamp": _ts(ts)}
        for k, v in fill.items():
            data[k] = _fmt(v)
        rec = TradeEventRecord(time.monotonic(), len(self._trade_events) + 1, event, od.id,
                               od.client_order_id, {"stream": "trade_updates", "data": data})
        self._trade_events.append(rec)
        for c in self._trading_conns:
            if c.listening and c.queue is not None:
                rec.delivered_to.append(c.id)
        loop = self._loop
        if rec.delivered_to and loop is not None and loop.is_running():
            try:
                loop.call_soon_threadsafe(self._deliver_trade_event, rec)
            except RuntimeError:  # loop closing
                pass

    def _deliver_trade_event(self, rec: TradeEventRecord) -> None:
        with self._lock:
            conns = [c for c in self._trading_conns if c.id in rec.delivered_to]
        for c in conns:
            if c.is_open:
                c.queue.put_nowait(rec.data)

    def _tencode(self, msg: dict) -> Any:
        s = json.dumps(msg, separators=(",", ":"))
        return s.encode() if self.trading_stream_binary else s

    async def _trading_stream(self, ws) -> None:
        headers = {k: v for k, v in ws.request.headers.raw_items()}
        with self._lock:
            conn = TradingConnection(id=len(self._trading_conns) + 1, path=ws.request.path,
                                     headers=headers, opened_at=time.monotonic(), ws=ws,
                                     queue=asyncio.Queue())
            self._trading_conns.append(conn)

        async def writer() -> None:
            while True:
                msg = await conn.queue.get()
                if msg is None:
                    return
                with self._lock:
                    self._trading_sent.append((time.monotonic(), conn.id, msg))
                await ws.send(self._tencode(msg))

        wtask = asyncio.ensure_future(writer())
        try:
            async for raw in ws:
                try:
                    msg = json.loads(raw)
                except ValueError:
                    msg = None
                with self._lock:
                    self._trading_msgs.append(TradingStreamMessage(time.monotonic(), conn.id,
                                                                   raw, msg))
                action = msg.get("action") if isinstance(msg, dict) else None
                data = msg.get("data") if isinstance(msg, dict) else None
                data = data if isinstance(data, dict) else {}
                if action in ("authenticate", "auth"):
                    key = data.get("key_id", msg.get("key"))
                    secret = data.get("secret_key", msg.get("secret"))
                    with self._lock:
                        ok = key == self.key and secret == self.secret
                        if self._fail_trading_auth:
                            ok = False
                            if self._fail_trading_auth > 0:
                                self._fail_trading_auth -= 1
                        if ok:
                            conn.authenticated, conn.key = True, key
                    status = "authorized" if ok else "unauthorized"
                    conn.queue.put_nowait({"stream": "authorization", "data": {
                        "status": status, "action": "authenticate"}})
                    if not ok:
                        conn.queue.put_nowait(None)
                        await wtask
                        await ws.close()
                        return
                elif action == "listen":
                    if not conn.authenticated:
                        conn.queue.put_nowait({"stream": "authorization", "data": {
                            "status": "unauthorized", "action": "listen"}})
                        continue
                    streams = data.get("streams")
                    streams = [s for s in streams if s == "trade_updates"] \
                        if isinstance(streams, list) else []
                    with self._lock:
                        conn.streams = streams
                    conn.queue.put_nowait({"stream": "listening", "data": {"streams": streams}})
                else:
                    conn.queue.put_nowait({"stream": "error", "data": {
                        "error_message": "invalid action"}})
        except websockets.ConnectionClosed:
            pass
        finally:
            with self._lock:
                if conn.closed_at is None:
                    conn.closed_at = time.monotonic()
            if not wtask.done():
                wtask.cancel()
            try:
                await wtask
            except (asyncio.CancelledError, websockets.ConnectionClosed):
                pass
            except Exception:
                self.errors.append(traceback.format_exc())
