"""Broker mapping: deterministic client order ids, Alpaca's tick sizes,
protective OCO prices rounded toward the entry, and the paper/live gate."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from alpaca.trading.enums import OrderClass, OrderSide, TimeInForce

from connectors.alpaca.broker import (
    MAX_CLIENT_ORDER_ID,
    client_order_id,
    protective_prices,
    tick_size,
    to_order_request,
    to_protection_request,
    to_stop_replace,
    to_tick,
)
from connectors.config import LiveTradingRefused, trading_mode
from operators.types import BUY, SELL, Order


def entry(**kw):
    base = dict(order_id="sma_5_15.AAPL.1704207300.entry", strategy_id="sma_5_15", symbol="AAPL",
                side=BUY, qty=10, decided_ts=1704207300, decision_price=185.5, intent="entry")
    base.update(kw)
    return Order(**base)


def test_client_order_id_is_run_strategy_symbol_bar_time_leg_and_deterministic():
    assert client_order_id("run1", "sma_5_15.AAPL.1704207300.entry") == "run1.sma_5_15.AAPL.1704207300.entry"
    assert client_order_id("run1", "sma_5_15.AAPL.1704207300.entry", "oco").endswith(".entry.oco")


def test_long_client_order_ids_are_hashed_within_alpacas_limit_and_stay_unique():
    a = client_order_id("r" * 120, "sma_5_15.AAPL.1.entry")
    b = client_order_id("r" * 120, "sma_5_15.AAPL.2.entry")
    assert len(a) <= MAX_CLIENT_ORDER_ID and len(b) <= MAX_CLIENT_ORDER_ID and a != b
    assert a == client_order_id("r" * 120, "sma_5_15.AAPL.1.entry")


def test_tick_size_is_a_cent_from_one_dollar_and_a_hundredth_of_a_cent_below():
    assert tick_size(1.0) == 0.01 and tick_size(185.5) == 0.01 and tick_size(0.9999) == 0.0001
    assert to_tick(185.5051, "up") == 185.51 and to_tick(185.5051, "down") == 185.5
    assert to_tick(0.123456, "up") == 0.1235 and to_tick(0.123456, "down") == 0.1234
    assert to_tick(12.34, "up") == 12.34 == to_tick(12.34, "down")  # already on the grid


def test_protective_prices_round_toward_the_entry():
    # fill 100.0123: stop 99.011..., target 102.0125...
    stop, target = protective_prices(100.0123 * 0.99, 100.0123 * 1.02)
    assert stop == 99.02 and target == 102.01


def test_entry_and_exits_are_day_market_orders_with_their_ids():
    req = to_order_request("run1", entry())
    assert (req.symbol, req.qty, req.side, req.time_in_force) == ("AAPL", 10, OrderSide.BUY, TimeInForce.DAY)
    assert req.client_order_id == "run1.sma_5_15.AAPL.1704207300.entry"
    sell = to_order_request("run1", entry(side=SELL, order_id="sma_5_15.AAPL.1704210000.exit", intent="signal"))
    assert sell.side == OrderSide.SELL


def test_protection_is_an_oco_with_take_profit_limit_and_stop():
    req = to_protection_request("run1", "sma_5_15.AAPL.1704207300.entry", "AAPL", 10, 99.011, 102.0125)
    assert req.order_class == OrderClass.OCO and req.time_in_force == TimeInForce.GTC
    assert req.take_profit.limit_price == 102.01 and req.stop_loss.stop_price == 99.02
    assert req.client_order_id.endswith(".entry.oco")
    assert to_stop_replace(99.503).stop_price == 99.51


@pytest.mark.parametrize("live,env,expected", [
    (False, None, "paper"), (False, "true", "paper"), (True, "false", "live"),
])
def test_paper_by_default_live_only_with_both_switches(monkeypatch, live, env, expected):
    if env is None:
        monkeypatch.delenv("ALPACA_PAPER", raising=False)
    else:
        monkeypatch.setenv("ALPACA_PAPER", env)
    assert trading_mode(live) == expected


@pytest.mark.parametrize("live,env", [(True, "true"), (True, None), (False, "false")])
def test_one_switch_alone_is_refused(monkeypatch, live, env):
    if env is None:
        monkeypatch.delenv("ALPACA_PAPER", raising=False)
    else:
        monkeypatch.setenv("ALPACA_PAPER", env)
    with pytest.raises(LiveTradingRefused):
        trading_mode(live)


# -- the submitting half, against the local Alpaca server with the real TradingClient --
from alpaca.trading.client import TradingClient  # noqa: E402

from connectors.alpaca.broker import AlpacaBroker, BrokerRejected, BrokerRetriable  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))  # the local Alpaca server lives beside the tests


@pytest.fixture
def server():
    from alpaca_server import AlpacaServer

    with AlpacaServer(trading=True) as srv:
        yield srv


def broker_for(server) -> AlpacaBroker:
    client = TradingClient(server.key, server.secret, paper=True, url_override=server.trading_url)
    client._retry_wait = 0  # alpaca-py sleeps 3 s between its own 429/504 retries
    return AlpacaBroker(client, "run1")


def test_submit_places_one_order_with_the_deterministic_client_order_id(server):
    placed = broker_for(server).submit_order(entry())
    assert not placed.adopted and placed.client_order_id == "run1.sma_5_15.AAPL.1704207300.entry"
    assert len(server.order_posts(placed.client_order_id)) == 1


def test_replayed_order_is_adopted_never_placed_twice(server):
    broker = broker_for(server)
    first = broker.submit_order(entry())
    again = broker.submit_order(entry())  # a replay after recovery
    assert again.adopted and again.order_id == first.order_id
    assert len([o for o in server.orders() if o["client_order_id"] == first.client_order_id]) == 1


def test_order_taken_behind_a_gateway_timeout_is_adopted(server):
    # the broker accepts the order but answers 504; alpaca-py retries, gets 422 duplicate
    server.reject_next_orders(1, status=504, accept=True)
    placed = broker_for(server).submit_order(entry())
    assert placed.adopted
    assert len([o for o in server.orders() if o["client_order_id"] == placed.client_order_id]) == 1


def test_insufficient_buying_power_is_a_typed_rejection(server):
    server.reject_next_orders(1, status=403)
    with pytest.raises(BrokerRejected) as err:
        broker_for(server).submit_order(entry())
    assert err.value.status == 403 and err.value.code == 40310000


def test_server_errors_are_retriable_not_rejections(server):
    server.reject_next_orders(4, status=429)
    with pytest.raises(BrokerRetriable):
        broker_for(server).submit_order(entry())
    server.reject_next_orders(1, status=503)
    with pytest.raises(BrokerRetriable):
        broker_for(server).submit_order(entry(order_id="sma_5_15.AAPL.1704207360.entry"))


def test_protection_oco_rests_at_the_broker_after_the_entry_fills(server):
    broker = broker_for(server)
    placed = broker.submit_order(entry())
    server.fill(placed.order_id, price=100.0123)
    oco = broker.submit(to_protection_request("run1", entry().order_id, "AAPL", 10,
                                              100.0123 * 0.99, 100.0123 * 1.02))
    assert oco.status in ("new", "accepted", "pending_new")
    server.fill_on_bar({"S": "AAPL", "t": "2024-01-02T14:40:00Z", "o": 100.0, "h": 100.2,
                        "l": 98.5, "c": 99.0, "v": 1000})
    parent = server.order(oco.order_id)
    stop_leg = parent["legs"][0]
    # low 98.50 <= stop 99.02: the stop leg fills at the stop, its take-profit sibling is canceled
    assert stop_leg["status"] == "filled" and float(stop_leg["filled_avg_price"]) == 99.02
    assert parent["status"] == "canceled"
    assert not server.positions()
