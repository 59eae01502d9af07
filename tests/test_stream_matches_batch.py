"""The streaming operators, driven the way the flow drives them, decide exactly
what the independent batch reference (tests/reference.py) decides.

Streaming side: the raw bars are spread over 1-3 source partitions (each
symbol in one partition, keeping its arrival order), cut into random chunks
with valid watermarks in between and numbered per partition (`seq`); each
chunk goes through a per-symbol stage, as dataflows/flow.py does it: the
columnar one (`step_block`, the flow's hot path) or the bar-at-a-time one
(`step_symbol`), chosen per example; and the resulting
`SymbolResult`s and `Watermark`s reach `PortfolioStage` shuffled, in random
batches, with a checkpoint (deep copy) and restore in the middle. The
stage's portfolio is the compiled book the flow runs
(operators.compiled_portfolio) or the Python Portfolio it mirrors, chosen
per example.

Comparison: trades, orders, fills, rejections, dead letters and filtered
signals, every field. Floats must be exactly equal, not approximately: every
float in those records is a closed-form expression of bar prices and
configuration values (fill = open * (1 + bps / 10_000), stop = fill * (1 -
pct), pnl = qty * (exit - entry) - commissions, ...), evaluated in the same
IEEE order on both sides. Accumulated quantities (cash, equity) only enter
the records through decisions (integer qty, halts), so any difference shows up
as a different decision, which is a bug in one of the two.
"""
from __future__ import annotations

import copy
import math
import random
from dataclasses import astuple
from datetime import datetime, timezone

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from operators.config import (
    ExecutionConfig, ExitConfig, RiskConfig, SignalConfig, StrategyConfig, TradingConfig,
)
from operators.columnar import ColumnarSymbolState, step_block
from operators.compiled_portfolio import CompiledPortfolio
from operators.ordering import END_OF_TIME, PortfolioStage, SymbolResult, Watermark, block_from_bars
from operators.portfolio import Portfolio
from operators.signals import SignalRules
from operators.symbol_stage import SymbolState, step_symbol
from operators.types import Bar, SymbolOutput

from reference import run_reference

# 2024-03-06 04:00 UTC = 23:00 in New York on March 5: the first hour is one
# trading day, then a new one starts (at 05:00 UTC).
T0 = int(datetime(2024, 3, 6, 4, 0, tzinfo=timezone.utc).timestamp())
SYMBOLS = ["AAA", "BRK.B", "Z9", "MSFT"]
BAD_SYMBOLS = ["aaa", "1AB", "TOOLONG", "BRK.ABCD", "BRK_B", "AAA\n"]


# ------------------------------------------------------------------ inputs
@st.composite
def configs(draw) -> TradingConfig:
    n = draw(st.integers(1, 3))
    pairs = draw(st.lists(
        st.tuples(st.integers(1, 4), st.integers(2, 8)).filter(lambda p: p[0] < p[1]),
        min_size=n, max_size=n, unique=True,
    ))
    confs = [draw(st.sampled_from([0.6, 0.7, 0.75, 0.8, 0.9])) for _ in pairs]
    agg = draw(st.sampled_from(["independent", "majority", "weighted"]))
    return TradingConfig(
        strategies=tuple(StrategyConfig(fast=f, slow=s, confidence=c) for (f, s), c in zip(pairs, confs)),
        signals=SignalConfig(
            aggregation=agg,
            min_confidence=draw(st.sampled_from([0.0, 0.65, 0.7])),
            min_risk_reward=draw(st.sampled_from([1.0, 2.0])),
            min_agree=draw(st.integers(1, n)),
            weighted_threshold=draw(st.sampled_from([0.2, 0.5, 0.7])),
        ),
        exit=ExitConfig(
            take_profit_pct=draw(st.sampled_from([0.01, 0.02])),
            stop_loss_pct=draw(st.sampled_from([0.005, 0.01])),
            trailing_stop=draw(st.booleans()),
            trailing_activation_pct=draw(st.sampled_from([0.0, 0.002, 0.005])),
            trailing_pct=draw(st.sampled_from([0.002, 0.005])),
            time_stop_minutes=draw(st.sampled_from([3, 10, 60])),
            time_stop_min_move_pct=draw(st.sampled_from([0.002, 0.005])),
        ),
        risk=RiskConfig(
            initial_cash=draw(st.sampled_from([100_000, 20_000])),
            risk_per_trade_pct=draw(st.sampled_from([0.005, 0.05])),
            max_position_pct=draw(st.sampled_from([0.10, 0.5, 1.0])),
            max_positions=draw(st.integers(1, 10)),
            max_positions_per_symbol=draw(st.integers(1, 3)),
            max_consecutive_losses=draw(st.integers(1, 3)),
            max_daily_drawdown_pct=draw(st.sampled_from([0.002, 0.01, 0.05])),
        ),
        execution=ExecutionConfig(
            slippage_bps=draw(st.sampled_from([0.0, 1.0, 5.0])),
            commission_per_share=draw(st.sampled_from([0.0, 0.005])),
        ),
    )


