"""The columnar symbol stage (the flow's hot path) decides exactly like the
bar-at-a-time one: same accepted bars, signals, filtered signals and dead
letters, for any chunking."""
from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.columnar import BarBlock, ColumnarSymbolState, step_block
from operators.config import PanicReboundConfig, SignalConfig, StrategyConfig, TradingConfig
from operators.signals import SignalRules
from operators.symbol_stage import SymbolState, step_symbol
from operators.types import Bar, SymbolOutput

T0 = 1704205800  # 2024-01-02 14:30 UTC


@st.composite
def bar_streams(draw):
    n = draw(st.integers(20, 300))
    bars, t, price = [], T0, 100.0
    for _ in range(n):
        kind = draw(st.sampled_from(["next"] * 12 + ["gap", "back", "dup", "bad_high", "nan", "zero_vol"]))
        if kind == "dup" and bars:
            bars.append(bars[draw(st.integers(0, len(bars) - 1))])
            continue
        t += {"next": 60, "gap": 180, "back": -120}.get(kind, 60)
        price = round(price * (1 + draw(st.floats(-0.004, 0.004))), 2)
        o = price
        c = round(price * (1 + draw(st.floats(-0.003, 0.003))), 2)
        h, lo = max(o, c) + 0.01, min(o, c) - 0.01
        if kind == "bad_high":
            h = max(o, c) - 0.05
        if kind == "nan":
            c = math.nan
        bars.append(Bar("BRK.B", t, o, h, lo, c, 0.0 if kind == "zero_vol" else 100.0))
    return bars


def config(aggregation: str) -> TradingConfig:
    return TradingConfig(
        strategies=[StrategyConfig(fast=2, slow=3, confidence=0.7),
                    StrategyConfig(fast=2, slow=5, confidence=0.8),
                    StrategyConfig(fast=3, slow=7, confidence=0.65)],
        signals=SignalConfig(aggregation=aggregation),
    )


def to_block(bars: list) -> BarBlock:
    return BarBlock(bars[0].symbol, np.array([b.ts for b in bars], dtype=np.int64),
                    *(np.array([getattr(b, f) for b in bars], dtype=np.float64)
                      for f in ("open", "high", "low", "close", "volume")))


@settings(max_examples=60, deadline=None)
@given(bars=bar_streams(), aggregation=st.sampled_from(["independent", "majority", "weighted"]),
       chunk_sizes=st.lists(st.integers(1, 60), min_size=1, max_size=20))
def test_columnar_stage_matches_bar_at_a_time_stage(bars, aggregation, chunk_sizes):
    rules = SignalRules.from_config(config(aggregation))
    scalar_state, scalar_out = SymbolState.new(rules), SymbolOutput()
    block_state, block_out = ColumnarSymbolState(), SymbolOutput()
    accepted_ts = []
    pos, i = 0, 0
    while pos < len(bars):
        k = chunk_sizes[i % len(chunk_sizes)]
        chunk, origins = bars[pos:pos + k], list(range(pos, pos + k))
        step_symbol(scalar_state, chunk, origins, "row ", scalar_out)
        accepted_ts += step_block(block_state, rules, to_block(chunk), origins, "row ", block_out).ts.tolist()
        pos, i = pos + k, i + 1
    assert accepted_ts == [b.ts for b in scalar_out.bars]
    assert block_out.signals == scalar_out.signals
    key = lambda d: (d.source, d.ts, d.reason)  # noqa: E731
    assert sorted(map(key, block_out.dead_letters)) == sorted(map(key, scalar_out.dead_letters))
    sig_key = lambda s: (s.ts, s.strategy_id, s.side, s.filtered_reason)  # noqa: E731
    assert sorted(map(sig_key, block_out.filtered)) == sorted(map(sig_key, scalar_out.filtered))


