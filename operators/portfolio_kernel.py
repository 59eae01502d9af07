"""The compiled portfolio step: spec sections 3-5 for the simulated broker,
over arrays of configuration state (numba).

This module is the arithmetic only: no strings, no objects. The state, the
symbol and strategy names and the decoding of events into domain objects
live in `operators.compiled_portfolio`, which documents the API.

Every floating-point expression mirrors `operators.portfolio.Portfolio`
operand for operand and in the same order (equity sums positions in their
insertion order starting from cash; the minute's equity point is cash plus
an exposure summed from 0.0; sizing, fills, cash and P&L as written there),
so results are bit-identical: tests/test_compiled_portfolio.py pins it.

Layout (c = configuration, g = strategy in the book's strategy list, s =
symbol code, k = slot):
- `cfg_f[c, CF_*]`, `cfg_i[c, CI_*]`: the configuration's rules;
  `st_f[c, g, SF_*]`, `st_i[c, g, SI_*]`: its per-strategy exit settings and
  its configuration order (`SI_RANK`, -1 when c does not trade g);
- `acct_f[c, AF_*]`, `acct_i[c, AI_*]`: cash, halts, counters;
- `pos_f[c, k, PF_*]`, `pos_i[c, k, PI_*]`: open positions, slots
  0..AI_NPOS-1 in the order they were opened (the Python dict's order);
- `pend_f[c, k, QF_*]`, `pend_i[c, k, QI_*]`: orders waiting for their
  symbol's next bar, in the order they were queued;
- `sym_i[c, s, SY_*]`: per symbol open positions, waiting orders, waiting
  entries and when its waiting list began (the dict position of
  `Portfolio.pending[symbol]`, which decides the order a flatten cancels in);
- `clock[CK_*]`: the minute being applied and its trading day (shared: every
  configuration sees the same bars); `last_close[s]` likewise.

Events go to `ev_i[n, EI_*]` / `ev_f[n, EF_*]` in each configuration's
decision order; `ev_n[0]` counts them.

The layout (the `CF_*` ... `NEED_*` and `L_*` names) is
`operators.portfolio_layout`, numba-free; the Python side reads it from
there. The callers reach these functions through `operators.portfolio_step`:
the ahead-of-time build of this file when one is built for this very source
(`tools/build_portfolio_step.py`), else numba's JIT and its cache.

One file on purpose, longer than the project's modules usually are:
numba's cache (`cache=True`) checks only the timestamp of the file of the
function it caches, so a helper moved to another module could change while
the cached code that inlined it stays in use (the layout is checked by its
digest, `LAYOUT_DIGEST`). A sweep's day ledgers fold here too
(`ledger_fold`, `ledger_finish`; `operators.day_ledger` is their Python side).
"""
from __future__ import annotations

import numpy as np
from numba import njit

# Helpers are called with np.int64(CONSTANT): a bare constant is typed as a
# literal and would compile another copy of the helper for each value.
_i = np.int64

# The layout's names are this module's globals (numba compiles them in);
# a change there must change this file too, or numba's cache would keep the
# old values: hence the digest.
from operators.portfolio_layout import *  # noqa: E402,F401,F403

LAYOUT_DIGEST = "6f55629fc89069a4f2ff5e657a7c4f87fa9d2ad66c882ab697dfb548b9d9ab9e"


def _check_layout() -> None:
    import hashlib
    import operators.portfolio_layout as layout

    with open(layout.__file__, "rb") as fh:
        digest = hashlib.sha256(fh.read()).hexdigest()
    if digest != LAYOUT_DIGEST:
        raise ImportError(f"operators/portfolio_layout.py changed: set LAYOUT_DIGEST in "
                          f"operators/portfolio_kernel.py to {digest!r} (it keeps numba's cache honest)")


_check_layout()


@njit(cache=True)
def _event(ev_i, ev_f, ev_n, kind, c, s, g, qty, ts, ts2, leg, reason, x, y, z, w, v):
    n = ev_n[0]
    ev_i[n, EI_KIND] = kind
    ev_i[n, EI_CFG] = c
    ev_i[n, EI_SYM] = s
    ev_i[n, EI_STRAT] = g
    ev_i[n, EI_QTY] = qty
    ev_i[n, EI_TS] = ts
    ev_i[n, EI_TS2] = ts2
    ev_i[n, EI_LEG] = leg
    ev_i[n, EI_REASON] = reason
    ev_f[n, EF_X] = x
    ev_f[n, EF_Y] = y
    ev_f[n, EF_Z] = z
    ev_f[n, EF_W] = w
    ev_f[n, EF_V] = v
    ev_n[0] = n + 1


