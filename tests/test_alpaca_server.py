"""AlpacaServer against the REAL alpaca-py 0.44 clients (no mocks of alpaca-py).

Each test documents an alpaca-py behaviour the engine has to live with; the numbers in the
assertions (backoff windows, retry waits) are alpaca-py's, measured on the server side.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
import threading
import time
from pathlib import Path

import msgpack
import pytest
import requests
from websockets.sync.client import connect as ws_connect

sys.path.insert(0, str(Path(__file__).parent))
from alpaca_server import AlpacaServer  # noqa: E402

from alpaca.common.exceptions import APIError  # noqa: E402
from alpaca.data.enums import Adjustment, DataFeed  # noqa: E402
from alpaca.data.historical import StockHistoricalDataClient  # noqa: E402
from alpaca.data.live import StockDataStream  # noqa: E402
from alpaca.data.requests import StockBarsRequest  # noqa: E402
from alpaca.data.timeframe import TimeFrame, TimeFrameUnit  # noqa: E402
from alpaca.trading.client import TradingClient  # noqa: E402
from alpaca.trading.requests import GetCalendarRequest  # noqa: E402

UTC = dt.timezone.utc
T0 = dt.datetime(2024, 1, 2, 14, 30, tzinfo=UTC)
ALPACA_LOG = "alpaca.data.live.websocket"


@pytest.fixture
def server():
    with AlpacaServer() as s:
        yield s
        assert s.errors == [], "\n".join(s.errors)


@pytest.fixture
def log(caplog):
    caplog.set_level(logging.INFO, logger=ALPACA_LOG)
    return caplog


def bar(sym, minute=0, close=100.0, **kw):
    return {"S": sym, "t": T0 + dt.timedelta(minutes=minute), "o": close - 1, "h": close + 1,
            "l": close - 2, "c": close, "v": 1000 + minute, "n": 10, "vw": close - 0.5, **kw}


class Stream:
    """A real StockDataStream running in its own thread, collecting what its handlers get."""

    def __init__(self, server, symbols=("AAPL", "MSFT"), key=None, secret=None, **kw):
        self.server = server
        self.bars, self.updated = [], []
        self.stream = StockDataStream(key or server.key, secret or server.secret,
                                      feed=DataFeed.IEX, url_override=server.ws_url, **kw)
        self.stream.subscribe_bars(self.on_bar, *symbols)
        self.thread = threading.Thread(target=self.stream.run, daemon=True)
        self.thread.start()

    async def on_bar(self, b):
        self.bars.append(b)

    async def on_updated(self, b):
        self.updated.append(b)

    def stop(self):
        # stream.stop() only queues a stop request, which _consume() sees after its
        # recv() returns (it waits up to 5 s); closing from the server side ends it now.
        self.server.wait_until(lambda: self.stream._loop is not None)
        self.stream.stop()
        self.server.drop_connections(abrupt=False)
        self.thread.join(10)
        assert not self.thread.is_alive()


def wait_subscribed(server, n_conn=1, channel="bars"):
    """Wait until the n-th connection is open and has a non-empty ``channel`` subscription."""
    def ok():
        conns = server.connections()
        return len(conns) >= n_conn and conns[n_conn - 1].is_open and \
            conns[n_conn - 1].subscribed().get(channel)
    return server.wait_until(ok)


def logged(caplog, text):
    return [r for r in caplog.records if r.name == ALPACA_LOG and text in r.getMessage()]


# ------------------------------------------------------------------ market-data stream


def test_subscribe_and_receive_bars(server):
    s = Stream(server)
    try:
        wait_subscribed(server)
        conn = server.connections()[0]
        assert conn.path == "/v2/iex" and conn.encoding == "msgpack"
        assert conn.headers["Content-Type"] == "application/msgpack"
        auth, sub = [m.msg for m in server.client_messages()]
        assert auth == {"action": "auth", "key": server.key, "secret": server.secret}
        assert sub == {"action": "subscribe", "bars": ["AAPL", "MSFT"]}
        assert server.subscriptions() == {1: {"bars": ["AAPL", "MSFT"]}}

        # only subscribed symbols are delivered; one frame carries both bars
        assert server.push_bars([bar("AAPL", 0, 101.0), bar("TSLA", 0), bar("MSFT", 0, 51.0)]) == 2
        server.wait_until(lambda: len(s.bars) == 2)
        a, m = sorted(s.bars, key=lambda b: b.symbol)
        assert (a.symbol, a.close, a.open, a.high, a.low, a.volume, a.trade_count, a.vwap) == \
            ("AAPL", 101.0, 100.0, 102.0, 99.0, 1000, 10, 100.5)
        assert a.timestamp == T0 and a.timestamp.tzinfo is not None
        assert m.symbol == "MSFT" and m.close == 51.0

        # subscribing while running (from another thread) re-sends EVERY symbol so far
        s.stream.subscribe_bars(s.on_bar, "NVDA")
        s.stream.subscribe_updated_bars(s.on_updated, "AAPL")
        server.wait_until(lambda: len(server.client_messages("subscribe")) == 3)
        subs = [m.msg for m in server.client_messages("subscribe")]
        assert subs[1] == {"action": "subscribe", "bars": ["AAPL", "MSFT", "NVDA"]}
        assert subs[2] == {"action": "subscribe", "bars": ["AAPL", "MSFT", "NVDA"],
                           "updatedBars": ["AAPL"]}
        server.wait_until(lambda: server.subscriptions()[1].get("updatedBars") == ["AAPL"])

        assert server.push_bars([bar("AAPL", 0, 101.5)], kind="u") == 1
        server.push_bars([bar("NVDA", 1, 7.0)])
        server.wait_until(lambda: s.updated and len(s.bars) == 3)
        assert s.updated[0].close == 101.5 and s.bars[-1].symbol == "NVDA"
        # the "subscription" reply lists all of Alpaca's channels
        reply = [f.msgs[0] for f in server.sent_frames() if f.msgs[0].get("T") == "subscription"][-1]
        assert reply["bars"] == ["AAPL", "MSFT", "NVDA"] and reply["trades"] == []
        assert server.connection_count == 1
    finally:
        s.stop()


def test_wrong_credentials_402_logged_and_retried(server, log):
    s = Stream(server, secret="wrong")
    try:
        server.wait_until(lambda: len(server.events_of("auth_failed")) >= 2, timeout=4)
        assert [e[2:] for e in server.sent_errors()][:2] == [(402, "auth failed")] * 2
        assert logged(log, "error during websocket communication: auth failed")
        opened = [c.opened_at for c in server.connections()]
        assert 0.4 <= opened[1] - opened[0] <= 1.5  # reconnect_delay(1): 0.5-1.0 s
        assert all(not c.authenticated for c in server.connections())
    finally:
        s.stop()


def test_fail_auth_once_then_recovers(server, log):
    server.fail_auth(1)
    s = Stream(server)
    try:
        wait_subscribed(server, n_conn=2)
        c1, c2 = server.connections()
        assert not c1.authenticated and c1.closed_at is not None and c2.authenticated
        assert server.sent_errors()[0][1:] == (1, 402, "auth failed")
        assert logged(log, "auth failed")
    finally:
        s.stop()


def test_406_connection_limit_backoff(server, log):
    server.reject_connections(2)
    s = Stream(server)
    try:
        wait_subscribed(server, n_conn=3)
        assert [e[2] for e in server.sent_errors()] == [406, 406]
        assert len(logged(log, "connection limit exceeded")) == 2
        o = [c.opened_at for c in server.connections()]
        assert 0.4 <= o[1] - o[0] <= 1.5   # retries=1 -> 0.5-1 s
        assert 0.9 <= o[2] - o[1] <= 2.5   # retries=2 -> 1-2 s
    finally:
        s.stop()


def test_natural_connection_limit(log):
    with AlpacaServer(connection_limit=1) as server:
        s1 = Stream(server)
        wait_subscribed(server)
        s2 = Stream(server)
        try:
            server.wait_until(lambda: server.events_of("rejected"))
            assert server.sent_errors()[0][1:] == (2, 406, "connection limit exceeded")
        finally:
            s2.stop()
            s1.stop()


@pytest.mark.parametrize("code,msg", [(405, "symbol limit exceeded"), (429, "rate limit exceeded")])
def test_subscribe_error_is_only_logged(server, log, code, msg):
    server.fail_subscribe(code)
    s = Stream(server)
    try:
        server.wait_until(lambda: server.sent_errors())
        server.wait_until(lambda: logged(log, f"error: {msg} ({code})"))
        # alpaca-py neither retries nor reconnects: it sits on a connection with no
        # subscriptions, so nothing is delivered
        assert server.subscriptions() == {1: {}}
        assert server.push_bars([bar("AAPL")]) == 0
        # the next subscribe call re-sends everything and recovers (same connection)
        s.stream.subscribe_bars(s.on_bar, "NVDA")
        server.wait_until(lambda: server.subscriptions()[1].get("bars") == ["AAPL", "MSFT", "NVDA"])
        assert server.push_bars([bar("AAPL")]) == 1
        server.wait_until(lambda: s.bars)
        assert server.connection_count == 1
    finally:
        s.stop()


def test_symbol_limit_405(log):
    with AlpacaServer(symbol_limit=2) as server:
        s = Stream(server, symbols=("AAPL", "MSFT", "NVDA"))
        try:
            server.wait_until(lambda: server.sent_errors())
            assert server.sent_errors()[0][2:] == (405, "symbol limit exceeded")
        finally:
            s.stop()


def test_drop_reconnects_and_resubscribes(server, log):
    s = Stream(server)
    try:
        wait_subscribed(server)
        server.push_bars([bar("AAPL")])
        server.wait_until(lambda: s.bars)
        assert server.drop_connections(abrupt=True) == 1
        t_drop = server.events_of("dropped")[0][0]
        wait_subscribed(server, n_conn=2)
        c2 = server.connections()[1]
        assert 0.4 <= c2.opened_at - t_drop <= 1.5  # data was received -> retries reset -> 0.5-1 s
        assert [m.msg for m in server.client_messages(conn_id=2)] == [
            {"action": "auth", "key": server.key, "secret": server.secret},
            {"action": "subscribe", "bars": ["AAPL", "MSFT"]},
        ]
        assert logged(log, "data websocket error, restarting connection")
        server.push_bars([bar("MSFT", 1)])
        server.wait_until(lambda: len(s.bars) == 2)
    finally:
        s.stop()


def test_drop_after_k_frames(server):
    # greeting, "authenticated", "subscription" -> dropped right after the subscription ack
    server.drop_after(3, counting="sent")
    s = Stream(server)
    try:
        wait_subscribed(server, n_conn=2)
        c1 = server.connections()[0]
        assert c1.closed_at is not None
        assert [e[2] for e in server.events if e[1] == 1][-2:] == ["dropped", "closed"]
        assert server.client_messages("subscribe", conn_id=2)[0].msg["bars"] == ["AAPL", "MSFT"]
    finally:
        s.stop()


def test_silent_server_and_data_timeout(server, log):
    s = Stream(server, data_timeout=1.0)
    try:
        wait_subscribed(server)
        server.set_silent(True)
        server.push_bars([bar("AAPL")])
        assert server.sent_frames()[-1].suppressed
        # alpaca-py's opt-in data_timeout notices the mute socket and reconnects...
        server.wait_until(lambda: server.connection_count == 2, timeout=4)
        assert logged(log, "no data received on data stream for 1.0s, reconnecting")
        # ...but _connect() waits for the greeting without a timeout: against a server that
        # accepts and never greets it hangs there (no auth is ever sent)
        time.sleep(0.3)
        assert server.client_messages(conn_id=2) == []
        assert not s.bars
    finally:
        s.stop()


def test_malformed_frames_are_logged_and_skipped(server, log):
    s = Stream(server)
    try:
        wait_subscribed(server)
        server.send_raw(b"\xc1")                                   # not msgpack
        server.send_messages([{"T": "b", "S": "AAPL", "t": "2024-01-02T14:30:00Z",  # string t
                               "o": 1.0, "h": 1.0, "l": 1.0, "c": 1.0, "v": 1}])
        server.wait_until(lambda: len(logged(log, "error during websocket communication")) == 2)
        server.push_bars([bar("AAPL")])
        server.wait_until(lambda: s.bars)
        assert len(s.bars) == 1 and server.connection_count == 1  # no reconnect
    finally:
        s.stop()


def test_protocol_errors_raw_client(server):
    """400/401/403 can't be provoked through alpaca-py; check them with a bare client."""
    with ws_connect(server.ws_url, additional_headers={"Content-Type": "application/msgpack"}) as ws:
        recv = lambda: msgpack.unpackb(ws.recv(timeout=2))  # noqa: E731
        assert recv() == [{"T": "success", "msg": "connected"}]
        ws.send(msgpack.packb({"action": "subscribe", "bars": ["AAPL"]}))
        assert recv() == [{"T": "error", "code": 401, "msg": "not authenticated"}]
        ws.send(msgpack.packb({"action": "auth", "key": server.key, "secret": server.secret}))
        assert recv() == [{"T": "success", "msg": "authenticated"}]
        ws.send(msgpack.packb({"action": "auth", "key": server.key, "secret": server.secret}))
        assert recv()[0]["code"] == 403
        ws.send(b"\xc1")
        assert recv() == [{"T": "error", "code": 400, "msg": "invalid syntax"}]
        ws.send(msgpack.packb({"action": "subscribe", "bars": ["AAPL"]}))
        assert recv()[0]["bars"] == ["AAPL"]
        server.push_bars([bar("AAPL")])
        (b,) = recv()
        assert b["T"] == "b" and isinstance(b["t"], msgpack.Timestamp)
        assert b["t"].to_datetime() == T0
    # JSON clients (no msgpack Content-Type) get JSON with RFC 3339 times
    with ws_connect(server.ws_url) as ws:
        assert ws.recv(timeout=2) == '[{"T":"success","msg":"connected"}]'


