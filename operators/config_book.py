"""The portfolio stage's configurations: a book of them, evaluated over the
same bars in the same event-time order (spec section 8: configurations
never interact; each gets exactly the results of a backtest of it alone).

There is one evaluator, the compiled portfolio step
(`operators.compiled_portfolio`, over a configuration axis), the one
`cuts backtest` runs; a run's book is simply its `CompiledPortfolio` of one
configuration. A sweep shard's book (`SweepBook`) is a `CompiledPortfolio`
of the shard's configurations, and adds what a sweep needs around it:

- signals: the symbol stage emits the union of the configurations'
  signals (`operators.signal_plan`), and each configuration's
  `SignalRoute` says which are its own, under which of its strategy ids,
  in which order, and which its filters drop. `signal_columns` turns a
  chunk's union signals into the kernel's rows: one set of rows per
  distinct route, each in that route's configuration order, with
  `mask[row, c]` true only for that route's configurations, so each
  configuration sees exactly the signals, in exactly the order, it gets
  alone (the kernel takes a bar's BUY rows in row order);
- outputs: trades (with `detail` also orders, fills, rejections) decoded
  per configuration; the per-minute equity points, never decoded, folded
  into daily rows (`operators.day_ledger`).

`PortfolioStage` (operators/ordering.py) drives either book the same way:
`apply_batch`, `apply_control`, `close_minute`; `take(final)` gives a
sweep's `SweepOutput` of what was decided since the last call.
"""
from __future__ import annotations

import numpy as np

from operators import portfolio_layout as K
from operators.compiled_portfolio import CompiledPortfolio, EventLog, trading_days
from operators.day_ledger import DayLedgers
from operators.ordering import SignalColumns
from operators.types import SELL, ConfigEvents, PortfolioOutput, SweepOutput

_DETAIL_KINDS = (K.EV_ORDER, K.EV_FILL, K.EV_REJECT)


class RouteTable:
    """Per union strategy (column u; the last column: none of them), what one
    route makes of its signals: the configuration's strategy index in the
    book (`g`) and rank (-1: not its signal), the confidence its entry
    gives them (NaN: the union signal's own) and the BUY filters of
    `SignalTerms.filter_reason` (confidence below min_confidence, risk/reward
    below min_risk_reward)."""

    def __init__(self, route, sources: dict, strategy_index: dict):
        n = len(sources) + 1
        self.rank = np.full(n, -1, dtype=np.int64)
        self.g = np.zeros(n, dtype=np.int64)
        self.confidence = np.full(n, np.nan)
        self.min_confidence = np.zeros(n)
        self.rr_ok = np.zeros(n, dtype=np.bool_)
        for union_id, rank, terms, confidence in route.sources:
            u = sources[union_id]
            self.rank[u], self.g[u] = rank, strategy_index[terms.strategy_id]
            if confidence is not None:
                self.confidence[u] = confidence
            self.min_confidence[u] = terms.min_confidence
            self.rr_ok[u] = not terms.risk_reward < terms.min_risk_reward

    def passed(self, src: np.ndarray, sell: np.ndarray, confidence: np.ndarray) -> np.ndarray:
        """Which of the signals (union columns `src`) are this route's and pass."""
        own = self.confidence[src]
        conf = np.where(np.isnan(own), confidence, own)
        buy_ok = ~(conf < self.min_confidence[src]) & self.rr_ok[src]
        return (self.rank[src] >= 0) & (sell | buy_ok)