@njit(cache=True)
def _equity(c, acct_f, acct_i, pos_i, last_close):
    # Portfolio.equity(): cash, then each position in insertion order
    value = acct_f[c, AF_CASH]
    for k in range(acct_i[c, AI_NPOS]):
        value += pos_i[c, k, PI_QTY] * last_close[pos_i[c, k, PI_SYM]]
    return value


@njit(cache=True)
def _close_minute(acct_f, acct_i, pos_i, last_close, clock, ev_i, ev_f, ev_n, record_equity):
    """Portfolio.close_minute for every configuration."""
    if clock[CK_HAS_MINUTE] == 0:
        return
    if record_equity:
        for c in range(acct_f.shape[0]):
            exposure = 0.0
            for k in range(acct_i[c, AI_NPOS]):
                exposure += pos_i[c, k, PI_QTY] * last_close[pos_i[c, k, PI_SYM]]
            cash = acct_f[c, AF_CASH]
            _event(ev_i, ev_f, ev_n, _i(EV_EQUITY), c, _i(-1), _i(-1), acct_i[c, AI_NPOS],
                   clock[CK_MINUTE], _i(0), _i(0), _i(0), cash, cash + exposure, exposure, 0.0, 0.0)
    clock[CK_HAS_MINUTE] = 0


@njit(cache=True)
def close_minute(acct_f, acct_i, pos_i, last_close, clock, ev_i, ev_f, ev_n, record_equity):
    _close_minute(acct_f, acct_i, pos_i, last_close, clock, ev_i, ev_f, ev_n, record_equity)


@njit(cache=True)
def _move_row(a_f, a_i, c, src, dst):
    # scalar loops: slice assignment costs seconds of compile time
    for f in range(a_f.shape[2]):
        a_f[c, dst, f] = a_f[c, src, f]
    for f in range(a_i.shape[2]):
        a_i[c, dst, f] = a_i[c, src, f]


@njit(cache=True)
def _remove_position(c, k, pos_f, pos_i, acct_i, sym_i):
    s = pos_i[c, k, PI_SYM]
    n = acct_i[c, AI_NPOS]
    for j in range(k, n - 1):
        _move_row(pos_f, pos_i, c, j + 1, j)
    acct_i[c, AI_NPOS] = n - 1
    sym_i[c, s, SY_NPOS] -= 1


@njit(cache=True)
def _find_position(c, s, g, pos_i, acct_i):
    for k in range(acct_i[c, AI_NPOS]):
        if pos_i[c, k, PI_SYM] == s and pos_i[c, k, PI_STRAT] == g:
            return k
    return -1


@njit(cache=True)
def _queue(c, s, g, buy, qty, ts, leg, reason, price, pend_f, pend_i, acct_i, sym_i):
    """Append an order to the waiting list (Portfolio.pending[symbol].append)."""
    n = acct_i[c, AI_NPEND]
    pend_i[c, n, QI_SYM] = s
    pend_i[c, n, QI_STRAT] = g
    pend_i[c, n, QI_BUY] = buy
    pend_i[c, n, QI_QTY] = qty
    pend_i[c, n, QI_TS] = ts
    pend_i[c, n, QI_LEG] = leg
    pend_i[c, n, QI_REASON] = reason
    pend_f[c, n, QF_PRICE] = price
    acct_i[c, AI_NPEND] = n + 1
    if sym_i[c, s, SY_NPEND] == 0:  # a new key at the end of the pending dict
        sym_i[c, s, SY_GROUP] = acct_i[c, AI_GROUP_SEQ]
        acct_i[c, AI_GROUP_SEQ] += 1
    sym_i[c, s, SY_NPEND] += 1
    if buy:
        sym_i[c, s, SY_NPEND_BUY] += 1


