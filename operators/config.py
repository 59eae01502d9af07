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

from decimal import Decimal
from typing import Annotated, ClassVar, Literal, NamedTuple, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

Fraction = Field(gt=0, lt=1)
MAX_EXIT_PCT = 0.5  # farther than 50 % is not a minute-bar exit (and 2 is a typo for 0.02)
MAX_TIME_STOP_MINUTES = 30 * 24 * 60


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# Strategy ids name orders (`{strategy}.{symbol}.{ts}.{leg}`) and Alpaca
# client_order_ids: no dots, short.
STRATEGY_ID = r"^[A-Za-z][A-Za-z0-9_-]{0,31}$"
CONSENSUS = "consensus"


class StrategyExitConfig(_Strict):
    """A strategy's own exit settings (`exit:` under its entry); a key left out
    falls back to its type's default, then to the top-level `exit` value.
    Trailing settings are global: any other key is refused."""

    take_profit_pct: float | None = Field(None, gt=0, le=MAX_EXIT_PCT)
    stop_loss_pct: float | None = Field(None, gt=0, le=MAX_EXIT_PCT)
    time_stop_minutes: int | None = Field(None, ge=1, le=MAX_TIME_STOP_MINUTES)
    time_stop_min_move_pct: float | None = Field(None, ge=0, le=MAX_EXIT_PCT)


class StrategyExit(NamedTuple):
    """One strategy's resolved exit settings (spec section 2)."""

    take_profit_pct: float
    stop_loss_pct: float
    time_stop_minutes: int
    time_stop_min_move_pct: float


class _Strategy(_Strict):
    id: str | None = Field(None, pattern=STRATEGY_ID)
    exit: StrategyExitConfig = StrategyExitConfig()

    # this type's defaults for the four exit settings (None: the top-level value)
    EXIT_DEFAULTS: ClassVar[dict] = {}
    # keys that only label an entry's signals or act after them (its id, the
    # confidence its signals carry, its exits): two entries of one type that
    # differ only in these signal at the same bars, so a sweep computes them
    # once (operators/signal_plan). A type whose signals depend on one of them
    # leaves it out.
    SIGNAL_LABELS: ClassVar[frozenset] = frozenset({"id", "confidence", "exit"})


class StrategyConfig(_Strategy):
    """`type: sma_cross` (the default): one (fast, slow) SMA pair."""

    type: Literal["sma_cross"] = "sma_cross"
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
        return self.id or f"sma_{self.fast}_{self.slow}"


SmaCrossConfig = StrategyConfig


def _whole_multiple(value: float, scale: int) -> bool:
    """Is `value` (as written: its shortest decimal text) a whole multiple of 1/scale?"""
    return (Decimal(repr(value)) * scale) % 1 == 0


class PanicReboundConfig(_Strategy):
    """`type: panic_rebound` (spec section 2a): buy the first rebound after a
    sharp drop on a volume spike."""

    type: Literal["panic_rebound"]
    drop_window: int = Field(15, ge=1)
    min_drop_pct: float = Field(0.015, gt=0, lt=1)
    volume_window: int = Field(30, ge=1)
    volume_mult: float = Field(3.0, gt=0)
    confidence: float = Field(0.75, ge=0, le=1)

    EXIT_DEFAULTS: ClassVar[dict] = {
        "take_profit_pct": 0.015, "stop_loss_pct": 0.0075, "time_stop_minutes": 240}

    @field_validator("min_drop_pct")
    @classmethod
    def _whole_bps(cls, v: float) -> float:
        if not _whole_multiple(v, 10_000):
            raise ValueError(f"must be a whole number of basis points (0.0001), not {v!r}")
        return v

    @field_validator("volume_mult")
    @classmethod
    def _hundredths(cls, v: float) -> float:
        if not _whole_multiple(v, 100):
            raise ValueError(f"must be a multiple of 0.01, not {v!r}")
        return v

    @property
    def drop_bps(self) -> int:
        return round(self.min_drop_pct * 10_000)

    @property
    def volume_mult_c(self) -> int:
        return round(self.volume_mult * 100)

    @property
    def strategy_id(self) -> str:
        return self.id or f"panic_{self.drop_window}_{self.drop_bps}"


def _strategy_type(value) -> str | None:
    if isinstance(value, dict):
        return value.get("type", "sma_cross")
    return getattr(value, "type", None)


# Every strategy type: its `type` name and its configuration model. A new
# type adds its model here (and its operator in operators/strategies/).
STRATEGY_CONFIGS = {"sma_cross": StrategyConfig, "panic_rebound": PanicReboundConfig}

AnyStrategy = Annotated[
    Union[Annotated[StrategyConfig, Tag("sma_cross")], Annotated[PanicReboundConfig, Tag("panic_rebound")]],
    Discriminator(_strategy_type, custom_error_type="strategy_type",
                  custom_error_message=f"unknown strategy type (one of: {', '.join(STRATEGY_CONFIGS)})"),
]


class SignalConfig(_Strict):
    aggregation: Literal["independent", "majority", "weighted"] = "independent"
    min_confidence: float = Field(0.7, ge=0, le=1)
    min_risk_reward: float = Field(2.0, ge=0)
    min_agree: int = Field(2, ge=1)
    weighted_threshold: float = Field(0.5, gt=0, lt=1)