# ------------------------------------------------------------------ historical REST


def history(symbols, n, start=T0):
    return [bar(sym, i, 100.0 + i) | {"t": start + dt.timedelta(minutes=i)}
            for sym in symbols for i in range(n)]


def test_historical_bars_paging_several_symbols(server):
    server.max_page_size = 25
    server.load_history(history(["AAPL", "MSFT", "NVDA"], 40))
    client = StockHistoricalDataClient(server.key, server.secret, url_override=server.rest_url)
    req = StockBarsRequest(symbol_or_symbols=["NVDA", "AAPL", "MSFT"], timeframe=TimeFrame.Minute,
                           start=T0 + dt.timedelta(minutes=5), end=T0 + dt.timedelta(minutes=34),
                           feed=DataFeed.IEX, adjustment=Adjustment.RAW)
    res = client.get_stock_bars(req)
    assert {k: len(v) for k, v in res.data.items()} == {"AAPL": 30, "MSFT": 30, "NVDA": 30}
    assert [b.timestamp for b in res["MSFT"]] == [T0 + dt.timedelta(minutes=i) for i in range(5, 35)]
    assert res["NVDA"][0].close == 105.0 and res["NVDA"][0].volume == 1005

    reqs = server.requests("/v2/stocks/bars")
    assert len(reqs) == 4  # 90 bars / 25 per page
    first = reqs[0].query
    assert first == {"symbols": "NVDA,AAPL,MSFT", "timeframe": "1Min", "limit": "10000",
                     "start": "2024-01-02T14:35:00+00:00", "end": "2024-01-02T15:04:00+00:00",
                     "feed": "iex", "adjustment": "raw"}
    assert "page_token" not in first
    for prev, cur in zip(reqs, reqs[1:]):
        assert cur.query["page_token"] == prev.response["next_page_token"]
        assert {k: v for k, v in cur.query.items() if k != "page_token"} == first
    assert reqs[-1].response["next_page_token"] is None
    # pages are ordered by symbol then time; a page may span symbols
    assert list(reqs[1].response["bars"]) == ["AAPL", "MSFT"]
    assert reqs[0].response["bars"]["AAPL"][0] == {
        "t": "2024-01-02T14:35:00Z", "o": 104.0, "h": 106.0, "l": 103.0, "c": 105.0,
        "v": 1005, "n": 10, "vw": 104.5}

    # a user limit caps the total; alpaca-py lowers `limit` on later pages
    res = client.get_stock_bars(req.model_copy(update={"limit": 40}))
    assert sum(len(v) for v in res.data.values()) == 40
    assert [r.query["limit"] for r in server.requests("/v2/stocks/bars")[4:]] == ["40", "15"]
    assert len(res.df) == 40

    # load_history takes alpaca-py's own DataFrame shape (MultiIndex symbol, timestamp)
    assert server.load_history(res.df, timeframe="5Min") == 40
    again = client.get_stock_bars(req.model_copy(update={"timeframe": TimeFrame(5, TimeFrameUnit.Minute),
                                                         "limit": None}))
    assert again.data == res.data