@njit(cache=True)
def _queue_exit(c, k, ts, close, reason, leg, pos_i, pend_f, pend_i, acct_i, sym_i, ev_i, ev_f, ev_n):
    """Portfolio._queue_exit: a market sell for the position's next bar."""
    s = pos_i[c, k, PI_SYM]
    g = pos_i[c, k, PI_STRAT]
    qty = pos_i[c, k, PI_QTY]
    _event(ev_i, ev_f, ev_n, _i(EV_ORDER), c, s, g, qty, ts, _i(0), leg, reason, close, 0.0, 0.0,
           0.0, 0.0)
    pos_i[c, k, PI_EXIT_QUEUED] = 1
    _queue(c, s, g, _i(0), qty, ts, leg, reason, close, pend_f, pend_i, acct_i, sym_i)


@njit(cache=True)
def _exit(c, k, price, ts, reason, leg, order_ts, cfg_f, cfg_i, acct_f, acct_i, pos_f, pos_i,
          sym_i, ev_i, ev_f, ev_n):
    """Portfolio._exit: the sell fills at `price` (before slippage)."""
    s = pos_i[c, k, PI_SYM]
    g = pos_i[c, k, PI_STRAT]
    qty = pos_i[c, k, PI_QTY]
    entry_fill = pos_f[c, k, PF_ENTRY_FILL]
    entry_time = pos_i[c, k, PI_ENTRY_TIME]
    entry_commission = pos_f[c, k, PF_ENTRY_COMMISSION]
    fill = price * cfg_f[c, CF_SELL_SLIP]
    commission = qty * cfg_f[c, CF_COMMISSION]
    acct_f[c, AF_CASH] += qty * fill - commission
    _remove_position(c, k, pos_f, pos_i, acct_i, sym_i)
    _event(ev_i, ev_f, ev_n, _i(EV_FILL), c, s, g, qty, ts, order_ts, leg, reason, fill, commission,
           0.0, 0.0, 0.0)
    total_commission = entry_commission + commission
    pnl = qty * (fill - entry_fill) - total_commission
    _event(ev_i, ev_f, ev_n, _i(EV_TRADE), c, s, g, qty, ts, entry_time, _i(0), reason, entry_fill,
           fill, pnl, fill / entry_fill - 1, total_commission)
    if pnl > 0:
        acct_i[c, AI_LOSS_STREAK] = 0
    else:
        acct_i[c, AI_LOSS_STREAK] += 1
        if acct_i[c, AI_LOSS_STREAK] >= cfg_i[c, CI_MAX_LOSSES] and acct_i[c, AI_DAY_HALT] == DAY_NONE:
            acct_i[c, AI_DAY_HALT] = DAY_LOSS_STREAK


@njit(cache=True)
def _exit_now(c, k, price, ts, reason, cfg_f, cfg_i, acct_f, acct_i, pos_f, pos_i, sym_i,
              ev_i, ev_f, ev_n):
    """Portfolio._exit_now: a bracket leg filling inside this bar."""
    leg = _i(LEG_TARGET) if reason == R_TAKE_PROFIT else _i(LEG_STOP)
    _event(ev_i, ev_f, ev_n, _i(EV_ORDER), c, pos_i[c, k, PI_SYM], pos_i[c, k, PI_STRAT],
           pos_i[c, k, PI_QTY], ts, _i(0), leg, reason, price, 0.0, 0.0, 0.0, 0.0)
    _exit(c, k, price, ts, reason, leg, ts, cfg_f, cfg_i, acct_f, acct_i, pos_f, pos_i, sym_i,
          ev_i, ev_f, ev_n)


@njit(cache=True)
def _fill_entry(c, q, ts, open_, cfg_f, st_f, acct_f, acct_i, pos_f, pos_i, pend_f, pend_i,
                sym_i, ev_i, ev_f, ev_n):
    """Portfolio._fill_entry of waiting order slot q."""
    s = pend_i[c, q, QI_SYM]
    g = pend_i[c, q, QI_STRAT]
    qty = pend_i[c, q, QI_QTY]
    fill = open_ * cfg_f[c, CF_BUY_SLIP]
    commission = qty * cfg_f[c, CF_COMMISSION]
    acct_f[c, AF_CASH] -= qty * fill + commission
    acct_f[c, AF_PENDING_CASH] -= qty * pend_f[c, q, QF_PRICE]
    acct_i[c, AI_PENDING_ENTRIES] -= 1
    if acct_i[c, AI_PENDING_ENTRIES] == 0:
        acct_f[c, AF_PENDING_CASH] = 0.0
    k = acct_i[c, AI_NPOS]
    pos_i[c, k, PI_SYM] = s
    pos_i[c, k, PI_STRAT] = g
    pos_i[c, k, PI_QTY] = qty
    pos_i[c, k, PI_ENTRY_TIME] = ts
    pos_i[c, k, PI_TRAILED] = 0
    pos_i[c, k, PI_EXIT_QUEUED] = 0
    pos_f[c, k, PF_ENTRY_FILL] = fill
    pos_f[c, k, PF_ENTRY_COMMISSION] = commission
    pos_f[c, k, PF_STOP] = fill * (1 - st_f[c, g, SF_SL])
    pos_f[c, k, PF_TARGET] = fill * (1 + st_f[c, g, SF_TP])
    pos_f[c, k, PF_HWM] = fill
    acct_i[c, AI_NPOS] = k + 1
    sym_i[c, s, SY_NPOS] += 1
    _event(ev_i, ev_f, ev_n, _i(EV_FILL), c, s, g, qty, ts, pend_i[c, q, QI_TS], _i(LEG_ENTRY),
           _i(R_ENTRY), fill, commission, 0.0, 0.0, 0.0)


