"""The live portfolio (broker fills): positions, cash, trades and risk
counters come from the broker's trade updates, and over a broker that fills
as the spec assumes it makes exactly the backtest's trades."""
from __future__ import annotations

import random
from datetime import datetime, timezone

import numpy as np
import pytest

from operators.columnar import BarBlock
from operators.config import StrategyConfig, TradingConfig
from operators.live_portfolio import BrokerPortfolio
from operators.ordering import (
    TRADE_UPDATES_PARTITION_BASE as TU, BrokerEvent, Control, PortfolioStage, SymbolResult, Watermark,
)
from operators.portfolio import Portfolio
from operators.types import BUY, SELL, Signal, SymbolOutput, TradeUpdate
from spec_broker import SpecBroker

T0 = int(datetime(2024, 3, 5, 14, 30, tzinfo=timezone.utc).timestamp())
STRATS = [StrategyConfig(fast=2, slow=3, confidence=0.7), StrategyConfig(fast=3, slow=5, confidence=0.8)]


def config(risk=None, **exit_):
    return TradingConfig(strategies=STRATS, execution={"slippage_bps": 0.0},
                         exit={"trailing_stop": True, **exit_}, risk=risk or {})


def market(seed, symbols=("AAA", "BBB", "CCC"), minutes=240):
    rng = random.Random(seed)
    bars = {}
    for s in symbols:
        px, rows = 100.0, []
        for m in range(minutes):
            o = px * (1 + rng.gauss(0, 0.002))
            c = o * (1 + rng.gauss(0, 0.003))
            h = max(o, c) * (1 + abs(rng.gauss(0, 0.002)))
            lo = min(o, c) * (1 - abs(rng.gauss(0, 0.002)))
            sigs = [Signal(sid, s, rng.choice((BUY, BUY, SELL)), T0 + 60 * m, c, 0.8, 0.02, 0.01, 2.0)
                    for sid in ("sma_2_3", "sma_3_5") if rng.random() < 0.06]
            rows.append((T0 + 60 * m, o, h, lo, c, sigs))
            px = c
        bars[s] = rows
    return bars


def symbol_result(seq, symbol, row):
    ts, o, h, lo, c, sigs = row
    a = lambda v: np.array([v], dtype=np.float64)  # noqa: E731
    block = BarBlock(symbol, np.array([ts], dtype=np.int64), a(o), a(h), a(lo), a(c), a(1000.0))
    return SymbolResult(0, seq, SymbolOutput(blocks=[block], signals={ts: sigs} if sigs else {}))


def backtest(cfg, bars):
    stage = PortfolioStage.new(Portfolio.new(cfg), [0])
    items = [symbol_result(i, s, row) for i, (s, row) in enumerate(
        sorted(((s, r) for s, rows in bars.items() for r in rows), key=lambda x: (x[1][0], x[0])))]
    outs = [stage.on_items(items), stage.flush()]
    return [t for o in outs for t in o.trades], stage


def paper(cfg, bars, broker, controls=None):
    """Minute by minute: the broker fills on the minute's bars, then the flow
    applies the minute (updates first) and the broker takes its orders."""
    stage = PortfolioStage.new(BrokerPortfolio.new(cfg), [0, TU])
    seq = {0: 0, TU: 0}
    outs = []

    def item(part, make):
        x = make(seq[part])
        seq[part] += 1
        return x

    minutes = sorted({r[0] for rows in bars.values() for r in rows})
    pending_updates = []
    for i, ts in enumerate(minutes):
        updates = pending_updates
        for s in sorted(bars):
            row = bars[s][i]
            updates += broker.on_bar(s, ts, row[1], row[2], row[3])
        items = [item(TU, lambda q, u=u: BrokerEvent(TU, q, u)) for u in updates]
        items += [item(0, lambda q, s=s: symbol_result(q, s, bars[s][i])) for s in sorted(bars)]
        if controls and ts in controls:
            items.append(item(0, lambda q: Control(0, q, f"c{ts}", controls[ts][0], controls[ts][1],
                                                   ts, "ops", "test")))
        items += [item(0, lambda q: Watermark(0, q, ts + 60)), item(TU, lambda q: Watermark(TU, q, ts + 60))]
        out = stage.on_items(items)
        outs.append(out)
        pending_updates = broker.accept(out.orders, ts + 61)
    return outs, stage


