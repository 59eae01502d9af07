"""Domain events. Times are integer epoch seconds (UTC); a bar is stamped
with the start of its minute, as Alpaca does.

Plain slotted dataclasses: they are created per bar on the hot path, so they
stay cheap; validation of outside data happens once, at the connectors.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Optional

BUY = "buy"
SELL = "sell"


def iso(ts: int) -> str:
    """ISO 8601 UTC text of an epoch-second timestamp."""
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(slots=True)
class Bar:
    symbol: str
    ts: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    trade_count: Optional[float] = None
    vwap: Optional[float] = None


@dataclass(slots=True)
class DeadLetter:
    """A bar (or raw record) that was not applied, and why."""

    symbol: str
    ts: int
    reason: str  # invalid_<what> | duplicate | late | undecodable
    source: str  # where it came from: file row, partition/offset
    payload: str


@dataclass(slots=True)
class Signal:
    strategy_id: str
    symbol: str
    side: str
    ts: int
    price: float
    confidence: float
    take_profit_pct: float
    stop_loss_pct: float
    risk_reward: float
    filtered_reason: Optional[str] = None  # set when min_confidence / min_risk_reward dropped it
    strategy_type: str = "sma_cross"  # the `type` of its configuration entry (a consensus: sma_cross)


@dataclass(slots=True)
class Order:
    order_id: str  # deterministic: run, strategy, symbol, decision bar time, leg
    strategy_id: str
    symbol: str
    side: str
    qty: int
    decided_ts: int
    decision_price: float
    intent: str  # entry | signal | time_stop | flatten | kill_switch; live only: protect | trail | cancel
    # Live trading (broker fills) only: the protective OCO's prices (`protect`,
    # `trail`) and the entry an exit or OCO belongs to.
    stop_price: float = 0.0
    target_price: float = 0.0
    parent_id: str = ""
    oco_id: str = ""  # the protective OCO an exit cancels first, or a trail moves


@dataclass(slots=True)
class Fill:
    order_id: str
    strategy_id: str
    symbol: str
    side: str
    qty: int
    ts: int
    price: float
    commission: float
    reason: str  # entry, or the exit reason


@dataclass(slots=True)
class Trade:
    trade_id: str
    symbol: str
    strategy_id: str
    qty: int
    entry_time: int
    entry_price: float
    exit_time: int
    exit_price: float
    exit_reason: str
    pnl: float
    return_pct: float
    commission: float


@dataclass(slots=True)
class Rejection:
    strategy_id: str
    symbol: str
    ts: int
    reason: str  # halted | max_positions | max_positions_per_symbol | daily_loss_streak | daily_drawdown | size_zero
    price: float
    detail: str = ""


@dataclass(slots=True)
class EquityPoint:
    ts: int
    cash: float
    equity: float
    open_positions: int
    exposure: float  # market value of open positions


@dataclass(slots=True)
class ControlEvent:
    """A halt or resume the portfolio obeyed (kill switch), with who and why."""

    control_id: str
    action: str  # halt | resume
    flatten: bool
    ts: int  # bars from this minute on were decided under it
    who: str
    why: str
    exits_queued: int = 0
    entries_canceled: int = 0


@dataclass(slots=True)
class TradeUpdate:
    """What the broker did with one of our orders: an Alpaca trade update
    (`trade_updates` stream) or a submission the broker refused.

    `order_id` is the portfolio's order id (`Order.order_id`, the
    client_order_id without its `{run}.` prefix); the protective OCO of an
    entry is `{entry order id}.oco`, whose `leg` says which side acted
    (`stop` or `target`; "" for every other order).
    """

    order_id: str
    event: str  # new | fill | partial_fill | canceled | expired | rejected | replaced | submit_failed
    symbol: str
    side: str  # buy | sell
    ts: int  # broker time, epoch seconds: applied before the bars of its minute
    leg: str = ""  # "" | stop | target
    filled_qty: int = 0  # the order's cumulative filled quantity after this event
    fill_qty: int = 0  # this fill's quantity (fill / partial_fill), else 0
    fill_price: float = 0.0  # this fill's price, else 0
    broker_order_id: str = ""
    stop_price: float = 0.0  # the stop leg's price when known (new / replaced)
    detail: str = ""  # why it was rejected / failed


TRADE_UPDATE_EVENTS = frozenset({
    "new", "fill", "partial_fill", "canceled", "expired", "rejected", "replaced", "submit_failed",
    "reconciled",  # a person flattened the symbol at the broker (`cuts reconcile --flatten`)
})


@dataclass(slots=True)
class SymbolOutput:
    """What the per-symbol stage emits for one input chunk."""

    bars: list = field(default_factory=list)  # accepted Bars in arrival order (bar-at-a-time path)
    blocks: list = field(default_factory=list)  # accepted bars as columnar BarBlocks
    signals: dict = field(default_factory=dict)  # ts -> list[Signal] that passed filters
    filtered: list = field(default_factory=list)  # Signals dropped by filters
    dead_letters: list = field(default_factory=list)


@dataclass(slots=True)
class PortfolioOutput:
    """Everything the portfolio stage decided while applying a batch of bars."""

    orders: list = field(default_factory=list)
    fills: list = field(default_factory=list)
    trades: list = field(default_factory=list)
    rejections: list = field(default_factory=list)
    equity: list = field(default_factory=list)
    dead_letters: list = field(default_factory=list)  # bars behind the watermark
    controls: list = field(default_factory=list)  # ControlEvents obeyed
    applied_bars: int = 0
    # several configurations in one portfolio stage (operators.compiled_portfolio):
    # one PortfolioOutput per configuration, in configuration order
    per_config: list = field(default_factory=list)

    def empty(self) -> bool:
        return not (
            self.orders or self.fills or self.trades or self.rejections
            or self.equity or self.dead_letters or self.controls
            or any(not o.empty() for o in self.per_config)
        )


@dataclass(slots=True)
class DayRow:
    """One configuration's trading day in a sweep (spec section 8), from its
    per-minute mark-to-market equity, so that no per-minute curve is stored:
    the day's closing equity and return, and what the section-6 metrics need
    of the curve (exact: computed minute by minute in the portfolio stage)."""

    config_id: str
    day: int  # proleptic ordinal of the New York date
    equity: float  # E_d: equity after the day's last applied bar
    ret: float  # E_d / E_{d-1} - 1 (E_0: initial cash)
    minutes: int  # equity points (minutes with applied bars)
    minutes_in_market: int  # of them, minutes with an open position
    max_drawdown: float  # max(0, max over the day's minutes of 1 - equity / max(running peak, initial cash))
    exposure_sum: float  # sum of exposure / equity over the minutes with equity != 0
    exposure_minutes: int  # those minutes


@dataclass(slots=True)
class ConfigEvents:
    """What one configuration of a sweep decided in a batch (equity is in DayRows)."""

    config_id: str
    trades: list = field(default_factory=list)
    orders: list = field(default_factory=list)  # with --detail only
    fills: list = field(default_factory=list)  # with --detail only
    rejections: list = field(default_factory=list)  # with --detail only
    controls: list = field(default_factory=list)


@dataclass(slots=True)
class SweepOutput:
    """A portfolio shard's output for a batch: per-configuration events and
    completed trading days. `bars_applied` counts the shard's bars so far."""

    shard: int
    configs: list = field(default_factory=list)  # ConfigEvents
    days: list = field(default_factory=list)  # DayRow
    bars_applied: int = 0
    final: bool = False  # the shard's last output (end of the input)

    def empty(self) -> bool:
        return not (self.configs or self.days or self.final)
