"""Signals for several configurations at once: the symbol stage of a sweep.

A sweep computes each distinct strategy instance once per symbol, for the
union of its configurations' strategies, and gives every configuration
exactly the signals it would get alone. Nothing here knows a trading rule:
the union is itself a few configurations whose strategies each type
resolves and steps as it does in a backtest (`operators/strategies/`).

- the symbol stage runs the plan's *groups*, each a `SignalRules` with its
  filters off (min_confidence 0, min_risk_reward 0: every signal comes out):
  - one group of every distinct strategy that acts on its own (every entry
    of an `independent` configuration; with `majority` / `weighted`, the
    entries of types other than `sma_cross`). Entries are the same instance
    when they differ only in the keys that label their signals
    (`SIGNAL_LABELS` of the type's configuration model: id, confidence,
    exit), so an SMA pair, or a panic parameter set, is computed once
    whatever its id, confidence or exits; its union id is `u{n}`;
  - one group per distinct consensus setup (`majority` / `weighted` with its
    sma_cross pairs, confidences, and min_agree or threshold), whose
    `consensus` signals are renamed `consensus@{n}`;
- a configuration's `SignalRoute` picks its strategies' signals out of the
  union, puts a bar's in its configuration order, and makes each with that
  strategy's own `SignalTerms` (its id, type, take-profit / stop-loss,
  risk/reward from them, and its configuration's filters): the same
  `SignalTerms.signal` a backtest uses, with the entry's own confidence.

When every configuration has the same signal rules (a grid over risk limits,
costs, trailing, or exits that do not reach the signals), or there is one
configuration (a backtest), the plan is simply that configuration's own rules
and no route: the symbol stage is then exactly the backtest's.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from operators.columnar import BarBlock, ColumnarSymbolState, admit_block, block_signals, snapshot_state
from operators.config import CONSENSUS, TradingConfig
from operators.signals import SignalRules
from operators.strategies import SignalTerms
from operators.strategies.sma_cross import NAME as SMA_CROSS
from operators.types import SymbolOutput

UNION_SUFFIX = "@"  # consensus@{n}: a union group's consensus signals
UNION_PREFIX = "u"  # u{n}: a union strategy that acts on its own


@dataclass(frozen=True)
class SignalRoute:
    """One configuration's signals out of the union's."""

    # (union strategy id, rank in configuration order, SignalTerms of this
    #  configuration's strategy, its confidence | None: the union signal's)
    sources: tuple

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
            rank, terms, confidence = src
            sig = terms.signal(u.symbol, u.side, u.ts, u.price,
                               u.confidence if confidence is None else confidence)
            if sig.filtered_reason is None:
                mine.append((rank, sig))
        if not mine:
            return None
        if len(mine) > 1:
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
    renamed: tuple  # per group: the name its `consensus` signals take, or None
    routes: tuple  # per configuration: SignalRoute, or None (the union's signals are its own)

    @classmethod
    def for_configs(cls, configs: list) -> "SignalPlan":
        """The plan for TradingConfigs (in config_id order)."""
        own = [SignalRules.from_config(c) for c in configs]
        if all(r == own[0] for r in own):
            return cls((own[0],), (None,), (None,) * len(configs))
        alone: dict = {}  # instance key -> union entry (with its union id), first-seen order
        setups: dict = {}  # consensus setup key -> (its union configuration, name)
        routes, shared = [], {}  # equal routes are one object (a shard's configurations share picks)
        for cfg in configs:
            rank = {sid: i for i, sid in enumerate(cfg.strategy_ids())}
            independent = cfg.signals.aggregation == "independent"
            sources = []
            for s in cfg.strategies:
                if s.type == SMA_CROSS and not independent:
                    continue  # combined into the consensus below
                key = _instance_key(s)
                if key not in alone:
                    alone[key] = {**s.model_dump(exclude={"exit"}), "id": f"{UNION_PREFIX}{len(alone)}"}
                confidence = s.confidence if "confidence" in s.SIGNAL_LABELS else None
                sources.append((alone[key]["id"], rank[s.strategy_id],
                                SignalTerms.of(cfg, s.strategy_id, s.type), confidence))
            pairs = cfg.sma_strategies()
            if pairs and not independent:
                key, setup = _consensus_setup(cfg, pairs)
                if key not in setups:
                    setups[key] = (setup, f"{CONSENSUS}{UNION_SUFFIX}{len(setups)}")
                sources.append((setups[key][1], rank[CONSENSUS], SignalTerms.of(cfg, CONSENSUS, SMA_CROSS),
                                None))
            route = SignalRoute(tuple(sources))
            routes.append(shared.setdefault(route, route))
        groups, renamed = [], []
        if alone:
            groups.append(_union_rules(list(alone.values()), {"aggregation": "independent"}))
            renamed.append(None)
        for setup, name in setups.values():
            groups.append(_union_rules(*setup))
            renamed.append(name)
        return cls(tuple(groups), tuple(renamed), tuple(routes))

    def new_state(self) -> "UnionSymbolState":
        return UnionSymbolState([ColumnarSymbolState() for _ in self.groups])

    def snapshot(self, state: "UnionSymbolState") -> "UnionSymbolState":
        """A copy for recovery, each group's state as its strategy types make it."""
        return UnionSymbolState([snapshot_state(s, rules) for s, rules in zip(state.states, self.groups)])


def _instance_key(entry) -> tuple:
    """What decides when a strategy entry signals: its type and every key but its labels."""
    return entry.type, json.dumps(entry.model_dump(exclude=set(entry.SIGNAL_LABELS)), sort_keys=True)


def _consensus_setup(cfg: TradingConfig, pairs: list) -> tuple:
    """(key, (strategies, signals)) of a majority / weighted configuration's consensus."""
    agg = cfg.signals.aggregation
    # majority reads min_agree, weighted its threshold; both the pairs and their confidences
    param = ("min_agree", cfg.signals.min_agree) if agg == "majority" else \
        ("weighted_threshold", cfg.signals.weighted_threshold)
    key = (agg, param, tuple((s.fast, s.slow, s.confidence) for s in pairs))
    strategies = [{"fast": s.fast, "slow": s.slow, "confidence": s.confidence, "id": f"s{i}"}
                  for i, s in enumerate(pairs)]
    return key, (strategies, {"aggregation": agg, param[0]: param[1]})


def _union_rules(strategies: list, signals: dict) -> SignalRules:
    """A group's rules: its strategies, filters off (every signal comes out)."""
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
    for g, (rules, name) in enumerate(zip(plan.groups, plan.renamed)):
        if name is None:
            block_signals(state.states[g], rules, acc, out)
            continue
        part = SymbolOutput()
        block_signals(state.states[g], rules, acc, part)
        for ts, sigs in part.signals.items():
            for s in sigs:
                s.strategy_id = name
            out.signals.setdefault(ts, []).extend(sigs)
    return acc
