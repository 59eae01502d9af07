"""Kill switch (`cuts halt [--flatten]` / `cuts resume`): a halt rejects
entries decided after it, entries already pending still fill, flatten
queues a market exit of every position for its next bar (reason
kill_switch), resume lifts it; the point where it takes effect depends only
on the partitions' contents, never on delivery order."""
from __future__ import annotations

import itertools
from datetime import datetime, timezone

import numpy as np
import pytest

from operators.columnar import BarBlock
from operators.compiled_portfolio import CompiledPortfolio
from operators.config import StrategyConfig, TradingConfig
from operators.ordering import Control, PortfolioStage, SymbolResult, Watermark
from operators.portfolio import Portfolio
from operators.types import BUY, Signal, SymbolOutput

T0 = int(datetime(2024, 3, 5, 14, 30, tzinfo=timezone.utc).timestamp())
CFG = TradingConfig(strategies=[StrategyConfig(fast=2, slow=3, confidence=0.7)],
                    execution={"slippage_bps": 0.0})
SID = "sma_2_3"


def result(partition, seq, symbol, minutes, buys=()):
    ts = np.array([T0 + 60 * m for m in minutes], dtype=np.int64)
    px = np.full(len(ts), 100.0)
    block = BarBlock(symbol, ts, px, px + 0.1, px - 0.1, px, px)
    signals = {T0 + 60 * m: [Signal(SID, symbol, BUY, T0 + 60 * m, 100.0, 0.7, 0.02, 0.01, 2.0)]
               for m in buys}
    return SymbolResult(partition, seq, SymbolOutput(blocks=[block], signals=signals))


def halt(partition, seq, minute, flatten=False, action="halt", cid="h1"):
    return Control(partition, seq, cid, action, flatten, T0 + 60 * minute, "ops", "test")


@pytest.fixture(autouse=True, params=["compiled", "python"])
def portfolio_kind(request):
    """Every rule holds for the compiled book the flow runs and the Python Portfolio."""
    global NEW_PORTFOLIO
    NEW_PORTFOLIO = CompiledPortfolio.new if request.param == "compiled" else Portfolio.new
    yield request.param


NEW_PORTFOLIO = CompiledPortfolio.new


def run(items_by_partition, order=None):
    stage = PortfolioStage.new(NEW_PORTFOLIO(CFG), list(items_by_partition))
    items = [i for p in sorted(items_by_partition) for i in items_by_partition[p]]
    outs = [stage.on_items([i]) for i in (order(items) if order else items)]
    outs.append(stage.flush())
    return outs


def collect(outs, field):
    return [x for o in outs for x in getattr(o, field)]


def test_halt_rejects_later_entries_but_pending_entries_still_fill():
    outs = run({0: [result(0, 0, "AAA", [0, 1, 2, 3], buys=[0]), result(0, 1, "BBB", [0, 1, 2, 3], buys=[2]),
                    halt(0, 2, 1), Watermark(0, 3, T0 + 600)]})
    # AAA's BUY at minute 0 -> pending, fills at minute 1's open although the halt starts at minute 1
    assert [(f.symbol, f.ts) for f in collect(outs, "fills")] == [("AAA", T0 + 60)]
    # BBB's BUY at minute 2 is decided under the halt
    assert [(r.symbol, r.ts, r.reason) for r in collect(outs, "rejections")] == [("BBB", T0 + 120, "halted")]
    assert [(c.action, c.ts, c.who, c.why) for c in collect(outs, "controls")] == [("halt", T0 + 60, "ops", "test")]


def test_flatten_exits_every_position_at_its_next_open_and_cancels_pending_entries():
    items = {0: [result(0, 0, "AAA", [0, 1, 2], buys=[0]), result(0, 1, "BBB", [0, 1, 2], buys=[1]),
                 halt(0, 2, 2, flatten=True), result(0, 3, "AAA", [3]), result(0, 4, "BBB", [3]),
                 Watermark(0, 5, T0 + 600)]}
    outs = run(items)
    trades = collect(outs, "trades")
    # AAA filled at minute 1; flatten at minute 2 queues its exit, filled at minute 2's open
    assert [(t.symbol, t.exit_reason, t.exit_time) for t in trades] == [("AAA", "kill_switch", T0 + 120)]
    # BBB's entry decided at minute 1 would fill at minute 2: flatten canceled it first
    assert [f.symbol for f in collect(outs, "fills") if f.side == "buy"] == ["AAA"]
    event = collect(outs, "controls")[0]
    assert (event.exits_queued, event.entries_canceled) == (1, 1)


def test_resume_lifts_the_halt():
    items = {0: [result(0, 0, "AAA", [0, 1, 2, 3], buys=[1, 3]), halt(0, 1, 0),
                 halt(0, 2, 2, action="resume", cid="r1"), Watermark(0, 3, T0 + 600)]}
    outs = run(items)
    assert [r.ts for r in collect(outs, "rejections")] == [T0 + 60]
    assert [o.decided_ts for o in collect(outs, "orders") if o.intent == "entry"] == [T0 + 180]


def test_copies_in_every_partition_take_effect_once_at_the_earliest_point_whatever_the_delivery_order():
    items = {
        0: [result(0, 0, "AAA", [0, 1, 2, 3, 4], buys=[3]), halt(0, 1, 2), Watermark(0, 2, T0 + 600)],
        1: [result(1, 0, "BBB", [0, 1, 2, 3, 4], buys=[3]), halt(1, 1, 3), Watermark(1, 2, T0 + 600)],
    }
    baseline = None
    for perm in itertools.islice(itertools.permutations(range(6)), 0, 720, 37):
        outs = run(items, order=lambda xs, perm=perm: [xs[i] for i in perm])
        got = ([(r.symbol, r.ts, r.reason) for r in collect(outs, "rejections")],
               [c.ts for c in collect(outs, "controls")])
        baseline = baseline or got
        assert got == baseline
    # halt effective at minute 2 (the earliest copy): both minute-3 BUYs rejected, one control event
    assert baseline == ([("AAA", T0 + 180, "halted"), ("BBB", T0 + 180, "halted")], [T0 + 120])
