"""The simulated portfolio of one or many configurations, compiled
(`operators.portfolio_kernel`): what `cuts backtest` runs, and what a sweep
evaluates many configurations with in one pass.

The rules (spec sections 3-5) are written once in Python, in
`operators.portfolio.Portfolio`, and once in the kernel, which mirrors it
expression for expression; tests/test_compiled_portfolio.py pins the two
equal (every order, fill, trade, rejection, equity point and control event,
bit for bit) on random bars, signals and configurations, and N
configurations evaluated together equal N separate runs. The Python
`Portfolio` stays because `BrokerPortfolio` (paper and live trading from the
broker's fills) builds on it.

API
---
`CompiledPortfolio.new(configs, record_equity=True)`: one book for a list
of `TradingConfig`s; configuration `c` is `configs[c]`. Configurations never
interact: each has its own cash, positions, waiting orders, halts and
counters; only the bars (and so the last closes and the clock) are shared.

- `strategies`: the union of the configurations' strategy ids, in order of
  first appearance; `strategy_rank[c, g]` is strategy g's configuration
  order in configuration c, -1 where c does not trade it (its signals are
  ignored there).
- `apply_batch(batch, start, stop, out)`: apply bars start..stop-1 of a
  `BarBatch` (bars in (timestamp, symbol) order with their signals, see
  `BarBatch.build`) to every configuration. `out` is where decisions go:
  a list with one `PortfolioOutput` per configuration, or one
  `PortfolioOutput` (with one configuration its own lists; with several,
  its `per_config` list, one `PortfolioOutput` per configuration, in
  configuration order). A `BarBatch` may carry `sig_mask[row, c]`:
  configuration c acts on signal row `row` only where it is true (a sweep
  whose configurations filter signals differently).
- `apply_control(control, out)`: a kill-switch `Control` (halt, flatten,
  resume) for every configuration, between bars; its `ControlEvent` goes to
  each configuration's output.
- `close_minute(out)`: the equity point of the minute just applied, for
  every configuration (with `record_equity`; a sweep that only needs daily
  equity may turn it off and read `equity(c)` itself).
- `raw=True` on `apply_batch` / `close_minute` returns the `EventLog` (numpy
  arrays, one row per decision with its configuration index, in each
  configuration's decision order) instead of decoding: a sweep may store
  events columnar without building objects; `decode(log, out)` decodes it.
- State for snapshots: the object holds only numpy arrays, lists and dicts
  (`copy.deepcopy` and pickle work; Bytewax recovery snapshots it as part of
  the portfolio stage). Read one configuration's state with `cash(c)`,
  `equity(c)`, `positions(c)` (a list of dicts), `halted(c)`, `day_halt(c)`.

`PortfolioStage` (operators.ordering) drives it for `cuts backtest` with one
configuration, exactly as it drives the Python `Portfolio`.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

from operators import portfolio_layout as K  # the kernel's array layout and event codes
from operators.calendar import trading_day
from operators.config import TradingConfig
from operators.portfolio_events import EventLog, decode, join_logs
from operators.portfolio_step import portfolio_step
from operators.types import ControlEvent, PortfolioOutput

_EMPTY_MASK = np.zeros((0, 0), dtype=np.bool_)


def strategy_exits(cfg: TradingConfig) -> dict:
    """strategy id -> (take_profit_pct, stop_loss_pct, time_stop_minutes,
    time_stop_min_move_pct) its signals and positions use (spec sections 2,
    4, 5: its own value, else its type's default, else the top-level one),
    in configuration order."""
    exits = cfg.strategy_exits()
    return {sid: tuple(exits[sid]) for sid in cfg.strategy_ids()}


@dataclass(slots=True)
class BarBatch:
    """Bars in (timestamp, symbol) order as columns, with their signals in
    CSR form: bar i's signals are rows sig_ptr[i]..sig_ptr[i+1]-1, in the
    order the portfolio considers them."""

    sym: np.ndarray  # int64 symbol codes of the book
    ts: np.ndarray  # int64
    day: np.ndarray  # int64 trading day (New York date ordinal)
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    sig_ptr: np.ndarray  # int64, len(ts) + 1
    sig_strat: np.ndarray  # int64 strategy index of the book
    sig_sell: np.ndarray  # bool
    sig_price: np.ndarray  # float64
    sig_mask: np.ndarray = field(default_factory=lambda: _EMPTY_MASK)  # bool (rows, configs); empty: all

    def __len__(self) -> int:
        return len(self.ts)

    @classmethod
    def build(cls, sym, ts, open_, high, low, close, sig_bar, sig_strat, sig_sell, sig_price,
              sig_mask=None) -> "BarBatch":
        """Signal rows given with their bar index (`sig_bar`, non-decreasing
        or not: a stable sort keeps each bar's rows in the given order)."""
        n = len(ts)
        sig_bar = np.asarray(sig_bar, dtype=np.int64)
        order = np.argsort(sig_bar, kind="stable")
        ptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(sig_bar, minlength=n)[:n], out=ptr[1:])
        mask = _EMPTY_MASK if sig_mask is None else np.ascontiguousarray(np.asarray(sig_mask)[order])
        ts = np.ascontiguousarray(ts, dtype=np.int64)
        return cls(np.ascontiguousarray(sym, dtype=np.int64), ts, trading_days(ts),
                   np.ascontiguousarray(open_, dtype=np.float64),
                   np.ascontiguousarray(high, dtype=np.float64),
                   np.ascontiguousarray(low, dtype=np.float64),
                   np.ascontiguousarray(close, dtype=np.float64), ptr,
                   np.asarray(sig_strat, dtype=np.int64)[order],
                   np.asarray(sig_sell, dtype=np.bool_)[order],
                   np.asarray(sig_price, dtype=np.float64)[order], mask)


def trading_days(ts: np.ndarray) -> np.ndarray:
    """operators.calendar.trading_day of every timestamp (one lookup per hour)."""
    if len(ts) == 0:
        return np.zeros(0, dtype=np.int64)
    hours, inverse = np.unique(ts // 3600, return_inverse=True)
    days = np.fromiter((trading_day(int(h) * 3600) for h in hours), dtype=np.int64, count=len(hours))
    return days[inverse]


class CompiledPortfolio:
    """State of `n_configs` simulated portfolios; see the module docstring."""

    EVENT_ROWS = 16_384  # event buffer rows (drained into outputs when full)

    def __init__(self, configs, record_equity: bool = True):
        configs = list(configs)
        if not configs:
            raise ValueError("no configuration")
        self.configs = configs
        self.record_equity = record_equity
        strategies: list[str] = []
        for cfg in configs:
            for sid in cfg.strategy_ids():
                if sid not in strategies:
                    strategies.append(sid)
        self.strategies = strategies
        n, n_g = len(configs), len(strategies)
        self.cfg_f = np.zeros((n, K.N_CF))
        self.cfg_i = np.zeros((n, K.N_CI), dtype=np.int64)
        self.st_f = np.zeros((n, n_g, K.N_SF))
        self.st_i = np.zeros((n, n_g, K.N_SI), dtype=np.int64)
        self.st_i[:, :, K.SI_RANK] = -1
        for c, cfg in enumerate(configs):
            e, r, x = cfg.exit, cfg.risk, cfg.execution
            # the same expressions as portfolio.Rules.from_config
            self.cfg_f[c] = (1 + x.slippage_bps / 10_000, 1 - x.slippage_bps / 10_000,
                             x.commission_per_share, r.risk_per_trade_pct, r.max_position_pct,
                             1 - r.max_daily_drawdown_pct, e.trailing_activation_pct, e.trailing_pct)
            self.cfg_i[c] = (int(e.trailing_stop), r.max_positions, r.max_positions_per_symbol,
                             r.max_consecutive_losses)
            for rank, (sid, (tp, sl, ts_min, ts_move)) in enumerate(strategy_exits(cfg).items()):
                g = strategies.index(sid)
                self.st_i[c, g] = (rank, ts_min * 60)
                self.st_f[c, g] = (tp, sl, ts_move)
        self.acct_f = np.zeros((n, K.N_AF))
        self.acct_f[:, K.AF_CASH] = [float(cfg.risk.initial_cash) for cfg in configs]
        self.acct_i = np.zeros((n, K.N_AI), dtype=np.int64)
        slots = max(4, min(64, max(cfg.risk.max_positions for cfg in configs)))
        self.pos_f = np.zeros((n, slots, K.N_PF))
        self.pos_i = np.zeros((n, slots, K.N_PI), dtype=np.int64)
        self.pend_f = np.zeros((n, slots, K.N_QF))
        self.pend_i = np.zeros((n, slots, K.N_QI), dtype=np.int64)
        self.sym_i = np.zeros((n, 0, K.N_SY), dtype=np.int64)
        self.last_close = np.zeros(0)
        self.clock = np.zeros(K.N_CK, dtype=np.int64)
        self.symbols: list[str] = []
        self.codes: dict[str, int] = {}
        self.strategy_index = {sid: g for g, sid in enumerate(strategies)}

    @classmethod
    def new(cls, configs, record_equity: bool = True) -> "CompiledPortfolio":
        if isinstance(configs, TradingConfig):
            configs = [configs]
        return cls(configs, record_equity)

    @property
    def n_configs(self) -> int:
        return len(self.configs)

    @property
    def strategy_rank(self) -> np.ndarray:
        return self.st_i[:, :, K.SI_RANK]

    # -- symbols ------------------------------------------------------------
    def code(self, symbol: str) -> int:
        """The book's code of `symbol` (a new symbol gets the next one)."""
        code = self.codes.get(symbol)
        if code is None:
            code = self.codes[symbol] = len(self.symbols)
            self.symbols.append(symbol)
            if code >= len(self.last_close):
                grow = max(16, len(self.last_close))
                self.last_close = np.concatenate((self.last_close, np.zeros(grow)))
                self.sym_i = np.concatenate(
                    (self.sym_i, np.zeros((self.n_configs, grow, K.N_SY), dtype=np.int64)), axis=1)
        return code

    def _grow_slots(self) -> None:
        n = self.n_configs
        extra = self.pos_i.shape[1]
        self.pos_f = np.concatenate((self.pos_f, np.zeros((n, extra, K.N_PF))), axis=1)
        self.pos_i = np.concatenate((self.pos_i, np.zeros((n, extra, K.N_PI), dtype=np.int64)), axis=1)
        self.pend_f = np.concatenate((self.pend_f, np.zeros((n, extra, K.N_QF))), axis=1)
        self.pend_i = np.concatenate((self.pend_i, np.zeros((n, extra, K.N_QI), dtype=np.int64)), axis=1)

    @staticmethod
    def _buffers(rows: int):
        return (np.empty((rows, K.N_EI), dtype=np.int64), np.empty((rows, K.N_EF)),
                np.zeros(1, dtype=np.int64))

    # -- the steps ----------------------------------------------------------
    def outputs(self, out) -> list:
        """One PortfolioOutput per configuration from the `out` of a call (see
        the module docstring)."""
        if isinstance(out, PortfolioOutput):
            if self.n_configs == 1:
                return [out]
            if not out.per_config:
                out.per_config.extend(PortfolioOutput() for _ in range(self.n_configs))
            return out.per_config
        return out

    def apply_batch(self, batch: BarBatch, start: int = 0, stop: int | None = None, out=None,
                    raw: bool = False):
        """Apply bars start..stop-1 of `batch`; decode into `out`, or with
        raw=True return the EventLog."""
        outs = None if raw else self.outputs(out)
        stop = len(batch) if stop is None else stop
        rows = self.EVENT_ROWS
        logs = []
        ev_i, ev_f, ev_n = self._buffers(rows)
        i = start
        while i < stop:
            i, status = portfolio_step().apply_bars(
                self.cfg_f, self.cfg_i, self.st_f, self.st_i, self.clock, self.acct_f, self.acct_i,
                self.last_close, self.pos_f, self.pos_i, self.pend_f, self.pend_i, self.sym_i,
                batch.sym, batch.ts, batch.day, batch.open, batch.high, batch.low, batch.close,
                i, stop, batch.sig_ptr, batch.sig_strat, batch.sig_sell, batch.sig_price,
                batch.sig_mask, ev_i, ev_f, ev_n, self.record_equity)
            if status == K.NEED_SLOTS:
                self._grow_slots()
            elif status == K.NEED_EVENTS:
                if ev_n[0] == 0:  # one bar needs more than the buffer: a bigger one
                    rows *= 2
                    ev_i, ev_f, ev_n = self._buffers(rows)
                    continue
                logs.append(self._take(ev_i, ev_f, ev_n, raw, outs))
        logs.append(self._take(ev_i, ev_f, ev_n, raw, outs))
        return join_logs(logs) if raw else None

    def close_minute(self, out=None, raw: bool = False):
        outs = None if raw else self.outputs(out)
        rows = max(1, self.n_configs)
        ev_i, ev_f, ev_n = self._buffers(rows)
        portfolio_step().close_minute(self.acct_f, self.acct_i, self.pos_i, self.last_close, self.clock,
                       ev_i, ev_f, ev_n, self.record_equity)
        log = self._take(ev_i, ev_f, ev_n, raw, outs)
        return log if raw else None

    def apply_control(self, control, out) -> None:
        """A kill-switch control (see operators.ordering.Control) for every configuration."""
        outs = self.outputs(out)
        n = self.n_configs
        if control.action != "resume" and control.flatten:
            while self.pend_i.shape[1] < int((self.acct_i[:, K.AI_NPEND] + self.acct_i[:, K.AI_NPOS]).max()):
                self._grow_slots()
        ev_i, ev_f, ev_n = self._buffers(max(1, n * self.pos_i.shape[1]))
        counts = np.zeros((n, 2), dtype=np.int64)
        portfolio_step().apply_control(control.action != "resume", bool(control.flatten), int(control.ts),
                        self.acct_f, self.acct_i, self.pos_i, self.pend_f, self.pend_i, self.sym_i,
                        self.last_close, counts, ev_i, ev_f, ev_n)
        self._take(ev_i, ev_f, ev_n, False, outs)
        for c in range(n):
            event = ControlEvent(control.control_id, control.action, control.flatten, control.ts,
                                 control.who, control.why)
            if control.action != "resume" and control.flatten:
                event.exits_queued, event.entries_canceled = int(counts[c, 0]), int(counts[c, 1])
            outs[c].controls.append(event)

    def _take(self, ev_i, ev_f, ev_n, raw: bool, outs):
        n = int(ev_n[0])
        ev_n[0] = 0
        if raw:
            return EventLog(ev_i[:n].copy(), ev_f[:n].copy())
        if n:
            self.decode(EventLog(ev_i[:n], ev_f[:n]), outs)
        return None

    # -- decoding -----------------------------------------------------------
    def decode(self, log: EventLog, out) -> None:
        """Append the log's decisions, as domain objects, to each configuration's output."""
        if len(log):
            decode(log, self.symbols, self.strategies, self.outputs(out))

    # -- reading state ------------------------------------------------------
    def cash(self, c: int = 0) -> float:
        return float(self.acct_f[c, K.AF_CASH])

    def equity(self, c: int = 0) -> float:
        return float(portfolio_step().equity(c, self.acct_f, self.acct_i, self.pos_i, self.last_close))

    def halted(self, c: int = 0) -> bool:
        return bool(self.acct_i[c, K.AI_HALT])

    def day_halt(self, c: int = 0) -> str | None:
        return (None, "daily_loss_streak", "daily_drawdown")[int(self.acct_i[c, K.AI_DAY_HALT])]

    def positions(self, c: int = 0) -> list[dict]:
        """Open positions of configuration c, in the order they opened."""
        out = []
        for k in range(int(self.acct_i[c, K.AI_NPOS])):
            pi, pf = self.pos_i[c, k], self.pos_f[c, k]
            out.append({
                "symbol": self.symbols[pi[K.PI_SYM]], "strategy_id": self.strategies[pi[K.PI_STRAT]],
                "qty": int(pi[K.PI_QTY]), "entry_fill": float(pf[K.PF_ENTRY_FILL]),
                "entry_time": int(pi[K.PI_ENTRY_TIME]), "stop_price": float(pf[K.PF_STOP]),
                "target_price": float(pf[K.PF_TARGET]), "hwm": float(pf[K.PF_HWM]),
                "trailed": bool(pi[K.PI_TRAILED]), "exit_queued": bool(pi[K.PI_EXIT_QUEUED]),
            })
        return out

    def snapshot(self) -> "CompiledPortfolio":
        return copy.deepcopy(self)


def new_outputs(n: int) -> list:
    return [PortfolioOutput() for _ in range(n)]
