"""Spec section 5 (sizing and risk): the sizing formula, every rejection
reason, halts, the New York trading day, worked by hand."""
from __future__ import annotations

from datetime import datetime, timezone

from pytest import approx

from operators.config import StrategyConfig, TradingConfig
from operators.portfolio import Portfolio
from operators.types import BUY, SELL, Bar, PortfolioOutput, Signal

T0 = int(datetime(2024, 3, 5, 14, 30, tzinfo=timezone.utc).timestamp())  # 09:30 New York, Tue 5 March
A, B, C = "sma_2_3", "sma_2_4", "sma_3_5"
STRATEGIES = (
    StrategyConfig(fast=2, slow=3, confidence=0.70),
    StrategyConfig(fast=2, slow=4, confidence=0.75),
    StrategyConfig(fast=3, slow=5, confidence=0.80),
)
# Big positions for the drawdown tests: qty = floor(min(100000 * 0.2 / (100 * 0.01) = 20000,
# 100000 * 1.0 / 100 = 1000, 100000 / 100 = 1000)) = 1000 shares at 100, all the cash.
ALL_IN = {"risk_per_trade_pct": 0.2, "max_position_pct": 1.0}


def utc(*args) -> int:
    return int(datetime(*args, tzinfo=timezone.utc).timestamp())


def near(x):
    return approx(x, rel=1e-12, abs=1e-9)


class Book:
    """A Portfolio fed one hand-made bar at a time; slippage 0."""

    def __init__(self, exit=None, risk=None):
        self.cfg = TradingConfig(
            strategies=STRATEGIES, exit=exit or {}, risk=risk or {}, execution={"slippage_bps": 0.0},
        )
        self.pf = Portfolio.new(self.cfg)
        self.out = PortfolioOutput()

    def bar(self, t, o, h=None, lo=None, c=None, sym="AAA", buy=(), sell=()):
        ts = t if t > 10**9 else T0 + 60 * t
        c = o if c is None else c
        h = max(o, c) if h is None else h
        lo = min(o, c) if lo is None else lo
        e = self.cfg.exit
        sigs = [Signal(s, sym, BUY, ts, c, 0.7, e.take_profit_pct, e.stop_loss_pct, 2.0) for s in buy]
        sigs += [Signal(s, sym, SELL, ts, c, 0.7, e.take_profit_pct, e.stop_loss_pct, 2.0) for s in sell]
        self.pf.apply_bar(Bar(sym, ts, o, h, lo, c, 1000.0), sigs or None, self.out)

    def entries(self):
        return [(o.symbol, o.strategy_id, o.qty) for o in self.out.orders if o.intent == "entry"]

    def rejections(self):
        return [(r.symbol, r.strategy_id, r.reason) for r in self.out.rejections]

    def losing_round_trip(self, t, sym="AAA", sid=A, buy_after=()):
        """BUY at minute t (close 100), fill at t+1 (100, stop 99), stop out at
        t+2 (low 98.5): pnl = qty * (99 - 100) = -qty (100 shares from 100000 equity)."""
        self.bar(t, 100.0, sym=sym, buy=(sid,))
        self.bar(t + 1, 100.0, h=100.1, lo=99.9, sym=sym)
        self.bar(t + 2, 99.5, h=99.6, lo=98.5, c=98.7, sym=sym, buy=buy_after)


# ------------------------------------------------------------- sizing
def test_sizing_risk_term_binds():
    # stop 5%: min(100000 * 0.005 / (100 * 0.05) = 100, 100000 * 0.5 / 100 = 500, 100000 / 100 = 1000) = 100
    bk = Book(exit={"stop_loss_pct": 0.05, "take_profit_pct": 0.1}, risk={"max_position_pct": 0.5})
    bk.bar(0, 100.0, buy=(A,))
    assert bk.entries() == [("AAA", A, 100)]


def test_sizing_position_term_binds_and_rounds_down():
    # close 30: min(100000 * 0.005 / (30 * 0.01) = 1666.7, 100000 * 0.10 / 30 = 333.3, 3333.3) -> 333
    bk = Book()
    bk.bar(0, 30.0, buy=(A,))
    assert bk.entries() == [("AAA", A, 333)]


