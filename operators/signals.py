"""Signals of a symbol's bars (spec sections 2 and 2a), across strategy types.

`SignalRules` is everything signal generation needs from the configuration,
resolved once: the strategy types it uses (`operators.strategies.TYPES`),
each with its rules, and every strategy id's configuration rank. Each type
keeps its own state per symbol; a bar's signals of several types are put in
configuration order (the order the portfolio takes its BUYs).
"""
from __future__ import annotations

from dataclasses import dataclass

from operators.config import TradingConfig
from operators.strategies import TYPES
from operators.types import Bar


@dataclass(frozen=True, slots=True)
class SignalRules:
    groups: tuple  # (StrategyType, its rules) for each type the configuration uses, TYPES order
    rank: dict  # strategy id -> configuration order

    @classmethod
    def from_config(cls, cfg: TradingConfig) -> "SignalRules":
        groups = []
        for kind in TYPES.values():
            rules = kind.resolve(cfg)
            if rules is not None:
                groups.append((kind, rules))
        return cls(tuple(groups), {sid: i for i, sid in enumerate(cfg.strategy_ids())})

    def rules_of(self, name: str):
        """The resolved rules of strategy type `name`, None when unused."""
        for kind, rules in self.groups:
            if kind.name == name:
                return rules
        return None

    def in_order(self, signals: list) -> list:
        """Signals of several types in (bar time, configuration) order."""
        rank = self.rank
        signals.sort(key=lambda s: (s.ts, rank[s.strategy_id]))
        return signals


@dataclass(slots=True)
class SignalEngine:
    """One symbol's state of every strategy type (bar-at-a-time form)."""

    rules: SignalRules
    states: list  # per group of `rules.groups`

    @classmethod
    def new(cls, rules: SignalRules) -> "SignalEngine":
        return cls(rules, [kind.new_state(r) for kind, r in rules.groups])

    def step(self, bar: Bar) -> list:
        """Apply one accepted bar: its signals, filtered ones included."""
        out = None
        several = False
        for (kind, rules), state in zip(self.rules.groups, self.states):
            sigs = kind.step(rules, state, bar)
            if sigs:
                if out is None:
                    out = sigs
                else:
                    out += sigs
                    several = True
        if out is None:
            return []
        return self.rules.in_order(out) if several else out

    def state_of(self, name: str):
        for (kind, _), state in zip(self.rules.groups, self.states):
            if kind.name == name:
                return state
        return None

    @property
    def smas(self):
        """The sma_cross windows (SmaBank), None without sma_cross strategies."""
        state = self.state_of("sma_cross")
        return state.smas if state is not None else None
