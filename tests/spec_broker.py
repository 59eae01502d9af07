"""A broker that fills exactly as spec section 4 assumes (test helper, pure):
market orders at the symbol's next open, the protective OCO placed the moment
an entry fills and matched against each bar (gap stop, gap target, stop touch,
target touch: stop before target), trailing replaces, cancels. It answers the
live portfolio's orders with `TradeUpdate`s, so a paper session over it must
make the backtest's trades."""
from __future__ import annotations

from dataclasses import dataclass

from operators.types import BUY, SELL, TradeUpdate


@dataclass
class Oco:
    entry_id: str
    symbol: str
    qty: int
    stop: float
    target: float
    live: bool = True


class SpecBroker:
    def __init__(self, stop_loss_pct=0.01, take_profit_pct=0.02, reject=(), by_strategy=None):
        self.sl, self.tp = stop_loss_pct, take_profit_pct
        self.by_strategy = by_strategy or {}  # strategy id -> (stop_loss_pct, take_profit_pct)
        self.market = []  # open market orders (Order)
        self.ocos = {}  # entry id -> Oco
        self.reject = set(reject)  # order ids to refuse at submission
        self.submitted = []

    def accept(self, orders, ts):
        """The sink's side: what the portfolio asked for. Returns updates of refusals."""
        updates = []
        for o in orders:
            self.submitted.append(o)
            if o.intent in ("entry", "signal", "time_stop", "kill_switch", "flatten"):
                if o.order_id in self.reject:
                    updates.append(TradeUpdate(o.order_id, "submit_failed", o.symbol, o.side, ts,
                                               detail="insufficient buying power"))
                    continue
                if o.side == SELL and o.parent_id in self.ocos:
                    self.ocos.pop(o.parent_id).live = False  # cancel the legs first
                self.market.append(o)
                updates.append(TradeUpdate(o.order_id, "new", o.symbol, o.side, ts))
            elif o.intent == "protect":
                self.ocos.setdefault(o.parent_id, Oco(o.parent_id, o.symbol, o.qty, o.stop_price,
                                                      o.target_price))
            elif o.intent == "trail":
                oco = self.ocos.get(o.parent_id)
                if oco is not None and o.stop_price > oco.stop:
                    oco.stop = o.stop_price
            elif o.intent == "cancel":
                if any(m.order_id == o.order_id for m in self.market):
                    self.market = [m for m in self.market if m.order_id != o.order_id]
                    updates.append(TradeUpdate(o.order_id, "canceled", o.symbol, o.side, ts))
        return updates

    def on_bar(self, symbol, ts, open_, high, low):
        """Fills of one bar, stamped inside its minute."""
        out = []
        for o in [m for m in self.market if m.symbol == symbol]:
            self.market.remove(o)
            out.append(TradeUpdate(o.order_id, "fill", symbol, o.side, ts + 1, filled_qty=o.qty,
                                   fill_qty=o.qty, fill_price=open_))
            if o.side == BUY:  # the relay places the OCO at once, from the fill price
                sl, tp = self.by_strategy.get(o.strategy_id, (self.sl, self.tp))
                self.ocos[o.order_id] = Oco(o.order_id, symbol, o.qty, open_ * (1 - sl), open_ * (1 + tp))
        for entry_id, oco in list(self.ocos.items()):
            if oco.symbol != symbol:
                continue
            hit = None
            if open_ <= oco.stop:
                hit = ("stop", open_)
            elif open_ >= oco.target:
                hit = ("target", open_)
            elif low <= oco.stop:
                hit = ("stop", oco.stop)
            elif high >= oco.target:
                hit = ("target", oco.target)
            if hit:
                del self.ocos[entry_id]
                out.append(TradeUpdate(f"{entry_id}.oco", "fill", symbol, SELL, ts + 30, leg=hit[0],
                                       filled_qty=oco.qty, fill_qty=oco.qty, fill_price=hit[1]))
        return out