def test_sizing_cash_term_binds_with_available_cash_minus_pending_entries():
    # risk 5%, position 60%, close 100, three BUYs on one bar (configuration order):
    # A: min(100000 * 0.05 / 1 = 5000, 60000 / 100 = 600, 100000 / 100 = 1000) = 600 (pending 60000)
    # B: available 100000 - 600 * 100 = 40000 -> min(5000, 600, 400) = 400 (pending 100000)
    # C: available 0 -> qty 0 -> size_zero
    bk = Book(risk={"risk_per_trade_pct": 0.05, "max_position_pct": 0.6})
    bk.bar(0, 100.0, buy=(A, B, C))
    assert bk.entries() == [("AAA", A, 600), ("AAA", B, 400)]
    assert bk.rejections() == [("AAA", C, "size_zero")]


def test_sizing_uses_equity_with_open_positions_at_their_last_close():
    # AAA: 100 shares filled at 100 (cash 90000), last close 110 (target 50% away).
    # BBB BUY at 50: equity = 90000 + 100 * 110 = 101000;
    # min(101000 * 0.005 / (50 * 0.01) = 1010, 101000 * 0.10 / 50 = 202, 90000 / 50 = 1800) = 202
    bk = Book(exit={"take_profit_pct": 0.5})
    bk.bar(0, 100.0, buy=(A,))
    bk.bar(1, 100.0, h=110.0, lo=99.9, c=110.0)
    bk.bar(1, 50.0, sym="BBB", buy=(A,))
    assert bk.entries() == [("AAA", A, 100), ("BBB", A, 202)]


def test_size_below_one_share_is_rejected_size_zero():
    # close 200000: min(100000 * 0.005 / 2000 = 0.25, 10000 / 200000 = 0.05, 0.5) -> 0
    bk = Book()
    bk.bar(0, 200_000.0, buy=(A,))
    assert bk.entries() == [] and bk.rejections() == [("AAA", A, "size_zero")]
    (r,) = bk.out.rejections
    assert (r.ts, r.price) == (T0, 200_000.0)


# ------------------------------------------------------------- caps and halts
def test_halted_rejects_new_entries():
    bk = Book()
    bk.pf.halt = "kill_switch"
    bk.bar(0, 100.0, buy=(A,))
    assert bk.rejections() == [("AAA", A, "halted")]


def test_halt_does_not_cancel_already_pending_entries():
    bk = Book()
    bk.bar(0, 100.0, buy=(A,))
    bk.pf.halt = "kill_switch"
    bk.bar(1, 101.0)
    assert bk.pf.positions[("AAA", A)].entry_fill == 101.0


def test_day_halt_does_not_cancel_an_entry_pending_on_another_symbol():
    # max 1 loss. Minute 1: BBB's BUY A becomes pending. Minute 2: AAA (first
    # in symbol order) stops out and halts the day; then BBB's pending entry
    # still fills at its open, while BBB's new BUY B is rejected.
    bk = Book(risk={"max_consecutive_losses": 1})
    bk.bar(0, 100.0, buy=(A,))
    bk.bar(1, 100.0, h=100.1, lo=99.9)
    bk.bar(1, 50.0, sym="BBB", buy=(A,))
    bk.bar(2, 99.5, h=99.6, lo=98.5, c=98.7)  # AAA loss -> daily_loss_streak
    bk.bar(2, 50.0, sym="BBB", buy=(B,))
    assert bk.pf.day_halt == "daily_loss_streak"
    assert bk.pf.positions[("BBB", A)].entry_time == T0 + 120
    assert bk.rejections() == [("BBB", B, "daily_loss_streak")]