def key(t):
    return (t.symbol, t.strategy_id, t.entry_time, t.exit_time, t.exit_reason, t.qty,
            round(t.entry_price, 6), round(t.exit_price, 6))


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_paper_session_over_a_spec_broker_makes_the_backtest_trades(seed):
    cfg = config()
    bars = market(seed)
    expected, _ = backtest(cfg, bars)
    outs, _ = paper(cfg, bars, SpecBroker())
    got = [t for o in outs for t in o.trades]
    assert len(expected) >= 5
    assert sorted(map(key, got)) == sorted(map(key, expected))
    reasons = {t.exit_reason for t in expected}
    assert {"stop_loss", "take_profit", "signal", "time_stop"} & reasons


@pytest.mark.parametrize("seed", [1, 2])
def test_each_strategys_own_exits_at_the_broker_make_the_backtest_trades(seed):
    """sma_3_5 with its own stop, target and time stop (its OCO from them), sma_2_3
    with the top level's."""
    own = {"stop_loss_pct": 0.004, "take_profit_pct": 0.009, "time_stop_minutes": 20,
           "time_stop_min_move_pct": 0.002}
    cfg = TradingConfig(strategies=[STRATS[0], StrategyConfig(fast=3, slow=5, confidence=0.8, exit=own)],
                        execution={"slippage_bps": 0.0}, exit={"trailing_stop": True})
    bars = market(seed)
    expected, _ = backtest(cfg, bars)
    exits = {sid: (x.stop_loss_pct, x.take_profit_pct) for sid, x in cfg.strategy_exits().items()}
    outs, _ = paper(cfg, bars, SpecBroker(by_strategy=exits))
    got = [t for o in outs for t in o.trades]
    assert sorted(map(key, got)) == sorted(map(key, expected))
    mine = [t for t in expected if t.strategy_id == "sma_3_5"]
    # stopped at its own 0.4 % (or below it on a gap), never at the top level's 1 %
    stops = [t for t in mine if t.exit_reason == "stop_loss"]
    assert stops and all(t.exit_price <= t.entry_price * (1 - 0.004) * (1 + 1e-12) for t in stops)
    assert any(t.exit_price == pytest.approx(t.entry_price * (1 - 0.004), rel=1e-12) for t in stops)
    protect = [o for o in outs for o in o.orders if o.intent == "protect" and o.strategy_id == "sma_3_5"]
    fills = {f.order_id: f.price for out in outs for f in out.fills if f.side == BUY}
    assert protect and all(o.stop_price == fills[o.parent_id] * (1 - 0.004) for o in protect)


def test_position_is_the_filled_quantity_and_partial_fills_average_the_entry():
    cfg = config()
    p = BrokerPortfolio.new(cfg)
    stage = PortfolioStage.new(p, [0, TU])
    row = (T0, 100.0, 100.1, 99.9, 100.0, [Signal("sma_2_3", "AAA", BUY, T0, 100.0, 0.8, 0.02, 0.01, 2.0)])
    out = stage.on_items([symbol_result(0, "AAA", row), Watermark(0, 1, T0 + 60), Watermark(TU, 0, T0 + 60)])
    (entry,) = out.orders
    assert entry.intent == "entry" and entry.qty == 100
    ups = [TradeUpdate(entry.order_id, "partial_fill", "AAA", BUY, T0 + 61, filled_qty=40, fill_qty=40, fill_price=100.0),
           TradeUpdate(entry.order_id, "partial_fill", "AAA", BUY, T0 + 61, filled_qty=40, fill_qty=40, fill_price=100.0),
           TradeUpdate(entry.order_id, "fill", "AAA", BUY, T0 + 62, filled_qty=100, fill_qty=60, fill_price=101.0)]
    out = stage.on_items([BrokerEvent(TU, 1, ups[0]), BrokerEvent(TU, 2, ups[1])])
    assert not out.fills  # not applied before the broker's watermark
    out = stage.on_items([Watermark(TU, 3, T0 + 120), Watermark(0, 2, T0 + 120)])
    (pos,) = p.positions.values()
    assert pos.qty == 40 and [f.qty for f in out.fills] == [40]  # the replayed update added nothing
    out = stage.on_items([BrokerEvent(TU, 4, ups[2]), Watermark(TU, 5, T0 + 180), Watermark(0, 3, T0 + 180)])
    assert pos.qty == 100 and pos.entry_fill == pytest.approx(100.6)
    assert p.cash == pytest.approx(100_000 - 40 * 100.0 - 60 * 101.0)
    (protect,) = [o for o in out.orders if o.intent == "protect"]
    assert (protect.order_id, protect.qty) == (f"{entry.order_id}.oco", 100)
    assert protect.stop_price == pytest.approx(100.6 * 0.99)
    assert p.pending_entries == 0 and p.pending_entry_cash == 0