class SweepBook:
    """A sweep shard's configurations on the compiled portfolio step."""

    def __init__(self, members: list, detail: bool = False, shard: int = 0):
        """members: [(config_id, TradingConfig, SignalRoute | None)]."""
        self.config_ids = [m[0] for m in members]
        self.book = CompiledPortfolio.new([m[1] for m in members], record_equity=True)
        routes: dict = {}  # distinct route -> its configurations (equal routes are shared)
        for c, (_, _, route) in enumerate(members):
            if route is not None:
                routes.setdefault(route, []).append(c)
        self.sources = {u: i for i, u in enumerate(dict.fromkeys(
            s[0] for route in routes for s in route.sources))}
        index = self.book.strategy_index
        self.tables = [RouteTable(route, self.sources, index) for route in routes]
        self.route_masks = np.zeros((len(routes), len(members)), dtype=np.bool_)
        for r, configs in enumerate(routes.values()):
            self.route_masks[r, configs] = True
        self.ledgers = DayLedgers(self.config_ids, [float(m[1].risk.initial_cash) for m in members])
        self.detail = detail
        self.shard = shard
        self.outs = [PortfolioOutput() for _ in self.config_ids]
        self.days: list = []
        self.bars_applied = 0

    # -- what PortfolioStage's compiled path uses --------------------------
    @property
    def strategy_index(self) -> dict:
        return self.book.strategy_index

    def code(self, symbol: str) -> int:
        return self.book.code(symbol)

    def signal_columns(self, block, signals: dict) -> SignalColumns:
        """A chunk's union signals as the kernel's rows (see the module docstring)."""
        if not self.tables:  # every configuration's signals are the union's, as they are
            return SignalColumns.of(block, signals, self.book.strategy_index)
        sigs = [sig for at in signals.values() for sig in at] if signals else []
        n = len(sigs)
        none = len(self.sources)
        ts = np.fromiter((x.ts for x in sigs), dtype=np.int64, count=n)
        src = np.fromiter((self.sources.get(x.strategy_id, none) for x in sigs), dtype=np.int64, count=n)
        sell = np.fromiter((x.side == SELL for x in sigs), dtype=np.bool_, count=n)
        price = np.fromiter((x.price for x in sigs), dtype=np.float64, count=n)
        confidence = np.fromiter((x.confidence for x in sigs), dtype=np.float64, count=n)
        rows, route, rank, g = [], [], [], []
        for r, table in enumerate(self.tables):
            mine = np.flatnonzero(table.passed(src, sell, confidence))
            rows.append(mine)
            route.append(np.full(len(mine), r, dtype=np.int64))
            rank.append(table.rank[src[mine]])
            g.append(table.g[src[mine]])
        rows, route, rank, g = (np.concatenate(x) for x in (rows, route, rank, g))
        order = np.lexsort((rank, route, ts[rows]))  # by bar; a route's rows together, in its order
        rows, route, g = rows[order], route[order], g[order]
        cols = SignalColumns(ts[rows], g, sell[rows], price[rows], self.route_masks[route])
        at = np.searchsorted(block.ts, cols.ts)  # only the block's own bars (a late bar's go with it)
        mine = at < len(block.ts)
        mine[mine] = block.ts[at[mine]] == cols.ts[mine]
        return cols.take(np.flatnonzero(mine))

    def apply_batch(self, batch, start: int = 0, stop: int | None = None, out=None) -> None:
        stop = len(batch) if stop is None else stop
        self.bars_applied += stop - start
        self._absorb(self.book.apply_batch(batch, start, stop, raw=True))

    def apply_control(self, control, out) -> None:
        self.book.apply_control(control, self.outs)

    def close_minute(self, out) -> None:
        self._absorb(self.book.close_minute(raw=True))

    # -- a sweep's output ---------------------------------------------------
    def _absorb(self, log: EventLog | None) -> None:
        if log is None or not len(log):
            return
        kinds = log.ev_i[:, K.EI_KIND]
        eq = kinds == K.EV_EQUITY
        if eq.any():
            ev_i, ev_f = log.ev_i[eq], log.ev_f[eq]
            self.days.extend(self.ledgers.fold(
                ev_i[:, K.EI_CFG], trading_days(ev_i[:, K.EI_TS]), ev_f[:, K.EF_Y], ev_i[:, K.EI_QTY],
                ev_f[:, K.EF_Z]))
        keep = kinds == K.EV_TRADE
        if self.detail:
            keep |= np.isin(kinds, _DETAIL_KINDS)
        if keep.any():
            self.book.decode(EventLog(log.ev_i[keep], log.ev_f[keep]), self.outs)

    def take(self, final: bool = False) -> SweepOutput:
        result = SweepOutput(self.shard, bars_applied=self.bars_applied, final=final)
        if final:
            self.days.extend(self.ledgers.finish())
        result.days, self.days = self.days, []
        for c, o in enumerate(self.outs):
            if o.trades or o.controls or (self.detail and (o.orders or o.fills or o.rejections)):
                ev = ConfigEvents(self.config_ids[c], o.trades, controls=o.controls)
                if self.detail:
                    ev.orders, ev.fills, ev.rejections = o.orders, o.fills, o.rejections
                result.configs.append(ev)
        self.outs = [PortfolioOutput() for _ in self.config_ids]
        return result


def new_book(members: list, *, daily: bool, detail: bool = False, shard: int = 0):
    """A book of `members` [(config_id, TradingConfig, SignalRoute | None)].
    `daily`: a sweep shard's `SweepBook`; otherwise a run's single
    configuration, its plain `CompiledPortfolio` (its events, per-minute
    equity included, go to the run's tables)."""
    if daily:
        return SweepBook(members, detail, shard)
    if len(members) != 1:
        raise ValueError("a run's book holds exactly one configuration")
    return CompiledPortfolio.new(members[0][1])