# ------------------------------------------------------------- with panic_rebound
@st.composite
def panic_streams(draw):
    """A symbol's bars over 2-3 trading days (New York midnight crossed at 00:00),
    volumes fractional, with panics planted: a few bars falling 0.5-3 % on 3-10x
    volume, then green bars; plus duplicates, late and invalid bars."""
    days = draw(st.integers(1, 3))
    bars, price = [], 100.0
    for day in range(days):
        t = T0 + day * 86_400 + draw(st.sampled_from([0, 9 * 3600]))  # 14:30 or 23:30 UTC
        n = draw(st.integers(5, 120))
        panic_at = set(draw(st.lists(st.integers(0, n), max_size=3)))
        falling = 0
        for i in range(n):
            kind = draw(st.sampled_from(["next"] * 14 + ["gap", "dup", "back", "bad_high"]))
            if kind == "dup" and bars:
                bars.append(bars[draw(st.integers(0, len(bars) - 1))])
                continue
            t += {"gap": 240, "back": -120}.get(kind, 60)
            if i in panic_at:
                falling = draw(st.integers(1, 4))
            o = price
            if falling:
                c = round(o * (1 - draw(st.floats(0.001, 0.01))), 2)
                v = round(draw(st.floats(300, 1000)), 3)
                falling -= 1
            else:
                c = round(o * (1 + draw(st.floats(-0.003, 0.004))), 2)
                v = round(draw(st.floats(0, 120)), 4)
            h = round(max(o, c) + draw(st.sampled_from([0.0, 0.01, 0.3])), 2)
            lo = round(min(o, c) - 0.01, 2)
            if kind == "bad_high":
                h = max(o, c) - 0.05
            price = c
            bars.append(Bar("BRK.B", t, o, h, lo, c, v))
    return bars


@st.composite
def panic_configs(draw):
    strategies = []
    for i in range(draw(st.integers(0, 2))):
        f = draw(st.integers(1, 3))
        strategies.append(StrategyConfig(id=f"sma{i}", fast=f, slow=draw(st.integers(f + 1, 6)),
                                         confidence=draw(st.sampled_from([0.65, 0.7, 0.8]))))
    for i in range(draw(st.integers(1, 3))):
        exit_ = draw(st.sampled_from([{}, {"take_profit_pct": 0.01}, {"take_profit_pct": 0.01, "stop_loss_pct": 0.01}]))
        strategies.insert(draw(st.integers(0, len(strategies))), PanicReboundConfig(
            type="panic_rebound", id=f"panic{i}", drop_window=draw(st.integers(1, 5)),
            min_drop_pct=draw(st.sampled_from([0.001, 0.005, 0.01, 0.02])),
            volume_window=draw(st.integers(1, 6)), volume_mult=draw(st.sampled_from([1.0, 2.5, 3.0])),
            confidence=draw(st.sampled_from([0.6, 0.75])), exit=exit_))
    n_sma = sum(1 for s in strategies if s.type == "sma_cross")
    aggregation = draw(st.sampled_from(["independent", "majority", "weighted"] if n_sma else ["independent"]))
    return TradingConfig(strategies=strategies, signals=SignalConfig(
        aggregation=aggregation, min_agree=max(1, min(2, n_sma))))


@settings(max_examples=80, deadline=None)
@given(bars=panic_streams(), config=panic_configs(),
       chunk_sizes=st.lists(st.integers(1, 60), min_size=1, max_size=20))
def test_columnar_stage_matches_bar_at_a_time_stage_with_panic_rebound(bars, config, chunk_sizes):
    if not bars:
        return
    rules = SignalRules.from_config(config)
    scalar_state, scalar_out = SymbolState.new(rules), SymbolOutput()
    block_state, block_out = ColumnarSymbolState(), SymbolOutput()
    pos, i = 0, 0
    while pos < len(bars):
        k = chunk_sizes[i % len(chunk_sizes)]
        chunk, origins = bars[pos:pos + k], list(range(pos, pos + k))
        step_symbol(scalar_state, chunk, origins, "row ", scalar_out)
        step_block(block_state, rules, to_block(chunk), origins, "row ", block_out)
        pos, i = pos + k, i + 1
    assert block_out.signals == scalar_out.signals
    sig_key = lambda s: (s.ts, s.strategy_id, s.side, s.filtered_reason)  # noqa: E731
    assert sorted(map(sig_key, block_out.filtered)) == sorted(map(sig_key, scalar_out.filtered))
