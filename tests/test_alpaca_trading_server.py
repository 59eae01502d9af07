"""The trading half of AlpacaServer against the REAL alpaca-py 0.44 TradingClient / TradingStream.

Each test is also a statement about alpaca-py or Alpaca that the engine has to live with
(retries of POST /v2/orders, how errors surface, what the stream delivers and when).
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from alpaca.common.exceptions import APIError  # noqa: E402
from alpaca.trading.client import TradingClient  # noqa: E402
from alpaca.trading.enums import (  # noqa: E402
    OrderClass,
    OrderSide,
    OrderStatus,
    OrderType,
    QueryOrderStatus,
    TimeInForce,
)
from alpaca.trading.requests import (  # noqa: E402
    ClosePositionRequest,
    GetOrderByIdRequest,
    GetOrdersRequest,
    LimitOrderRequest,
    MarketOrderRequest,
    ReplaceOrderRequest,
    StopLimitOrderRequest,
    StopLossRequest,
    StopOrderRequest,
    TakeProfitRequest,
    TrailingStopOrderRequest,
)
from alpaca.trading.stream import TradingStream  # noqa: E402
from alpaca_server import AlpacaServer  # noqa: E402
from websockets.sync.client import connect as ws_connect  # noqa: E402

BUY, SELL = OrderSide.BUY, OrderSide.SELL
DAY, GTC = TimeInForce.DAY, TimeInForce.GTC
T0 = dt.datetime(2024, 1, 2, 14, 30, tzinfo=dt.timezone.utc)


@pytest.fixture
def server():
    with AlpacaServer(trading=True, now=T0) as s:
        yield s
        assert s.errors == [], "\n".join(s.errors)


@pytest.fixture
def tc(server):
    return TradingClient(server.key, server.secret, paper=True, url_override=server.trading_url)


def market(sym="AAPL", qty=10, side=BUY, cid=None, **kw):
    return MarketOrderRequest(symbol=sym, qty=qty, side=side, time_in_force=DAY,
                              client_order_id=cid, **kw)


def bracket(sym="AAPL", qty=10, tp=110.0, sl=95.0, cid=None):
    return market(sym, qty, cid=cid, order_class=OrderClass.BRACKET,
                  take_profit=TakeProfitRequest(limit_price=tp),
                  stop_loss=StopLossRequest(stop_price=sl))


def oco(sym="AAPL", qty=10, tp=110.0, sl=95.0, cid=None):
    """The engine's protective exit (connectors/alpaca/broker.py to_protection_request shape)."""
    return LimitOrderRequest(symbol=sym, qty=qty, side=SELL, time_in_force=GTC,
                             order_class=OrderClass.OCO, limit_price=tp,
                             take_profit=TakeProfitRequest(limit_price=tp),
                             stop_loss=StopLossRequest(stop_price=sl), client_order_id=cid)


def bar(o, h, l, c, sym="AAPL"):
    return {"S": sym, "o": o, "h": h, "l": l, "c": c}


class Updates:
    """A real TradingStream in its own thread, collecting TradeUpdate objects."""

    def __init__(self, server, listening_conn=1):
        self.server = server
        self.got = []
        self.stream = TradingStream(server.key, server.secret, paper=True,
                                    url_override=server.trading_stream_url)
        self.stream.subscribe_trade_updates(self.on_update)
        self.thread = threading.Thread(target=self.stream.run, daemon=True)
        self.thread.start()
        self.wait_listening(listening_conn)

    async def on_update(self, u):
        self.got.append(u)

    def wait_listening(self, n_conn):
        self.server.wait_until(lambda: len(self.server.trading_connections()) >= n_conn
                               and self.server.trading_connections()[n_conn - 1].listening)

    def events(self):
        return [(u.event.value if hasattr(u.event, "value") else u.event, u.order.client_order_id)
                for u in self.got]

    def wait_count(self, n, timeout=5.0):
        self.server.wait_until(lambda: len(self.got) >= n, timeout=timeout)
        time.sleep(0.05)  # nothing more should arrive
        assert len(self.got) == n, self.events()

    def stop(self):
        self.server.wait_until(lambda: self.stream._loop is not None)
        self.stream.stop()
        self.server.drop_trading_streams(abrupt=False)  # else recv() waits up to 5 s
        self.thread.join(10)
        assert not self.thread.is_alive()


