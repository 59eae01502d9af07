"""v2: with strategy types and per-strategy exits, the streaming operators
(driven as the flow drives them, see tests/test_stream_matches_batch.py)
decide exactly what the independent batch reference decides.

Inputs: random strategy lists (0-3 SMA pairs and 1-2 panic-rebound entries
in random list order, random ids, windows and thresholds, random `exit:`
overrides per entry, every aggregation mode) over random bars on a shared
minute grid that crosses New York midnight, with panics planted (a few bars
falling on a volume spike, then rebounds), fractional volumes, gaps,
duplicates, late and invalid bars. Comparison: every field of dead letters,
filtered signals, BUY signals, orders, fills, rejections and trades.
"""
from __future__ import annotations

import copy
import random
from dataclasses import astuple

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from operators.config import (
    ExecutionConfig, ExitConfig, PanicReboundConfig, RiskConfig, SignalConfig, StrategyConfig, TradingConfig,
)
from operators.types import Bar

from reference import run_reference
from test_stream_matches_batch import SYMBOLS, T0, _corrupt, run_stream

EXIT_OVERRIDES = [
    {}, {"take_profit_pct": 0.01}, {"stop_loss_pct": 0.003}, {"time_stop_minutes": 4},
    {"take_profit_pct": 0.006, "stop_loss_pct": 0.003, "time_stop_minutes": 15, "time_stop_min_move_pct": 0.001},
    {"time_stop_min_move_pct": 0.02},
]


@st.composite
def configs(draw) -> TradingConfig:
    strategies = []
    pairs = draw(st.lists(st.tuples(st.integers(1, 4), st.integers(2, 8)).filter(lambda p: p[0] < p[1]),
                          max_size=3, unique=True))
    for i, (fast, slow) in enumerate(pairs):
        strategies.append(StrategyConfig(
            fast=fast, slow=slow, confidence=draw(st.sampled_from([0.6, 0.7, 0.8])),
            id=draw(st.sampled_from([None, f"pair{i}"])), exit=draw(st.sampled_from(EXIT_OVERRIDES))))
    for i in range(draw(st.integers(1, 2))):
        panic = PanicReboundConfig(
            type="panic_rebound", id=f"panic{i}" if i or draw(st.booleans()) else None,
            drop_window=draw(st.integers(1, 5)), volume_window=draw(st.integers(1, 6)),
            min_drop_pct=draw(st.sampled_from([0.002, 0.005, 0.0075, 0.015])),
            volume_mult=draw(st.sampled_from([1.0, 1.5, 2.25, 3.0])),
            confidence=draw(st.sampled_from([0.65, 0.75])), exit=draw(st.sampled_from(EXIT_OVERRIDES)))
        strategies.insert(draw(st.integers(0, len(strategies))), panic)
    agg = draw(st.sampled_from(["independent", "majority", "weighted"] if pairs else ["independent"]))
    return TradingConfig(
        strategies=tuple(strategies),
        signals=SignalConfig(
            aggregation=agg, min_confidence=draw(st.sampled_from([0.0, 0.7])),
            min_risk_reward=draw(st.sampled_from([1.0, 2.0])),
            min_agree=draw(st.integers(1, max(1, len(pairs)))),
        ),
        exit=ExitConfig(
            take_profit_pct=draw(st.sampled_from([0.01, 0.02])),
            stop_loss_pct=draw(st.sampled_from([0.005, 0.01])),
            trailing_stop=draw(st.booleans()),
            trailing_activation_pct=draw(st.sampled_from([0.0, 0.002])),
            trailing_pct=draw(st.sampled_from([0.002, 0.005])),
            time_stop_minutes=draw(st.sampled_from([3, 10, 60])),
            time_stop_min_move_pct=draw(st.sampled_from([0.002, 0.005])),
        ),
        risk=RiskConfig(
            risk_per_trade_pct=draw(st.sampled_from([0.005, 0.05])),
            max_position_pct=draw(st.sampled_from([0.10, 0.5])),
            max_positions=draw(st.integers(1, 10)),
            max_positions_per_symbol=draw(st.integers(1, 3)),
            max_consecutive_losses=draw(st.integers(1, 3)),
            max_daily_drawdown_pct=draw(st.sampled_from([0.01, 0.05])),
        ),
        execution=ExecutionConfig(slippage_bps=draw(st.sampled_from([0.0, 1.0])),
                                  commission_per_share=draw(st.sampled_from([0.0, 0.005]))),
    )


