"""The strategy-type interface: what every kind of alpha provides.

A strategy *type* (`sma_cross`, `panic_rebound`, ...) turns one symbol's
accepted bars into signals. It is one module in `operators/strategies/`
with one `StrategyType` object, registered in `operators.strategies.TYPES`:

- `resolve(cfg)`: its rules, resolved once from the configuration (every
  entry of this type, its parameters and signal terms); None when the
  configuration has no entry of this type;
- `new_state(rules)` / `step(rules, state, bar)`: one symbol's state and
  the bar-at-a-time step (`operators.symbol_stage`): the bar's signals;
- `new_block_state(rules)` / `step_block(rules, state, block)`: the same on
  a chunk of the symbol's accepted bars as columns (`operators.columnar`,
  the flow's hot path), with the same signals (a property test pins that);
- `snapshot(state)`: a copy for Bytewax recovery (state is plain data).

Signals are built by `SignalTerms.signal`, which applies the BUY filters
(`min_confidence`, `min_risk_reward` from the strategy's own exit settings)
the same way for every type. Operators never read the wall clock: a type
that needs the trading day takes it from the bar's timestamp.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

from operators.config import TradingConfig
from operators.types import BUY, Bar, Signal


@dataclass(frozen=True, slots=True)
class SignalTerms:
    """What one strategy's signals carry, and the BUY filters (spec section 2)."""

    strategy_id: str
    strategy_type: str
    take_profit_pct: float
    stop_loss_pct: float
    risk_reward: float
    min_confidence: float
    min_risk_reward: float

    @classmethod
    def of(cls, cfg: TradingConfig, strategy_id: str, strategy_type: str) -> "SignalTerms":
        exit_ = cfg.strategy_exits()[strategy_id]  # its own, its type's default, or the top level
        tp, sl = exit_.take_profit_pct, exit_.stop_loss_pct
        return cls(strategy_id, strategy_type, tp, sl, tp / sl, cfg.signals.min_confidence,
                   cfg.signals.min_risk_reward)

    def filter_reason(self, side: str, confidence: float) -> str | None:
        """Why a signal of this strategy is dropped before the portfolio, or
        None: a BUY below `min_confidence` or `min_risk_reward`."""
        if side == BUY:
            if confidence < self.min_confidence:
                return "low_confidence"
            if self.risk_reward < self.min_risk_reward:
                return "low_risk_reward"
        return None

    def signal(self, symbol: str, side: str, ts: int, price: float, confidence: float) -> Signal:
        return Signal(self.strategy_id, symbol, side, ts, price, confidence, self.take_profit_pct,
                      self.stop_loss_pct, self.risk_reward, self.filter_reason(side, confidence),
                      self.strategy_type)


class StrategyType:
    """Base of the strategy types (see the module docstring)."""

    name: str = ""

    def resolve(self, cfg: TradingConfig):
        raise NotImplementedError

    def new_state(self, rules):
        raise NotImplementedError

    def step(self, rules, state, bar: Bar) -> list:
        raise NotImplementedError

    def new_block_state(self, rules):
        raise NotImplementedError

    def step_block(self, rules, state, block) -> list:
        """Signals (filtered ones too) of a chunk of accepted bars (a
        `BarBlock`, strictly increasing times), in bar order; a bar's
        signals in configuration order."""
        raise NotImplementedError

    def snapshot(self, state):
        return copy.deepcopy(state)
