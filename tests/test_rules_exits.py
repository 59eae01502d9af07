"""Spec sections 3-4 (positions, orders and fills): entries at the next open,
bracket exits, trailing stop, time stop, signal exits, worked by hand."""
from __future__ import annotations

from datetime import datetime, timezone

from pytest import approx

from operators.config import StrategyConfig, TradingConfig
from operators.portfolio import Portfolio
from operators.types import BUY, SELL, Bar, PortfolioOutput, Signal

T0 = int(datetime(2024, 3, 5, 14, 30, tzinfo=timezone.utc).timestamp())  # 09:30 New York
A, B, C = "sma_2_3", "sma_2_4", "sma_3_5"
STRATEGIES = (
    StrategyConfig(fast=2, slow=3, confidence=0.70),
    StrategyConfig(fast=2, slow=4, confidence=0.75),
    StrategyConfig(fast=3, slow=5, confidence=0.80),
)


def near(x):
    return approx(x, rel=1e-12, abs=1e-9)


class Book:
    """A Portfolio fed one hand-made bar at a time; slippage 0 unless given."""

    def __init__(self, slippage_bps=0.0, commission=0.0, exit=None, risk=None):
        self.cfg = TradingConfig(
            strategies=STRATEGIES, exit=exit or {}, risk=risk or {},
            execution={"slippage_bps": slippage_bps, "commission_per_share": commission},
        )
        self.pf = Portfolio.new(self.cfg)
        self.out = PortfolioOutput()

    def bar(self, t, o, h=None, lo=None, c=None, sym="AAA", buy=(), sell=()):
        """Bar at minute t (or epoch seconds when t is large) with BUY/SELL signals."""
        ts = t if t > 10**9 else T0 + 60 * t
        c = o if c is None else c
        h = max(o, c) if h is None else h
        lo = min(o, c) if lo is None else lo
        e = self.cfg.exit
        sigs = [Signal(s, sym, BUY, ts, c, 0.7, e.take_profit_pct, e.stop_loss_pct, 2.0) for s in buy]
        sigs += [Signal(s, sym, SELL, ts, c, 0.7, e.take_profit_pct, e.stop_loss_pct, 2.0) for s in sell]
        self.pf.apply_bar(Bar(sym, ts, o, h, lo, c, 1000.0), sigs or None, self.out)

    def pos(self, sid=A, sym="AAA"):
        return self.pf.positions.get((sym, sid))

    @property
    def trades(self):
        return self.out.trades

    def open_at_100(self, **kw):
        """BUY A at minute 0 (close 100) -> 100 shares, filled at minute 1's open 100."""
        self.bar(0, 100.0, buy=(A,))
        self.bar(1, 100.0, h=100.1, lo=99.9, c=100.0, **kw)


# ------------------------------------------------------------- entries
def test_entry_fills_at_next_open_with_buy_slippage_and_stop_target_from_the_fill():
    bk = Book(slippage_bps=1.0)
    bk.bar(0, 100.0, buy=(A,))
    # sizing at close 100: min(100000*0.005/(100*0.01) = 500, 100000*0.10/100 = 100,
    #                        100000/100 = 1000) -> 100 shares; nothing fills yet
    assert [(o.side, o.qty, o.decided_ts, o.decision_price) for o in bk.out.orders] == [(BUY, 100, T0, 100.0)]
    assert bk.pos() is None and bk.pf.cash == 100_000
    bk.bar(1, 101.0, h=101.5, lo=100.5, c=101.2)
    p = bk.pos()
    # fill = 101 * (1 + 1/10000) = 101.0101; stop = 101.0101 * 0.99 = 99.999999;
    # target = 101.0101 * 1.02 = 103.030302; high watermark = fill; entry time = minute 1
    assert p.entry_fill == near(101.0101) and p.qty == 100
    assert p.stop_price == near(99.999999) and p.target_price == near(103.030302)
    assert p.hwm == p.entry_fill and p.entry_time == T0 + 60
    # cash: 100000 - 100 * 101.0101 = 89898.99
    assert bk.pf.cash == near(89_898.99)
    (fill,) = bk.out.fills
    assert (fill.side, fill.qty, fill.ts, fill.reason) == (BUY, 100, T0 + 60, "entry")