def test_an_entry_canceled_after_a_partial_fill_keeps_and_protects_the_filled_part():
    p = BrokerPortfolio.new(config())
    stage = PortfolioStage.new(p, [0, TU])
    row = (T0, 100.0, 100.1, 99.9, 100.0, [Signal("sma_2_3", "AAA", BUY, T0, 100.0, 0.8, 0.02, 0.01, 2.0)])
    (entry,) = stage.on_items([symbol_result(0, "AAA", row), Watermark(0, 1, T0 + 60),
                               Watermark(TU, 0, T0 + 60)]).orders
    out = stage.on_items([
        BrokerEvent(TU, 1, TradeUpdate(entry.order_id, "partial_fill", "AAA", BUY, T0 + 61, filled_qty=30,
                                       fill_qty=30, fill_price=100.0)),
        BrokerEvent(TU, 2, TradeUpdate(entry.order_id, "canceled", "AAA", BUY, T0 + 70, filled_qty=30)),
        Watermark(TU, 3, T0 + 120), Watermark(0, 2, T0 + 120)])
    assert p.positions[("AAA", "sma_2_3")].qty == 30
    assert [(o.intent, o.qty) for o in out.orders] == [("protect", 30)]
    assert p.cash == pytest.approx(100_000 - 3000)


def test_five_broker_failures_in_a_row_halt_entries_until_resumed():
    cfg = config()
    bars = market(5, minutes=120)
    broker = SpecBroker()
    broker.accept_real = broker.accept
    refused = []

    def accept(orders, ts):  # the broker refuses every entry
        entries = [o for o in orders if o.intent == "entry"]
        refused.extend(entries)
        broker.reject.update(o.order_id for o in entries)
        return broker.accept_real(orders, ts)
    broker.accept = accept
    outs, stage = paper(cfg, bars, broker)
    controls = [c for o in outs for c in o.controls]
    assert [(c.action, c.who) for c in controls] == [("halt", "circuit_breaker")]
    assert "5 broker rejections" in controls[0].why
    assert stage.portfolio.halt == "order_failures"
    rejections = [r for o in outs for r in o.rejections if r.reason == "halted"]
    assert rejections and all(r.ts >= controls[0].ts for r in rejections)
    assert len(refused) == 5 and stage.portfolio.pending_entries == 0 and not stage.portfolio.positions


def test_a_success_resets_the_order_failure_count():
    p = BrokerPortfolio.new(config())
    from operators.types import PortfolioOutput
    out = PortfolioOutput()
    for i in range(4):
        p.apply_update(TradeUpdate(f"x{i}", "rejected", "AAA", BUY, T0), out)
    p.apply_update(TradeUpdate("y", "new", "AAA", BUY, T0), out)
    for i in range(4):
        p.apply_update(TradeUpdate(f"z{i}", "submit_failed", "AAA", BUY, T0), out)
    assert p.halt is None and p.order_failures == 4


def test_halt_flatten_cancels_entries_at_the_broker_and_sells_every_position():
    cfg = config()
    bars = market(2)
    ts_flatten = T0 + 60 * 100
    outs, stage = paper(cfg, bars, SpecBroker(), controls={ts_flatten: ("halt", True)})
    p = stage.portfolio
    assert not p.positions and not p.orders and p.pending_entries == 0
    kill = [t for o in outs for t in o.trades if t.exit_reason == "kill_switch"]
    assert kill and all(t.exit_time == ts_flatten + 60 for t in kill)
    assert not [f for o in outs for f in o.fills if f.side == BUY and f.ts > ts_flatten + 60]