def test_historical_default_page_size_and_desc(server):
    server.load_history(history(["AAPL", "MSFT"], 6000))
    client = StockHistoricalDataClient(server.key, server.secret, url_override=server.rest_url)
    res = client.get_stock_bars(StockBarsRequest(
        symbol_or_symbols=["AAPL", "MSFT"], timeframe=TimeFrame.Minute, start=T0,
        end=T0 + dt.timedelta(days=10)))
    assert len(res["AAPL"]) == len(res["MSFT"]) == 6000
    assert [len(sum(r.response["bars"].values(), [])) for r in server.requests()] == [10000, 2000]
    # Alpaca's own default limit is 1000; sort=desc pages backwards
    q = {"symbols": "AAPL", "timeframe": "1T", "start": "2024-01-02", "sort": "desc"}
    h = {"APCA-API-KEY-ID": server.key, "APCA-API-SECRET-KEY": server.secret}
    r1 = requests.get(f"{server.rest_url}/v2/stocks/bars", params=q, headers=h, timeout=5).json()
    assert len(r1["bars"]["AAPL"]) == 1000 and r1["bars"]["AAPL"][0]["c"] == 100.0 + 5999
    r2 = requests.get(f"{server.rest_url}/v2/stocks/bars", headers=h, timeout=5,
                      params=q | {"page_token": r1["next_page_token"]}).json()
    assert r2["bars"]["AAPL"][0]["c"] == 100.0 + 4999


