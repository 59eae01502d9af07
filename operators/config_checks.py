"""Configurations that run but cannot do what they seem to say: found at
start-up and said as warnings (pure: no I/O).

`never_entering(config)`: strategies whose every BUY the signal filter drops
(spec section 2: confidence below `signals.min_confidence`, or risk/reward =
take_profit_pct / stop_loss_pct below `signals.min_risk_reward`), so they
can never open a position. The comparison is the filter's own (floats, as
`operators.signals` computes them).
"""
from __future__ import annotations

from operators.config import CONSENSUS, TradingConfig

EXIT_KEYS = ("take_profit_pct", "stop_loss_pct")


def _exit_value(config: TradingConfig, strategy, key: str) -> float:
    """The strategy's own exit setting where the model has one (spec v2:
    per-strategy `exit:`), else the top-level one."""
    own = getattr(strategy, "exit", None) if strategy is not None else None
    value = getattr(own, key, None) if own is not None else None
    return getattr(config.exit, key) if value is None else value


def _strategy_id(strategy) -> str:
    return getattr(strategy, "id", None) or getattr(strategy, "strategy_id")


def never_entering(config: TradingConfig) -> list[str]:
    """One sentence per strategy whose BUYs are all filtered out."""
    signals = config.signals
    if signals.aggregation == "independent":
        entries = [(_strategy_id(s), s, getattr(s, "confidence", None)) for s in config.strategies]
    else:  # consensus: its confidence is a mean of the pairs', at most their highest
        pairs = [s for s in config.strategies if getattr(s, "type", "sma_cross") == "sma_cross"]
        best = max((s.confidence for s in pairs), default=None)
        entries = [(CONSENSUS, None, best)] + [
            (_strategy_id(s), s, getattr(s, "confidence", None)) for s in config.strategies
            if getattr(s, "type", "sma_cross") != "sma_cross"]
    out = []
    for sid, strategy, confidence in entries:
        tp, sl = (_exit_value(config, strategy, k) for k in EXIT_KEYS)
        if confidence is not None and confidence < signals.min_confidence:
            out.append(f"strategy {sid} can never enter: its confidence {confidence:g} is below "
                       f"signals.min_confidence {signals.min_confidence:g}, so every BUY is filtered")
        elif tp / sl < signals.min_risk_reward:
            out.append(f"strategy {sid} can never enter: risk/reward {tp / sl:.2f} (take_profit_pct {tp:g} / "
                       f"stop_loss_pct {sl:g}) is below signals.min_risk_reward {signals.min_risk_reward:g}, so "
                       f"every BUY is filtered")
    return out
