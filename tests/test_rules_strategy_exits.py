"""Per-strategy exit settings (spec sections 2, 4 and 5): each position's stop,
target and time stop, and the size of its entry, come from its strategy's
own settings (its `exit:`, else its type's default, else the top level),
worked by hand, in the simulated portfolio and with broker fills."""
from __future__ import annotations

from datetime import datetime, timezone

from pytest import approx

from operators.config import TradingConfig
from operators.live_portfolio import BrokerPortfolio
from operators.portfolio import Portfolio
from operators.types import BUY, Bar, PortfolioOutput, Signal, TradeUpdate

T0 = int(datetime(2024, 3, 5, 14, 30, tzinfo=timezone.utc).timestamp())  # 09:30 New York
SMA, PANIC, TIGHT = "sma_2_3", "panic_2_100", "tight"
# top level: tp 2 %, sl 1 %, time stop 60 min under 0.5 %; the panic entry has its type's
# defaults (1.5 %, 0.75 %, 240 min) and the top level's 0.5 %; "tight" (an sma pair) its own
# stop 0.4 % and time stop 5 min under 0.3 %, the top level's 2 % target.
CONFIG = TradingConfig(
    strategies=[
        {"fast": 2, "slow": 3, "confidence": 0.7},
        {"type": "panic_rebound", "drop_window": 2, "min_drop_pct": 0.01, "volume_window": 3, "volume_mult": 2.0},
        {"fast": 2, "slow": 4, "confidence": 0.7, "id": TIGHT,
         "exit": {"stop_loss_pct": 0.004, "time_stop_minutes": 5, "time_stop_min_move_pct": 0.003}},
    ],
    execution={"slippage_bps": 0.0},
    risk={"max_position_pct": 1.0, "risk_per_trade_pct": 0.001},  # neither cash nor the cap binds
)


def near(x):
    return approx(x, rel=1e-12, abs=1e-9)


class Book:
    def __init__(self, config=CONFIG):
        self.cfg = config
        self.pf = Portfolio.new(config)
        self.exits = config.strategy_exits()
        self.out = PortfolioOutput()

    def bar(self, t, o, h=None, lo=None, c=None, buy=()):
        c = o if c is None else c
        ts = T0 + 60 * t
        sigs = [Signal(s, "AAA", BUY, ts, c, 0.75, self.exits[s].take_profit_pct, self.exits[s].stop_loss_pct,
                       2.0) for s in buy]
        self.pf.apply_bar(Bar("AAA", ts, o, max(o, c) if h is None else h, min(o, c) if lo is None else lo, c,
                              1000.0), sigs or None, self.out)

    def pos(self, sid):
        return self.pf.positions.get(("AAA", sid))

    def exits_by(self, sid):
        return [(t.exit_time, t.exit_price, t.exit_reason) for t in self.out.trades if t.strategy_id == sid]


def test_entry_size_uses_the_strategys_own_stop():
    # equity 100,000, risk 0.1 % = 100 $ at the signal close 100:
    #   sma_2_3 (stop 1 %):          100 / (100 * 0.01)   = 100 shares
    #   panic_2_100 (type's 0.75 %): 100 / (100 * 0.0075) = 133.33 -> 133
    #   tight (its own 0.4 %):       100 / (100 * 0.004)  = 250
    bk = Book()
    bk.bar(0, 100.0, buy=(SMA, PANIC, TIGHT))
    assert [(o.strategy_id, o.qty) for o in bk.out.orders] == [(SMA, 100), (PANIC, 133), (TIGHT, 250)]
    # at 0.5 % risk the panic entry (666 shares) leaves 33,400 $: tight gets 334, not 1,250
    bk = Book(TradingConfig(**{**CONFIG.model_dump(), "risk": {"max_position_pct": 1.0}}))
    bk.bar(0, 100.0, buy=(PANIC, TIGHT))
    assert [(o.strategy_id, o.qty) for o in bk.out.orders] == [(PANIC, 666), (TIGHT, 334)]


def test_stop_and_target_of_each_position_come_from_its_strategy():
    bk = Book()
    bk.bar(0, 100.0, buy=(SMA, PANIC, TIGHT))
    bk.bar(1, 100.0, h=100.1, lo=99.9, c=100.0)  # all three fill at 100
    assert (bk.pos(SMA).stop_price, bk.pos(SMA).target_price) == (near(99.0), near(102.0))
    assert (bk.pos(PANIC).stop_price, bk.pos(PANIC).target_price) == (near(99.25), near(101.5))
    assert (bk.pos(TIGHT).stop_price, bk.pos(TIGHT).target_price) == (near(99.6), near(102.0))
    # low 99.5 takes out only tight's stop 99.6; high 101.6 only the panic target 101.5
    bk.bar(2, 100.0, h=101.6, lo=99.5, c=100.5)
    assert bk.exits_by(TIGHT) == [(T0 + 120, near(99.6), "stop_loss")]
    assert bk.exits_by(PANIC) == [(T0 + 120, near(101.5), "take_profit")]
    assert bk.exits_by(SMA) == [] and bk.pos(SMA) is not None