def test_commission_is_charged_per_fill_and_in_pnl():
    # 0.01 per share, 100 shares: 1.00 at entry, 1.00 at exit.
    bk = Book(commission=0.01)
    bk.open_at_100()
    assert bk.pf.cash == near(100_000 - 100 * 100 - 1.0)  # 89999
    bk.bar(2, 101.0, h=102.5, lo=100.8, c=102.0)  # target 102 touched -> exit at 102
    (t,) = bk.trades
    # pnl = 100 * (102 - 100) - (1 + 1) = 198; cash 89999 + 100*102 - 1 = 100198
    assert (t.exit_price, t.pnl, t.commission) == (near(102.0), near(198.0), near(2.0))
    assert bk.pf.cash == near(100_198.0)
    assert [f.commission for f in bk.out.fills] == [near(1.0), near(1.0)]


# ------------------------------------------------------- bracket exits
def test_gap_through_stop_exits_at_open_with_sell_slippage():
    bk = Book(slippage_bps=1.0)
    bk.bar(0, 100.0, buy=(A,))
    bk.bar(1, 100.0, h=100.1, lo=99.95, c=100.0)  # fill 100.01, stop 99.0099, target 102.0102
    bk.bar(2, 98.5, h=98.9, lo=98.0, c=98.6)  # open 98.5 <= stop 99.0099
    (t,) = bk.trades
    # exit = open * (1 - 1/10000) = 98.5 * 0.9999 = 98.49015 (not the stop price)
    assert (t.exit_reason, t.exit_time) == ("stop_loss", T0 + 120)
    assert t.entry_price == near(100.01) and t.exit_price == near(98.49015)
    # pnl = 100 * (98.49015 - 100.01) = -151.985; return = 98.49015 / 100.01 - 1
    assert t.pnl == near(-151.985) and t.return_pct == near(98.49015 / 100.01 - 1)


def test_gap_above_target_exits_at_open_with_sell_slippage():
    bk = Book(slippage_bps=1.0)
    bk.bar(0, 100.0, buy=(A,))
    bk.bar(1, 100.0, h=100.1, lo=99.95, c=100.0)  # fill 100.01, target 102.0102
    bk.bar(2, 103.0, h=103.5, lo=102.5, c=103.2)  # open 103 >= target
    (t,) = bk.trades
    # exit = 103 * 0.9999 = 102.9897
    assert t.exit_reason == "take_profit" and t.exit_price == near(102.9897)


def test_stop_touched_inside_the_bar_exits_at_the_stop_price_with_sell_slippage():
    bk = Book(slippage_bps=1.0)
    bk.bar(0, 100.0, buy=(A,))
    bk.bar(1, 100.0, h=100.1, lo=99.95, c=100.0)  # stop 100.01 * 0.99 = 99.0099
    bk.bar(2, 100.0, h=100.5, lo=98.9, c=99.5)
    (t,) = bk.trades
    # exit = 99.0099 * 0.9999 = 98.99999901
    assert t.exit_reason == "stop_loss" and t.exit_price == near(98.99999901)


def test_target_touched_inside_the_bar_exits_at_the_target_price():
    bk = Book()
    bk.open_at_100()  # fill 100, target 102
    bk.bar(2, 101.0, h=102.5, lo=100.8, c=101.5)
    (t,) = bk.trades
    assert (t.exit_reason, t.exit_price, t.pnl) == ("take_profit", near(102.0), near(200.0))


def test_stop_and_target_touched_in_one_bar_exits_at_the_stop():
    bk = Book()
    bk.open_at_100()  # stop 99, target 102
    bk.bar(2, 100.5, h=102.5, lo=98.5, c=101.0)  # touches both: c (stop) before d (target)
    (t,) = bk.trades
    assert (t.exit_reason, t.exit_price, t.pnl) == ("stop_loss", near(99.0), near(-100.0))


def test_position_just_filled_is_checked_on_its_fill_bar():
    bk = Book()
    bk.bar(0, 100.0, buy=(A,))
    bk.bar(1, 100.0, h=100.2, lo=98.8, c=99.0)  # fill 100, stop 99: low 98.8 hits it
    (t,) = bk.trades
    assert (t.entry_time, t.exit_time, t.exit_reason, t.exit_price) == (T0 + 60, T0 + 60, "stop_loss", near(99.0))