def test_max_positions_counts_open_positions_plus_pending_entries():
    # max 2: AAA open (filled at minute 1), BBB pending (decided at minute 1) -> CCC rejected
    bk = Book(risk={"max_positions": 2})
    bk.bar(0, 100.0, buy=(A,))
    bk.bar(1, 100.0, h=100.1, lo=99.9)
    bk.bar(1, 50.0, sym="BBB", buy=(A,))
    bk.bar(1, 20.0, sym="CCC", buy=(A,))
    assert bk.rejections() == [("CCC", A, "max_positions")]


def test_position_with_a_queued_exit_counts_for_the_caps_until_it_fills():
    # max 1: AAA's SELL at minute 2 queues an exit; BBB's BUY on minute 2 is
    # still rejected; AAA's exit fills at minute 3's open, BBB's BUY at minute 3 passes.
    bk = Book(risk={"max_positions": 1})
    bk.bar(0, 100.0, buy=(A,))
    bk.bar(1, 100.0, h=100.1, lo=99.9)
    bk.bar(2, 100.2, h=100.3, lo=100.1, sell=(A,))
    bk.bar(2, 50.0, sym="BBB", buy=(A,))
    bk.bar(3, 100.3)
    bk.bar(3, 50.0, sym="BBB", buy=(A,))
    assert bk.rejections() == [("BBB", A, "max_positions")]
    assert bk.entries() == [("AAA", A, 100), ("BBB", A, 200)]


def test_max_positions_per_symbol_counts_open_and_pending_of_the_symbol():
    # max 2 per symbol: A open on AAA; B (pending, same bar) makes 2 -> C rejected
    bk = Book(risk={"max_positions_per_symbol": 2})
    bk.bar(0, 100.0, buy=(A,))
    bk.bar(1, 100.0, h=100.1, lo=99.9, buy=(B, C))
    bk.bar(1, 50.0, sym="BBB", buy=(C,))  # another symbol is not affected
    assert bk.rejections() == [("AAA", C, "max_positions_per_symbol")]
    assert bk.entries() == [("AAA", A, 100), ("AAA", B, 100), ("BBB", C, 200)]


def test_daily_loss_streak_halts_after_the_third_consecutive_loss():
    bk = Book()
    bk.losing_round_trip(0)
    bk.losing_round_trip(3)
    assert bk.pf.day_halt is None
    bk.losing_round_trip(6, buy_after=(A,))  # third loss at step 2, then BUY at step 3
    # qty: 100; then floor(99900 * 0.10 / 100) = 99; then floor(99801 * 0.10 / 100) = 99
    assert [t.pnl for t in bk.out.trades] == [near(-100.0), near(-99.0), near(-99.0)]
    assert bk.rejections() == [("AAA", A, "daily_loss_streak")]


def test_zero_pnl_trade_counts_as_a_loss():
    bk = Book()
    bk.losing_round_trip(0)
    bk.losing_round_trip(3)
    bk.bar(6, 100.0, buy=(A,))
    bk.bar(7, 100.0, h=100.1, lo=99.9, sell=(A,))  # fill 100, SELL queued
    bk.bar(8, 100.0, buy=(A,))  # exit at 100: pnl 100 * (100 - 100) = 0 <= 0 -> third loss
    assert bk.out.trades[-1].pnl == 0.0
    assert bk.rejections() == [("AAA", A, "daily_loss_streak")]


def test_a_win_resets_the_loss_streak():
    bk = Book()
    bk.losing_round_trip(0)
    bk.losing_round_trip(3)
    bk.bar(6, 100.0, buy=(A,))
    bk.bar(7, 100.0, h=100.1, lo=99.9)
    bk.bar(8, 101.0, h=102.5, lo=100.9)  # target 102: pnl +200 -> streak 0
    bk.losing_round_trip(9, buy_after=(A,))  # streak 1: the BUY passes
    assert bk.rejections() == [] and bk.pf.loss_streak == 1


