"""SMA-crossover signals per (fast, slow) pair and their aggregation
(spec section 2): `independent`, `majority` and `weighted`.

`SignalEngine` is a symbol's indicator state; `step(bar)` applies one
accepted bar and returns that bar's signals, filtered ones included (their
`filtered_reason` is set).
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from operators.config import CONSENSUS, TradingConfig
from operators.sma import SmaBank, compare_means, to_micros
from operators.types import BUY, SELL, Bar, Signal


@dataclass(slots=True)
class PairSpec:
    strategy_id: str
    fast: int
    slow: int
    confidence: float
    weight: int  # confidence as an integer weight, for exact weighted scores


@dataclass(frozen=True, slots=True)
class SignalRules:
    """Everything signal generation needs from the configuration, resolved once."""

    pairs: tuple
    aggregation: str
    min_confidence: float
    min_risk_reward: float
    min_agree: int
    threshold: Fraction
    take_profit_pct: float
    stop_loss_pct: float
    risk_reward: float
    periods: tuple

    @classmethod
    def from_config(cls, cfg: TradingConfig) -> "SignalRules":
        confs = [Fraction(str(s.confidence)) for s in cfg.strategies]
        denom = 1
        for c in confs:
            denom = denom * c.denominator // _gcd(denom, c.denominator)
        pairs = tuple(
            PairSpec(s.strategy_id, s.fast, s.slow, s.confidence, int(c * denom))
            for s, c in zip(cfg.strategies, confs)
        )
        periods = tuple(sorted({p for s in cfg.strategies for p in (s.fast, s.slow)}))
        tp, sl = cfg.exit.take_profit_pct, cfg.exit.stop_loss_pct
        return cls(
            pairs=pairs,
            aggregation=cfg.signals.aggregation,
            min_confidence=cfg.signals.min_confidence,
            min_risk_reward=cfg.signals.min_risk_reward,
            min_agree=cfg.signals.min_agree,
            threshold=Fraction(str(cfg.signals.weighted_threshold)),
            take_profit_pct=tp,
            stop_loss_pct=sl,
            risk_reward=tp / sl,
            periods=periods,
        )


def filter_reason(side: str, confidence: float, risk_reward: float, min_confidence: float,
                  min_risk_reward: float) -> str | None:
    """Why a signal is dropped before the portfolio (spec section 2), or None:
    a BUY below min_confidence or min_risk_reward."""
    if side != BUY:
        return None
    if confidence < min_confidence:
        return "low_confidence"
    if risk_reward < min_risk_reward:
        return "low_risk_reward"
    return None


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a


@dataclass(slots=True)
class SignalEngine:
    rules: SignalRules
    smas: SmaBank
    prev_rel: list  # per pair: -1/0/1 (sign of fast - slow), None while undefined
    prev_agg: object = None  # majority: above-count >= min_agree; weighted: score

    @classmethod
    def new(cls, rules: SignalRules) -> "SignalEngine":
        return cls(rules, SmaBank.for_periods(rules.periods), [None] * len(rules.pairs))

    def relations(self) -> list:
        """Current sign(fast - slow) per pair, None where undefined."""
        smas = self.smas
        out = []
        for p in self.rules.pairs:
            s_slow = smas.sum_of(p.slow)
            if s_slow is None:
                out.append(None)
            else:
                out.append(compare_means(smas.sum_of(p.fast), p.fast, s_slow, p.slow))
        return out

    def step(self, bar: Bar) -> list:
        self.smas.push(to_micros(bar.close))
        rel = self.relations()
        prev = self.prev_rel
        self.prev_rel = rel
        rules = self.rules
        if rules.aggregation == "independent":
            out = []
            for p, before, now in zip(rules.pairs, prev, rel):
                if before is None or now is None:
                    continue
                if before <= 0 and now > 0:
                    out.append(self._signal(p.strategy_id, BUY, bar, p.confidence))
                elif before >= 0 and now < 0:
                    out.append(self._signal(p.strategy_id, SELL, bar, p.confidence))
            return out
        if rules.aggregation == "majority":
            return self._majority(bar, prev, rel)
        return self._weighted(bar, rel)

    def _majority(self, bar: Bar, prev: list, rel: list) -> list:
        rules = self.rules
        above = [p for p, r in zip(rules.pairs, rel) if r is not None and r > 0]
        agree = len(above) >= rules.min_agree
        was_agree = self.prev_agg
        self.prev_agg = agree
        crossed_up = any(
            b is not None and n is not None and b <= 0 and n > 0 for b, n in zip(prev, rel)
        )
        if crossed_up and agree:
            conf = sum(p.confidence for p in above) / len(above)
            return [self._signal(CONSENSUS, BUY, bar, conf)]
        # SELL on the bar agreement is lost (not on every bar without it):
        # a consensus position always opens while agreement holds.
        if not agree and was_agree:
            return [self._signal(CONSENSUS, SELL, bar, _mean_conf(rules.pairs))]
        return []

    def _weighted(self, bar: Bar, rel: list) -> list:
        rules = self.rules
        defined = [(p, r) for p, r in zip(rules.pairs, rel) if r is not None]
        if not defined:
            return []
        total = sum(p.weight for p, _ in defined)
        score = Fraction(sum(p.weight * r for p, r in defined), total)
        before = self.prev_agg
        self.prev_agg = score
        if before is None:
            return []
        thr = rules.threshold
        if before <= thr < score:
            above = [p for p, r in defined if r > 0]
            conf = sum(p.confidence for p in above) / len(above)
            return [self._signal(CONSENSUS, BUY, bar, conf)]
        if before >= 0 > score:
            return [self._signal(CONSENSUS, SELL, bar, _mean_conf(rules.pairs))]
        return []

    def _signal(self, strategy_id: str, side: str, bar: Bar, confidence: float) -> Signal:
        r = self.rules
        sig = Signal(
            strategy_id, bar.symbol, side, bar.ts, bar.close, confidence,
            r.take_profit_pct, r.stop_loss_pct, r.risk_reward,
        )
        sig.filtered_reason = filter_reason(side, confidence, r.risk_reward, r.min_confidence,
                                            r.min_risk_reward)
        return sig


def _mean_conf(pairs) -> float:
    return sum(p.confidence for p in pairs) / len(pairs)