def test_the_panic_stop_at_its_own_level():
    bk = Book()
    bk.bar(0, 100.0, buy=(SMA, PANIC))
    bk.bar(1, 100.0)
    bk.bar(2, 99.8, lo=99.25, c=99.5)  # touches 99.25: the panic stop, not the sma's 99
    assert bk.exits_by(PANIC) == [(T0 + 120, near(99.25), "stop_loss")]
    assert bk.pos(SMA) is not None


def test_time_stops_run_on_each_strategys_own_clock_and_threshold():
    bk = Book()
    bk.bar(0, 100.0, buy=(SMA, PANIC, TIGHT))
    for t in range(1, 300):
        bk.bar(t, 100.1, h=100.15, lo=100.05, c=100.1)  # flat: a 0.1 % move
    # tight: 5 minutes after its entry at minute 1, |100.1 / 100 - 1| = 0.001 < 0.003:
    # queued at minute 6, filled at minute 7's open
    assert bk.exits_by(TIGHT) == [(T0 + 7 * 60, near(100.1), "time_stop")]
    # sma_2_3: 60 minutes (queued at 61), the panic entry: its type's 240 (queued at 241)
    assert bk.exits_by(SMA) == [(T0 + 62 * 60, near(100.1), "time_stop")]
    assert bk.exits_by(PANIC) == [(T0 + 242 * 60, near(100.1), "time_stop")]


def test_a_strategys_own_min_move_keeps_a_position_the_top_level_would_close():
    # tight's 0.3 % threshold: a 0.4 % move is enough to stay; the sma pair (0.5 %) leaves
    bk = Book()
    bk.bar(0, 100.0, buy=(SMA, TIGHT))
    bk.bar(1, 100.0, h=100.45, lo=99.95, c=100.4)  # both fill at 100
    for t in range(2, 70):
        bk.bar(t, 100.4, h=100.45, lo=100.35, c=100.4)
    assert bk.exits_by(TIGHT) == [] and bk.pos(TIGHT) is not None
    assert [r for _, _, r in bk.exits_by(SMA)] == ["time_stop"]


def test_broker_fills_protect_each_entry_with_its_strategys_stop_and_target():
    pf = BrokerPortfolio.new(CONFIG)
    out = PortfolioOutput()
    sig = [Signal(PANIC, "AAA", BUY, T0, 100.0, 0.75, 0.015, 0.0075, 2.0, None, "panic_rebound"),
           Signal(SMA, "AAA", BUY, T0, 100.0, 0.7, 0.02, 0.01, 2.0)]
    pf.apply("AAA", T0, 100.0, 100.0, 100.0, 100.0, sig, out)
    entries = [o for o in out.orders if o.intent == "entry"]
    assert [(o.strategy_id, o.qty) for o in entries] == [(PANIC, 133), (SMA, 100)]
    for o in entries:
        pf.apply_update(TradeUpdate(o.order_id, "fill", "AAA", BUY, T0 + 61, filled_qty=o.qty,
                                    fill_qty=o.qty, fill_price=100.0), out)
    protect = {o.strategy_id: (o.stop_price, o.target_price) for o in out.orders if o.intent == "protect"}
    assert protect == {PANIC: (near(99.25), near(101.5)), SMA: (near(99.0), near(102.0))}


def test_broker_fills_time_stop_each_position_with_its_strategys_setting():
    pf = BrokerPortfolio.new(CONFIG)
    out = PortfolioOutput()
    sig = [Signal(TIGHT, "AAA", BUY, T0, 100.0, 0.7, 0.02, 0.004, 5.0),
           Signal(SMA, "AAA", BUY, T0, 100.0, 0.7, 0.02, 0.01, 2.0)]
    pf.apply("AAA", T0, 100.0, 100.0, 100.0, 100.0, sig, out)
    for o in [o for o in out.orders if o.intent == "entry"]:
        pf.apply_update(TradeUpdate(o.order_id, "fill", "AAA", BUY, T0 + 61, filled_qty=o.qty,
                                    fill_qty=o.qty, fill_price=100.0), out)
    for t in range(1, 62):
        pf.apply("AAA", T0 + 60 * t, 100.1, 100.15, 100.05, 100.1, None, out)
    exits = [(o.strategy_id, o.decided_ts, o.intent) for o in out.orders if o.intent == "time_stop"]
    assert exits == [(TIGHT, T0 + 6 * 60, "time_stop"), (SMA, T0 + 61 * 60, "time_stop")]