# ------------------------------------------------------------------ orders, fills, account


def test_market_order_fill_position_and_account(server, tc):
    o = tc.submit_order(market(cid="m1"))
    assert o.status == OrderStatus.NEW and o.client_order_id == "m1" and o.filled_qty == "0"
    assert (o.symbol, o.qty, o.type, o.order_type, o.side, o.order_class) == \
        ("AAPL", "10", OrderType.MARKET, OrderType.MARKET, BUY, OrderClass.SIMPLE)
    assert o.created_at == T0 and o.filled_at is None and o.legs is None

    # what alpaca-py puts on the wire: floats for numbers, enum values, the key headers
    [post] = server.order_posts("m1")
    assert post.body == {"symbol": "AAPL", "qty": 10.0, "side": "buy", "type": "market",
                         "time_in_force": "day", "client_order_id": "m1"}
    assert post.headers["apca-api-key-id"] == server.key and post.status == 200

    with pytest.raises(APIError) as e:
        tc.get_open_position("AAPL")
    assert e.value.status_code == 404 and e.value.code == 40410000

    server.fill("m1", price=100)
    o = tc.get_order_by_id(o.id)
    assert (o.status, o.filled_qty, o.filled_avg_price, o.filled_at) == \
        (OrderStatus.FILLED, "10", "100", T0)
    assert tc.get_order_by_client_id("m1").id == o.id
    p = tc.get_open_position("AAPL")
    assert (p.qty, p.avg_entry_price, p.side.value, p.cost_basis, p.market_value) == \
        ("10", "100", "long", "1000", "1000")
    a = tc.get_account()
    assert (a.cash, a.equity, a.buying_power, a.long_market_value) == \
        ("99000", "100000", "199000", "1000")

    server.set_price("AAPL", 101.5)
    p = tc.get_all_positions()[0]
    assert (p.current_price, p.market_value, p.unrealized_pl) == ("101.5", "1015", "15")
    assert tc.get_account().equity == "100015"

    # sell it back: cash and equity reflect the realised gain, position gone
    tc.submit_order(market(side=SELL, cid="m2"))
    server.fill("m2", price=102)
    assert tc.get_all_positions() == []
    assert (tc.get_account().cash, tc.get_account().equity) == ("100020", "100020")


def test_partial_fills(server, tc):
    o = tc.submit_order(LimitOrderRequest(symbol="MSFT", qty=10, side=BUY, time_in_force=DAY,
                                          limit_price=100, client_order_id="p1"))
    server.fill("p1", qty=4)  # at its limit price
    o = tc.get_order_by_client_id("p1")
    assert (o.status, o.filled_qty, o.filled_avg_price, o.filled_at) == \
        (OrderStatus.PARTIALLY_FILLED, "4", "100", None)
    assert tc.get_open_position("MSFT").qty == "4"
    assert [x.client_order_id for x in tc.get_orders()] == ["p1"]  # still open
    server.fill("p1", price=99.5)  # the remaining 6
    o = tc.get_order_by_client_id("p1")
    assert (o.status, o.filled_qty, o.filled_avg_price) == (OrderStatus.FILLED, "10", "99.7")
    assert tc.get_open_position("MSFT").avg_entry_price == "99.7"
    assert tc.get_orders() == []
    assert [(e.event, e.data["data"]["qty"], e.data["data"]["position_qty"])
            for e in server.trade_events() if e.event != "new"] == \
        [("partial_fill", "4", "4"), ("fill", "6", "10")]
    with pytest.raises(ValueError):
        server.fill("p1", price=1)  # already filled