def test_exits_of_one_symbol_run_in_configuration_order():
    # C (sma_3_5) opens first, then A (sma_2_3): both stop out on the same bar;
    # the trades come in configuration order (A, C), not opening order.
    bk = Book()
    bk.bar(0, 100.0, buy=(C,))
    bk.bar(1, 100.0, h=100.1, lo=99.9, buy=(A,))
    bk.bar(2, 100.0, h=100.1, lo=99.9)
    bk.bar(3, 99.5, h=99.6, lo=98.0, c=98.5)
    assert [t.strategy_id for t in bk.trades] == [A, C]


def test_trade_records_the_round_trip():
    bk = Book()
    bk.open_at_100()
    bk.bar(2, 101.0, h=102.5, lo=100.8, c=101.5)
    (t,) = bk.trades
    # pnl = 100 * (102 - 100) - 0 = 200; return_pct = 102 / 100 - 1 = 0.02
    assert (t.symbol, t.strategy_id, t.qty, t.entry_time, t.exit_time) == ("AAA", A, 100, T0 + 60, T0 + 120)
    assert t.pnl == near(200.0) and t.return_pct == near(0.02)


# ------------------------------------------------------------- trailing
TRAIL = {"trailing_stop": True, "trailing_activation_pct": 0.005, "trailing_pct": 0.005}


def test_trailing_stop_rises_after_activation_and_exit_reason_is_trailing_stop():
    bk = Book(exit=TRAIL)
    bk.bar(0, 100.0, buy=(A,))
    bk.bar(1, 100.0, h=100.3, lo=99.9, c=100.2)
    # fill 100; hwm max(100, 100.3) = 100.3 < 100 * 1.005 = 100.5: not active, stop 99
    assert bk.pos().stop_price == near(99.0) and not bk.pos().trailed
    bk.bar(2, 100.2, h=100.8, lo=100.1, c=100.6)
    # hwm 100.8 >= 100.5: stop = max(99, 100.8 * 0.995 = 100.296) = 100.296
    assert bk.pos().stop_price == near(100.296) and bk.pos().trailed
    bk.bar(3, 100.6, h=101.5, lo=100.5, c=101.4)  # hwm 101.5 -> stop 100.9925
    assert bk.pos().stop_price == near(100.9925)
    bk.bar(4, 101.2, h=101.3, lo=100.9, c=101.0)  # low 100.9 <= 100.9925: exit at the stop
    (t,) = bk.trades
    assert (t.exit_reason, t.exit_price) == ("trailing_stop", near(100.9925))


def test_trailing_stop_only_rises():
    bk = Book(exit=TRAIL)
    bk.open_at_100()
    bk.bar(2, 100.2, h=101.0, lo=100.2, c=100.9)  # hwm 101 -> stop 101 * 0.995 = 100.495
    bk.bar(3, 100.9, h=100.95, lo=100.6, c=100.7)  # high 100.95 < hwm 101: stop stays
    assert bk.pos().hwm == 101.0 and bk.pos().stop_price == near(100.495)


def test_trailing_raise_takes_effect_from_the_next_bar_and_a_gap_through_it_exits_at_open():
    bk = Book(exit=TRAIL)
    bk.open_at_100()
    # high 101 raises the stop to 100.495, above this bar's low 100.3: no exit on
    # this bar (c checks the stop before e raises it)
    bk.bar(2, 100.4, h=101.0, lo=100.3, c=100.6)
    assert bk.trades == [] and bk.pos().stop_price == near(100.495)
    bk.bar(3, 100.45, h=100.5, lo=100.2, c=100.3)  # open 100.45 <= 100.495: gap exit at open
    (t,) = bk.trades
    assert (t.exit_reason, t.exit_price) == ("trailing_stop", near(100.45))


def test_trailing_below_activation_threshold_leaves_the_stop():
    bk = Book(exit=TRAIL)
    bk.open_at_100()
    bk.bar(2, 100.2, h=100.49, lo=100.1, c=100.4)  # hwm 100.49 < 100.5
    assert bk.pos().stop_price == near(99.0) and not bk.pos().trailed
    bk.bar(3, 100.0, h=100.1, lo=98.9, c=99.0)
    assert bk.trades[0].exit_reason == "stop_loss"


