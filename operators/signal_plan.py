"""Signals for several configurations at once: the symbol stage of a sweep.

A sweep computes each distinct indicator and strategy once per symbol, for
the union of its configurations' strategies, and gives every configuration
exactly the signals it would get alone:

- the symbol stage runs the plan's *groups*, each a `SignalRules` whose
  filters are off (min_confidence 0, min_risk_reward 0, so every crossing is
  emitted): one group with every distinct `sma_cross` pair of the
  configurations that aggregate `independent`ly (each pair's windows and
  crossings do not depend on the other pairs), plus one group per distinct
  consensus setup (`majority` / `weighted` with its pairs, confidences,
  min_agree and threshold), whose signals are renamed `consensus@{group}`;
- a configuration's `SignalRoute` picks its strategies' signals out of the
  union, in its configuration order, under its own strategy ids, confidences,
  take-profit / stop-loss and filters (`signals.filter_reason`, the one copy
  of the rule).

When every configuration has the same signal rules (a grid over exits that
leave risk/reward alone, risk limits, costs), or there is one configuration
(a backtest), the plan is simply that configuration's own rules and no route:
the symbol stage is then exactly the backtest's.
"""
from __future__ import annotations

from dataclasses import dataclass

from operators.columnar import BarBlock, ColumnarSymbolState, admit_block, block_signals
from operators.config import CONSENSUS, TradingConfig
from operators.signals import SignalRules, filter_reason
from operators.types import Signal, SymbolOutput

UNION_SUFFIX = "@"  # consensus@{group}: a union group's consensus signals


@dataclass(frozen=True)
class SignalRoute:
    """One configuration's signals out of the union's."""

    sources: tuple  # (union strategy id, rank in configuration order, strategy id, confidence | None)
    min_confidence: float
    min_risk_reward: float
    take_profit_pct: float
    stop_loss_pct: float
    risk_reward: float

    def __post_init__(self):
        object.__setattr__(self, "_by_source", {s[0]: s[1:] for s in self.sources})

    def pick(self, union: list) -> list | None:
        """This configuration's passed signals at one (symbol, bar), in
        configuration order; None when there are none."""
        mine = []
        by_source = self._by_source
        for u in union:
            src = by_source.get(u.strategy_id)
            if src is None:
                continue
            rank, strategy_id, confidence = src
            conf = u.confidence if confidence is None else confidence
            if filter_reason(u.side, conf, self.risk_reward, self.min_confidence,
                             self.min_risk_reward) is not None:
                continue
            mine.append((rank, Signal(strategy_id, u.symbol, u.side, u.ts, u.price, conf,
                                      self.take_profit_pct, self.stop_loss_pct, self.risk_reward)))
        if not mine:
            return None
        mine.sort(key=lambda x: x[0])
        return [s for _, s in mine]

    def select(self, by_symbol: dict) -> dict:
        """symbol -> {ts: union signals} -> this configuration's, same shape."""
        out = {}
        for symbol, by_ts in by_symbol.items():
            picked = {}
            for ts, union in by_ts.items():
                sigs = self.pick(union)
                if sigs:
                    picked[ts] = sigs
            if picked:
                out[symbol] = picked
        return out


@dataclass(frozen=True)
class SignalPlan:
    groups: tuple  # SignalRules, each run once per symbol; group 0 also admits the bars
    renamed: tuple  # per group: True when its consensus signals become consensus@{group}
    routes: tuple  # per configuration: SignalRoute, or None (the union's signals are its own)

    @classmethod
    def for_configs(cls, configs: list) -> "SignalPlan":
        """The plan for TradingConfigs (in config_id order)."""
        own = [SignalRules.from_config(c) for c in configs]
        if all(r == own[0] for r in own):
            return cls((own[0],), (False,), (None,) * len(configs))
        groups, renamed, index = [], [], {}
        pairs: dict = {}  # (fast, slow) of independent configurations, first-seen order
        for cfg in configs:
            if cfg.signals.aggregation == "independent":
                for s in cfg.strategies:
                    pairs.setdefault((s.fast, s.slow), None)
        if pairs:
            groups.append(_union_rules([{"fast": f, "slow": s, "confidence": 1.0} for f, s in pairs],
                                       {"aggregation": "independent"}))
            renamed.append(False)
        routes = []
        shared: dict = {}  # equal routes are one object (a shard's configurations share their picks)
        for cfg, rules in zip(configs, own):
            if cfg.signals.aggregation == "independent":
                sources = tuple((p.strategy_id, i, p.strategy_id, p.confidence)
                                for i, p in enumerate(rules.pairs))
            else:
                key = (cfg.signals.aggregation, cfg.signals.min_agree, cfg.signals.weighted_threshold,
                       tuple((s.fast, s.slow, s.confidence) for s in cfg.strategies))
                if key not in index:
                    index[key] = len(groups)
                    groups.append(_union_rules(
                        [s.model_dump() for s in cfg.strategies],
                        {"aggregation": key[0], "min_agree": key[1], "weighted_threshold": key[2]}))
                    renamed.append(True)
                sources = ((f"{CONSENSUS}{UNION_SUFFIX}{index[key]}", 0, CONSENSUS, None),)
            route = SignalRoute(sources, rules.min_confidence, rules.min_risk_reward,
                                rules.take_profit_pct, rules.stop_loss_pct, rules.risk_reward)
            routes.append(shared.setdefault(route, route))
        return cls(tuple(groups), tuple(renamed), tuple(routes))

    def new_state(self) -> "UnionSymbolState":
        return UnionSymbolState([ColumnarSymbolState() for _ in self.groups])


def _union_rules(strategies: list, signals: dict) -> SignalRules:
    """A group's rules: its strategies, filters off (every crossing comes out)."""
    cfg = TradingConfig.model_validate({
        "strategies": strategies,
        "signals": {**signals, "min_confidence": 0.0, "min_risk_reward": 0.0}})
    return SignalRules.from_config(cfg)


@dataclass(slots=True)
class UnionSymbolState:
    """A symbol's state for a plan: states[0] admits bars (spec section 1) and
    holds group 0's windows; states[g] group g's windows."""

    states: list


def step_union(state: UnionSymbolState, plan: SignalPlan, block: BarBlock, origins,
               origin_prefix: str, out: SymbolOutput) -> BarBlock:
    """Admit a chunk and run every group's signals on the accepted bars."""
    acc = admit_block(state.states[0], block, origins, origin_prefix, out)
    if not len(acc):
        return acc
    for g, (rules, rename) in enumerate(zip(plan.groups, plan.renamed)):
        if not rename:
            block_signals(state.states[g], rules, acc, out)
            continue
        part = SymbolOutput()
        block_signals(state.states[g], rules, acc, part)
        name = f"{CONSENSUS}{UNION_SUFFIX}{g}"
        for ts, sigs in part.signals.items():
            for s in sigs:
                s.strategy_id = name
            out.signals.setdefault(ts, []).extend(sigs)
    return acc