@njit(cache=True)
def _fill_waiting(c, s, ts, open_, cfg_f, cfg_i, st_f, acct_f, acct_i, pos_f, pos_i, pend_f,
                  pend_i, sym_i, ev_i, ev_f, ev_n):
    """Step 1: the symbol's waiting orders fill at this open, in queue order."""
    n = acct_i[c, AI_NPEND]
    for q in range(n):
        if pend_i[c, q, QI_SYM] != s:
            continue
        if pend_i[c, q, QI_BUY]:
            _fill_entry(c, q, ts, open_, cfg_f, st_f, acct_f, acct_i, pos_f, pos_i, pend_f,
                        pend_i, sym_i, ev_i, ev_f, ev_n)
        else:
            k = _find_position(c, s, pend_i[c, q, QI_STRAT], pos_i, acct_i)
            _exit(c, k, open_, ts, pend_i[c, q, QI_REASON], pend_i[c, q, QI_LEG],
                  pend_i[c, q, QI_TS], cfg_f, cfg_i, acct_f, acct_i, pos_f, pos_i, sym_i,
                  ev_i, ev_f, ev_n)
    # the symbol's list is popped: drop its orders, keep the others' order
    j = 0
    for q in range(n):
        if pend_i[c, q, QI_SYM] != s:
            if j != q:
                _move_row(pend_f, pend_i, c, q, j)
            j += 1
    acct_i[c, AI_NPEND] = j
    sym_i[c, s, SY_NPEND] = 0
    sym_i[c, s, SY_NPEND_BUY] = 0


@njit(cache=True)
def _consider_entry(c, s, g, ts, price, cfg_f, cfg_i, st_f, acct_f, acct_i, pos_i, pend_f,
                    pend_i, sym_i, last_close, ev_i, ev_f, ev_n):
    """Portfolio._consider_entry: risk, sizing, a waiting entry or a rejection."""
    if sym_i[c, s, SY_NPOS] > 0 and _find_position(c, s, g, pos_i, acct_i) >= 0:
        return  # BUY when long does nothing
    if sym_i[c, s, SY_NPEND] > 0:
        for q in range(acct_i[c, AI_NPEND]):
            if pend_i[c, q, QI_SYM] == s and pend_i[c, q, QI_STRAT] == g:
                return
    reason = _i(-1)
    if acct_i[c, AI_HALT] != HALT_NONE:
        reason = J_HALTED
    elif acct_i[c, AI_DAY_HALT] == DAY_LOSS_STREAK:
        reason = J_LOSS_STREAK
    elif acct_i[c, AI_DAY_HALT] == DAY_DRAWDOWN:
        reason = J_DRAWDOWN
    elif acct_i[c, AI_NPOS] + acct_i[c, AI_PENDING_ENTRIES] >= cfg_i[c, CI_MAX_POSITIONS]:
        reason = J_MAX_POSITIONS
    elif sym_i[c, s, SY_NPOS] + sym_i[c, s, SY_NPEND_BUY] >= cfg_i[c, CI_MAX_PER_SYMBOL]:
        reason = J_MAX_PER_SYMBOL
    qty = 0
    if reason < 0:
        equity = _equity(c, acct_f, acct_i, pos_i, last_close)
        available = acct_f[c, AF_CASH] - acct_f[c, AF_PENDING_CASH]
        # min() of Python: the first of equal values (they are equal anyway)
        a = equity * cfg_f[c, CF_RISK_PCT] / (price * st_f[c, g, SF_SL])
        b = equity * cfg_f[c, CF_MAX_POS_PCT] / price
        d = available / price
        m = a
        if b < m:
            m = b
        if d < m:
            m = d
        qty = np.int64(np.floor(m))
        if qty < 1:
            reason = J_SIZE_ZERO
    if reason >= 0:
        _event(ev_i, ev_f, ev_n, _i(EV_REJECT), c, s, g, _i(0), ts, _i(0), _i(0), reason, price,
               0.0, 0.0, 0.0, 0.0)
        return
    _event(ev_i, ev_f, ev_n, _i(EV_ORDER), c, s, g, qty, ts, _i(0), _i(LEG_ENTRY), _i(R_ENTRY), price,
           0.0, 0.0, 0.0, 0.0)
    _queue(c, s, g, _i(1), qty, ts, _i(LEG_ENTRY), _i(R_ENTRY), price, pend_f, pend_i, acct_i, sym_i)
    acct_f[c, AF_PENDING_CASH] += qty * price
    acct_i[c, AI_PENDING_ENTRIES] += 1


