"""The broker sink against the local Alpaca server with the real
TradingClient: each intent of the live portfolio becomes the right broker
call, replays are adopted, refusals come back as `submit_failed` updates,
and every call is recorded with its latency."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from alpaca.trading.client import TradingClient

from connectors.alpaca.broker import AlpacaBroker
from connectors.alpaca.broker_sink import BrokerExecution, ProtectOnFill
from operators.types import BUY, SELL, Order, TradeUpdate

sys.path.insert(0, str(Path(__file__).parent))
from alpaca_server import AlpacaServer  # noqa: E402

ENTRY_ID = "sma_5_15.AAPL.1704207300.entry"


@pytest.fixture
def server():
    with AlpacaServer(trading=True) as srv:
        srv.set_price("AAPL", 100.0)
        yield srv
        assert srv.errors == [], "\n".join(srv.errors)


class Harness:
    def __init__(self, server):
        client = TradingClient(server.key, server.secret, paper=True, url_override=server.trading_url)
        client._retry_wait = 0
        self.broker = AlpacaBroker(client, "run1")
        self.published, self.records = [], []
        self.now = 1704207360.5
        self.execution = BrokerExecution(self.broker, self.published.append, self.records.append,
                                         backoff_s=0, clock=lambda: self.now, sleep=lambda s: None)

    def run(self, order):
        return self.execution.execute(order)


def order(intent="entry", side=BUY, order_id=ENTRY_ID, **kw):
    return Order(order_id, "sma_5_15", "AAPL", side, 10, 1704207300, 100.0, intent, **kw)


def protect(stop=99.0, target=102.0):
    return order("protect", SELL, f"{ENTRY_ID}.oco", stop_price=stop, target_price=target, parent_id=ENTRY_ID)


def test_an_entry_is_a_market_order_recorded_with_its_latency(server):
    h = Harness(server)
    rec = h.run(order())
    assert rec.client_order_id == f"run1.{ENTRY_ID}" and rec.broker_order_id and not rec.adopted
    assert rec.decision_lag_ms == pytest.approx(500.0)  # bar close (ts + 60) -> the sink
    assert len(server.order_posts(rec.client_order_id)) == 1 and h.records == [rec]


def test_a_replayed_order_is_adopted_not_placed_again(server):
    h = Harness(server)
    first = h.run(order())
    again = h.run(order())
    assert again.adopted and again.broker_order_id == first.broker_order_id
    assert len([o for o in server.orders() if o["client_order_id"] == first.client_order_id]) == 1


def test_a_refusal_comes_back_as_submit_failed_for_the_circuit_breaker(server):
    h = Harness(server)
    server.reject_next_orders(1, status=403)
    rec = h.run(order())
    assert rec.status == "failed" and "403" in rec.detail
    (u,) = h.published
    assert (u.order_id, u.event, u.symbol) == (ENTRY_ID, "submit_failed", "AAPL")


def test_a_broker_that_stays_unavailable_is_a_failure_after_the_retries(server):
    h = Harness(server)
    server.reject_next_orders(40, status=503)
    rec = h.run(order())
    assert rec.status == "failed" and [u.event for u in h.published] == ["submit_failed"]


def test_protection_then_trailing_moves_the_stop_leg_only_up(server):
    h = Harness(server)
    h.run(order())
    server.fill(f"run1.{ENTRY_ID}", price=100.0)
    rec = h.run(protect())
    oco = server.order(rec.broker_order_id)
    assert float(oco["legs"][0]["stop_price"]) == 99.0 and float(oco["limit_price"]) == 102.0
    moved = h.run(order("trail", SELL, f"{ENTRY_ID}.oco", stop_price=99.504, parent_id=ENTRY_ID))
    assert moved.status not in ("failed", "skipped")
    stops = [o for o in server.orders(status="open") if o["type"] == "stop"]
    assert [float(o["stop_price"]) for o in stops] == [99.51]
    lower = h.run(order("trail", SELL, f"{ENTRY_ID}.oco", stop_price=99.2, parent_id=ENTRY_ID))
    assert lower.status == "skipped"  # a replayed, older raise never lowers the stop
    assert [float(o["stop_price"]) for o in server.orders(status="open") if o["type"] == "stop"] == [99.51]


def test_a_signal_exit_cancels_the_oco_then_sells_at_market(server):
    h = Harness(server)
    h.run(order())
    server.fill(f"run1.{ENTRY_ID}", price=100.0)
    h.run(protect())
    exit_id = "sma_5_15.AAPL.1704210000.exit"
    rec = h.run(order("signal", SELL, exit_id, parent_id=ENTRY_ID))
    assert rec.status not in ("failed", "skipped")
    assert not [o for o in server.orders(status="open") if o["type"] != "market"]
    server.fill(f"run1.{exit_id}", price=100.5)
    assert not server.positions()


def test_an_exit_is_skipped_when_the_oco_already_filled(server):
    h = Harness(server)
    h.run(order())
    server.fill(f"run1.{ENTRY_ID}", price=100.0)
    h.run(protect())
    server.fill_on_bar({"S": "AAPL", "o": 100.0, "h": 100.1, "l": 98.0, "c": 98.5, "v": 1})
    rec = h.run(order("time_stop", SELL, "sma_5_15.AAPL.1704210000.exit", parent_id=ENTRY_ID))
    assert rec.status == "skipped"
    assert not server.positions() and not server.order_posts(f"run1.sma_5_15.AAPL.1704210000.exit")


def test_an_entry_filled_in_one_piece_is_protected_at_once(server):
    h = Harness(server)
    h.run(order())
    server.fill(f"run1.{ENTRY_ID}", price=100.0)
    ProtectOnFill(h.broker, 0.01, 0.02)(TradeUpdate(ENTRY_ID, "fill", "AAPL", BUY, 1704207361,
                                                     filled_qty=10, fill_qty=10, fill_price=100.0))
    (oco,) = [o for o in server.orders(status="open") if o["order_class"] == "oco" and o["legs"]]
    assert oco["client_order_id"] == f"run1.{ENTRY_ID}.oco"
    assert float(oco["limit_price"]) == 102.0 and float(oco["legs"][0]["stop_price"]) == 99.0
    again = h.run(protect())  # the portfolio asks for the same OCO: adopted
    assert again.adopted


def test_cancel_asks_the_broker_to_cancel_an_open_entry(server):
    h = Harness(server)
    h.run(order())
    rec = h.run(order("cancel"))
    assert rec.status == "pending_cancel"
    assert server.order(f"run1.{ENTRY_ID}")["status"] == "canceled"


def test_an_entry_decided_on_old_bars_never_reaches_the_broker(server):
    h = Harness(server)
    h.now = 1704207300 + 60 + 3600  # its bar closed an hour ago (a replay of history)
    rec = h.run(order())
    assert rec.status == "skipped" and "stale" in rec.detail and not server.order_posts()
    (u,) = h.published
    assert (u.order_id, u.event) == (ENTRY_ID, "expired")


def test_an_exit_after_a_partly_filled_oco_sells_only_the_rest(server):
    h = Harness(server)
    h.run(order())
    server.fill(f"run1.{ENTRY_ID}", price=100.0)
    rec = h.run(protect())
    server.fill(rec.broker_order_id, qty=4, price=102.0)  # the take-profit limit fills 4 of 10
    exit_id = "sma_5_15.AAPL.1704210000.exit"
    h.run(order("signal", SELL, exit_id, parent_id=ENTRY_ID))
    (post,) = server.order_posts(f"run1.{exit_id}")
    assert float(post.body["qty"]) == 6


def test_an_invalid_request_with_alpacas_generic_code_is_a_rejection_not_adopted(server):
    from connectors.alpaca.broker import BrokerRejected
    h = Harness(server)
    server.reject_next_orders(1, status=422, body={"code": 40010001, "message": "asset is not active"})
    with pytest.raises(BrokerRejected):
        h.broker.submit_order(order())


def test_an_order_the_broker_took_before_it_stopped_answering_is_adopted_not_failed(server):
    h = Harness(server)
    server.reject_next_orders(1, status=503, accept=True)  # taken, then 503
    server.reject_next_orders(40, status=503)  # and every retry 503 too
    rec = h.run(order())
    assert rec.adopted and rec.broker_order_id and h.published == []
