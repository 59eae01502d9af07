"""Daily rows of a sweep's configurations (spec section 8), compiled.

Every configuration's per-minute mark-to-market equity (the run's `equity`
points) is folded, minute by minute and in time order, into one `DayRow`
per trading day: the day's closing equity E_d and return E_d / E_{d-1} - 1,
the minutes with bars and with an open position, the day's worst drawdown
from the running peak (as the run report computes max drawdown: 1 - equity
/ max(running peak, initial cash)), and the sum of exposure / equity. The
fold is one numba loop over arrays (`fold`), so the Python and the compiled
books share this one copy; its arithmetic is sequential, in IEEE doubles, so
the rows are the same bits whichever book folds them.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from operators.types import DayRow

# per configuration state columns
(L_DAY, L_MINUTES, L_IN_MARKET, L_EXP_N) = range(4)  # int64
(L_CASH, L_PREV, L_PEAK, L_EQUITY, L_WORST, L_EXP_SUM) = range(6)  # float64
N_LI, N_LF = 4, 6
NO_DAY = -1


@njit(cache=True)
def _close(c, st_i, st_f, out_i, out_f, n_out):
    k = n_out[0]
    out_i[k, 0] = c
    out_i[k, 1] = st_i[c, L_DAY]
    out_i[k, 2] = st_i[c, L_MINUTES]
    out_i[k, 3] = st_i[c, L_IN_MARKET]
    out_i[k, 4] = st_i[c, L_EXP_N]
    equity = st_f[c, L_EQUITY]
    prev = st_f[c, L_PREV]
    out_f[k, 0] = equity
    out_f[k, 1] = equity / prev - 1 if prev != 0 else np.nan
    out_f[k, 2] = st_f[c, L_WORST]
    out_f[k, 3] = st_f[c, L_EXP_SUM]
    n_out[0] = k + 1
    st_f[c, L_PREV] = equity
    st_i[c, L_MINUTES] = 0
    st_i[c, L_IN_MARKET] = 0
    st_i[c, L_EXP_N] = 0
    st_f[c, L_WORST] = 0.0
    st_f[c, L_EXP_SUM] = 0.0


@njit(cache=True)
def fold(st_i, st_f, cfg, day, equity, open_positions, exposure, out_i, out_f, n_out):
    """Fold equity points (row r: configuration cfg[r], trading day day[r], ...;
    each configuration's rows in time order) into the state; completed days
    go to out_* rows (out_i: config, day, minutes, in market, exposure
    minutes; out_f: equity, return, worst drawdown, exposure sum)."""
    for r in range(len(cfg)):
        c = cfg[r]
        if day[r] != st_i[c, L_DAY]:
            if st_i[c, L_DAY] != NO_DAY:
                _close(c, st_i, st_f, out_i, out_f, n_out)
            st_i[c, L_DAY] = day[r]
        e = equity[r]
        st_f[c, L_EQUITY] = e
        st_i[c, L_MINUTES] += 1
        if open_positions[r] > 0:
            st_i[c, L_IN_MARKET] += 1
        if e > st_f[c, L_PEAK]:
            st_f[c, L_PEAK] = e
        cash = st_f[c, L_CASH]
        peak = st_f[c, L_PEAK]
        dd = 1 - e / (peak if peak > cash else cash)
        if dd > st_f[c, L_WORST]:
            st_f[c, L_WORST] = dd
        if e != 0:
            st_f[c, L_EXP_SUM] += exposure[r] / e
            st_i[c, L_EXP_N] += 1


@njit(cache=True)
def finish(st_i, st_f, out_i, out_f, n_out):
    for c in range(st_i.shape[0]):
        if st_i[c, L_DAY] != NO_DAY:
            _close(c, st_i, st_f, out_i, out_f, n_out)
            st_i[c, L_DAY] = NO_DAY


class DayLedgers:
    """The day state of a book's configurations (plain arrays: deepcopy and
    pickle work for Bytewax snapshots)."""

    def __init__(self, config_ids, initial_cash):
        n = len(config_ids)
        self.config_ids = list(config_ids)
        self.st_i = np.zeros((n, N_LI), dtype=np.int64)
        self.st_i[:, L_DAY] = NO_DAY
        self.st_f = np.zeros((n, N_LF))
        self.st_f[:, L_CASH] = initial_cash
        self.st_f[:, L_PREV] = initial_cash
        self.st_f[:, L_PEAK] = -np.inf

    def fold(self, cfg, day, equity, open_positions, exposure) -> list:
        """Completed days (DayRows) of these equity points (arrays)."""
        n = len(cfg)
        out_i, out_f, n_out = self._buffers(n)
        fold(self.st_i, self.st_f, np.asarray(cfg, dtype=np.int64), np.asarray(day, dtype=np.int64),
             np.asarray(equity, dtype=np.float64), np.asarray(open_positions, dtype=np.int64),
             np.asarray(exposure, dtype=np.float64), out_i, out_f, n_out)
        return self._rows(out_i, out_f, n_out)

    def finish(self) -> list:
        out_i, out_f, n_out = self._buffers(0)
        finish(self.st_i, self.st_f, out_i, out_f, n_out)
        return self._rows(out_i, out_f, n_out)

    def _buffers(self, points: int):
        rows = points + len(self.config_ids)  # at most one completed day per point, or per config
        return np.empty((rows, 5), dtype=np.int64), np.empty((rows, 4)), np.zeros(1, dtype=np.int64)

    def _rows(self, out_i, out_f, n_out) -> list:
        n = int(n_out[0])
        ids = self.config_ids
        return [DayRow(ids[c], d, e, r, m, im, w, xs, xn)
                for (c, d, m, im, xn), (e, r, w, xs) in zip(out_i[:n].tolist(), out_f[:n].tolist())]