@njit(cache=True)
def apply_bars(cfg_f, cfg_i, st_f, st_i, clock, acct_f, acct_i, last_close, pos_f, pos_i,
               pend_f, pend_i, sym_i,
               b_sym, b_ts, b_day, b_open, b_high, b_low, b_close, start, stop,
               sig_ptr, sig_strat, sig_sell, sig_price, sig_mask,
               ev_i, ev_f, ev_n, record_equity):
    """Apply bars start..stop-1 (in (timestamp, symbol) order) to every
    configuration: Portfolio.apply, bar by bar. Bar i's signals are rows
    sig_ptr[i]..sig_ptr[i+1]-1 in their list order (strategy, sell?, price);
    `sig_mask[row, c]` (when sig_mask has rows) says whether configuration c
    acts on the row. Returns (next bar, DONE | NEED_EVENTS | NEED_SLOTS):
    before a bar that might not fit the event buffer or the position and
    order slots, it stops without touching it."""
    n_cfg = cfg_f.shape[0]
    n_strat = st_i.shape[1]
    use_mask = sig_mask.shape[0] > 0
    slots = pos_i.shape[1]
    pend_slots = pend_i.shape[1]
    ranked = np.empty(n_strat, dtype=np.int64)
    for i in range(start, stop):
        s = b_sym[i]
        ts = b_ts[i]
        lo_sig = sig_ptr[i]
        hi_sig = sig_ptr[i + 1]
        n_sig = hi_sig - lo_sig
        # room for the most this bar can decide, in every configuration
        if ev_n[0] + n_cfg * (2 + 5 * n_strat + n_sig) > ev_i.shape[0]:
            return i, NEED_EVENTS
        for c in range(n_cfg):
            if (acct_i[c, AI_NPOS] + n_strat > slots
                    or acct_i[c, AI_NPEND] + n_strat + n_sig > pend_slots):
                return i, NEED_SLOTS
        open_ = b_open[i]
        high = b_high[i]
        low = b_low[i]
        close = b_close[i]
        # Portfolio.enter_minute
        if clock[CK_HAS_MINUTE] == 0 or ts != clock[CK_MINUTE]:
            _close_minute(acct_f, acct_i, pos_i, last_close, clock, ev_i, ev_f, ev_n, record_equity)
            clock[CK_HAS_MINUTE] = 1
            clock[CK_MINUTE] = ts
            day = b_day[i]
            if clock[CK_HAS_DAY] == 0 or day != clock[CK_DAY]:
                clock[CK_HAS_DAY] = 1
                clock[CK_DAY] = day
                for c in range(n_cfg):
                    acct_f[c, AF_SOD_EQUITY] = _equity(c, acct_f, acct_i, pos_i, last_close)
                    acct_i[c, AI_LOSS_STREAK] = 0
                    acct_i[c, AI_DAY_HALT] = DAY_NONE
        clock[CK_BARS] += 1
        # a bar's close is its symbol's last close once step 1 is done; step 1
        # (fills) does not read it, so it is set once for every configuration
        last_close[s] = close
        for c in range(n_cfg):
            moved = False
            # 1. orders queued at this symbol's previous bar fill at this open
            if sym_i[c, s, SY_NPEND] > 0:
                moved = True
                _fill_waiting(c, s, ts, open_, cfg_f, cfg_i, st_f, acct_f, acct_i, pos_f, pos_i,
                              pend_f, pend_i, sym_i, ev_i, ev_f, ev_n)
            # 2. exits of the symbol's open positions, in configuration order
            if sym_i[c, s, SY_NPOS] > 0:
                moved = True
                held = 0
                for k in range(acct_i[c, AI_NPOS]):
                    if pos_i[c, k, PI_SYM] == s:
                        g = pos_i[c, k, PI_STRAT]
                        r = st_i[c, g, SI_RANK]
                        j = held
                        while j > 0 and st_i[c, ranked[j - 1], SI_RANK] > r:
                            ranked[j] = ranked[j - 1]
                            j -= 1
                        ranked[j] = g
                        held += 1
                for h in range(held):
                    g = ranked[h]
                    k = _find_position(c, s, g, pos_i, acct_i)
                    if pos_i[c, k, PI_EXIT_QUEUED]:
                        continue
                    stop_price = pos_f[c, k, PF_STOP]
                    target = pos_f[c, k, PF_TARGET]
                    stop_reason = _i(R_TRAILING_STOP) if pos_i[c, k, PI_TRAILED] else _i(R_STOP_LOSS)
                    exit_reason = _i(-1)
                    exit_price = 0.0
                    if open_ <= stop_price:
                        exit_reason, exit_price = stop_reason, open_
                    elif open_ >= target:
                        exit_reason, exit_price = _i(R_TAKE_PROFIT), open_
                    elif low <= stop_price:
                        exit_reason, exit_price = stop_reason, stop_price
                    elif high >= target:
                        exit_reason, exit_price = _i(R_TAKE_PROFIT), target
                    if exit_reason >= 0:
                        _exit_now(c, k, exit_price, ts, exit_reason, cfg_f, cfg_i, acct_f, acct_i,
                                  pos_f, pos_i, sym_i, ev_i, ev_f, ev_n)
                        continue
                    if cfg_i[c, CI_TRAILING]:
                        if high > pos_f[c, k, PF_HWM]:
                            pos_f[c, k, PF_HWM] = high
                        hwm = pos_f[c, k, PF_HWM]
                        if hwm >= pos_f[c, k, PF_ENTRY_FILL] * (1 + cfg_f[c, CF_TRAIL_ACT]):
                            raised = hwm * (1 - cfg_f[c, CF_TRAIL_PCT])
                            if raised > pos_f[c, k, PF_STOP]:
                                pos_f[c, k, PF_STOP] = raised
                                pos_i[c, k, PI_TRAILED] = 1
                    queue_reason = _i(-1)
                    for row in range(lo_sig, hi_sig):
                        if (sig_sell[row] and sig_strat[row] == g
                                and (not use_mask or sig_mask[row, c])):
                            queue_reason = _i(R_SIGNAL)
                            break
                    if queue_reason < 0 and (
                            ts - pos_i[c, k, PI_ENTRY_TIME] >= st_i[c, g, SI_TS_SECONDS]
                            and abs(close / pos_f[c, k, PF_ENTRY_FILL] - 1) < st_f[c, g, SF_TS_MOVE]):
                        queue_reason = _i(R_TIME_STOP)
                    if queue_reason >= 0:
                        _queue_exit(c, k, ts, close, queue_reason, _i(LEG_EXIT), pos_i, pend_f,
                                    pend_i, acct_i, sym_i, ev_i, ev_f, ev_n)
            # unchanged equity cannot newly breach the floor
            if moved and acct_i[c, AI_DAY_HALT] == DAY_NONE and (
                    _equity(c, acct_f, acct_i, pos_i, last_close)
                    <= acct_f[c, AF_SOD_EQUITY] * cfg_f[c, CF_DD_FLOOR]):
                acct_i[c, AI_DAY_HALT] = DAY_DRAWDOWN
            # 3. BUY signals become waiting entries through risk and sizing
            for row in range(lo_sig, hi_sig):
                if sig_sell[row]:
                    continue
                g = sig_strat[row]
                if st_i[c, g, SI_RANK] < 0 or (use_mask and not sig_mask[row, c]):
                    continue
                _consider_entry(c, s, g, ts, sig_price[row], cfg_f, cfg_i, st_f, acct_f, acct_i,
                                pos_i, pend_f, pend_i, sym_i, last_close, ev_i, ev_f, ev_n)
    return stop, DONE