class ExitConfig(_Strict):
    take_profit_pct: float = Field(0.02, gt=0, le=MAX_EXIT_PCT)
    stop_loss_pct: float = Field(0.01, gt=0, le=MAX_EXIT_PCT)
    trailing_stop: bool = False
    trailing_activation_pct: float = Field(0.005, ge=0, le=MAX_EXIT_PCT)
    trailing_pct: float = Field(0.005, gt=0, le=MAX_EXIT_PCT)
    time_stop_minutes: int = Field(60, ge=1, le=MAX_TIME_STOP_MINUTES)
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
    strategies: tuple[AnyStrategy, ...] = Field(
        default_factory=lambda: tuple(_default_strategies()), min_length=1
    )
    signals: SignalConfig = SignalConfig()
    exit: ExitConfig = ExitConfig()
    risk: RiskConfig = RiskConfig()
    execution: ExecutionConfig = ExecutionConfig()
    stream: StreamConfig = StreamConfig()

    @model_validator(mode="after")
    def _unique_ids(self) -> "TradingConfig":
        first: dict = {}
        for i, s in enumerate(self.strategies):
            sid = s.strategy_id
            if sid == CONSENSUS:
                raise ValueError(f"strategies.{i}.id: {CONSENSUS!r} is reserved for the aggregated strategy")
            if sid in first:
                j = first[sid]
                if s.id is None and self.strategies[j].id is None and s.type == "sma_cross":
                    raise ValueError(f"strategies.{i}: duplicate strategy pair {sid} (as strategies.{j}; "
                                     f"give one an id to run both)")
                raise ValueError(f"strategies.{i}.id: duplicate strategy id {sid} (as strategies.{j})")
            first[sid] = i
        pairs = self.sma_strategies()
        if self.signals.aggregation == "majority" and self.signals.min_agree > len(pairs):
            raise ValueError(
                f"signals.min_agree ({self.signals.min_agree}) exceeds the "
                f"number of sma_cross strategies ({len(pairs)})"
            )
        return self

    def sma_strategies(self) -> list:
        """The `sma_cross` entries, configuration order (the pairs a consensus combines)."""
        return [s for s in self.strategies if s.type == "sma_cross"]

    def strategy_ids(self) -> list[str]:
        """Strategy ids in configuration order (the order exits and entries run):
        list order; with `majority` / `weighted`, `consensus` (when there are
        sma_cross entries) first, then the other types in list order."""
        if self.signals.aggregation == "independent":
            return [s.strategy_id for s in self.strategies]
        others = [s.strategy_id for s in self.strategies if s.type != "sma_cross"]
        return ([CONSENSUS] if self.sma_strategies() else []) + others

    def exit_of(self, strategy) -> StrategyExit:
        """A strategy entry's four exit settings: its own value, else its
        type's default, else the top-level `exit` value (spec section 2)."""
        own, defaults, top = strategy.exit, strategy.EXIT_DEFAULTS, self.exit

        def pick(name: str):
            value = getattr(own, name)
            if value is None:
                value = defaults.get(name)
            return getattr(top, name) if value is None else value

        return StrategyExit(pick("take_profit_pct"), pick("stop_loss_pct"), pick("time_stop_minutes"),
                            pick("time_stop_min_move_pct"))

    def strategy_exits(self) -> dict:
        """Strategy id -> StrategyExit for every id of `strategy_ids()`
        (`consensus` takes the top-level settings)."""
        top = self.exit
        exits = {s.strategy_id: self.exit_of(s) for s in self.strategies}
        exits[CONSENSUS] = StrategyExit(top.take_profit_pct, top.stop_loss_pct, top.time_stop_minutes,
                                        top.time_stop_min_move_pct)
        return {sid: exits[sid] for sid in self.strategy_ids()}


class ConfigError(ValueError):
    """A configuration that must not start: stop with this one-line message."""


def error_location(error: dict) -> list:
    """The key path of one pydantic error (`strategies`, 3, `min_drop_pct`): a
    strategy entry's errors carry its type's tag after the index, not a key."""
    loc = list(error.get("loc", ()))
    return [p for i, p in enumerate(loc) if not (i and isinstance(loc[i - 1], int) and p in STRATEGY_CONFIGS)]


def describe_validation_error(exc: Exception) -> str:
    """One line naming the first offending field, from a pydantic ValidationError."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    first = errors()[0]
    loc = error_location(first)
    if first.get("type") == "strategy_type":
        loc.append("type")
    where = ".".join(str(p) for p in loc) or "config"
    msg = first.get("msg", "invalid")
    if first.get("type") == "extra_forbidden":
        msg = "unknown key"
        if len(loc) == 4 and loc[0] == "strategies" and loc[2] == "exit":
            msg += (" (a strategy's exit takes take_profit_pct, stop_loss_pct, time_stop_minutes, "
                    "time_stop_min_move_pct; trailing settings are global)")
        return f"{where}: {msg}"
    if first.get("type") == "value_error":
        msg = msg.removeprefix("Value error, ")
        if not loc:  # a check across fields: its message names them
            return msg
    value = first.get("input")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        msg = f"{msg} (got {value})"
        if where.endswith("_pct") and value > 1:
            msg += ": percentages are fractions, 0.02 = 2 %"
    return f"{where}: {msg}"
