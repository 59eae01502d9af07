"""Validated trading configuration (spec section 7).

Pure models: reading the YAML file and the environment is the job of
`connectors.config`. Unknown keys, wrong types and impossible values are
rejected once, at start-up.

Bounds (docs/trading-rules.md, "Configuration bounds"): percentages are
fractions (0.02 = 2 %). Exit distances are above 0 and at most 0.5 (a 50 %
target or stop is no longer a minute-bar exit: `take_profit_pct: 2` is a
typo for 0.02); the daily drawdown below 1; slippage at most 1,000 bps; a
time stop at most 30 days.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Fraction = Field(gt=0, lt=1)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StrategyConfig(_Strict):
    fast: int = Field(ge=1)
    slow: int = Field(ge=2)
    confidence: float = Field(ge=0, le=1)

    @model_validator(mode="after")
    def _fast_below_slow(self) -> "StrategyConfig":
        if self.fast >= self.slow:
            raise ValueError(f"fast ({self.fast}) must be below slow ({self.slow})")
        return self

    @property
    def strategy_id(self) -> str:
        return f"sma_{self.fast}_{self.slow}"


class SignalConfig(_Strict):
    aggregation: Literal["independent", "majority", "weighted"] = "independent"
    min_confidence: float = Field(0.7, ge=0, le=1)
    min_risk_reward: float = Field(2.0, ge=0)
    min_agree: int = Field(2, ge=1)
    weighted_threshold: float = Field(0.5, gt=0, lt=1)


MAX_EXIT_PCT = 0.5  # farther than 50 % is not a minute-bar exit (and 2 is a typo for 0.02)


class ExitConfig(_Strict):
    take_profit_pct: float = Field(0.02, gt=0, le=MAX_EXIT_PCT)
    stop_loss_pct: float = Field(0.01, gt=0, le=MAX_EXIT_PCT)
    trailing_stop: bool = False
    trailing_activation_pct: float = Field(0.005, ge=0, le=MAX_EXIT_PCT)
    trailing_pct: float = Field(0.005, gt=0, le=MAX_EXIT_PCT)
    time_stop_minutes: int = Field(60, ge=1, le=30 * 24 * 60)
    time_stop_min_move_pct: float = Field(0.005, ge=0, le=MAX_EXIT_PCT)


class RiskConfig(_Strict):
    initial_cash: float = Field(100_000, gt=0)
    risk_per_trade_pct: float = Field(0.005, gt=0, le=1)
    max_position_pct: float = Field(0.10, gt=0, le=1)
    max_positions: int = Field(10, ge=1)
    max_positions_per_symbol: int = Field(3, ge=1)
    max_consecutive_losses: int = Field(3, ge=1)
    max_daily_drawdown_pct: float = Field(0.05, gt=0, lt=1)
    max_consecutive_order_failures: int = Field(5, ge=1)


class ExecutionConfig(_Strict):
    slippage_bps: float = Field(1.0, ge=0, le=1_000)
    commission_per_share: float = Field(0.0, ge=0)


class StreamConfig(_Strict):
    feed: Literal["iex", "sip", "test"] = "iex"
    subscribe_batch_size: int = Field(10, ge=1)
    subscribe_batch_delay_s: float = Field(1.0, ge=0)


def _default_strategies() -> list[StrategyConfig]:
    return [
        StrategyConfig(fast=5, slow=15, confidence=0.70),
        StrategyConfig(fast=10, slow=30, confidence=0.75),
        StrategyConfig(fast=20, slow=50, confidence=0.80),
    ]


class TradingConfig(_Strict):
    strategies: tuple[StrategyConfig, ...] = Field(
        default_factory=lambda: tuple(_default_strategies()), min_length=1
    )
    signals: SignalConfig = SignalConfig()
    exit: ExitConfig = ExitConfig()
    risk: RiskConfig = RiskConfig()
    execution: ExecutionConfig = ExecutionConfig()
    stream: StreamConfig = StreamConfig()

    @model_validator(mode="after")
    def _unique_pairs(self) -> "TradingConfig":
        ids = [s.strategy_id for s in self.strategies]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate strategy pair(s): {', '.join(dupes)}")
        if self.signals.aggregation == "majority" and self.signals.min_agree > len(
            self.strategies
        ):
            raise ValueError(
                f"signals.min_agree ({self.signals.min_agree}) exceeds the "
                f"number of strategies ({len(self.strategies)})"
            )
        return self

    def strategy_ids(self) -> list[str]:
        """Strategy ids in configuration order (the order exits and entries run)."""
        if self.signals.aggregation == "independent":
            return [s.strategy_id for s in self.strategies]
        return [CONSENSUS]


CONSENSUS = "consensus"


class ConfigError(ValueError):
    """A configuration that must not start: stop with this one-line message."""


def describe_validation_error(exc: Exception) -> str:
    """One line naming the first offending field, from a pydantic ValidationError."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    first = errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "config"
    msg = first.get("msg", "invalid")
    if first.get("type") == "extra_forbidden":
        return f"{where}: unknown key"
    value = first.get("input")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        msg = f"{msg} (got {value})"
        if where.endswith("_pct") and value > 1:
            msg += ": percentages are fractions, 0.02 = 2 %"
    return f"{where}: {msg}"
