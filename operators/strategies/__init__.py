"""Strategy types: one module per kind of alpha (see `base` for the interface).

`TYPES` maps a configuration entry's `type` to its operator, in the order
their signals are produced; `operators.signals.SignalRules` resolves the
types a configuration uses. A new type: its configuration model in
`operators/config.py` (`STRATEGY_CONFIGS` and `AnyStrategy`), its module
here, and a line below (docs/strategies.md lists the tests to write).
"""
from __future__ import annotations

from operators.strategies import panic_rebound, sma_cross
from operators.strategies.base import SignalTerms, StrategyType

TYPES: dict = {
    sma_cross.NAME: sma_cross.TYPE,
    panic_rebound.NAME: panic_rebound.TYPE,
}

__all__ = ["TYPES", "SignalTerms", "StrategyType"]