def test_a_fill_of_an_unknown_order_is_a_dead_letter_not_a_position():
    from operators.types import PortfolioOutput
    p = BrokerPortfolio.new(config())
    out = PortfolioOutput()
    p.apply_update(TradeUpdate("other.AAA.1.entry", "fill", "AAA", BUY, T0, filled_qty=5, fill_qty=5,
                               fill_price=10.0), out)
    assert not p.positions and [d.reason for d in out.dead_letters] == ["unknown_order_fill"]


def test_no_entry_whose_fill_would_fall_outside_the_session():
    from operators.calendar import trading_day
    from operators.types import PortfolioOutput
    close = T0 + 60 * 390  # 16:00 New York
    p = BrokerPortfolio.new(config(), sessions={trading_day(T0): (T0, close)})
    out = PortfolioOutput()
    sig = lambda ts: [Signal("sma_2_3", "AAA", BUY, ts, 100.0, 0.8, 0.02, 0.01, 2.0)]  # noqa: E731
    p.apply("AAA", close - 60, 100.0, 100.1, 99.9, 100.0, sig(close - 60), out)  # 15:59: fills at 16:00
    assert [r.reason for r in out.rejections] == ["market_closed"] and not out.orders
    p.apply("AAA", close - 120, 100.0, 100.1, 99.9, 100.0, sig(close - 120), out)  # 15:58: fills 15:59
    assert [o.intent for o in out.orders] == ["entry"]
    nxt = T0 + 86_400 * 4  # a day the calendar does not list (a holiday, say)
    p.apply("BBB", nxt, 100.0, 100.1, 99.9, 100.0, [Signal("sma_2_3", "BBB", BUY, nxt, 100.0, 0.8, 0.02, 0.01, 2.0)], out)
    assert out.rejections[-1].reason == "market_closed"


def test_a_symbol_flattened_by_reconciliation_closes_its_positions_and_orders():
    from operators.types import PortfolioOutput
    p = BrokerPortfolio.new(config())
    stage = PortfolioStage.new(p, [0, TU])
    row = (T0, 100.0, 100.1, 99.9, 100.0, [Signal("sma_2_3", "AAA", BUY, T0, 100.0, 0.8, 0.02, 0.01, 2.0)])
    (entry,) = stage.on_items([symbol_result(0, "AAA", row), Watermark(0, 1, T0 + 60),
                               Watermark(TU, 0, T0 + 60)]).orders
    out = PortfolioOutput()
    p.apply_update(TradeUpdate(entry.order_id, "fill", "AAA", BUY, T0 + 61, filled_qty=100, fill_qty=100,
                               fill_price=100.0), out)
    p.apply_update(TradeUpdate("reconcile.AAA", "reconciled", "AAA", SELL, T0 + 3600), out)
    assert not p.positions and not p.orders and p.pending_entries == 0
    assert [(t.exit_reason, t.qty) for t in out.trades] == [("flatten", 100)]


def test_an_unreconciled_symbol_gets_no_orders_until_decided():
    from operators.types import PortfolioOutput
    p = BrokerPortfolio.new(config(), blocked={"AAA"})
    out = PortfolioOutput()
    p.apply("AAA", T0, 100.0, 100.1, 99.9, 100.0, [Signal("sma_2_3", "AAA", BUY, T0, 100.0, 0.8, 0.02, 0.01, 2.0)], out)
    assert not out.orders and [r.reason for r in out.rejections] == ["unreconciled"]


@pytest.mark.parametrize("risk", [{"max_daily_drawdown_pct": 0.001}, {"max_consecutive_losses": 1},
                                  {"max_positions": 2, "max_positions_per_symbol": 1}])
def test_daily_halts_and_caps_hold_the_same_over_broker_fills(risk):
    cfg = config(risk)
    bars = market(7, minutes=390)
    expected, bt = backtest(cfg, bars)
    outs, live = paper(cfg, bars, SpecBroker())
    got = [t for o in outs for t in o.trades]
    assert sorted(map(key, got)) == sorted(map(key, expected))
    assert live.portfolio.day_halt == bt.portfolio.day_halt
