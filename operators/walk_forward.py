"""Walk-forward evaluation of a sweep (spec section 8), pure.

The trading days are cut into folds of `train_days` followed by `test_days`;
the next fold starts `test_days` later (rolling; anchored: every train window
starts at the first day). A fold needs all its test days: trailing days that
do not fill one are left out. In each fold the configuration with the best
objective on the train days is selected (an undefined value ranks last, ties
go to the lowest config_id) and its daily returns on the test days join the
out-of-sample series. Every configuration ran once over all days, so
positions and risk state carried across fold boundaries already.

Objectives, over a window of days (sums in day order):
- `sharpe`: mean / sample standard deviation (n - 1) of the window's daily
  returns * sqrt(252); undefined with fewer than 2 days or a zero deviation;
- `total_return`: product of (1 + daily return) - 1;
- `profit_factor`: of the trades whose exit falls on a window day: winning
  pnl / abs(losing pnl) (a loss is pnl <= 0); undefined without losing pnl.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from operators.grid import WalkForwardSpec

SQRT_252 = math.sqrt(252)


@dataclass(frozen=True, slots=True)
class TradeDay:
    """The trades of one configuration that exited on one day."""

    trades: int = 0
    wins: int = 0
    gross_win: float = 0.0  # sum of pnl > 0
    gross_loss: float = 0.0  # sum of pnl <= 0 (zero or negative)


@dataclass
class ConfigSeries:
    """One configuration's daily returns (every trading day, in order) and its
    trades by exit day."""

    config_id: str
    returns: dict  # day -> daily return
    trade_days: dict = field(default_factory=dict)  # day -> TradeDay


@dataclass(frozen=True)
class Fold:
    number: int  # from 1
    train: tuple  # days
    test: tuple


@dataclass(frozen=True)
class WindowMetrics:
    days: int
    total_return: float | None
    sharpe: float | None
    trades: int
    win_rate: float | None
    profit_factor: float | None
    max_drawdown: float | None  # of the compounded day-end curve of the window


@dataclass(frozen=True)
class FoldResult:
    fold: Fold
    config_id: str
    train_objective: float | None
    test: WindowMetrics


@dataclass(frozen=True)
class WalkForward:
    spec: WalkForwardSpec
    folds: tuple  # FoldResult
    out_of_sample: WindowMetrics | None  # the selected configurations' test days, chained
    in_sample_best: str | None  # best objective over all days
    in_sample_best_on_test_days: WindowMetrics | None  # that configuration on the same days
    in_sample_best_overall: WindowMetrics | None  # ... and over all days


def folds(days, spec: WalkForwardSpec) -> list[Fold]:
    """The folds of `days` (sorted trading days); trailing days short of a
    full test window are left out."""
    days = tuple(days)
    out = []
    k = 0
    while True:
        test_start = spec.train_days + k * spec.test_days
        test_end = test_start + spec.test_days
        if test_end > len(days):
            return out
        train_start = 0 if spec.anchored else k * spec.test_days
        out.append(Fold(k + 1, days[train_start:test_start], days[test_start:test_end]))
        k += 1


def sharpe(returns) -> float | None:
    n = len(returns)
    if n < 2:
        return None
    mean = sum(returns) / n
    sd = math.sqrt(sum((r - mean) ** 2 for r in returns) / (n - 1))
    if sd == 0:
        return None
    return mean / sd * SQRT_252


def total_return(returns) -> float | None:
    if not returns:
        return None
    growth = 1.0
    for r in returns:
        growth *= 1 + r
    return growth - 1


def profit_factor(trade_days) -> float | None:
    win = sum(t.gross_win for t in trade_days)
    loss = sum(t.gross_loss for t in trade_days)
    return win / abs(loss) if loss < 0 else None


def max_drawdown(returns) -> float | None:
    """Of the compounded day-end curve (starting at 1): max of 1 - value / peak."""
    if not returns:
        return None
    value = peak = 1.0
    worst = 0.0
    for r in returns:
        value *= 1 + r
        peak = max(peak, value)
        worst = max(worst, 1 - value / peak)
    return worst


def objective(series: ConfigSeries, days, name: str) -> float | None:
    if name == "profit_factor":
        return profit_factor([series.trade_days[d] for d in days if d in series.trade_days])
    returns = [series.returns[d] for d in days]
    return sharpe(returns) if name == "sharpe" else total_return(returns)


def rank(values: dict) -> list:
    """config_ids best first: defined values descending, then undefined ones;
    ties to the lowest config_id (ids compare by their number)."""
    return sorted(values, key=lambda cid: (values[cid] is None,
                                           -values[cid] if values[cid] is not None else 0.0,
                                           _number(cid)))


def select(serieses: list, days, name: str) -> tuple[str, float | None]:
    values = {s.config_id: objective(s, days, name) for s in serieses}
    best = rank(values)[0]
    return best, values[best]


def window_metrics(returns, trade_days) -> WindowMetrics:
    trades = sum(t.trades for t in trade_days)
    wins = sum(t.wins for t in trade_days)
    return WindowMetrics(len(returns), total_return(returns), sharpe(returns), trades,
                         wins / trades if trades else None, profit_factor(trade_days),
                         max_drawdown(returns))


def metrics_on(series: ConfigSeries, days) -> WindowMetrics:
    return window_metrics([series.returns[d] for d in days],
                          [series.trade_days[d] for d in days if d in series.trade_days])


def walk_forward(serieses: list, spec: WalkForwardSpec) -> WalkForward:
    """Spec section 8 over configurations that all ran over the same days."""
    if not serieses:
        return WalkForward(spec, (), None, None, None, None)
    days = sorted(serieses[0].returns)
    by_id = {s.config_id: s for s in serieses}
    results = []
    oos_returns, oos_trades, oos_days = [], [], []
    for fold in folds(days, spec):
        cid, value = select(serieses, fold.train, spec.objective)
        chosen = by_id[cid]
        results.append(FoldResult(fold, cid, value, metrics_on(chosen, fold.test)))
        oos_days.extend(fold.test)
        oos_returns.extend(chosen.returns[d] for d in fold.test)
        oos_trades.extend(chosen.trade_days[d] for d in fold.test if d in chosen.trade_days)
    best, _ = select(serieses, days, spec.objective)
    return WalkForward(
        spec, tuple(results),
        window_metrics(oos_returns, oos_trades) if results else None,
        best,
        metrics_on(by_id[best], oos_days) if results else None,
        metrics_on(by_id[best], days),
    )


def _number(config_id: str) -> int:
    return int(config_id[1:]) if config_id[1:].isdigit() else 0
