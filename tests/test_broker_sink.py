"""The broker sink against the local Alpaca server with the real
TradingClient: each intent of the live portfolio becomes the right broker
call, replays are adopted, refusals come back as `submit_failed` updates,
and every request leaves its history rows (decided, sent, and its outcome)
with the decision's age by the broker's clock."""
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
        self.execution = BrokerExecution(self.broker, self.published.append, self.records.extend,
                                         backoff_s=0, clock=lambda: self.now, broker_clock=lambda: self.now,
                                         sleep=lambda s: None)

    def run(self, order):
        return self.execution.execute(order)


def order(intent="entry", side=BUY, order_id=ENTRY_ID, **kw):
    return Order(order_id, "sma_5_15", "AAPL", side, 10, 1704207300, 100.0, intent, **kw)


def protect(stop=99.0, target=102.0):
    return order("protect", SELL, f"{ENTRY_ID}.oco", stop_price=stop, target_price=target, parent_id=ENTRY_ID)


def test_an_entry_is_a_market_order_recorded_with_its_latency(server):
    h = Harness(server)
    rec = h.run(order())
    assert rec.client_order_id == f"run1.{ENTRY_ID}" and rec.broker_order_id and rec.event == "accepted"
    assert rec.decision_lag_ms == pytest.approx(500.0)  # bar close (ts + 60) -> the sink
    assert len(server.order_posts(rec.client_order_id)) == 1
    assert [(r.event, r.clock, r.at) for r in h.records] == [
        ("decided", "bar", (1704207300 + 60) * 1000), ("sent", "broker", 1704207360500),
        ("accepted", "broker", 1704207360500)]
    assert h.records[-1] is rec and rec.status == server.order(rec.broker_order_id)["status"]


def test_a_replayed_order_is_adopted_not_placed_again(server):
    h = Harness(server)
    first = h.run(order())
    again = h.run(order())
    assert again.event == "adopted" and again.broker_order_id == first.broker_order_id
    assert len([o for o in server.orders() if o["client_order_id"] == first.client_order_id]) == 1


def test_a_refusal_comes_back_as_submit_failed_for_the_circuit_breaker(server):
    h = Harness(server)
    server.reject_next_orders(1, status=403)
    rec = h.run(order())
    assert rec.event == "refused" and "403" in rec.detail
    (u,) = h.published
    assert (u.order_id, u.event, u.symbol) == (ENTRY_ID, "submit_failed", "AAPL")


def test_a_broker_that_stays_unavailable_is_a_failure_after_the_retries(server):
    h = Harness(server)
    server.reject_next_orders(40, status=503)
    rec = h.run(order())
    assert rec.event == "refused" and [u.event for u in h.published] == ["submit_failed"]
    assert [r.event for r in h.records] == ["decided", "sent", "refused"]  # sent once, whatever the retries


def test_protection_then_trailing_moves_the_stop_leg_only_up(server):
    h = Harness(server)
    h.run(order())
    server.fill(f"run1.{ENTRY_ID}", price=100.0)
    rec = h.run(protect())
    oco = server.order(rec.broker_order_id)
    assert float(oco["legs"][0]["stop_price"]) == 99.0 and float(oco["limit_price"]) == 102.0
    moved = h.run(order("trail", SELL, f"{ENTRY_ID}.oco", stop_price=99.504, parent_id=ENTRY_ID))
    assert moved.event == "accepted" and moved.client_order_id == f"run1.{ENTRY_ID}.oco"
    stops = [o for o in server.orders(status="open") if o["type"] == "stop"]
    assert [float(o["stop_price"]) for o in stops] == [99.51]
    posts = len(server.trading_requests())
    lower = h.run(order("trail", SELL, f"{ENTRY_ID}.oco", stop_price=99.2, parent_id=ENTRY_ID))
    # a replayed, older raise never lowers the stop: the broker's is already higher
    assert lower.event == "adopted" and "only ever up" in lower.detail
    assert not [r for r in server.trading_requests()[posts:] if r.method == "PATCH"]
    assert [float(o["stop_price"]) for o in server.orders(status="open") if o["type"] == "stop"] == [99.51]


def test_a_signal_exit_cancels_the_oco_then_sells_at_market(server):
    h = Harness(server)
    h.run(order())
    server.fill(f"run1.{ENTRY_ID}", price=100.0)
    h.run(protect())
    exit_id = "sma_5_15.AAPL.1704210000.exit"
    rec = h.run(order("signal", SELL, exit_id, parent_id=ENTRY_ID))
    assert rec.event == "accepted"
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
    assert rec.event == "skipped" and [r.event for r in h.records[-2:]] == ["decided", "skipped"]
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
    assert again.event == "adopted" and again.broker_order_id == oco["id"]


def test_cancel_asks_the_broker_to_cancel_an_open_entry(server):
    h = Harness(server)
    h.run(order())
    rec = h.run(order("cancel"))
    assert rec.event == "accepted" and rec.status == "pending_cancel"
    assert server.order(f"run1.{ENTRY_ID}")["status"] == "canceled"
    again = h.run(order("cancel"))  # replayed: nothing left to cancel, the broker holds the outcome
    assert again.event == "adopted" and again.status == "canceled" and again.broker_order_id == rec.broker_order_id


def test_an_entry_decided_on_old_bars_never_reaches_the_broker(server):
    h = Harness(server)
    h.now = 1704207300 + 60 + 3600  # its bar closed an hour ago (a replay of history)
    rec = h.run(order())
    assert rec.event == "skipped" and "stale" in rec.detail and not server.order_posts()
    assert rec.decision_lag_ms == pytest.approx(3_600_000)  # by the broker's clock
    (u,) = h.published
    assert (u.order_id, u.event) == (ENTRY_ID, "expired")


