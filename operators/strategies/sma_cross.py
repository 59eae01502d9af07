"""`sma_cross`: SMA-crossover signals per (fast, slow) pair and their
aggregation (spec section 2): `independent`, `majority` and `weighted`.

Every `sma_cross` entry of the configuration is one pair; a symbol's pairs
share one window of closes. Aggregation combines these pairs only (other
types always act alone). SMAs are compared exactly, in integer
micro-dollars.

Two forms with the same signals: `step` applies one bar to a `SmaBank`
ring buffer (O(periods) per bar); `step_block` applies a chunk with numpy,
rolling sums from cumulative sums of the closes carried across chunks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from operators.config import CONSENSUS, TradingConfig
from operators.sma import SmaBank, compare_means, to_micros
from operators.strategies.base import SignalTerms, StrategyType
from operators.types import BUY, SELL, Bar

NAME = "sma_cross"
# Above this, products of window sums could overflow int64: use Python ints.
_EXACT_LIMIT = 2**62


@dataclass(frozen=True, slots=True)
class PairSpec:
    strategy_id: str
    fast: int
    slow: int
    confidence: float
    weight: int  # confidence as an integer weight, for exact weighted scores
    terms: SignalTerms | None  # its signals' terms (independent aggregation only)


@dataclass(frozen=True, slots=True)
class SmaCrossRules:
    pairs: tuple  # PairSpec, configuration order
    aggregation: str
    min_agree: int
    threshold: Fraction
    periods: tuple  # distinct periods, ascending
    consensus: SignalTerms | None  # majority / weighted: the consensus strategy's terms

    @classmethod
    def from_config(cls, cfg: TradingConfig) -> "SmaCrossRules | None":
        entries = cfg.sma_strategies()
        if not entries:
            return None
        agg = cfg.signals.aggregation
        confs = [Fraction(str(s.confidence)) for s in entries]
        denom = 1
        for c in confs:
            denom = denom * c.denominator // _gcd(denom, c.denominator)
        pairs = tuple(
            PairSpec(s.strategy_id, s.fast, s.slow, s.confidence, int(c * denom),
                     SignalTerms.of(cfg, s.strategy_id, NAME) if agg == "independent" else None)
            for s, c in zip(entries, confs)
        )
        return cls(
            pairs=pairs, aggregation=agg, min_agree=cfg.signals.min_agree,
            threshold=Fraction(str(cfg.signals.weighted_threshold)),
            periods=tuple(sorted({p for s in entries for p in (s.fast, s.slow)})),
            consensus=SignalTerms.of(cfg, CONSENSUS, NAME) if agg != "independent" else None,
        )

    def mean_confidence(self) -> float:
        return sum(p.confidence for p in self.pairs) / len(self.pairs)


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a


# ------------------------------------------------------------ bar at a time
@dataclass(slots=True)
class SmaCrossState:
    smas: SmaBank
    prev_rel: list  # per pair: -1/0/1 (sign of fast - slow), None while undefined
    prev_agg: object = None  # majority: above-count >= min_agree; weighted: score


def relations(rules: SmaCrossRules, smas: SmaBank) -> list:
    """Current sign(fast - slow) per pair, None where undefined."""
    out = []
    for p in rules.pairs:
        s_slow = smas.sum_of(p.slow)
        if s_slow is None:
            out.append(None)
        else:
            out.append(compare_means(smas.sum_of(p.fast), p.fast, s_slow, p.slow))
    return out


def step(rules: SmaCrossRules, state: SmaCrossState, bar: Bar) -> list:
    state.smas.push(to_micros(bar.close))
    rel = relations(rules, state.smas)
    prev = state.prev_rel
    state.prev_rel = rel
    if rules.aggregation == "independent":
        out = []
        for p, before, now in zip(rules.pairs, prev, rel):
            if before is None or now is None:
                continue
            if before <= 0 and now > 0:
                out.append(p.terms.signal(bar.symbol, BUY, bar.ts, bar.close, p.confidence))
            elif before >= 0 and now < 0:
                out.append(p.terms.signal(bar.symbol, SELL, bar.ts, bar.close, p.confidence))
        return out
    if rules.aggregation == "majority":
        return _majority(rules, state, bar, prev, rel)
    return _weighted(rules, state, bar, rel)


def _majority(rules: SmaCrossRules, state: SmaCrossState, bar: Bar, prev: list, rel: list) -> list:
    above = [p for p, r in zip(rules.pairs, rel) if r is not None and r > 0]
    agree = len(above) >= rules.min_agree
    was_agree = state.prev_agg
    state.prev_agg = agree
    crossed_up = any(
        b is not None and n is not None and b <= 0 and n > 0 for b, n in zip(prev, rel)
    )
    if crossed_up and agree:
        conf = sum(p.confidence for p in above) / len(above)
        return [rules.consensus.signal(bar.symbol, BUY, bar.ts, bar.close, conf)]
    # SELL on the bar agreement is lost (not on every bar without it):
    # a consensus position always opens while agreement holds.
    if not agree and was_agree:
        return [rules.consensus.signal(bar.symbol, SELL, bar.ts, bar.close, rules.mean_confidence())]
    return []


def _weighted(rules: SmaCrossRules, state: SmaCrossState, bar: Bar, rel: list) -> list:
    defined = [(p, r) for p, r in zip(rules.pairs, rel) if r is not None]
    if not defined:
        return []
    total = sum(p.weight for p, _ in defined)
    score = Fraction(sum(p.weight * r for p, r in defined), total)
    before = state.prev_agg
    state.prev_agg = score
    if before is None:
        return []
    thr = rules.threshold
    if before <= thr < score:
        above = [p for p, r in defined if r > 0]
        conf = sum(p.confidence for p in above) / len(above)
        return [rules.consensus.signal(bar.symbol, BUY, bar.ts, bar.close, conf)]
    if before >= 0 > score:
        return [rules.consensus.signal(bar.symbol, SELL, bar.ts, bar.close, rules.mean_confidence())]
    return []


# ------------------------------------------------------------ columnar
@dataclass(slots=True)
class SmaCrossBlockState:
    tail: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # last closes (micros)
    count: int = 0  # bars applied so far
    prev_rel: list | None = None  # per pair: -1/0/1 or None (undefined)
    prev_agg: object = None  # majority: bool; weighted: (num, den)


def step_block(rules: SmaCrossRules, state: SmaCrossBlockState, acc) -> list:
    m = len(acc)
    micros = np.rint(acc.close * 1_000_000).astype(np.int64)
    periods = rules.periods
    pmax = periods[-1]
    exact_int64 = (micros.max(initial=0) < _EXACT_LIMIT // (pmax * pmax * pmax)
                   and (len(state.tail) == 0 or state.tail.max() < _EXACT_LIMIT // (pmax ** 3)))
    series = np.concatenate((state.tail, micros))
    if not exact_int64:
        series = series.astype(object)
    k = len(state.tail)  # closes before this chunk that are in `series`
    csum = np.concatenate(([0], np.cumsum(series)))
    before = state.count  # bars applied before this chunk
    # window sums ending at chunk bar j (global index before + j): csum[k+j+1] - csum[k+j+1-n]
    end = np.arange(k + 1, k + m + 1)
    counts = before + np.arange(1, m + 1)  # bars applied up to and including bar j
    rel_now, defined_now = [], []
    for p in rules.pairs:
        s_fast = csum[end] - csum[np.maximum(end - p.fast, 0)]
        s_slow = csum[end] - csum[np.maximum(end - p.slow, 0)]
        left, right = s_fast * p.slow, s_slow * p.fast
        rel = (left > right).astype(np.int8) - (left < right).astype(np.int8)
        rel_now.append(rel)
        defined_now.append(counts >= p.slow)
    prev_rel = state.prev_rel or [None] * len(rules.pairs)
    # relation at the previous bar for each chunk bar (first one from the state)
    rel_prev, defined_prev = [], []
    for i, rel in enumerate(rel_now):
        r0 = prev_rel[i]
        rel_prev.append(np.concatenate(([r0 if r0 is not None else 0], rel[:-1])).astype(np.int8))
        defined_prev.append(np.concatenate(([r0 is not None], defined_now[i][:-1])))
    out: list = []
    agg = rules.aggregation
    if agg == "independent":
        for i, p in enumerate(rules.pairs):
            both = defined_prev[i] & defined_now[i]
            buys = np.flatnonzero(both & (rel_prev[i] <= 0) & (rel_now[i] > 0))
            sells = np.flatnonzero(both & (rel_prev[i] >= 0) & (rel_now[i] < 0))
            for j in buys.tolist():
                out.append(_signal(p.terms, acc, j, BUY, p.confidence))
            for j in sells.tolist():
                out.append(_signal(p.terms, acc, j, SELL, p.confidence))
        if len(rules.pairs) > 1 and out:
            out.sort(key=lambda s: s.ts)  # stable: a bar's signals stay in configuration order
    elif agg == "majority":
        _block_majority(state, rules, acc, rel_now, defined_now, rel_prev, defined_prev, out)
    else:
        _block_weighted(state, rules, acc, rel_now, defined_now, out)
    state.prev_rel = [int(r[-1]) if d[-1] else None for r, d in zip(rel_now, defined_now)]
    keep = min(pmax, len(series))
    state.tail = (np.asarray(series[len(series) - keep:], dtype=np.int64) if exact_int64
                  else series[len(series) - keep:])
    state.count = before + m
    return out


def _block_majority(state, rules, acc, rel_now, defined_now, rel_prev, defined_prev, out):
    m = len(acc)
    above = np.zeros(m, dtype=np.int64)
    crossed = np.zeros(m, dtype=bool)
    for i in range(len(rules.pairs)):
        above += (defined_now[i] & (rel_now[i] > 0))
        crossed |= defined_prev[i] & defined_now[i] & (rel_prev[i] <= 0) & (rel_now[i] > 0)
    agree = above >= rules.min_agree
    was = np.concatenate(([bool(state.prev_agg)], agree[:-1]))
    buys = crossed & agree
    sells = ~agree & was
    for j in np.flatnonzero(buys | sells).tolist():
        if buys[j]:
            confs = [p.confidence for i, p in enumerate(rules.pairs)
                     if defined_now[i][j] and rel_now[i][j] > 0]
            out.append(_signal(rules.consensus, acc, j, BUY, sum(confs) / len(confs)))
        else:
            out.append(_signal(rules.consensus, acc, j, SELL, rules.mean_confidence()))
    state.prev_agg = bool(agree[-1])


def _block_weighted(state, rules, acc, rel_now, defined_now, out):
    m = len(acc)
    num = np.zeros(m, dtype=np.int64)
    den = np.zeros(m, dtype=np.int64)
    for i, p in enumerate(rules.pairs):
        num += np.where(defined_now[i], p.weight * rel_now[i].astype(np.int64), 0)
        den += np.where(defined_now[i], p.weight, 0)
    tn, td = rules.threshold.numerator, rules.threshold.denominator
    prev = state.prev_agg
    for j in np.flatnonzero(den > 0).tolist():
        cur = (int(num[j]), int(den[j]))
        if prev is not None:
            b_num, b_den = prev
            if b_num * td <= tn * b_den and tn * cur[1] < cur[0] * td:
                confs = [p.confidence for i, p in enumerate(rules.pairs)
                         if defined_now[i][j] and rel_now[i][j] > 0]
                out.append(_signal(rules.consensus, acc, j, BUY, sum(confs) / len(confs)))
            elif b_num >= 0 > cur[0]:
                out.append(_signal(rules.consensus, acc, j, SELL, rules.mean_confidence()))
        prev = cur
    state.prev_agg = prev


def _signal(terms: SignalTerms, acc, j: int, side: str, confidence: float):
    return terms.signal(acc.symbol, side, int(acc.ts[j]), float(acc.close[j]), confidence)


class SmaCross(StrategyType):
    name = NAME

    def resolve(self, cfg: TradingConfig) -> SmaCrossRules | None:
        return SmaCrossRules.from_config(cfg)

    def new_state(self, rules: SmaCrossRules) -> SmaCrossState:
        return SmaCrossState(SmaBank.for_periods(rules.periods), [None] * len(rules.pairs))

    def step(self, rules: SmaCrossRules, state: SmaCrossState, bar: Bar) -> list:
        return step(rules, state, bar)

    def new_block_state(self, rules: SmaCrossRules) -> SmaCrossBlockState:
        return SmaCrossBlockState()

    def step_block(self, rules: SmaCrossRules, state: SmaCrossBlockState, block) -> list:
        return step_block(rules, state, block)


TYPE = SmaCross()
