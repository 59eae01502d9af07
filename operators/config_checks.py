"""Configurations that run but cannot do what they seem to say: found at
start-up and said as warnings (pure: no I/O).

`never_entering(config)`: strategies whose every BUY the signal filter drops
(spec section 2: confidence below `signals.min_confidence`, or risk/reward =
take_profit_pct / stop_loss_pct, the strategy's own exit settings, below
`signals.min_risk_reward`), so they can never open a position. The
comparison is the filter's own (`operators.strategies.base.SignalTerms`).
"""
from __future__ import annotations

from operators.config import CONSENSUS, TradingConfig


def _confidence(config: TradingConfig, strategy_id: str) -> float | None:
    """The highest confidence a strategy's BUY can carry: its own; the
    consensus's is a mean of the pairs' that are above, at most their highest."""
    if strategy_id == CONSENSUS:
        return max((s.confidence for s in config.sma_strategies()), default=None)
    return next(s.confidence for s in config.strategies if s.strategy_id == strategy_id)


def never_entering(config: TradingConfig) -> list[str]:
    """One sentence per strategy whose BUYs are all filtered out, configuration order."""
    signals = config.signals
    out = []
    for sid, exit_ in config.strategy_exits().items():
        tp, sl = exit_.take_profit_pct, exit_.stop_loss_pct
        confidence = _confidence(config, sid)
        if confidence is not None and confidence < signals.min_confidence:
            out.append(f"strategy {sid} can never enter: its confidence {confidence:g} is below "
                       f"signals.min_confidence {signals.min_confidence:g}, so every BUY is filtered")
        elif tp / sl < signals.min_risk_reward:
            out.append(f"strategy {sid} can never enter: risk/reward {tp / sl:.2f} (take_profit_pct {tp:g} / "
                       f"stop_loss_pct {sl:g}) is below signals.min_risk_reward {signals.min_risk_reward:g}, so "
                       f"every BUY is filtered")
    return out