def _bar(rng: random.Random, sym: str, ts: int, prev_close: float, vol: float) -> Bar:
    if rng.random() < 0.04:
        o = prev_close * (1 + rng.choice([-1, 1]) * rng.uniform(0.008, 0.03))  # a gap
    else:
        o = prev_close * (1 + rng.gauss(0, vol / 3))
    c = o * (1 + rng.gauss(0, vol))
    h = max(o, c) * (1 + abs(rng.gauss(0, vol / 2)))
    lo = min(o, c) * (1 - abs(rng.gauss(0, vol / 2)))
    o, h, lo, c = (round(x, 2) for x in (o, h, lo, c))
    h, lo = max(h, o, c), min(lo, o, c)
    return Bar(sym, ts, o, h, lo, c, float(rng.randint(0, 5000)), rng.randint(1, 50), round((h + lo) / 2, 2))


def _corrupt(rng: random.Random, b: Bar) -> Bar:
    """A copy of `b` with exactly one problem."""
    b = copy.copy(b)
    kind = rng.randrange(9)
    if kind == 0:
        setattr(b, rng.choice(["open", "high", "low", "close"]), rng.choice([math.nan, math.inf, -math.inf]))
    elif kind == 1:
        b.low = rng.choice([0.0, -1.0])
    elif kind == 2:
        b.high = round(max(b.open, b.close) - 0.01, 2)
        if b.high < b.low:
            b.low = b.high
    elif kind == 3:
        b.low = round(min(b.open, b.close) + 0.01, 2)
        b.high = max(b.high, b.low)
    elif kind == 4:
        b.volume = rng.choice([-1.0, math.nan, math.inf])
    elif kind == 5:
        b.ts += 30  # not on a whole minute (pinned: invalid_timestamp)
    else:
        b.symbol = rng.choice(BAD_SYMBOLS)
    return b


def make_bars(rng: random.Random, symbols: list, minutes: int) -> list:
    """Raw bars in arrival order: random walks on a shared minute grid, with
    time gaps (incl. overnight), cross-symbol shuffling within a minute, and
    duplicates, late and invalid bars mixed in."""
    price = {s: rng.uniform(20, 300) for s in symbols}
    vol = {s: rng.choice([0.002, 0.004, 0.007]) for s in symbols}
    history = {s: [] for s in symbols}  # bars generated so far, per symbol
    skipped = {s: [] for s in symbols}  # minutes a symbol had no bar
    out = []
    ts = T0
    for _ in range(minutes):
        r = rng.random()
        ts += 60 * (1 if r < 0.9 else rng.randint(2, 20) if r < 0.98 else rng.randint(300, 900))
        this_minute = []
        for s in symbols:
            if rng.random() < 0.15:
                skipped[s].append(ts)
                continue
            b = _bar(rng, s, ts, price[s], vol[s])
            price[s] = b.close
            if rng.random() < 0.03:
                this_minute.append(_corrupt(rng, b))
                continue
            history[s].append(b)
            this_minute.append(b)
        for s in symbols:
            x = rng.random()
            if x < 0.03 and history[s]:  # a duplicate, same or different prices
                d = copy.copy(rng.choice(history[s][-5:]))
                if rng.random() < 0.5:
                    d.close = d.open = d.high = d.low = round(d.close * 1.01, 2)
                this_minute.append(d)
            elif x < 0.06 and skipped[s]:  # a late bar: a minute the symbol had skipped
                this_minute.append(_bar(rng, s, rng.choice(skipped[s][-5:]), price[s], vol[s]))
        rng.shuffle(this_minute)  # arrival order across symbols within a minute
        # keep each symbol's own order: bars of one symbol stay in generation order
        by_sym = {}
        for b in this_minute:
            by_sym.setdefault(b.symbol, []).append(b)
        order = [b.symbol for b in this_minute]
        pos = {k: 0 for k in by_sym}
        for k in order:
            out.append(by_sym[k][pos[k]])
            pos[k] += 1
    return out


