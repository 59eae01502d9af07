"""The portfolio stage's configurations: a book of them, evaluated over the
same bars in the same event-time order (spec section 8: configurations
never interact; each gets exactly the results of a backtest of it alone).

`PortfolioStage` (operators/ordering.py) feeds a book the bars it may
apply, in (timestamp, symbol) order, and the kill-switch controls between
them. A book is the *evaluator* of its configurations and needs four
methods:

- `apply_bars(batch, lo, hi, out)`: bars `lo:hi` of an `OrderedBars`;
- `apply_control(control, out)`: a kill-switch control, for every configuration;
- `close_minute(out)`: every minute below the watermark is complete;
- `take(final)`: a sweep's `SweepOutput` of what was decided since the last
  call (None for a run, whose events went straight into `out`).

`ConfigBook` is the evaluator here: one `operators.portfolio.Portfolio` per
configuration, exact by construction (the same code as a backtest). A
compiled evaluator over arrays of configuration state plugs in at
`new_book` with the same four methods.

A run (backtest, replay, paper) is the one-configuration book whose events,
per-minute equity included, go to the run's tables. A sweep's book keeps,
per configuration, a `DayLedger` that folds the per-minute equity into
`DayRow`s, and reports trades (orders, fills, rejections with `detail`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from operators.calendar import trading_day
from operators.config import TradingConfig
from operators.portfolio import Portfolio
from operators.types import ConfigEvents, DayRow, PortfolioOutput, SweepOutput


@dataclass(slots=True)
class DayLedger:
    """One configuration's days, from its per-minute equity points (in order)."""

    config_id: str
    initial_cash: float
    prev_equity: float  # E_{d-1}
    peak: float = float("-inf")  # running maximum of the minute equity
    day: int | None = None
    equity: float = 0.0
    minutes: int = 0
    in_market: int = 0
    worst: float = 0.0
    exposure_sum: float = 0.0
    exposure_minutes: int = 0

    @classmethod
    def new(cls, config_id: str, initial_cash: float) -> "DayLedger":
        return cls(config_id, initial_cash, initial_cash)

    def fold(self, points, rows: list) -> None:
        cash = self.initial_cash
        for p in points:
            day = trading_day(p.ts)
            if day != self.day:
                if self.day is not None:
                    self._close_day(rows)
                self.day = day
            e = p.equity
            self.equity = e
            self.minutes += 1
            if p.open_positions > 0:
                self.in_market += 1
            if e > self.peak:
                self.peak = e
            # as analytics.performance: 1 - equity / greatest(peak, initial cash)
            dd = 1 - e / (self.peak if self.peak > cash else cash)
            if dd > self.worst:
                self.worst = dd
            if e != 0:
                self.exposure_sum += p.exposure / e
                self.exposure_minutes += 1

    def finish(self, rows: list) -> None:
        if self.day is not None:
            self._close_day(rows)
            self.day = None

    def _close_day(self, rows: list) -> None:
        ret = self.equity / self.prev_equity - 1 if self.prev_equity else float("nan")
        rows.append(DayRow(self.config_id, self.day, self.equity, ret, self.minutes, self.in_market,
                           self.worst, self.exposure_sum, self.exposure_minutes))
        self.prev_equity = self.equity
        self.minutes = self.in_market = self.exposure_minutes = 0
        self.worst = self.exposure_sum = 0.0


@dataclass
class ConfigBook:
    """The Python evaluator: a Portfolio per configuration."""

    config_ids: tuple
    portfolios: list
    routes: tuple  # per configuration: operators.signal_plan.SignalRoute or None
    ledgers: list | None  # a sweep: DayLedger per configuration; a run: None
    detail: bool = False
    shard: int = 0
    outs: list = field(default_factory=list)
    bars_applied: int = 0

    def __post_init__(self):
        if not self.outs:
            self.outs = [PortfolioOutput() for _ in self.config_ids]

    @property
    def portfolio(self) -> Portfolio:
        """The one configuration of a run."""
        return self.portfolios[0]

    # -- the evaluator -----------------------------------------------------
    def apply_bars(self, batch, lo: int, hi: int, out: PortfolioOutput) -> None:
        self.bars_applied += hi - lo
        symbols = batch.symbols
        ranks, ts = batch.rank[lo:hi], batch.ts[lo:hi]
        o, h, low, c = batch.open[lo:hi], batch.high[lo:hi], batch.low[lo:hi], batch.close[lo:hi]
        picked: dict = {}  # route -> its signals for this batch (configurations share routes)
        no_signals: dict = {}
        for k, p in enumerate(self.portfolios):
            route = self.routes[k]
            if route is None:
                sigs = batch.signals
            else:
                sigs = picked.get(route)
                if sigs is None:
                    sigs = picked[route] = route.select(batch.signals)
            target = out if self.ledgers is None else self.outs[k]
            apply = p.apply
            for r, t, op_, hi_, lo_, cl in zip(ranks, ts, o, h, low, c):
                symbol = symbols[r]
                apply(symbol, t, op_, hi_, lo_, cl, sigs.get(symbol, no_signals).get(t), target)

    def apply_control(self, control, out: PortfolioOutput) -> None:
        for k, p in enumerate(self.portfolios):
            p.apply_control(control, out if self.ledgers is None else self.outs[k])

    def close_minute(self, out: PortfolioOutput) -> None:
        for k, p in enumerate(self.portfolios):
            p.close_minute(out if self.ledgers is None else self.outs[k])

    def take(self, final: bool = False) -> SweepOutput | None:
        if self.ledgers is None:
            return None
        result = SweepOutput(self.shard, bars_applied=self.bars_applied, final=final)
        for k, o in enumerate(self.outs):
            if o.equity:
                self.ledgers[k].fold(o.equity, result.days)
            if final:
                self.ledgers[k].finish(result.days)
            if o.trades or o.controls or (self.detail and (o.orders or o.fills or o.rejections)):
                ev = ConfigEvents(self.config_ids[k], o.trades, controls=o.controls)
                if self.detail:
                    ev.orders, ev.fills, ev.rejections = o.orders, o.fills, o.rejections
                result.configs.append(ev)
        self.outs = [PortfolioOutput() for _ in self.config_ids]
        return result


def new_book(members: list, *, daily: bool, detail: bool = False, shard: int = 0) -> ConfigBook:
    """A book of `members` [(config_id, TradingConfig, SignalRoute | None)].
    `daily`: a sweep's book (DayRows); otherwise a run's single configuration."""
    if not daily and len(members) != 1:
        raise ValueError("a run's book holds exactly one configuration")
    ids = tuple(m[0] for m in members)
    configs: list[TradingConfig] = [m[1] for m in members]
    ledgers = [DayLedger.new(cid, float(cfg.risk.initial_cash)) for cid, cfg in zip(ids, configs)] \
        if daily else None
    return ConfigBook(ids, [Portfolio.new(cfg) for cfg in configs], tuple(m[2] for m in members),
                      ledgers, detail, shard)
