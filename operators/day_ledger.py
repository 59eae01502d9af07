"""Daily rows of a sweep's configurations (spec section 8), compiled.

Every configuration's per-minute mark-to-market equity (the run's `equity`
points) is folded, minute by minute and in time order, into one `DayRow`
per trading day: the day's closing equity E_d and return E_d / E_{d-1} - 1,
the minutes with bars and with an open position, the day's worst drawdown
from the running peak (as the run report computes max drawdown: 1 - equity
/ max(running peak, initial cash)), and the sum of exposure / equity. The
fold is one compiled loop over arrays (`portfolio_kernel.ledger_fold`), so
the Python and the compiled books share this one copy; its arithmetic is
sequential, in IEEE doubles, so the rows are the same bits whichever book
folds them.
"""
from __future__ import annotations

import numpy as np

from operators.portfolio_layout import L_CASH, L_DAY, L_PEAK, L_PREV, N_LF, N_LI, NO_DAY
from operators.portfolio_step import portfolio_step
from operators.types import DayRow


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
        # the points are often columns of an event log (strided): the compiled fold reads them contiguous
        ints, floats = np.int64, np.float64
        portfolio_step().ledger_fold(
            self.st_i, self.st_f, np.ascontiguousarray(cfg, dtype=ints), np.ascontiguousarray(day, dtype=ints),
            np.ascontiguousarray(equity, dtype=floats), np.ascontiguousarray(open_positions, dtype=ints),
            np.ascontiguousarray(exposure, dtype=floats), out_i, out_f, n_out)
        return self._rows(out_i, out_f, n_out)

    def finish(self) -> list:
        out_i, out_f, n_out = self._buffers(0)
        portfolio_step().ledger_finish(self.st_i, self.st_f, out_i, out_f, n_out)
        return self._rows(out_i, out_f, n_out)

    def _buffers(self, points: int):
        rows = points + len(self.config_ids)  # at most one completed day per point, or per config
        return np.empty((rows, 5), dtype=np.int64), np.empty((rows, 4)), np.zeros(1, dtype=np.int64)

    def _rows(self, out_i, out_f, n_out) -> list:
        n = int(n_out[0])
        ids = self.config_ids
        return [DayRow(ids[c], d, e, r, m, im, w, xs, xn)
                for (c, d, m, im, xn), (e, r, w, xs) in zip(out_i[:n].tolist(), out_f[:n].tolist())]