def test_trailing_level_below_the_initial_stop_does_not_lower_it_and_reason_stays_stop_loss():
    # stop_loss 0.2% -> stop 99.8; activation 0; trailing 0.5%: hwm 100.1 * 0.995
    # = 99.5995 < 99.8, so the stop stays 99.8 and was never raised by trailing.
    bk = Book(exit={**TRAIL, "trailing_activation_pct": 0.0, "stop_loss_pct": 0.002, "take_profit_pct": 0.004})
    bk.open_at_100()
    assert bk.pos().stop_price == near(99.8) and not bk.pos().trailed
    bk.bar(2, 100.0, h=100.05, lo=99.7, c=99.75)
    assert (bk.trades[0].exit_reason, bk.trades[0].exit_price) == ("stop_loss", near(99.8))


def test_trailing_off_never_moves_the_stop():
    bk = Book()
    bk.open_at_100()
    bk.bar(2, 100.5, h=101.9, lo=100.4, c=101.8)
    assert bk.pos().stop_price == near(99.0) and bk.pos().hwm == 100.0


# ------------------------------------------------------------- time stop
def quiet(bk, first, last, close=100.1):
    for i in range(first, last + 1):
        bk.bar(i, 100.0, h=100.25, lo=99.9, c=close)


def test_time_stop_queued_after_60_minutes_with_a_small_move_and_filled_at_the_next_open():
    bk = Book(slippage_bps=1.0)
    bk.bar(0, 100.0, buy=(A,))
    bk.bar(1, 100.0, h=100.1, lo=99.95, c=100.0)  # fill 100.01 at minute 1
    quiet(bk, 2, 60)  # elapsed up to 59 minutes: nothing
    assert bk.out.orders[-1].intent == "entry"
    # minute 61: elapsed 60 >= 60 and |100.1 / 100.01 - 1| = 0.0009 < 0.005 -> queued
    quiet(bk, 61, 61)
    (o,) = [o for o in bk.out.orders if o.intent == "time_stop"]
    assert (o.side, o.qty, o.decided_ts) == (SELL, 100, T0 + 61 * 60)
    assert bk.trades == [] and bk.pos().exit_queued
    bk.bar(62, 100.3, h=100.4, lo=100.2, c=100.3)
    (t,) = bk.trades
    # filled at minute 62's open with sell slippage: 100.3 * 0.9999 = 100.28997
    assert (t.exit_reason, t.exit_time, t.exit_price) == ("time_stop", T0 + 62 * 60, near(100.28997))


def test_time_stop_not_when_the_price_moved_enough():
    bk = Book()
    bk.open_at_100()
    quiet(bk, 2, 70, close=100.6)  # |100.6 / 100 - 1| = 0.006 >= 0.005
    assert [o.intent for o in bk.out.orders] == ["entry"] and bk.pos() is not None


def test_time_stop_elapsed_minutes_include_the_night():
    # Entry fills at 15:59 New York; the next bar is 09:30 the next day:
    # 17.5 hours >= 60 minutes, close unchanged -> queued, filled at 09:31.
    close_ts = int(datetime(2024, 3, 5, 20, 58, tzinfo=timezone.utc).timestamp())  # 15:58 NY
    next_day = int(datetime(2024, 3, 6, 14, 30, tzinfo=timezone.utc).timestamp())  # 09:30 NY
    bk = Book()
    bk.bar(close_ts, 100.0, buy=(A,))
    bk.bar(close_ts + 60, 100.0, h=100.1, lo=99.9)
    bk.bar(next_day, 100.1, h=100.2, lo=99.9, c=100.1)
    assert [o.intent for o in bk.out.orders] == ["entry", "time_stop"]
    bk.bar(next_day + 60, 100.2, h=100.3, lo=100.1, c=100.2)
    assert bk.trades[0].exit_reason == "time_stop"


# ------------------------------------------------------------- signal exits
def test_signal_exit_fills_at_the_next_open_with_sell_slippage():
    bk = Book(slippage_bps=1.0)
    bk.bar(0, 100.0, buy=(A,))
    bk.bar(1, 100.0, h=100.1, lo=99.95, c=100.0)  # fill 100.01
    bk.bar(2, 100.5, h=100.6, lo=100.4, c=100.5, sell=(A,))
    assert bk.trades == [] and bk.out.orders[-1].intent == "signal"
    bk.bar(3, 100.8, h=100.9, lo=100.7, c=100.8)
    (t,) = bk.trades
    # 100.8 * 0.9999 = 100.78992; pnl = 100 * (100.78992 - 100.01) = 77.992
    assert (t.exit_reason, t.exit_time) == ("signal", T0 + 180)
    assert t.exit_price == near(100.78992) and t.pnl == near(77.992)