def test_cancel_and_cancel_all(server, tc):
    o = tc.submit_order(LimitOrderRequest(symbol="AAPL", qty=1, side=BUY, time_in_force=GTC,
                                          limit_price=90, client_order_id="c1"))
    assert tc.cancel_order_by_id(o.id) is None  # 204, empty body
    o = tc.get_order_by_id(o.id)
    assert o.status == OrderStatus.CANCELED and o.canceled_at == T0
    assert server.trading_requests("DELETE", r"/v2/orders/[^/]+")[0].status == 204
    with pytest.raises(APIError) as e:
        tc.cancel_order_by_id(o.id)
    assert e.value.status_code == 422 and "canceled" in e.value.message

    ids = {str(tc.submit_order(LimitOrderRequest(symbol=s, qty=1, side=BUY, time_in_force=DAY,
                                                 limit_price=90)).id) for s in ("A", "B")}
    res = tc.cancel_orders()
    assert {str(r.id) for r in res} == ids and {r.status for r in res} == {200}
    assert tc.get_orders() == []
    assert len(tc.get_orders(GetOrdersRequest(status=QueryOrderStatus.CLOSED))) == 3


def test_bracket_gap_fills_stop_at_open_and_cancels_take_profit(server, tc):
    o = tc.submit_order(bracket(cid="b1"))
    tp, sl = o.legs
    assert o.order_class == OrderClass.BRACKET and o.status == OrderStatus.NEW
    assert (tp.type, tp.side, tp.limit_price, tp.status, tp.order_class) == \
        (OrderType.LIMIT, SELL, "110", OrderStatus.HELD, OrderClass.BRACKET)
    assert (sl.type, sl.side, sl.stop_price, sl.status) == \
        (OrderType.STOP, SELL, "95", OrderStatus.HELD)

    # the entry fills at the next bar's open; the legs go live (and could exit in that bar)
    fills = server.fill_on_bar(bar(100, 101, 99, 100.5))
    assert [(f["client_order_id"], f["price"]) for f in fills] == [("b1", 100)]
    o = tc.get_order_by_id(o.id)
    assert [leg.status for leg in o.legs] == [OrderStatus.NEW, OrderStatus.NEW]
    assert tc.get_open_position("AAPL").qty_available == "0"  # held by the exit legs

    # nested listing rolls legs into the parent; flat listing shows all three
    nested = tc.get_orders(GetOrdersRequest(status=QueryOrderStatus.ALL, nested=True))
    assert len(nested) == 1 and len(nested[0].legs) == 2
    assert len(tc.get_orders(GetOrdersRequest(status=QueryOrderStatus.ALL))) == 3

    # a gap down through the stop: the stop fills at the open (94), not at 95
    fills = server.fill_on_bar(bar(94, 96, 93, 95))
    assert [(f["id"], f["price"]) for f in fills] == [(str(sl.id), 94)]
    legs = tc.get_order_by_id(o.id, GetOrderByIdRequest(nested=True)).legs
    assert [(leg.status, leg.filled_avg_price) for leg in legs] == \
        [(OrderStatus.CANCELED, None), (OrderStatus.FILLED, "94")]
    assert tc.get_all_positions() == [] and tc.get_account().cash == "99940"


