"""The portfolio when a broker fills the orders (paper or live trading).

Same decisions as the simulated portfolio (`operators.portfolio`, spec
sections 3-5), but positions, cash, trades and the risk counters are built
from what the broker did (`TradeUpdate`s), not from simulated fills:

- an order decided at bar t is pending until the broker fills it; a position
  is the quantity filled so far (partial fills count at once);
- once an entry is complete (filled, or ended after a partial fill) the
  portfolio asks for the protective OCO (stop + target) at the broker, which
  fills intrabar as the backtest assumes: steps 2a-2d of section 4 are the
  broker's, and the OCO's fills close the position;
- trailing (2e) raises the stop here and asks the broker to move the stop
  leg (only up); signal and time-stop exits (2f) ask for a market sell that
  first cancels the OCO;
- `max_consecutive_order_failures` broker rejections or failed submissions in
  a row halt new entries until a person resumes trading (spec section 5).

A trade update is applied just before its symbol's bar of its minute (the
ordering stage waits for the broker's watermark), so an entry filled at the
open of bar t+1 is a position when bar t+1's steps run, as in the backtest.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from operators.calendar import trading_day
from operators.config import TradingConfig
from operators.portfolio import PendingOrder, Portfolio, Position, Rules
from operators.types import (
    BUY, SELL, ControlEvent, DeadLetter, Fill, Order, PortfolioOutput, Rejection, Trade, TradeUpdate,
)

SUCCESS_EVENTS = frozenset({"new", "fill", "partial_fill", "replaced"})
FAILURE_EVENTS = frozenset({"rejected", "submit_failed"})
ENDED_EVENTS = frozenset({"canceled", "expired", "rejected", "submit_failed"})


def minute_of(ts: int) -> int:
    return ts - ts % 60


@dataclass(slots=True)
class Closing:
    """Exit fills of a position so far (an exit may fill in parts)."""

    qty: int = 0
    proceeds: float = 0.0
    commission: float = 0.0


@dataclass(slots=True)
class BrokerPortfolio(Portfolio):
    max_order_failures: int = 5
    order_failures: int = 0  # consecutive broker rejections / failed submissions
    filled: dict = field(default_factory=dict)  # order id -> cumulative qty applied
    orders: dict = field(default_factory=dict)  # open order id -> PendingOrder (entries and exits)
    closing: dict = field(default_factory=dict)  # (symbol, strategy) -> Closing
    cancel_requested: set = field(default_factory=set)  # entries a flatten asked to cancel
    # trading day (New York date ordinal) -> (open, close) epoch seconds, from
    # the broker's calendar; empty: no session check
    sessions: dict = field(default_factory=dict)
    # symbols whose broker state is unclear (reconciliation): no orders at all until decided
    blocked: frozenset = frozenset()
    filled_since_bar: set = field(default_factory=set)  # symbols with fills since their last bar

    @classmethod
    def new(cls, cfg: TradingConfig, sessions: dict | None = None,
            blocked=()) -> "BrokerPortfolio":
        return cls(Rules.from_config(cfg), float(cfg.risk.initial_cash),
                   max_order_failures=cfg.risk.max_consecutive_order_failures,
                   sessions=dict(sessions or {}), blocked=frozenset(blocked))

    # -- bars: the steps of section 4 the broker does not do ----------------
    def apply(self, symbol: str, ts: int, open_: float, high: float, low: float, close: float,
              signals, out: PortfolioOutput) -> None:
        if ts != self.minute:
            self.close_minute(out)
            self.minute = ts
            day = trading_day(ts)
            if day != self.day:
                self.day = day
                self.start_of_day_equity = self.equity()
                self.loss_streak = 0
                self.day_halt = None
        rules = self.rules
        self.bars_applied += 1
        # 1. fills came from the broker (applied before this minute's bars)
        self.last_close[symbol] = close
        # 2. stop and target rest at the broker; trailing and signal/time exits here
        held = self.by_symbol.get(symbol)
        if symbol in self.blocked:
            held = None  # its broker state is unclear: no orders until a person decides
        if held:
            sells = {s.strategy_id for s in signals if s.side == SELL} if signals else ()
            for p in list(held):
                if p.exit_queued:
                    continue
                if rules.trailing and p.entry_order_id not in self.orders:  # entry complete: OCO asked
                    if high > p.hwm:
                        p.hwm = high
                    if p.hwm >= p.entry_fill * (1 + rules.trailing_activation_pct):
                        raised = p.hwm * (1 - rules.trailing_pct)
                        if raised > p.stop_price:
                            p.stop_price = raised
                            p.trailed = True
                            out.orders.append(Order(
                                f"{p.entry_order_id}.oco", p.strategy_id, symbol, SELL, p.qty, ts,
                                close, "trail", stop_price=raised, target_price=p.target_price,
                                parent_id=p.entry_order_id))
                if p.strategy_id in sells:
                    self._queue_exit(p, ts, close, "signal", out)
                elif (ts - p.entry_time >= rules.time_stop_s
                      and abs(close / p.entry_fill - 1) < rules.time_stop_min_move_pct):
                    self._queue_exit(p, ts, close, "time_stop", out)
        # as the backtest: check the drawdown after a bar that filled or holds something
        filled = symbol in self.filled_since_bar
        if filled:
            self.filled_since_bar.discard(symbol)
        if (held or filled) and self.day_halt is None and (
                self.equity() <= self.start_of_day_equity * rules.drawdown_floor):
            self.day_halt = "daily_drawdown"
        # 3. entries
        if signals:
            for s in signals:
                if s.side == BUY:
                    self._consider_entry(s, symbol, ts, out)

    def _consider_entry(self, sig, symbol: str, ts: int, out: PortfolioOutput) -> None:
        if symbol in self.blocked:
            out.rejections.append(Rejection(sig.strategy_id, symbol, ts, "unreconciled", sig.price))
            return
        if self.sessions and not self.in_session(ts + 60):
            # its market order would fill outside the session (or tomorrow): no entry
            key = (symbol, sig.strategy_id)
            if key not in self.positions and not self._entry_pending(key):
                out.rejections.append(Rejection(sig.strategy_id, symbol, ts, "market_closed", sig.price))
            return
        queued = self.pending.get(symbol)
        before = len(queued) if queued else 0
        Portfolio._consider_entry(self, sig, symbol, ts, out)
        queued = self.pending.get(symbol)
        if queued and len(queued) > before:  # an entry was decided: the broker fills it
            po = queued[-1]
            self.orders[po.order.order_id] = po

    def _queue_exit(self, p: Position, ts: int, close: float, intent: str, out: PortfolioOutput,
                    leg: str = "exit") -> None:
        Portfolio._queue_exit(self, p, ts, close, intent, out, leg)
        po = self.pending[p.symbol].pop()  # the broker fills it: not a next-open fill
        if not self.pending[p.symbol]:
            del self.pending[p.symbol]
        self.orders[po.order.order_id] = po

    def in_session(self, ts: int) -> bool:
        session = self.sessions.get(trading_day(ts))
        return session is not None and session[0] <= ts < session[1]

    # -- kill switch ------------------------------------------------------
    def apply_control(self, control, out: PortfolioOutput) -> None:
        """As the simulated portfolio's, but entries already at the broker are
        asked to cancel (one that fills anyway is closed at once) and exits
        wait for the broker's fills."""
        event = ControlEvent(control.control_id, control.action, control.flatten, control.ts,
                             control.who, control.why)
        if control.action == "resume":
            self.halt = None
            self.order_failures = 0
        else:
            self.halt = "kill_switch"
            if control.flatten:
                for po in list(self.orders.values()):
                    o = po.order
                    if o.side == BUY and o.order_id not in self.cancel_requested:
                        self.cancel_requested.add(o.order_id)
                        out.orders.append(Order(o.order_id, o.strategy_id, o.symbol, BUY, o.qty,
                                                control.ts, o.decision_price, "cancel"))
                        event.entries_canceled += 1
                for p in list(self.positions.values()):
                    if not p.exit_queued:
                        self._queue_exit(p, control.ts, self.last_close[p.symbol], "kill_switch",
                                         out, leg="flatten")
                        event.exits_queued += 1
        out.controls.append(event)

    # -- what the broker did ------------------------------------------------
    def apply_update(self, u: TradeUpdate, out: PortfolioOutput) -> None:
        if u.event in SUCCESS_EVENTS:
            self.order_failures = 0
        elif u.event in FAILURE_EVENTS:
            self._order_failed(u, out)
        if u.event == "reconciled":
            self._reconciled(u, out)
            return
        if u.leg:
            self._protection_update(u, out)
            return
        po = self.orders.get(u.order_id)
        if po is None:
            if u.fill_qty and u.filled_qty > self.filled.get(u.order_id, 0):
                out.dead_letters.append(DeadLetter(
                    u.symbol, u.ts, "unknown_order_fill", f"broker order {u.broker_order_id}",
                    f"{u.order_id} {u.side} {u.fill_qty} @ {u.fill_price}"))
            return
        if u.fill_qty:
            delta = u.filled_qty - self.filled.get(u.order_id, 0)
            if delta > 0:  # a replayed or caught-up update adds nothing
                self.filled[u.order_id] = u.filled_qty
                price = u.fill_price
                if po.order.side == BUY:
                    self._entry_filled(po, delta, price, u.ts, out)
                else:
                    self._exit_filled(po.position_key, po.order, delta, price, u.ts,
                                      po.order.intent, out)
        done = u.filled_qty >= po.order.qty or u.event in ENDED_EVENTS
        if done:
            self._order_ended(po, u, out)

    def _order_failed(self, u: TradeUpdate, out: PortfolioOutput) -> None:
        self.order_failures += 1
        if self.order_failures >= self.max_order_failures and self.halt != "order_failures":
            self.halt = "order_failures"
            out.controls.append(ControlEvent(
                f"order_failures.{u.ts}", "halt", False, minute_of(u.ts), "circuit_breaker",
                f"{self.order_failures} broker rejections or failed submissions in a row "
                f"(last: {u.order_id}: {u.detail or u.event})"))

    def _entry_filled(self, po: PendingOrder, qty: int, price: float, ts: int,
                      out: PortfolioOutput) -> None:
        r, o, key = self.rules, po.order, po.position_key
        commission = qty * r.commission_per_share
        self.filled_since_bar.add(o.symbol)
        self.cash -= qty * price + commission
        self.pending_entry_cash -= qty * o.decision_price
        self.last_close.setdefault(o.symbol, price)
        p = self.positions.get(key)
        if p is None:
            p = Position(o.symbol, o.strategy_id, qty, price, minute_of(ts), commission,
                         price * (1 - r.stop_loss_pct), price * (1 + r.take_profit_pct), price,
                         entry_order_id=o.order_id)
            self.positions[key] = p
            held = self.by_symbol.setdefault(o.symbol, [])
            held.append(p)
            if len(held) > 1:
                held.sort(key=lambda x: r.strategy_order[x.strategy_id])
        else:  # a later part of the same entry: average price
            total = p.qty + qty
            p.entry_fill = (p.entry_fill * p.qty + price * qty) / total
            p.qty, p.entry_commission = total, p.entry_commission + commission
            p.stop_price = p.entry_fill * (1 - r.stop_loss_pct)
            p.target_price = p.entry_fill * (1 + r.take_profit_pct)
            p.hwm = max(p.hwm, price)
        out.fills.append(Fill(o.order_id, o.strategy_id, o.symbol, BUY, qty, ts, price, commission, "entry"))

    def _exit_filled(self, key: tuple, order_id_or_order, qty: int, price: float, ts: int,
                     reason: str, out: PortfolioOutput) -> None:
        p = self.positions.get(key)
        order_id = getattr(order_id_or_order, "order_id", order_id_or_order)
        if p is None:
            out.dead_letters.append(DeadLetter(key[0], ts, "fill_without_position", order_id,
                                               f"sell {qty} @ {price}"))
            return
        c = self.closing.setdefault(key, Closing())
        self.filled_since_bar.add(p.symbol)
        commission = qty * self.rules.commission_per_share
        self.cash += qty * price - commission
        c.qty += qty
        c.proceeds += qty * price
        c.commission += commission
        out.fills.append(Fill(order_id, p.strategy_id, p.symbol, SELL, qty, ts, price, commission, reason))
        if c.qty < p.qty:
            return
        del self.closing[key]
        del self.positions[key]
        held = self.by_symbol[p.symbol]
        held.remove(p)
        if not held:
            del self.by_symbol[p.symbol]
        exit_price = c.proceeds / c.qty
        total_commission = p.entry_commission + c.commission
        pnl = c.proceeds - p.qty * p.entry_fill - total_commission
        out.trades.append(Trade(
            f"{p.strategy_id}.{p.symbol}.{p.entry_time}", p.symbol, p.strategy_id, p.qty,
            p.entry_time, p.entry_fill, minute_of(ts), exit_price, reason, pnl,
            exit_price / p.entry_fill - 1, total_commission))
        if pnl > 0:
            self.loss_streak = 0
        else:
            self.loss_streak += 1
            if self.loss_streak >= self.rules.max_consecutive_losses and self.day_halt is None:
                self.day_halt = "daily_loss_streak"

    def _order_ended(self, po: PendingOrder, u: TradeUpdate, out: PortfolioOutput) -> None:
        o = self.orders.pop(po.order.order_id).order
        if o.side == BUY:
            rest = o.qty - self.filled.get(o.order_id, 0)
            self.pending_entries -= 1
            self.pending_entry_cash -= rest * o.decision_price
            if self.pending_entries == 0:
                self.pending_entry_cash = 0.0
            queued = [q for q in self.pending.get(o.symbol, ()) if q.order.order_id != o.order_id]
            if queued:
                self.pending[o.symbol] = queued
            else:
                self.pending.pop(o.symbol, None)
            p = self.positions.get(po.position_key)
            if p is None:
                return
            if o.order_id in self.cancel_requested:
                self.cancel_requested.discard(o.order_id)
                self._queue_exit(p, minute_of(u.ts), self.last_close[p.symbol], "kill_switch", out,
                                 leg="flatten")
                return
            out.orders.append(Order(
                f"{o.order_id}.oco", o.strategy_id, o.symbol, SELL, p.qty, minute_of(u.ts),
                p.entry_fill, "protect", stop_price=p.stop_price, target_price=p.target_price,
                parent_id=o.order_id))
        else:
            p = self.positions.get(po.position_key)
            if p is not None and self.filled.get(o.order_id, 0) < o.qty:
                p.exit_queued = False  # not (all) sold: the next bar decides again

    def _protection_update(self, u: TradeUpdate, out: PortfolioOutput) -> None:
        entry_id = u.order_id[: -len(".oco")] if u.order_id.endswith(".oco") else u.order_id
        key = next((k for k, p in self.positions.items() if p.entry_order_id == entry_id), None)
        if key is None or not u.fill_qty:
            return
        seen_id = f"{u.order_id}.{u.leg}"
        delta = u.filled_qty - self.filled.get(seen_id, 0)
        if delta <= 0:
            return
        self.filled[seen_id] = u.filled_qty
        p = self.positions[key]
        reason = "take_profit" if u.leg == "target" else ("trailing_stop" if p.trailed else "stop_loss")
        self._exit_filled(key, f"{u.order_id}.{u.leg}", delta, u.fill_price, u.ts, reason, out)

    def _reconciled(self, u: TradeUpdate, out: PortfolioOutput) -> None:
        """The symbol was flattened at the broker by a person: its positions
        are closed here at the last close (reason `flatten`; the broker's own
        closing price is in its records) and its open orders forgotten."""
        for po in [po for po in self.orders.values() if po.order.symbol == u.symbol]:
            self._order_ended(po, u, PortfolioOutput())  # no protection for what is gone
        for p in list(self.by_symbol.get(u.symbol, ())):
            price = self.last_close.get(u.symbol, p.entry_fill)
            self._exit_filled((p.symbol, p.strategy_id), u.order_id, p.qty, price, u.ts, "flatten", out)
