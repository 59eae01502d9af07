"""The live portfolio's safety rules (a mixin of `BrokerPortfolio`): market
sessions, the kill switch at the broker, the order-failure circuit breaker,
and a symbol a person flattened through reconciliation."""
from __future__ import annotations

from operators.calendar import trading_day
from operators.types import BUY, ControlEvent, Order, PortfolioOutput, TradeUpdate


def minute_of(ts: int) -> int:
    return ts - ts % 60


class LiveSafety:
    __slots__ = ()

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
                    # an entry still filling is sold when it ends (_order_ended); an
                    # unreconciled symbol's broker quantity is unknown: a person decides
                    if not p.exit_queued and p.entry_order_id not in self.orders \
                            and p.symbol not in self.blocked:
                        self._queue_exit(p, control.ts, self.last_close[p.symbol], "kill_switch",
                                         out, leg="flatten")
                        event.exits_queued += 1
        out.controls.append(event)

    def _order_failed(self, u: TradeUpdate, out: PortfolioOutput) -> None:
        self.order_failures += 1
        if self.order_failures >= self.max_order_failures and self.halt != "order_failures":
            self.halt = "order_failures"
            out.controls.append(ControlEvent(
                f"order_failures.{u.ts}", "halt", False, minute_of(u.ts), "circuit_breaker",
                f"{self.order_failures} broker rejections or failed submissions in a row "
                f"(last: {u.order_id}: {u.detail or u.event})"))

    def _reconciled(self, u: TradeUpdate, out: PortfolioOutput) -> None:
        """The symbol was flattened at the broker by a person: its positions
        are closed here at the last close (reason `flatten`; the broker's own
        closing price is in its records) and its open orders forgotten."""
        for po in [po for po in self.orders.values() if po.order.symbol == u.symbol]:
            self._order_ended(po, u, PortfolioOutput())  # no protection for what is gone
        for p in list(self.by_symbol.get(u.symbol, ())):
            price = self.last_close.get(u.symbol, p.entry_fill)
            self._exit_filled((p.symbol, p.strategy_id), u.order_id, p.qty, price, u.ts, "flatten", out)