def test_oco_replace_stop_leg_then_take_profit_cancels_it(server, tc):
    tc.submit_order(market(cid="entry"))
    server.fill("entry", price=100)
    o = tc.submit_order(oco(cid="exit"))
    [stop] = o.legs
    assert (o.type, o.limit_price, o.status) == (OrderType.LIMIT, "110", OrderStatus.NEW)
    assert (stop.type, stop.stop_price, stop.status, stop.order_class) == \
        (OrderType.STOP, "95", OrderStatus.NEW, OrderClass.OCO)

    # trailing: move the stop up (PATCH) -> the NEW order comes back, the old one is replaced
    new = tc.replace_order_by_id(stop.id, ReplaceOrderRequest(stop_price=97.5))
    assert new.id != stop.id and str(new.replaces) == str(stop.id)
    assert (new.stop_price, new.status, new.type) == ("97.5", OrderStatus.NEW, OrderType.STOP)
    old = tc.get_order_by_id(stop.id)
    assert old.status == OrderStatus.REPLACED and old.replaced_by == new.id
    assert old.replaced_at == T0
    assert [leg.id for leg in tc.get_order_by_id(o.id).legs] == [new.id]
    assert server.trading_requests("PATCH", r"/v2/orders/.+")[0].body == {"stop_price": 97.5}

    with pytest.raises(APIError) as e:  # nothing changed
        tc.replace_order_by_id(new.id, ReplaceOrderRequest(stop_price=97.5))
    assert (e.value.status_code, e.value.code) == (403, 40310000)
    with pytest.raises(APIError) as e:  # replaced orders are final
        tc.replace_order_by_id(stop.id, ReplaceOrderRequest(stop_price=98))
    assert e.value.status_code == 422
    with pytest.raises(APIError) as e:  # sub-penny stop
        tc.replace_order_by_id(new.id, ReplaceOrderRequest(stop_price=97.555))
    assert e.value.status_code == 422 and "sub-penny" in e.value.message

    # a bar touching the target: the limit fills at 110, the (new) stop is canceled
    fills = server.fill_on_bar(bar(105, 111, 104, 108))
    assert [(f["client_order_id"], f["price"]) for f in fills] == [("exit", 110)]
    assert tc.get_order_by_id(new.id).status == OrderStatus.CANCELED
    assert tc.get_all_positions() == [] and tc.get_account().cash == "100100"


def test_fill_on_bar_priorities(server, tc):
    # entry at the open, and the bar also reaches the stop: the exit happens on the entry bar
    tc.submit_order(bracket(cid="b", tp=104, sl=98))
    fills = server.fill_on_bar(bar(100, 101, 97, 99))
    assert [(f["client_order_id"], f["price"]) for f in fills][0] == ("b", 100)
    assert fills[1]["price"] == 98 and len(fills) == 2
    # both legs in range within one bar: the stop wins (the backtest's pessimistic rule)
    tc.submit_order(bracket(cid="b2", tp=104, sl=98))
    fills = server.fill_on_bar(bar(100, 105, 97, 101))
    assert [f["price"] for f in fills] == [100, 98]
    # a limit buy gapped through fills at the open, better than its limit
    tc.submit_order(LimitOrderRequest(symbol="AAPL", qty=10, side=BUY, time_in_force=DAY,
                                      limit_price=100, client_order_id="lb"))
    assert [f["price"] for f in server.fill_on_bar(bar(99, 99.5, 98, 99))] == [99]
    # trailing stop: hwm follows the highs, triggers at hwm - trail
    t = tc.submit_order(TrailingStopOrderRequest(symbol="AAPL", qty=5, side=SELL,
                                                 time_in_force=GTC, trail_price=2))
    assert t.hwm == "99"  # the last price
    assert server.fill_on_bar(bar(100, 105, 99.5, 104)) == []
    assert tc.get_order_by_id(t.id).hwm == "105"
    assert [f["price"] for f in server.fill_on_bar(bar(104, 104, 102.5, 103))] == [103]
    # stop-limit gapped below its limit: triggered but unfilled until the limit trades
    tc.submit_order(StopLimitOrderRequest(symbol="AAPL", qty=5, side=SELL, time_in_force=GTC,
                                          stop_price=95, limit_price=94, client_order_id="sl"))
    assert server.fill_on_bar(bar(93, 93.5, 92, 93)) == []
    assert [f["price"] for f in server.fill_on_bar(bar(93, 94.5, 93, 94))] == [94]
    assert tc.get_all_positions() == []