# ------------------------------------------------------------------ stream
def run_stream(raw: list, cfg: TradingConfig, rng: random.Random, n_parts: int, columnar: bool,
               compiled: bool = False):
    rules = SignalRules.from_config(cfg)
    part_of = {}
    rows = {p: [] for p in range(n_parts)}  # partition -> (row number, bar) in arrival order
    for i, b in enumerate(raw):
        p = part_of.setdefault(b.symbol, rng.randrange(n_parts))
        rows[p].append((i, b))

    # Each partition: random blocks; a block becomes one chunk per symbol
    # (symbol order kept), then a watermark = the earliest time still to come.
    items = []
    states = {}
    sym_outs = []
    for p, prow in rows.items():
        seq = 0
        i = 0
        while i < len(prow):
            j = min(len(prow), i + rng.randint(1, 40))
            block = prow[i:j]
            syms = []
            for _, b in block:
                if b.symbol not in syms:
                    syms.append(b.symbol)
            for s in syms:
                mine = [(r, b) for r, b in block if b.symbol == s]
                bars, origins = [b for _, b in mine], [r for r, _ in mine]
                out = SymbolOutput()
                if columnar:  # as dataflows.flow.SymbolLogic
                    st_ = states.setdefault(s, ColumnarSymbolState())
                    accepted = step_block(st_, rules, block_from_bars(bars), origins, "row ", out)
                    if len(accepted):
                        out.blocks.append(accepted)
                else:
                    st_ = states.setdefault(s, SymbolState.new(rules))
                    step_symbol(st_, bars, origins, "row ", out)
                sym_outs.append(out)
                items.append(SymbolResult(p, seq, out))
                seq += 1
            if rng.random() < 0.7 or j == len(prow):
                wm = min((b.ts for _, b in prow[j:]), default=END_OF_TIME)
                items.append(Watermark(p, seq, wm))
                seq += 1
            i = j

    rng.shuffle(items)  # workers and routing may deliver in any order
    # the compiled book (what the flow runs) or the Python Portfolio it mirrors
    portfolio = CompiledPortfolio.new(cfg) if compiled else Portfolio.new(cfg)
    stage = PortfolioStage.new(portfolio, range(n_parts))
    outs = []
    k = 0
    restored = False
    while k < len(items):
        n = rng.randint(1, 8)
        outs.append(stage.on_items(items[k:k + n]))
        k += n
        if not restored and k >= len(items) // 2:
            stage = copy.deepcopy(stage)  # checkpoint and restart
            restored = True
    outs.append(stage.flush())
    return sym_outs, outs


# ------------------------------------------------------------------ property
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cfg=configs(),
    n_symbols=st.integers(1, 4),
    n_parts=st.integers(1, 3),
    minutes=st.integers(60, 160),
    seed=st.integers(0, 2**32 - 1),
    columnar=st.booleans(),
    compiled=st.booleans(),
)
def test_stream_matches_batch(cfg, n_symbols, n_parts, minutes, seed, columnar, compiled):
    # Bars and delivery come from a seeded generator: hypothesis shrinks the
    # configuration and sizes; a raw random stream would be drawn byte by byte.
    rng = random.Random(seed)
    raw = make_bars(rng, SYMBOLS[:n_symbols], minutes)
    ref = run_reference([copy.copy(b) for b in raw], cfg)
    sym_outs, outs = run_stream([copy.copy(b) for b in raw], cfg, rng, n_parts, columnar, compiled)

    # section 1: same dead letters per symbol (arrival order), none from ordering
    dead = [(d.symbol, d.ts, d.reason) for o in sym_outs for d in o.dead_letters]
    assert sorted(dead, key=repr) == sorted(ref.dead, key=repr)
    for sym in {d[0] for d in ref.dead}:
        assert [d for d in dead if d[0] == sym] == [d for d in ref.dead if d[0] == sym]
    assert not [d for o in outs for d in o.dead_letters]
    assert sum(o.applied_bars for o in outs) == len(ref.accepted)

    # section 2: filtered signals, and the BUYs that passed, every field. (The
    # reference emits majority SELLs on every bar without agreement, the
    # operators on the bar it is lost: SELLs are judged by their effects below.)
    filtered = sorted((astuple(s) for o in sym_outs for s in o.filtered), key=repr)
    assert filtered == sorted((astuple(s) for s in ref.filtered), key=repr)
    buys = sorted((astuple(s) for o in sym_outs for sigs in o.signals.values() for s in sigs if s.side == "buy"), key=repr)
    assert buys == sorted((astuple(s) for s in ref.signals if s.side == "buy"), key=repr)

    # sections 3-5, in application order, every field, floats exactly
    for name in ("orders", "fills", "rejections", "trades"):
        got = [astuple(x) for o in outs for x in getattr(o, name)]
        want = [astuple(x) for x in getattr(ref, name)]
        assert got == want, name
