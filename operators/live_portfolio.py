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

from operators.config import TradingConfig
from operators.live_safety import LiveSafety, minute_of
from operators.portfolio import PendingOrder, Portfolio, Position, Rules
from operators.types import (
    BUY, SELL, DeadLetter, Fill, Order, PortfolioOutput, Rejection, Trade, TradeUpdate,
)

SUCCESS_EVENTS = frozenset({"new", "fill", "partial_fill", "replaced"})
FAILURE_EVENTS = frozenset({"rejected", "submit_failed"})
ENDED_EVENTS = frozenset({"canceled", "expired", "rejected", "submit_failed"})




def oco_entry(order_id: str) -> str | None:
    """The entry of a protective OCO's order id (`{entry}.oco`, or
    `{entry}.oco.r{ts}` when it was placed again), else None."""
    head, sep, tail = order_id.rpartition(".oco")
    if sep and (not tail or tail.startswith(".r")):
        return head
    return None


@dataclass(slots=True)
class Closing:
    """Exit fills of a position so far (an exit may fill in parts)."""

    qty: int = 0
    proceeds: float = 0.0
    commission: float = 0.0


@dataclass(slots=True)
class BrokerPortfolio(LiveSafety, Portfolio):
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
    notional: dict = field(default_factory=dict)  # order (leg) id -> qty * price applied
    failed: set = field(default_factory=set)  # order (leg) ids counted by the breaker once
    oco_ids: dict = field(default_factory=dict)  # (symbol, strategy) -> its current OCO's order id
    unprotected: set = field(default_factory=set)  # positions whose OCO failed: asked again next bar

    @classmethod
    def new(cls, cfg: TradingConfig, sessions: dict | None = None,
            blocked=()) -> "BrokerPortfolio":
        return cls(Rules.from_config(cfg), float(cfg.risk.initial_cash),
                   max_order_failures=cfg.risk.max_consecutive_order_failures,
                   sessions=dict(sessions or {}), blocked=frozenset(blocked))

    # -- bars: the steps of section 4 the broker does not do ----------------
    def apply(self, symbol: str, ts: int, open_: float, high: float, low: float, close: float,
              signals, out: PortfolioOutput) -> None:
        self.enter_minute(ts, out)
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
                if p.exit_queued or p.entry_order_id in self.orders:
                    continue  # an exit is on its way / the entry is still filling
                key = (symbol, p.strategy_id)
                if key in self.unprotected:  # its OCO was refused or canceled: ask again
                    self.unprotected.discard(key)
                    self._protect(p, ts, f"{p.entry_order_id}.oco.r{ts}", out)
                if rules.trailing:
                    if high > p.hwm:
                        p.hwm = high
                    if p.hwm >= p.entry_fill * (1 + rules.trailing_activation_pct):
                        raised = p.hwm * (1 - rules.trailing_pct)
                        if raised > p.stop_price:
                            p.stop_price = raised
                            p.trailed = True
                            oco = self.oco_ids.get(key, f"{p.entry_order_id}.oco")
                            out.orders.append(Order(
                                oco, p.strategy_id, symbol, SELL, self._open_qty(p), ts, close,
                                "trail", stop_price=raised, target_price=p.target_price,
                                parent_id=p.entry_order_id, oco_id=oco))
                if p.strategy_id in sells:
                    self._queue_exit(p, ts, close, "signal", out)
                else:
                    x = rules.exits[p.strategy_id]  # the strategy's own time stop
                    if (ts - p.entry_time >= x.time_stop_s
                            and abs(close / p.entry_fill - 1) < x.time_stop_min_move_pct):
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

    def _open_qty(self, p: Position) -> int:
        """What the broker still holds of the position (an exit may have filled in part)."""
        c = self.closing.get((p.symbol, p.strategy_id))
        return p.qty - (c.qty if c is not None else 0)

    def _protect(self, p: Position, ts: int, oco_id: str, out: PortfolioOutput) -> None:
        self.oco_ids[(p.symbol, p.strategy_id)] = oco_id
        out.orders.append(Order(
            oco_id, p.strategy_id, p.symbol, SELL, self._open_qty(p), ts, p.entry_fill, "protect",
            stop_price=p.stop_price, target_price=p.target_price, parent_id=p.entry_order_id,
            oco_id=oco_id))

    def _entries_waiting(self, symbol: str) -> tuple[int, int]:
        """As the backtest's, but a partly filled entry counts once (as its position)."""
        waiting = [po for po in self.orders.values()
                   if po.order.side == BUY and po.position_key not in self.positions]
        return len(waiting), sum(1 for po in waiting if po.order.symbol == symbol)

    def _queue_exit(self, p: Position, ts: int, close: float, intent: str, out: PortfolioOutput,
                    leg: str = "exit") -> None:
        Portfolio._queue_exit(self, p, ts, close, intent, out, leg)
        order = out.orders[-1]
        order.qty = self._open_qty(p)
        order.oco_id = self.oco_ids.get((p.symbol, p.strategy_id), f"{p.entry_order_id}.oco")
        po = self.pending[p.symbol].pop()  # the broker fills it: not a next-open fill
        if not self.pending[p.symbol]:
            del self.pending[p.symbol]
        self.orders[po.order.order_id] = po

    # -- what the broker did ------------------------------------------------
    def apply_update(self, u: TradeUpdate, out: PortfolioOutput) -> None:
        if u.event in ("fill", "partial_fill") and not (u.fill_qty > 0 and u.filled_qty > 0
                                                       and u.fill_price > 0):
            out.dead_letters.append(DeadLetter(u.symbol, u.ts, "invalid_fill", u.order_id,
                                               f"{u.fill_qty} @ {u.fill_price} (filled {u.filled_qty})"))
            return
        if u.event in SUCCESS_EVENTS:
            self.order_failures = 0
        elif u.event in FAILURE_EVENTS:
            failed_id = f"{u.order_id}.{u.leg}"
            if failed_id not in self.failed:  # a caught-up copy is not another failure
                self.failed.add(failed_id)
                self._order_failed(u, out)
        if u.event == "reconciled":
            self._reconciled(u, out)
            return
        entry_id = oco_entry(u.order_id)
        if entry_id is not None:
            self._protection_update(entry_id, u, out)
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
                price = self._delta_price(u.order_id, u, delta)
                if po.order.side == BUY:
                    self._entry_filled(po, delta, price, u.ts, out)
                else:
                    self._exit_filled(po.position_key, po.order, delta, price, u.ts,
                                      po.order.intent, out)
        done = u.filled_qty >= po.order.qty or u.event in ENDED_EVENTS
        if done:
            self._order_ended(po, u, out)

    def _delta_price(self, seen_id: str, u: TradeUpdate, delta: int) -> float:
        """The price of the `delta` shares not applied yet: this fill's, or,
        when an update covers several fills (a catch-up gives the order's
        cumulative quantity at its average price), what the average implies."""
        price = u.fill_price
        if delta != u.fill_qty and u.fill_qty == u.filled_qty:
            price = (u.fill_price * u.filled_qty - self.notional.get(seen_id, 0.0)) / delta
        self.notional[seen_id] = self.notional.get(seen_id, 0.0) + delta * price
        return price

    def _entry_filled(self, po: PendingOrder, qty: int, price: float, ts: int,
                      out: PortfolioOutput) -> None:
        r, o, key = self.rules, po.order, po.position_key
        commission = qty * r.commission_per_share
        self.filled_since_bar.add(o.symbol)
        self.cash -= qty * price + commission
        self.pending_entry_cash -= qty * o.decision_price
        self.last_close.setdefault(o.symbol, price)
        p = self.positions.get(key)
        x = r.exits[o.strategy_id]  # the strategy's own stop and target (its OCO)
        if p is None:
            p = Position(o.symbol, o.strategy_id, qty, price, minute_of(ts), commission,
                         price * (1 - x.stop_loss_pct), price * (1 + x.take_profit_pct), price,
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
            p.stop_price = p.entry_fill * (1 - x.stop_loss_pct)
            p.target_price = p.entry_fill * (1 + x.take_profit_pct)
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
        self.oco_ids.pop(key, None)
        self.unprotected.discard(key)
        for oid in [i for i, po in self.orders.items() if po.position_key == key and po.order.side == SELL]:
            del self.orders[oid]  # an exit the broker skipped: the position is closed
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
        popped = self.orders.pop(po.order.order_id, None)
        if popped is None:
            return  # an exit forgotten when its position closed
        o = popped.order
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
                if not p.exit_queued:
                    self._queue_exit(p, minute_of(u.ts), self.last_close[p.symbol], "kill_switch",
                                     out, leg="flatten")
                return
            self._protect(p, minute_of(u.ts), f"{o.order_id}.oco", out)
        else:
            p = self.positions.get(po.position_key)
            if p is not None and self.filled.get(o.order_id, 0) < o.qty:
                p.exit_queued = False  # not (all) sold: the next bar decides again
                # the sink canceled the OCO before this exit: protect what is left again
                self.unprotected.add(po.position_key)

    def _protection_update(self, entry_id: str, u: TradeUpdate, out: PortfolioOutput) -> None:
        key = next((k for k, p in self.positions.items() if p.entry_order_id == entry_id), None)
        if key is None:
            return
        if u.event in FAILURE_EVENTS and u.order_id == self.oco_ids.get(key):
            self.unprotected.add(key)  # refused: asked again at the position's next bar
            return
        if not u.fill_qty:
            return
        seen_id = f"{u.order_id}.{u.leg}"
        delta = u.filled_qty - self.filled.get(seen_id, 0)
        if delta <= 0:
            return
        self.filled[seen_id] = u.filled_qty
        p = self.positions[key]
        reason = "take_profit" if u.leg == "target" else ("trailing_stop" if p.trailed else "stop_loss")
        price = self._delta_price(seen_id, u, delta)
        self._exit_filled(key, seen_id, delta, price, u.ts, reason, out)