def test_raw_stream_protocol(server):
    with ws_connect(server.trading_stream_url, ping_interval=None) as ws:
        ws.send('{"action":"listen","data":{"streams":["trade_updates"]}}')  # before auth
        assert ws.recv(timeout=2) == \
            b'{"stream":"authorization","data":{"status":"unauthorized","action":"listen"}}'
        ws.send('{"action":"auth","key":"%s","secret":"%s"}' % (server.key, server.secret))
        assert ws.recv(timeout=2) == \
            b'{"stream":"authorization","data":{"status":"authorized","action":"authenticate"}}'
        ws.send('{"action":"listen","data":{"streams":["trade_updates","nope"]}}')
        assert ws.recv(timeout=2) == b'{"stream":"listening","data":{"streams":["trade_updates"]}}'
        TradingClient(server.key, server.secret, url_override=server.trading_url).submit_order(
            market(cid="raw"))
        frame = ws.recv(timeout=2)
        assert isinstance(frame, bytes)  # paper: JSON in binary frames
        msg = json.loads(frame)
        assert msg["stream"] == "trade_updates" and msg["data"]["event"] == "new"
        assert msg["data"]["order"]["client_order_id"] == "raw"
        assert server.trade_events()[0].delivered_to == [1]


def test_close_position_and_close_all(server, tc):
    server.set_auto_fill({"AAPL": 100, "MSFT": 50})
    o = tc.submit_order(market("AAPL", 10, cid="a"))
    assert o.status == OrderStatus.NEW  # the response predates the (immediate) fill
    assert tc.get_order_by_client_id("a").status == OrderStatus.FILLED
    tc.submit_order(market("MSFT", 4, SELL, cid="short"))  # flat -> a short
    assert tc.get_open_position("MSFT").side.value == "short"
    assert tc.get_open_position("MSFT").qty == "-4"

    closed = tc.close_position("AAPL", ClosePositionRequest(percentage="50"))
    assert (closed.side, closed.qty, closed.type) == (SELL, "5", OrderType.MARKET)
    assert tc.get_open_position("AAPL").qty == "5"

    # exit orders hold the shares: Alpaca refuses to liquidate them (403 per position)
    tc.submit_order(oco("AAPL", 5))
    res = {r.symbol: r for r in tc.close_all_positions()}
    assert res["AAPL"].status == 403 and res["AAPL"].body.code == 40310000
    assert res["AAPL"].body.held_for_orders == 5 and res["AAPL"].body.available == 0
    assert res["MSFT"].status == 200 and res["MSFT"].body.side == BUY
    assert [p.symbol for p in tc.get_all_positions()] == ["AAPL"]

    res = tc.close_all_positions(cancel_orders=True)
    assert [(r.symbol, r.status) for r in res] == [("AAPL", 200)]
    assert tc.get_all_positions() == [] and tc.get_orders() == []
    assert tc.get_account().cash == "100000"  # every fill at the same prices


# ------------------------------------------------------------------ rejections and retries


def test_duplicate_client_order_id_is_422_even_after_cancel(server, tc):
    o = tc.submit_order(LimitOrderRequest(symbol="AAPL", qty=1, side=BUY, time_in_force=DAY,
                                          limit_price=90, client_order_id="dup"))
    tc.cancel_order_by_id(o.id)
    with pytest.raises(APIError) as e:
        tc.submit_order(market(cid="dup"))
    err = e.value
    assert (err.status_code, err.code, err.message) == \
        (422, 40010001, "client_order_id must be unique")
    assert str(err) == '{"code":40010001,"message":"client_order_id must be unique"}'
    assert len(server.orders()) == 1 and len(server.order_posts("dup")) == 2
    assert tc.get_order_by_client_id("dup").status == OrderStatus.CANCELED


def test_insufficient_buying_power_and_qty(server, tc):
    server.set_price("AAPL", 100)
    with pytest.raises(APIError) as e:  # 2001 x 100 > 200000 buying power
        tc.submit_order(market(qty=2001))
    assert (e.value.status_code, e.value.code, e.value.message) == \
        (403, 40310000, "insufficient buying power")
    server.update_account(buying_power="500")  # pinned until released
    with pytest.raises(APIError) as e:
        tc.submit_order(LimitOrderRequest(symbol="AAPL", qty=6, side=BUY, time_in_force=DAY,
                                          limit_price=100))
    assert e.value.status_code == 403
    server.update_account(buying_power=None)
    assert tc.get_account().buying_power == "200000"

    server.set_position("AAPL", 10, 100)
    tc.submit_order(LimitOrderRequest(symbol="AAPL", qty=8, side=SELL, time_in_force=GTC,
                                      limit_price=120))
    with pytest.raises(APIError) as e:  # 8 of 10 held by the open sell
        tc.submit_order(market(qty=3, side=SELL))
    assert e.value.status_code == 403 and e.value.code == 40310000
    assert e.value.message == "insufficient qty available for order (requested: 3, available: 2)"
    assert len(server.orders()) == 1  # the refusals created nothing


