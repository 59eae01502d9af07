"""The compiled portfolio step's decisions as rows (`EventLog`, laid out in
`operators.portfolio_kernel`) and their decoding into the domain objects a
`Portfolio` makes: `Order`, `Fill`, `Trade`, `Rejection`, `EquityPoint`.
Ids and texts are built here, never in the kernel (pure)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from operators import portfolio_layout as K
from operators.types import BUY, SELL, EquityPoint, Fill, Order, Rejection, Trade

LEGS = ("entry", "exit", "flatten", "stop", "target")  # the order id's last part, by K.LEG_*
REASONS = ("entry", "stop_loss", "trailing_stop", "take_profit", "time_stop", "signal", "kill_switch")
REJECTIONS = ("halted", "daily_loss_streak", "daily_drawdown", "max_positions",
              "max_positions_per_symbol", "size_zero")
_REJECTIONS = np.array(REJECTIONS, dtype=object)


@dataclass(slots=True)
class EventLog:
    """Decisions as rows: `ev_i[:, K.EI_*]`, `ev_f[:, K.EF_*]` (see
    operators.portfolio_kernel), in each configuration's decision order."""

    ev_i: np.ndarray
    ev_f: np.ndarray

    def __len__(self) -> int:
        return len(self.ev_i)


def join_logs(logs) -> EventLog:
    logs = [g for g in logs if g is not None]
    if not logs:
        return EventLog(np.zeros((0, K.N_EI), dtype=np.int64), np.zeros((0, K.N_EF)))
    return EventLog(np.concatenate([g.ev_i for g in logs]), np.concatenate([g.ev_f for g in logs]))


def decode(log: EventLog, symbols: list, strategies: list, outs: list) -> None:
    """Append the log's decisions to outs[configuration]: each kind keeps its
    own decision order, so decoding kind by kind is exact."""
    ev_i, ev_f = log.ev_i, log.ev_f
    kinds = ev_i[:, K.EI_KIND]
    several = len(outs) > 1
    names = (np.array(symbols, dtype=object), np.array(strategies, dtype=object))
    for c in (np.unique(ev_i[:, K.EI_CFG]).tolist() if several else (0,)):
        mine = ev_i[:, K.EI_CFG] == c if several else None
        for kind, decode_kind in _DECODERS.items():
            rows = np.flatnonzero(kinds == kind if mine is None else (kinds == kind) & mine)
            if len(rows):
                decode_kind(names, ev_i[rows], ev_f[rows], outs[c])


def _names(names, ev_i) -> tuple[list, list]:
    """Strategy ids and symbols of the rows."""
    symbols, strategies = names
    return strategies[ev_i[:, K.EI_STRAT]].tolist(), symbols[ev_i[:, K.EI_SYM]].tolist()


def _equity(names, ev_i, ev_f, out) -> None:
    out.equity.extend(map(EquityPoint, ev_i[:, K.EI_TS].tolist(), ev_f[:, K.EF_X].tolist(),
                          ev_f[:, K.EF_Y].tolist(), ev_i[:, K.EI_QTY].tolist(), ev_f[:, K.EF_Z].tolist()))


def _rejections(names, ev_i, ev_f, out) -> None:
    sids, syms = _names(names, ev_i)
    out.rejections.extend(map(Rejection, sids, syms, ev_i[:, K.EI_TS].tolist(),
                              _REJECTIONS[ev_i[:, K.EI_REASON]].tolist(), ev_f[:, K.EF_X].tolist()))


def _orders(names, ev_i, ev_f, out) -> None:
    sids, syms = _names(names, ev_i)
    out.orders.extend(
        Order(f"{sid}.{sym}.{t}.{LEGS[leg]}", sid, sym, BUY if leg == K.LEG_ENTRY else SELL, qty, t,
              price, REASONS[reason])
        for sid, sym, t, leg, qty, price, reason in zip(
            sids, syms, ev_i[:, K.EI_TS].tolist(), ev_i[:, K.EI_LEG].tolist(), ev_i[:, K.EI_QTY].tolist(),
            ev_f[:, K.EF_X].tolist(), ev_i[:, K.EI_REASON].tolist()))


def _fills(names, ev_i, ev_f, out) -> None:
    sids, syms = _names(names, ev_i)
    out.fills.extend(
        Fill(f"{sid}.{sym}.{decided}.{LEGS[leg]}", sid, sym, BUY if leg == K.LEG_ENTRY else SELL,
             qty, t, price, commission, REASONS[reason])
        for sid, sym, decided, leg, qty, t, price, commission, reason in zip(
            sids, syms, ev_i[:, K.EI_TS2].tolist(), ev_i[:, K.EI_LEG].tolist(),
            ev_i[:, K.EI_QTY].tolist(), ev_i[:, K.EI_TS].tolist(), ev_f[:, K.EF_X].tolist(),
            ev_f[:, K.EF_Y].tolist(), ev_i[:, K.EI_REASON].tolist()))


def _trades(names, ev_i, ev_f, out) -> None:
    sids, syms = _names(names, ev_i)
    out.trades.extend(
        Trade(f"{sid}.{sym}.{entry_t}", sym, sid, qty, entry_t, entry, exit_t, exit_, REASONS[reason],
              pnl, ret, commission)
        for sid, sym, qty, entry_t, entry, exit_t, exit_, reason, pnl, ret, commission in zip(
            sids, syms, ev_i[:, K.EI_QTY].tolist(), ev_i[:, K.EI_TS2].tolist(),
            ev_f[:, K.EF_X].tolist(), ev_i[:, K.EI_TS].tolist(), ev_f[:, K.EF_Y].tolist(),
            ev_i[:, K.EI_REASON].tolist(), ev_f[:, K.EF_Z].tolist(), ev_f[:, K.EF_W].tolist(),
            ev_f[:, K.EF_V].tolist()))


_DECODERS = {K.EV_ORDER: _orders, K.EV_FILL: _fills, K.EV_TRADE: _trades, K.EV_REJECT: _rejections,
             K.EV_EQUITY: _equity}