def test_historical_429_is_retried_after_3s(server):
    server.load_history(history(["AAPL"], 3))
    server.fail_requests(1, status=429)
    client = StockHistoricalDataClient(server.key, server.secret, url_override=server.rest_url)
    res = client.get_stock_bars(StockBarsRequest(symbol_or_symbols="AAPL",
                                                 timeframe=TimeFrame.Minute, start=T0))
    assert len(res["AAPL"]) == 3
    r1, r2 = server.requests()
    assert (r1.status, r2.status) == (429, 200)
    assert 2.9 <= r2.t - r1.t <= 3.6   # DEFAULT_RETRY_WAIT_SECONDS = 3, not configurable here

    # up to 3 retries (4 requests), then APIError; shorten the private wait to stay fast
    client._retry_wait = 0
    server.fail_requests(4, status=429)
    with pytest.raises(APIError) as e:
        client.get_stock_bars(StockBarsRequest(symbol_or_symbols="AAPL",
                                               timeframe=TimeFrame.Minute, start=T0))
    assert e.value.status_code == 429
    assert [r.status for r in server.requests()[2:]] == [429] * 4


def test_historical_auth_errors(server):
    url = f"{server.rest_url}/v2/stocks/bars"
    r = requests.get(url, params={"symbols": "AAPL", "timeframe": "1Min"}, timeout=5)
    assert r.status_code == 401
    bad = StockHistoricalDataClient(server.key, "wrong", url_override=server.rest_url)
    with pytest.raises(APIError) as e:
        bad.get_stock_bars(StockBarsRequest(symbol_or_symbols="AAPL", timeframe=TimeFrame.Minute))
    assert e.value.status_code == 403
    assert [r.status for r in server.requests()] == [401, 403]  # no retry