@pytest.mark.parametrize("status,code", [(403, 40310000), (422, 42210000), (500, 50010000),
                                         (503, 50310000)])
def test_forced_rejections_are_not_retried(server, tc, status, code):
    server.reject_next_orders(1, status=status)
    t = time.monotonic()
    with pytest.raises(APIError) as e:
        tc.submit_order(market(cid=f"r{status}"))
    assert time.monotonic() - t < 1
    assert (e.value.status_code, e.value.code) == (status, code)
    assert len(server.order_posts(f"r{status}")) == 1 and server.orders() == []
    tc.submit_order(market(cid=f"r{status}"))  # nothing was created: the id is still free


def test_invalid_orders_are_422(server, tc):
    with pytest.raises(APIError) as e:  # sub-penny limit price
        tc.submit_order(LimitOrderRequest(symbol="AAPL", qty=1, side=BUY, time_in_force=DAY,
                                          limit_price=100.123))
    assert e.value.status_code == 422 and e.value.code == 42210000
    assert e.value.message.startswith("invalid limit_price 100.123. sub-penny")
    with pytest.raises(APIError) as e:  # bracket stop above the entry's limit price
        tc.submit_order(LimitOrderRequest(
            symbol="AAPL", qty=1, side=BUY, time_in_force=DAY, limit_price=100,
            order_class=OrderClass.BRACKET, take_profit=TakeProfitRequest(limit_price=110),
            stop_loss=StopLossRequest(stop_price=100.5)))
    assert e.value.status_code == 422 and "stop_loss.stop_price" in e.value.message
    with pytest.raises(APIError) as e:
        tc.submit_order(StopOrderRequest(symbol="AAPL", qty=1, side=BUY, time_in_force=DAY,
                                         stop_price=101, extended_hours=True))
    assert e.value.status_code == 422
    assert server.orders() == []


def test_429_is_retried_by_alpaca_py_after_3s(server, tc):
    server.reject_next_orders(1, status=429)
    o = tc.submit_order(market(cid="rl"))
    assert o.status == OrderStatus.NEW
    first, second = server.order_posts("rl")
    assert (first.status, second.status) == (429, 200) and first.body == second.body
    assert 2.9 <= second.t - first.t < 4.5  # DEFAULT_RETRY_WAIT_SECONDS = 3
    assert len(server.orders()) == 1


def test_504_after_the_order_was_taken_surfaces_as_duplicate_422(server, tc):
    """The hazard alpaca-py's retry creates: the broker took the order, the gateway said 504,
    alpaca-py POSTs again with the same client_order_id -> 422 duplicate. The order exists;
    the caller must look it up by client_order_id (connectors/alpaca/broker.py adopts it)."""
    server.reject_next_orders(1, status=504, accept=True)
    with pytest.raises(APIError) as e:
        tc.submit_order(market(cid="amb"))
    assert (e.value.status_code, e.value.code) == (422, 40010001)
    assert [p.status for p in server.order_posts("amb")] == [504, 422]
    assert tc.get_order_by_client_id("amb").status == OrderStatus.NEW
    assert len(server.orders()) == 1


def test_persistent_429_gives_up_after_4_posts(server, tc):
    server.reject_next_orders(10, status=429)
    with pytest.raises(APIError) as e:
        tc.submit_order(market(cid="rl4"))
    assert e.value.status_code == 429 and e.value.code == 42910000
    posts = server.order_posts("rl4")
    assert len(posts) == 4  # 1 + DEFAULT_RETRY_ATTEMPTS (3), 3 s apart
    assert all(2.9 <= b.t - a.t < 4.5 for a, b in zip(posts, posts[1:]))


