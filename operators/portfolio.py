"""The portfolio stage (spec sections 3-5): positions, exits, the simulated
broker's fills, sizing and risk, in event-time order across symbols.

`Portfolio` is the state; `apply_bar` runs the steps of section 4 for one bar.
Callers feed bars in (timestamp, symbol) order; `ordering` does that.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from operators.calendar import trading_day
from operators.config import TradingConfig
from operators.types import (
    BUY, SELL, Bar, ControlEvent, EquityPoint, Fill, Order, PortfolioOutput, Rejection, Trade,
)


@dataclass(slots=True)
class Position:
    symbol: str
    strategy_id: str
    qty: int
    entry_fill: float
    entry_time: int
    entry_commission: float
    stop_price: float
    target_price: float
    hwm: float
    trailed: bool = False
    exit_queued: bool = False
    entry_order_id: str = ""  # live: the entry order (its OCO is `{entry_order_id}.oco`)


@dataclass(slots=True)
class PendingOrder:
    order: Order
    position_key: tuple  # (symbol, strategy_id)


@dataclass(frozen=True, slots=True)
class ExitRule:
    """One strategy's exit settings (spec section 2: its own value, else its
    type's default, else the top-level `exit` value), from
    `TradingConfig.strategy_exits()`."""

    stop_loss_pct: float
    take_profit_pct: float
    time_stop_s: int  # time_stop_minutes * 60
    time_stop_min_move_pct: float


@dataclass(slots=True)
class Rules:
    strategy_order: dict  # strategy_id -> rank (configuration order)
    exits: dict  # strategy_id -> ExitRule: stop, target, time stop and sizing of its positions
    trailing: bool
    trailing_activation_pct: float
    trailing_pct: float
    buy_slip: float
    sell_slip: float
    commission_per_share: float
    risk_per_trade_pct: float
    max_position_pct: float
    max_positions: int
    max_positions_per_symbol: int
    max_consecutive_losses: int
    drawdown_floor: float  # 1 - max_daily_drawdown_pct

    @classmethod
    def from_config(cls, cfg: TradingConfig) -> "Rules":
        e, r, x = cfg.exit, cfg.risk, cfg.execution
        return cls(
            strategy_order={s: i for i, s in enumerate(cfg.strategy_ids())},
            exits={sid: ExitRule(se.stop_loss_pct, se.take_profit_pct, se.time_stop_minutes * 60,
                                 se.time_stop_min_move_pct)
                   for sid, se in cfg.strategy_exits().items()},
            trailing=e.trailing_stop, trailing_activation_pct=e.trailing_activation_pct,
            trailing_pct=e.trailing_pct,
            buy_slip=1 + x.slippage_bps / 10_000, sell_slip=1 - x.slippage_bps / 10_000,
            commission_per_share=x.commission_per_share,
            risk_per_trade_pct=r.risk_per_trade_pct, max_position_pct=r.max_position_pct,
            max_positions=r.max_positions, max_positions_per_symbol=r.max_positions_per_symbol,
            max_consecutive_losses=r.max_consecutive_losses,
            drawdown_floor=1 - r.max_daily_drawdown_pct,
        )


@dataclass(slots=True)
class Portfolio:
    rules: Rules
    cash: float
    positions: dict = field(default_factory=dict)  # (symbol, strategy) -> Position
    by_symbol: dict = field(default_factory=dict)  # symbol -> its Positions, configuration order
    pending: dict = field(default_factory=dict)  # symbol -> list[PendingOrder] for its next bar
    pending_entry_cash: float = 0.0  # qty * decision price of pending entries
    pending_entries: int = 0
    last_close: dict = field(default_factory=dict)
    day: int | None = None
    start_of_day_equity: float = 0.0
    loss_streak: int = 0
    day_halt: str | None = None  # daily_loss_streak | daily_drawdown
    halt: str | None = None  # kill switch / order-failure breaker (live): until resumed
    minute: int | None = None  # timestamp of the minute being applied
    bars_applied: int = 0

    @classmethod
    def new(cls, cfg: TradingConfig) -> "Portfolio":
        return cls(Rules.from_config(cfg), float(cfg.risk.initial_cash))

    # -- valuation ---------------------------------------------------------
    def equity(self) -> float:
        value = self.cash
        last = self.last_close
        for p in self.positions.values():
            value += p.qty * last[p.symbol]
        return value

    def exposure(self) -> float:
        # An explicit left-to-right sum from 0.0: what sum() does on Python
        # 3.11, without 3.12's compensated float sum, so the compiled step
        # (operators.portfolio_kernel) can mirror it on any version.
        value = 0.0
        last = self.last_close
        for p in self.positions.values():
            value += p.qty * last[p.symbol]
        return value

    def close_minute(self, out: PortfolioOutput) -> None:
        """Record the mark-to-market equity of the minute just applied."""
        if self.minute is None:
            return
        exposure = self.exposure()
        out.equity.append(
            EquityPoint(self.minute, self.cash, self.cash + exposure, len(self.positions), exposure)
        )
        self.minute = None

    def enter_minute(self, ts: int, out: PortfolioOutput) -> None:
        """Minute `ts` begins: the last minute's equity point, and a new
        trading day's reset (section 5: before step 1 of its first bar; live,
        before the minute's broker updates)."""
        if ts != self.minute:
            self.close_minute(out)
            self.minute = ts
            day = trading_day(ts)
            if day != self.day:
                self.day = day
                self.start_of_day_equity = self.equity()
                self.loss_streak = 0
                self.day_halt = None

    # -- the steps of section 4 -------------------------------------------
    def apply_bar(self, bar: Bar, signals, out: PortfolioOutput) -> None:
        """Apply one accepted bar with its (unfiltered-out) signals."""
        self.apply(bar.symbol, bar.ts, bar.open, bar.high, bar.low, bar.close, signals, out)

    def apply(self, symbol: str, ts: int, open_: float, high: float, low: float, close: float,
              signals, out: PortfolioOutput) -> None:
        """The steps of section 4 for one bar (scalars: this is the hot path)."""
        if ts != self.minute:
            self.enter_minute(ts, out)
        rules = self.rules
        self.bars_applied += 1
        moved = False  # did equity change (a fill, or a held symbol's close)?

        # 1. orders queued at this symbol's previous bar fill at this open
        queued = self.pending.pop(symbol, None) if self.pending else None
        if queued:
            moved = True
            for po in queued:
                if po.order.side == BUY:
                    self._fill_entry(po, ts, open_, out)
                else:
                    self._exit(self.positions[po.position_key], open_, ts, po.order.intent, po.order, out)
        self.last_close[symbol] = close

        # 2. exits of the symbol's open positions, in configuration order
        held = self.by_symbol.get(symbol)
        if held:
            moved = True
            sells = None
            for p in list(held):
                if p.exit_queued:
                    continue
                stop_reason = "trailing_stop" if p.trailed else "stop_loss"
                if open_ <= p.stop_price:
                    self._exit_now(p, open_, ts, stop_reason, out)
                elif open_ >= p.target_price:
                    self._exit_now(p, open_, ts, "take_profit", out)
                elif low <= p.stop_price:
                    self._exit_now(p, p.stop_price, ts, stop_reason, out)
                elif high >= p.target_price:
                    self._exit_now(p, p.target_price, ts, "take_profit", out)
                else:
                    if rules.trailing:
                        if high > p.hwm:
                            p.hwm = high
                        if p.hwm >= p.entry_fill * (1 + rules.trailing_activation_pct):
                            raised = p.hwm * (1 - rules.trailing_pct)
                            if raised > p.stop_price:
                                p.stop_price = raised
                                p.trailed = True
                    if sells is None:
                        sells = {s.strategy_id for s in signals if s.side == SELL} if signals else ()
                    if p.strategy_id in sells:
                        self._queue_exit(p, ts, close, "signal", out)
                    else:
                        x = rules.exits[p.strategy_id]  # the strategy's own time stop
                        if (ts - p.entry_time >= x.time_stop_s
                                and abs(close / p.entry_fill - 1) < x.time_stop_min_move_pct):
                            self._queue_exit(p, ts, close, "time_stop", out)

        # Unchanged equity cannot newly breach the floor: skip the valuation.
        if moved and self.day_halt is None and (
            self.equity() <= self.start_of_day_equity * rules.drawdown_floor
        ):
            self.day_halt = "daily_drawdown"

        # 3. BUY signals become pending entries through risk and sizing
        if signals:
            for s in signals:
                if s.side == BUY:
                    self._consider_entry(s, symbol, ts, out)

    # -- kill switch -------------------------------------------------------
    def apply_control(self, control, out: PortfolioOutput) -> None:
        """A halt stops new entries until a resume; `flatten` also cancels
        pending entries and queues a market exit of every open position for
        its symbol's next bar (reason `kill_switch`)."""
        event = ControlEvent(control.control_id, control.action, control.flatten, control.ts,
                             control.who, control.why)
        if control.action == "resume":
            self.halt = None
        else:
            self.halt = "kill_switch"
            if control.flatten:
                for symbol, queued in list(self.pending.items()):
                    keep = [po for po in queued if po.order.side != BUY]
                    for po in queued:
                        if po.order.side == BUY:
                            self.pending_entries -= 1
                            self.pending_entry_cash -= po.order.qty * po.order.decision_price
                            event.entries_canceled += 1
                    if keep:
                        self.pending[symbol] = keep
                    else:
                        del self.pending[symbol]
                if self.pending_entries == 0:
                    self.pending_entry_cash = 0.0
                for p in list(self.positions.values()):
                    if not p.exit_queued:
                        self._queue_exit(p, control.ts, self.last_close[p.symbol], "kill_switch",
                                         out, leg="flatten")
                        event.exits_queued += 1
        out.controls.append(event)

    # -- entries -----------------------------------------------------------
    def _consider_entry(self, sig, symbol: str, ts: int, out: PortfolioOutput) -> None:
        key = (symbol, sig.strategy_id)
        if key in self.positions or self._entry_pending(key):
            return  # BUY when long does nothing
        reason = self._risk_block(symbol)
        price = sig.price
        qty = 0
        if reason is None:
            r = self.rules
            equity = self.equity()
            available = self.cash - self.pending_entry_cash
            qty = math.floor(min(  # sized with the strategy's own stop
                equity * r.risk_per_trade_pct / (price * r.exits[sig.strategy_id].stop_loss_pct),
                equity * r.max_position_pct / price,
                available / price,
            ))
            if qty < 1:
                reason = "size_zero"
        if reason is not None:
            out.rejections.append(Rejection(sig.strategy_id, symbol, ts, reason, price))
            return
        order = Order(
            f"{sig.strategy_id}.{symbol}.{ts}.entry", sig.strategy_id, symbol,
            BUY, qty, ts, price, "entry",
        )
        out.orders.append(order)
        self.pending.setdefault(symbol, []).append(PendingOrder(order, key))
        self.pending_entry_cash += qty * price
        self.pending_entries += 1

    def _entry_pending(self, key: tuple) -> bool:
        for po in self.pending.get(key[0], ()):
            if po.position_key == key:
                return True
        return False

    def _entries_waiting(self, symbol: str) -> tuple[int, int]:
        """Entries decided but not yet positions: (all, of `symbol`)."""
        return self.pending_entries, sum(1 for po in self.pending.get(symbol, ()) if po.order.side == BUY)

    def _risk_block(self, symbol: str) -> str | None:
        if self.halt is not None:
            return "halted"
        if self.day_halt is not None:
            return self.day_halt
        r = self.rules
        waiting, waiting_here = self._entries_waiting(symbol)
        if len(self.positions) + waiting >= r.max_positions:
            return "max_positions"
        if len(self.by_symbol.get(symbol, ())) + waiting_here >= r.max_positions_per_symbol:
            return "max_positions_per_symbol"
        return None

    def _fill_entry(self, po: PendingOrder, ts: int, open_: float, out: PortfolioOutput) -> None:
        r = self.rules
        o = po.order
        fill = open_ * r.buy_slip
        commission = o.qty * r.commission_per_share
        self.cash -= o.qty * fill + commission
        self.pending_entry_cash -= o.qty * o.decision_price
        self.pending_entries -= 1
        if self.pending_entries == 0:
            self.pending_entry_cash = 0.0  # no float residue once nothing is pending
        x = r.exits[o.strategy_id]  # the strategy's own stop and target
        position = Position(
            o.symbol, o.strategy_id, o.qty, fill, ts, commission,
            fill * (1 - x.stop_loss_pct), fill * (1 + x.take_profit_pct), fill,
        )
        self.positions[po.position_key] = position
        held = self.by_symbol.setdefault(o.symbol, [])
        held.append(position)
        if len(held) > 1:  # exits run in configuration order
            held.sort(key=lambda p: r.strategy_order[p.strategy_id])
        out.fills.append(Fill(o.order_id, o.strategy_id, o.symbol, BUY, o.qty, ts, fill, commission, "entry"))

    # -- exits -------------------------------------------------------------
    def _queue_exit(self, p: Position, ts: int, close: float, intent: str, out: PortfolioOutput,
                    leg: str = "exit") -> None:
        order = Order(
            f"{p.strategy_id}.{p.symbol}.{ts}.{leg}", p.strategy_id, p.symbol,
            SELL, p.qty, ts, close, intent, parent_id=p.entry_order_id,
        )
        out.orders.append(order)
        p.exit_queued = True
        self.pending.setdefault(p.symbol, []).append(PendingOrder(order, (p.symbol, p.strategy_id)))

    def _exit_now(self, p: Position, price: float, ts: int, reason: str, out: PortfolioOutput) -> None:
        """A bracket leg (stop or target) filling inside this bar."""
        leg = "target" if reason == "take_profit" else "stop"
        order = Order(
            f"{p.strategy_id}.{p.symbol}.{ts}.{leg}", p.strategy_id, p.symbol,
            SELL, p.qty, ts, price, reason,
        )
        out.orders.append(order)
        self._exit(p, price, ts, reason, order, out)

    def _exit(self, p: Position, price: float, ts: int, reason: str, order: Order, out: PortfolioOutput) -> None:
        r = self.rules
        fill = price * r.sell_slip
        commission = p.qty * r.commission_per_share
        self.cash += p.qty * fill - commission
        del self.positions[(p.symbol, p.strategy_id)]
        held = self.by_symbol[p.symbol]
        held.remove(p)
        if not held:
            del self.by_symbol[p.symbol]
        out.fills.append(Fill(order.order_id, p.strategy_id, p.symbol, SELL, p.qty, ts, fill, commission, reason))
        total_commission = p.entry_commission + commission
        pnl = p.qty * (fill - p.entry_fill) - total_commission
        out.trades.append(Trade(
            f"{p.strategy_id}.{p.symbol}.{p.entry_time}", p.symbol, p.strategy_id, p.qty,
            p.entry_time, p.entry_fill, ts, fill, reason, pnl, fill / p.entry_fill - 1,
            total_commission,
        ))
        if pnl > 0:
            self.loss_streak = 0
        else:
            self.loss_streak += 1
            if self.loss_streak >= r.max_consecutive_losses and self.day_halt is None:
                self.day_halt = "daily_loss_streak"