def _bar(rng: random.Random, sym: str, ts: int, prev_close: float, falling: bool) -> Bar:
    if falling:  # a panic bar: down 0.3-1.5 % on 4-15x volume
        o = prev_close
        c = o * (1 - rng.uniform(0.003, 0.015))
        volume = rng.uniform(4_000, 15_000)
    else:
        o = prev_close * (1 + rng.gauss(0, 0.001))
        c = o * (1 + rng.gauss(0.0003, 0.003))
        volume = rng.uniform(0, 1_000)
    h = max(o, c) * (1 + abs(rng.gauss(0, 0.001)))
    lo = min(o, c) * (1 - abs(rng.gauss(0, 0.001)))
    o, h, lo, c = (round(x, 2) for x in (o, h, lo, c))
    h, lo = max(h, o, c), min(lo, o, c)
    return Bar(sym, ts, o, h, lo, c, round(volume, rng.choice([0, 1, 3, 6])))


def make_bars(rng: random.Random, symbols: list, minutes: int) -> list:
    """Raw bars in arrival order (see the module docstring)."""
    price = {s: rng.uniform(20, 300) for s in symbols}
    falling = {s: 0 for s in symbols}
    history = {s: [] for s in symbols}
    skipped = {s: [] for s in symbols}
    out = []
    ts = T0
    for _ in range(minutes):
        r = rng.random()
        ts += 60 * (1 if r < 0.93 else rng.randint(2, 20) if r < 0.99 else rng.randint(300, 900))
        this_minute = []
        for s in symbols:
            if rng.random() < 0.1:
                skipped[s].append(ts)
                continue
            if not falling[s] and rng.random() < 0.04:
                falling[s] = rng.randint(1, 4)
            b = _bar(rng, s, ts, price[s], falling[s] > 0)
            falling[s] = max(0, falling[s] - 1)
            price[s] = b.close
            if rng.random() < 0.02:
                this_minute.append(_corrupt(rng, b))
                continue
            history[s].append(b)
            this_minute.append(b)
        for s in symbols:
            x = rng.random()
            if x < 0.02 and history[s]:
                this_minute.append(copy.copy(rng.choice(history[s][-5:])))
            elif x < 0.04 and skipped[s]:
                this_minute.append(_bar(rng, s, rng.choice(skipped[s][-5:]), price[s], False))
        rng.shuffle(this_minute)
        by_sym = {}
        for b in this_minute:
            by_sym.setdefault(b.symbol, []).append(b)
        pos = {k: 0 for k in by_sym}
        for b in this_minute:
            out.append(by_sym[b.symbol][pos[b.symbol]])
            pos[b.symbol] += 1
    return out


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cfg=configs(),
    n_symbols=st.integers(1, 4),
    n_parts=st.integers(1, 3),
    minutes=st.integers(60, 160),
    seed=st.integers(0, 2**32 - 1),
    columnar=st.booleans(),
)
def test_strategy_types_stream_matches_batch(cfg, n_symbols, n_parts, minutes, seed, columnar):
    rng = random.Random(seed)
    raw = make_bars(rng, SYMBOLS[:n_symbols], minutes)
    ref = run_reference([copy.copy(b) for b in raw], cfg)
    sym_outs, outs = run_stream([copy.copy(b) for b in raw], cfg, rng, n_parts, columnar)

    dead = [(d.symbol, d.ts, d.reason) for o in sym_outs for d in o.dead_letters]
    assert sorted(dead, key=repr) == sorted(ref.dead, key=repr)
    assert sum(o.applied_bars for o in outs) == len(ref.accepted)
    filtered = sorted((astuple(s) for o in sym_outs for s in o.filtered), key=repr)
    assert filtered == sorted((astuple(s) for s in ref.filtered), key=repr)
    buys = [astuple(s) for o in sym_outs for sigs in o.signals.values() for s in sigs if s.side == "buy"]
    assert sorted(buys, key=repr) == sorted((astuple(s) for s in ref.signals if s.side == "buy"), key=repr)
    # a bar's signals in configuration order, as the reference orders them
    by_bar = {}
    for o in sym_outs:
        for ts, sigs in o.signals.items():
            by_bar.setdefault((sigs[0].symbol, ts), []).extend(s.strategy_id for s in sigs if s.side == "buy")
    want = {}
    for s in ref.signals:
        if s.side == "buy":
            want.setdefault((s.symbol, s.ts), []).append(s.strategy_id)
    assert {k: v for k, v in by_bar.items() if v} == want
    for name in ("orders", "fills", "rejections", "trades"):
        got = [astuple(x) for o in outs for x in getattr(o, name)]
        assert got == [astuple(x) for x in getattr(ref, name)], name