# ------------------------------------------------------------------ trade-updates stream


def test_stream_events_in_order_and_reconnect(server, tc):
    u = Updates(server)
    try:
        conn = server.trading_connections()[0]
        auth, listen = [m.msg for m in server.trading_stream_messages()]
        assert auth == {"action": "authenticate",
                        "data": {"key_id": server.key, "secret_key": server.secret}}
        assert listen == {"action": "listen", "data": {"streams": ["trade_updates"]}}
        assert [m for _, _, m in server.trading_stream_sent(conn.id)] == [
            {"stream": "authorization", "data": {"status": "authorized", "action": "authenticate"}},
            {"stream": "listening", "data": {"streams": ["trade_updates"]}}]

        lim = dict(symbol="AAPL", qty=10, side=BUY, time_in_force=DAY, limit_price=100)
        tc.submit_order(LimitOrderRequest(**lim, client_order_id="e1"))
        server.fill("e1", qty=3)
        server.fill("e1")
        o2 = tc.submit_order(LimitOrderRequest(**lim, client_order_id="e2"))
        new = tc.replace_order_by_id(o2.id, ReplaceOrderRequest(limit_price=99))
        tc.cancel_order_by_id(new.id)
        server.reject_next_orders(1, status="rejected")
        r = tc.submit_order(LimitOrderRequest(**lim, client_order_id="e3"))
        assert r.status == OrderStatus.PENDING_NEW
        assert tc.get_order_by_id(r.id).status == OrderStatus.REJECTED
        u.wait_count(8)
        assert u.events() == [
            ("new", "e1"), ("partial_fill", "e1"), ("fill", "e1"), ("new", "e2"),
            ("replaced", "e2"), ("new", new.client_order_id), ("canceled", new.client_order_id),
            ("rejected", "e3")]
        fill = u.got[2]
        assert (fill.price, fill.qty, fill.position_qty, fill.order.status) == \
            (100.0, 7.0, 10.0, OrderStatus.FILLED)
        assert fill.timestamp == T0 and fill.execution_id is not None
        assert u.got[4].order.replaced_by == new.id  # 'replaced' carries the old order
        assert u.got[7].order.failed_at == T0

        # drop: alpaca-py reconnects (0.5-1 s backoff), authenticates and listens again;
        # what happened in between is lost, as with Alpaca
        server.drop_trading_streams()
        tc.submit_order(market(cid="gap"))
        u.wait_listening(2)
        assert server.trade_events()[-1].delivered_to == []
        tc.submit_order(market(cid="after"))
        u.wait_count(9)
        assert u.events()[-1] == ("new", "after")
        assert [m.action for m in server.trading_stream_messages()] == \
            ["authenticate", "listen"] * 2
    finally:
        u.stop()


def test_stream_auth_failure_then_recovers(server):
    server.fail_trading_auth(1)
    u = Updates(server, listening_conn=2)  # refused, then 0.5-1 s backoff, then listening
    try:
        first, second = server.trading_connections()[:2]
        assert not first.authenticated and first.closed_at is not None
        assert [m for _, _, m in server.trading_stream_sent(first.id)] == [
            {"stream": "authorization",
             "data": {"status": "unauthorized", "action": "authenticate"}}]
        assert second.listening
    finally:
        u.stop()


def test_expire_day_orders(server, tc):
    tc.submit_order(LimitOrderRequest(symbol="AAPL", qty=1, side=BUY, time_in_force=DAY,
                                      limit_price=90, client_order_id="d"))
    tc.submit_order(LimitOrderRequest(symbol="AAPL", qty=1, side=BUY, time_in_force=GTC,
                                      limit_price=90, client_order_id="g"))
    assert len(server.expire_orders("day")) == 1
    assert tc.get_order_by_client_id("d").status == OrderStatus.EXPIRED
    assert tc.get_order_by_client_id("d").expired_at == T0
    assert [o.client_order_id for o in tc.get_orders()] == ["g"]
    assert [e.event for e in server.trade_events()] == ["new", "new", "expired"]