@njit(cache=True)
def apply_control(halt, flatten, ts, acct_f, acct_i, pos_i, pend_f, pend_i, sym_i, last_close,
                  counts, ev_i, ev_f, ev_n):
    """Portfolio.apply_control for every configuration: resume (halt False)
    lifts the kill switch; a halt sets it, and with `flatten` cancels waiting
    entries (in the pending dict's order) and queues a market exit of every
    open position. counts[c] = (exits queued, entries canceled)."""
    n_cfg = acct_f.shape[0]
    n_sym = sym_i.shape[1]
    for c in range(n_cfg):
        if not halt:
            acct_i[c, AI_HALT] = HALT_NONE
            continue
        acct_i[c, AI_HALT] = HALT_KILL_SWITCH
        if not flatten:
            continue
        canceled = 0
        # symbols with waiting orders, in the order their lists began
        n_groups = 0
        for s in range(n_sym):
            if sym_i[c, s, SY_NPEND] > 0:
                n_groups += 1
        groups = np.empty(n_groups, dtype=np.int64)
        stamps = np.empty(n_groups, dtype=np.int64)
        j = 0
        for s in range(n_sym):
            if sym_i[c, s, SY_NPEND] > 0:
                groups[j] = s
                stamps[j] = sym_i[c, s, SY_GROUP]
                j += 1
        order = np.argsort(stamps)
        for gi in range(n_groups):
            s = groups[order[gi]]
            for q in range(acct_i[c, AI_NPEND]):
                if pend_i[c, q, QI_SYM] == s and pend_i[c, q, QI_BUY]:
                    acct_i[c, AI_PENDING_ENTRIES] -= 1
                    acct_f[c, AF_PENDING_CASH] -= pend_i[c, q, QI_QTY] * pend_f[c, q, QF_PRICE]
                    canceled += 1
        # drop the canceled entries (a symbol left with exits keeps its place)
        n = acct_i[c, AI_NPEND]
        j = 0
        for q in range(n):
            if pend_i[c, q, QI_BUY]:
                s = pend_i[c, q, QI_SYM]
                sym_i[c, s, SY_NPEND] -= 1
                sym_i[c, s, SY_NPEND_BUY] -= 1
                continue
            if j != q:
                _move_row(pend_f, pend_i, c, q, j)
            j += 1
        acct_i[c, AI_NPEND] = j
        if acct_i[c, AI_PENDING_ENTRIES] == 0:
            acct_f[c, AF_PENDING_CASH] = 0.0
        exits = 0
        for k in range(acct_i[c, AI_NPOS]):
            if not pos_i[c, k, PI_EXIT_QUEUED]:
                _queue_exit(c, k, ts, last_close[pos_i[c, k, PI_SYM]], _i(R_KILL_SWITCH), _i(LEG_FLATTEN),
                            pos_i, pend_f, pend_i, acct_i, sym_i, ev_i, ev_f, ev_n)
                exits += 1
        counts[c, 0] = exits
        counts[c, 1] = canceled


# -- a sweep's day ledgers (operators.day_ledger): the fold of equity points into days
@njit(cache=True)
def _ledger_close(c, st_i, st_f, out_i, out_f, n_out):
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
def ledger_fold(st_i, st_f, cfg, day, equity, open_positions, exposure, out_i, out_f, n_out):
    """Fold equity points (row r: configuration cfg[r], trading day day[r], ...;
    each configuration's rows in time order) into the state; completed days
    go to out_* rows (out_i: config, day, minutes, in market, exposure
    minutes; out_f: equity, return, worst drawdown, exposure sum)."""
    for r in range(len(cfg)):
        c = cfg[r]
        if day[r] != st_i[c, L_DAY]:
            if st_i[c, L_DAY] != NO_DAY:
                _ledger_close(c, st_i, st_f, out_i, out_f, n_out)
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
def ledger_finish(st_i, st_f, out_i, out_f, n_out):
    for c in range(st_i.shape[0]):
        if st_i[c, L_DAY] != NO_DAY:
            _ledger_close(c, st_i, st_f, out_i, out_f, n_out)
            st_i[c, L_DAY] = NO_DAY
