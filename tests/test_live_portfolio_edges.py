"""Edge cases of the live portfolio where money is at stake: what a refused
or partly filled order leaves behind, repeated broker messages, a new
trading day, the kill switch during a partial entry."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from operators.config import StrategyConfig, TradingConfig
from operators.live_portfolio import BrokerPortfolio, oco_entry
from operators.types import BUY, SELL, PortfolioOutput, Signal, TradeUpdate

T0 = int(datetime(2024, 3, 5, 14, 30, tzinfo=timezone.utc).timestamp())  # 09:30 New York
CFG = TradingConfig(strategies=[StrategyConfig(fast=2, slow=3, confidence=0.7)], execution={"slippage_bps": 0.0})
SID = "sma_2_3"


def buy(ts, symbol="AAA"):
    return [Signal(SID, symbol, BUY, ts, 100.0, 0.8, 0.02, 0.01, 2.0)]


def sell(ts, symbol="AAA"):
    return [Signal(SID, symbol, SELL, ts, 100.0, 0.8, 0.02, 0.01, 2.0)]


def bar(p, ts, out, signals=None, symbol="AAA", px=100.0):
    p.enter_minute(ts, out)
    p.apply(symbol, ts, px, px + 0.05, px - 0.05, px, signals, out)


def fill(order_id, ts, filled, qty, price=100.0, side=BUY, event="fill", leg=""):
    return TradeUpdate(order_id, event, "AAA", side, ts, leg=leg, filled_qty=filled, fill_qty=qty,
                       fill_price=price)


def entered(qty=100):
    p, out = BrokerPortfolio.new(CFG), PortfolioOutput()
    bar(p, T0, out, buy(T0))
    (entry,) = out.orders
    p.enter_minute(T0 + 60, out)
    p.apply_update(fill(entry.order_id, T0 + 61, qty, qty, event="fill" if qty == entry.qty else "partial_fill"), out)
    return p, entry, out


def test_oco_ids_name_their_entry_also_when_placed_again():
    assert oco_entry("s.BRK.B.1.entry.oco") == "s.BRK.B.1.entry"
    assert oco_entry("s.A.1.entry.oco.r1704207300") == "s.A.1.entry"
    assert oco_entry("s.A.1.entry") is None


def test_a_refused_exit_gets_its_position_protected_again_at_the_next_bar():
    p, entry, out = entered()
    bar(p, T0 + 60, out, sell(T0 + 60))
    exit_ = [o for o in out.orders if o.intent == "signal"][0]
    assert exit_.oco_id == f"{entry.order_id}.oco" and exit_.qty == 100
    p.apply_update(TradeUpdate(exit_.order_id, "submit_failed", "AAA", SELL, T0 + 120, detail="403"), out)
    out2 = PortfolioOutput()
    bar(p, T0 + 120, out2)
    (protect,) = [o for o in out2.orders if o.intent == "protect"]
    assert protect.order_id == f"{entry.order_id}.oco.r{T0 + 120}" and protect.qty == 100
    assert p.oco_ids[("AAA", SID)] == protect.order_id


def test_a_refused_oco_is_asked_again_and_its_fills_count_apart():
    p, entry, out = entered()
    p.apply_update(TradeUpdate(f"{entry.order_id}.oco", "submit_failed", "AAA", SELL, T0 + 61), out)
    out2 = PortfolioOutput()
    bar(p, T0 + 60, out2)
    (again,) = [o for o in out2.orders if o.intent == "protect"]
    p.apply_update(fill(again.order_id, T0 + 150, 100, 100, price=99.0, side=SELL, leg="stop"), out2)
    assert not p.positions and [t.exit_reason for t in out2.trades] == ["stop_loss"]


def test_a_partly_filled_oco_leaves_an_exit_for_the_rest_only():
    p, entry, out = entered()
    p.apply_update(fill(f"{entry.order_id}.oco", T0 + 70, 40, 40, price=102.0, side=SELL, leg="target",
                        event="partial_fill"), out)
    bar(p, T0 + 60, out, sell(T0 + 60))
    (exit_,) = [o for o in out.orders if o.intent == "signal"]
    assert exit_.qty == 60


def test_a_rejection_delivered_again_counts_once_for_the_breaker():
    p, out = BrokerPortfolio.new(CFG), PortfolioOutput()
    for _ in range(6):
        p.apply_update(TradeUpdate("s.AAA.1.entry", "rejected", "AAA", BUY, T0), out)
    assert p.order_failures == 1 and p.halt is None


def test_a_fill_without_a_price_is_a_dead_letter_not_a_crash():
    p, entry, out = BrokerPortfolio.new(CFG), None, PortfolioOutput()
    bar(p, T0, out, buy(T0))
    p.apply_update(fill(out.orders[0].order_id, T0 + 61, 100, 100, price=0.0), out)
    assert not p.positions and [d.reason for d in out.dead_letters] == ["invalid_fill"]


def test_a_stop_out_in_the_first_minute_counts_for_the_new_day():
    p, entry, out = entered()
    next_open = T0 + 86_400  # 09:30 the next day
    p.enter_minute(next_open, out)  # the stage enters the minute before its updates
    p.apply_update(fill(f"{entry.order_id}.oco", next_open + 5, 100, 100, price=99.0, side=SELL, leg="stop"), out)
    assert p.loss_streak == 1 and p.start_of_day_equity == pytest.approx(100_000.0)


def test_no_signal_exit_while_the_entry_is_still_filling_and_one_flatten_for_all():
    from operators.ordering import Control
    p, entry, out = entered(qty=30)  # partial: 30 of 100
    bar(p, T0 + 60, out, sell(T0 + 60))
    assert not [o for o in out.orders if o.side == SELL]
    p.apply_control(Control(0, 0, "h", "halt", True, T0 + 120, "ops", "t"), out)
    assert [o.intent for o in out.orders if o.side == BUY and o.intent == "cancel"] == ["cancel"]
    p.apply_update(fill(entry.order_id, T0 + 125, 50, 20, event="partial_fill"), out)
    p.apply_update(TradeUpdate(entry.order_id, "canceled", "AAA", BUY, T0 + 126, filled_qty=50), out)
    flatten = [o for o in out.orders if o.intent == "kill_switch"]
    assert [o.qty for o in flatten] == [50]


def test_a_partly_filled_entry_counts_once_against_max_positions():
    cfg = TradingConfig(strategies=[StrategyConfig(fast=2, slow=3, confidence=0.7)],
                        execution={"slippage_bps": 0.0}, risk={"max_positions": 2})
    p, out = BrokerPortfolio.new(cfg), PortfolioOutput()
    bar(p, T0, out, buy(T0))
    p.apply_update(fill(out.orders[0].order_id, T0 + 61, 30, 30, event="partial_fill"), out)
    bar(p, T0 + 60, out, buy(T0 + 60, "BBB"), symbol="BBB")
    assert [r.reason for r in out.rejections] == []


def test_a_caught_up_fill_prices_the_missing_part_from_the_average():
    p, out = BrokerPortfolio.new(CFG), PortfolioOutput()
    bar(p, T0, out, buy(T0))
    oid = out.orders[0].order_id
    p.apply_update(fill(oid, T0 + 61, 40, 40, price=100.0, event="partial_fill"), out)
    # the relay reconnects: the order list says 100 filled at 100.6 on average
    p.apply_update(fill(oid, T0 + 90, 100, 100, price=100.6), out)
    assert out.fills[-1].qty == 60 and out.fills[-1].price == pytest.approx(101.0)
    assert p.positions[("AAA", SID)].entry_fill == pytest.approx(100.6)