def test_daily_drawdown_halts_when_equity_at_or_below_the_floor():
    # 500 shares at 100 (position 50%), stop 20% (80): cash 50000.
    # close 90.01: equity 50000 + 45005 = 95005 > 95000 -> trading on.
    # close 90.00: equity 50000 + 45000 = 95000 <= 100000 * 0.95 -> halted; BBB's BUY
    # on the same minute (after AAA) is rejected daily_drawdown.
    bk = Book(exit={"stop_loss_pct": 0.2, "take_profit_pct": 0.4},
              risk={"risk_per_trade_pct": 0.2, "max_position_pct": 0.5})
    bk.bar(0, 100.0, buy=(A,))
    bk.bar(1, 100.0, h=100.1, lo=99.9)
    bk.bar(2, 90.5, h=90.5, lo=90.0, c=90.01)
    assert bk.pf.day_halt is None
    bk.bar(3, 90.0, h=90.1, lo=89.9, c=90.0)
    bk.bar(3, 50.0, sym="BBB", buy=(A,))
    assert bk.pf.day_halt == "daily_drawdown"
    assert bk.rejections() == [("BBB", A, "daily_drawdown")]


def test_daily_drawdown_is_checked_after_step_2_so_it_rejects_the_same_bars_buys():
    # 1000 shares at 100, cash 0. Minute 2 opens at 94 <= stop 99: exit at 94 in
    # step 2, equity 94000 <= 95000 -> halted before step 3's BUY on this bar.
    bk = Book(risk=ALL_IN)
    bk.bar(0, 100.0, buy=(A,))
    bk.bar(1, 100.0, h=100.1, lo=99.9)
    bk.bar(2, 94.0, h=95.0, lo=93.5, c=94.5, buy=(A,))
    assert bk.out.trades[0].pnl == near(-6000.0)
    assert bk.rejections() == [("AAA", A, "daily_drawdown")]


def test_pinned_choice_rejection_reason_precedence():
    # Several rules can block one BUY; the reason recorded is the first of:
    # halted, the day's halt, max_positions, max_positions_per_symbol, size_zero.
    bk = Book(risk={"max_positions": 1, "max_positions_per_symbol": 1})
    bk.bar(0, 100.0, buy=(A,))  # pending: both caps now full
    bk.pf.halt, bk.pf.day_halt = "kill_switch", "daily_drawdown"
    bk.bar(0, 300_000.0, sym="AAB", buy=(A,))
    bk.pf.halt = None
    bk.bar(0, 300_000.0, sym="AAC", buy=(A,))
    bk.pf.day_halt = None
    bk.bar(0, 300_000.0, sym="AAD", buy=(A,))
    bk.bar(0, 300_000.0, sym="AAA", buy=(B,))  # per-symbol also full, max_positions first
    assert [r[2] for r in bk.rejections()] == ["halted", "daily_drawdown", "max_positions", "max_positions"]
    bk2 = Book(risk={"max_positions_per_symbol": 1})
    bk2.bar(0, 100.0, buy=(A, B))  # B: per-symbol full (before size)
    assert bk2.rejections() == [("AAA", B, "max_positions_per_symbol")]


def test_pinned_choice_first_halt_reason_of_the_day_sticks():
    # max 1 loss; the gap exit at 94 (loss 6000) halts with daily_loss_streak
    # inside step 2; the drawdown (94000 <= 95000) does not rename it.
    bk = Book(risk={**ALL_IN, "max_consecutive_losses": 1})
    bk.bar(0, 100.0, buy=(A,))
    bk.bar(1, 100.0, h=100.1, lo=99.9)
    bk.bar(2, 94.0, h=95.0, lo=93.5, c=94.5, buy=(A,))
    assert bk.rejections() == [("AAA", A, "daily_loss_streak")]


# ------------------------------------------------------------- trading day
def test_day_halt_lifts_at_the_next_new_york_date_not_the_utc_date():
    # 1 loss halts. New York is UTC-5 in early March (EST).
    bk = Book(risk={"max_consecutive_losses": 1})
    bk.losing_round_trip(0)  # Tue 5 March, 09:30-09:32 New York
    bk.bar(utc(2024, 3, 6, 0, 30), 100.0, buy=(A,))  # 19:30 NY, Tue: UTC date changed only
    bk.bar(utc(2024, 3, 6, 4, 59), 100.0, buy=(A,))  # 23:59 NY, Tue
    bk.bar(utc(2024, 3, 6, 5, 0), 100.0, buy=(A,))  # 00:00 NY, Wed: a new trading day
    assert bk.rejections() == [("AAA", A, "daily_loss_streak")] * 2
    assert bk.entries()[-1] == ("AAA", A, 99)  # equity 99900 after the loss: floor(99.9)