def test_sell_signal_takes_precedence_over_the_time_stop():
    bk = Book()
    bk.open_at_100()
    quiet(bk, 2, 60)
    bk.bar(61, 100.0, h=100.2, lo=99.9, c=100.1, sell=(A,))  # both apply: SELL first
    bk.bar(62, 100.0)
    assert bk.trades[0].exit_reason == "signal"


def test_bracket_exit_beats_a_sell_signal_on_the_same_bar():
    bk = Book()
    bk.open_at_100()
    bk.bar(2, 99.5, h=99.6, lo=98.5, c=98.7, sell=(A,))  # low 98.5 <= stop 99
    assert [t.exit_reason for t in bk.trades] == ["stop_loss"]
    assert [o.intent for o in bk.out.orders] == ["entry", "stop_loss"]  # no queued signal exit


def test_sell_signal_of_another_strategy_does_not_exit():
    bk = Book()
    bk.open_at_100()
    bk.bar(2, 100.2, h=100.3, lo=100.1, sell=(B,))
    assert bk.pos() is not None and not bk.pos().exit_queued


def test_sell_when_flat_does_nothing():
    bk = Book()
    bk.bar(0, 100.0, sell=(A,))
    bk.bar(1, 100.0)
    assert (bk.out.orders, bk.out.fills, bk.out.trades, bk.out.rejections) == ([], [], [], [])


def test_buy_when_long_does_nothing():
    bk = Book()
    bk.open_at_100()
    bk.bar(2, 100.2, h=100.3, lo=100.1, buy=(A,))
    assert [o.intent for o in bk.out.orders] == ["entry"] and bk.out.rejections == []


def test_position_with_a_queued_exit_still_counts_as_open_for_buy_when_long():
    bk = Book()
    bk.open_at_100()
    quiet(bk, 2, 60)
    bk.bar(61, 100.0, h=100.2, lo=99.9, c=100.1, buy=(A,))  # time stop queued, then BUY A: long, nothing
    assert [o.intent for o in bk.out.orders] == ["entry", "time_stop"] and bk.out.rejections == []
    bk.bar(62, 100.0, buy=(A,))  # the exit fills at this open; now flat, the BUY opens again
    assert [o.intent for o in bk.out.orders] == ["entry", "time_stop", "entry"]
    assert bk.trades[0].exit_reason == "time_stop"


def test_pinned_choice_exit_queued_on_the_last_bar_never_fills_and_open_positions_make_no_trade():
    bk = Book()
    bk.open_at_100()
    bk.bar(2, 100.2, h=100.3, lo=100.1, sell=(A,))
    # the data ends: no fill, no made-up exit price
    assert bk.trades == [] and bk.pos().exit_queued and bk.pf.pending["AAA"]


def test_pinned_choice_order_ids_are_deterministic_and_bracket_legs_are_orders():
    # {strategy}.{symbol}.{decision bar ts}.{leg}; the stop / target leg is an
    # order decided and filled on the bar that hit it; trade id: entry time.
    bk = Book()
    bk.open_at_100()
    bk.bar(2, 101.0, h=102.5, lo=100.8, c=101.5)  # target
    bk.bar(3, 100.0, buy=(A,))
    bk.bar(4, 100.0, h=100.1, lo=99.9, sell=(A,))  # signal exit queued
    bk.bar(5, 100.0)
    assert [(o.order_id, o.intent) for o in bk.out.orders] == [
        (f"{A}.AAA.{T0}.entry", "entry"),
        (f"{A}.AAA.{T0 + 120}.target", "take_profit"),
        (f"{A}.AAA.{T0 + 180}.entry", "entry"),
        (f"{A}.AAA.{T0 + 240}.exit", "signal"),
    ]
    assert [t.trade_id for t in bk.trades] == [f"{A}.AAA.{T0 + 60}", f"{A}.AAA.{T0 + 240}"]