# ------------------------------------------------------------------ trading REST


def test_trading_account_clock_calendar(server):
    server.set_now(dt.datetime(2024, 7, 3, 16, 0, tzinfo=UTC))  # 12:00 ET, early-close day
    tc = TradingClient(server.key, server.secret, paper=True, url_override=server.trading_url)
    acct = tc.get_account()
    assert acct.status.value == "ACTIVE" and acct.currency == "USD" and float(acct.cash) == 100000
    server.update_account(cash="123.45")
    assert tc.get_account().cash == "123.45"

    clock = tc.get_clock()
    assert clock.is_open is True
    assert clock.next_close == dt.datetime(2024, 7, 3, 17, 0, tzinfo=UTC)   # 13:00 ET
    assert clock.next_open == dt.datetime(2024, 7, 5, 13, 30, tzinfo=UTC)   # July 4 closed
    server.set_now(dt.datetime(2024, 7, 5, 21, 0, tzinfo=UTC))              # Friday 17:00 ET
    clock = tc.get_clock()
    assert not clock.is_open and clock.next_open == dt.datetime(2024, 7, 8, 13, 30, tzinfo=UTC)

    cal = tc.get_calendar(GetCalendarRequest(start=dt.date(2024, 7, 1), end=dt.date(2024, 7, 8)))
    assert [c.date.isoformat() for c in cal] == ["2024-07-01", "2024-07-02", "2024-07-03",
                                                 "2024-07-05", "2024-07-08"]
    assert cal[2].close == dt.datetime(2024, 7, 3, 13, 0) and cal[0].open == dt.datetime(2024, 7, 1, 9, 30)
    assert server.requests("/v2/calendar")[0].query == {"start": "2024-07-01", "end": "2024-07-08"}

    with pytest.raises(APIError) as e:
        TradingClient(server.key, "wrong", paper=True, url_override=server.trading_url).get_clock()
    assert e.value.status_code == 401 and e.value.code == 40110000
    with pytest.raises(APIError) as e:  # not served yet (extension point)
        tc.get_orders()
    assert e.value.status_code == 404


# ------------------------------------------------------------------ lifecycle


def test_stop_is_idempotent_and_leaks_no_threads():
    before = set(threading.enumerate())
    server = AlpacaServer().start()
    with ws_connect(server.ws_url, ping_interval=None) as ws:
        ws.recv(timeout=2)
        server.stop()
        assert not [t for t in threading.enumerate() if t.name.startswith("alpaca-server")]
        server.stop()
    assert set(threading.enumerate()) <= before
    with pytest.raises(RuntimeError):
        server.push_bars([bar("AAPL")])