def test_start_of_day_equity_is_taken_before_step_1_of_the_days_first_bar():
    # Day 1: 1000 shares at 100 (cash 0), a SELL on the last bar queues an exit.
    # Day 2, first bar: start-of-day equity = 0 + 1000 * 100 (yesterday's close) = 100000;
    # the exit fills at its open 94 (step 1): equity 94000 <= 95000 -> halted,
    # so the BUY of that bar is rejected. (Taken after step 1 it would be 94000.)
    bk = Book(risk=ALL_IN)
    bk.bar(0, 100.0, buy=(A,))
    bk.bar(1, 100.0, h=100.1, lo=99.9)
    bk.bar(2, 100.0, h=100.1, lo=99.9, sell=(A,))
    day2 = utc(2024, 3, 6, 14, 30)
    bk.bar(day2, 94.0, h=94.5, lo=93.9, c=94.2, buy=(A,))
    assert bk.pf.start_of_day_equity == 100_000.0
    assert bk.out.trades[0].exit_time == day2
    assert bk.rejections() == [("AAA", A, "daily_drawdown")]


def test_loss_count_resets_each_day_and_exits_on_the_first_bar_count_for_the_new_day():
    # max 2 losses. Day 1: one loss (AAA); BBB's position gets a SELL on day 1's
    # last bar. Day 2's first BBB bar: the exit fills at a loss (step 1). It is
    # the new day's first loss (1 < 2), so the BUY on that bar passes; counted
    # for day 1 it would be the second loss and a halt.
    bk = Book(risk={"max_consecutive_losses": 2})
    bk.losing_round_trip(0)
    bk.bar(3, 50.0, sym="BBB", buy=(A,))
    bk.bar(4, 50.0, h=50.1, lo=49.9, sym="BBB")
    bk.bar(5, 50.0, h=50.1, lo=49.9, sym="BBB", sell=(A,))
    assert bk.pf.loss_streak == 1
    bk.bar(utc(2024, 3, 6, 14, 30), 49.8, h=49.9, lo=49.7, c=49.8, sym="BBB", buy=(A,))
    assert [t.pnl < 0 for t in bk.out.trades] == [True, True]
    assert bk.pf.loss_streak == 1 and bk.pf.day_halt is None
    assert bk.rejections() == [] and bk.entries()[-1][:2] == ("BBB", A)


def test_exits_are_never_blocked_by_risk():
    # Halted (kill switch) and halted for the day: the stop, the target and a
    # queued signal exit all still fill.
    bk = Book()
    bk.bar(0, 100.0, buy=(A, B, C))
    bk.bar(1, 100.0, h=100.1, lo=99.9, sell=(C,))
    bk.pf.halt, bk.pf.day_halt = "kill_switch", "daily_loss_streak"
    bk.bar(2, 100.0, h=100.1, lo=98.5, c=99.0)  # A, B stop at 99; C's signal exit at the open
    assert sorted((t.strategy_id, t.exit_reason) for t in bk.out.trades) == [
        (A, "stop_loss"), (B, "stop_loss"), (C, "signal")]
    assert bk.pf.positions == {}


def test_cash_may_go_below_zero_when_the_entry_gaps_up():
    # 1000 shares sized at close 100 with all the cash; the next open is 101:
    # cash = 100000 - 1000 * 101 = -1000, and the entry is not refused.
    bk = Book(risk=ALL_IN)
    bk.bar(0, 100.0, buy=(A,))
    bk.bar(1, 101.0, h=101.1, lo=100.9)
    assert bk.pf.cash == -1000.0 and bk.pf.positions[("AAA", A)].qty == 1000