def test_a_replayed_stale_entry_the_broker_holds_is_adopted_never_skipped(server):
    h = Harness(server)
    placed = h.run(order())
    server.fill(f"run1.{ENTRY_ID}", price=100.0)
    h.now += 660  # restarted 11 minutes later: the replay re-decides the entry
    posts = len(server.order_posts())
    rec = h.run(order())
    assert rec.event == "adopted" and rec.broker_order_id == placed.broker_order_id
    assert rec.status == "filled" and "replayed" in rec.detail
    assert h.published == [] and len(server.order_posts()) == posts  # nothing sent, nothing expired
    assert "skipped" not in [r.event for r in h.records]


def test_whether_the_broker_holds_a_stale_entry_comes_from_the_start_up_listing(server):
    h = Harness(server)
    placed = h.run(order())
    known = {placed.client_order_id: (placed.broker_order_id, "filled")}
    ex = BrokerExecution(h.broker, h.published.append, h.records.extend, backoff_s=0,
                         clock=lambda: h.now, broker_clock=lambda: h.now + 660, sleep=lambda s: None,
                         known_orders=known, known_since=1704207000)
    before = len(server.trading_requests())
    other = order(order_id="sma_5_15.AAPL.1704207240.entry")  # decided after the listing, never placed
    other.decided_ts = 1704207240
    assert ex.execute(other).event == "skipped"
    assert server.trading_requests()[before:] == []  # answered without asking the broker
    held = ex.execute(order())
    assert held.event == "adopted" and held.broker_order_id == placed.broker_order_id
    assert [r.method for r in server.trading_requests()[before:]] == ["GET"]  # its current status


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
    assert rec.event == "adopted" and rec.broker_order_id and h.published == []


def test_the_relays_protection_on_a_fill_leaves_its_history(server):
    from connectors.alpaca.broker_sink import RecordingBroker

    h = Harness(server)
    h.run(order())
    server.fill(f"run1.{ENTRY_ID}", price=100.0)
    rows = []
    broker = RecordingBroker(h.broker, rows.extend, broker_clock=lambda: 1704207361.25)
    fill = TradeUpdate(ENTRY_ID, "fill", "AAPL", BUY, 1704207361, filled_qty=10, fill_qty=10, fill_price=100.0)
    ProtectOnFill(broker, 0.01, 0.02)(fill)
    oco = server.order(f"run1.{ENTRY_ID}.oco")
    assert [(r.event, r.source, r.intent, r.clock, r.at, r.broker_order_id) for r in rows] == [
        ("sent", "relay", "protect", "broker", 1704207361250, ""),
        ("accepted", "relay", "protect", "broker", 1704207361250, oco["id"])]
    assert rows[0].client_order_id == f"run1.{ENTRY_ID}.oco" and rows[0].qty == 10 and rows[0].side == "sell"
    server.reject_next_orders(1, status=403)
    ProtectOnFill(broker, 0.01, 0.02)(fill)  # refused: recorded, and the flow asks again later
    assert [r.event for r in rows[2:]] == ["sent", "refused"] and "403" in rows[-1].detail


def test_a_stale_entry_the_broker_cannot_be_asked_about_is_skipped_saying_so(server):
    h = Harness(server)
    h.now += 3600
    server.fail_requests(100, status=503)  # the lookup by client order id fails too
    ex = BrokerExecution(h.broker, h.published.append, h.records.extend, backoff_s=0, clock=lambda: h.now,
                         broker_clock=lambda: h.now, sleep=lambda s: None, known_orders={},
                         known_since=1704207300 + 60)  # the decision is older than the listing
    rec = ex.execute(order())
    assert rec.event == "skipped" and "could not be asked" in rec.detail


def test_an_entry_is_protected_with_its_own_strategys_stop_and_target(server):
    """A panic entry's OCO at once from its own 0.75 % / 1.5 % (not the top level's 1 % / 2 %)."""
    from operators.config import TradingConfig

    config = TradingConfig.model_validate({"strategies": [
        {"fast": 5, "slow": 15, "confidence": 0.7}, {"type": "panic_rebound"}]})
    exits = {sid: (x.stop_loss_pct, x.take_profit_pct) for sid, x in config.strategy_exits().items()}
    panic_id = "panic_15_150.AAPL.1704207300.entry"
    h = Harness(server)
    h.run(Order(panic_id, "panic_15_150", "AAPL", BUY, 10, 1704207300, 100.0, "entry"))
    h.run(order())
    server.fill(f"run1.{panic_id}", price=100.0)
    server.fill(f"run1.{ENTRY_ID}", price=100.0)
    hook = ProtectOnFill(h.broker, config.exit.stop_loss_pct, config.exit.take_profit_pct, exits)
    for oid in (panic_id, ENTRY_ID):
        hook(TradeUpdate(oid, "fill", "AAPL", BUY, 1704207361, filled_qty=10, fill_qty=10, fill_price=100.0))
    ocos = {o["client_order_id"]: (float(o["legs"][0]["stop_price"]), float(o["limit_price"]))
            for o in server.orders(status="open") if o["order_class"] == "oco" and o["legs"]}
    assert ocos == {f"run1.{panic_id}.oco": (99.25, 101.5), f"run1.{ENTRY_ID}.oco": (99.0, 102.0)}
