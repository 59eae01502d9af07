"""Spec section 2a (the panic-rebound strategy), every clause worked by hand
on small windows, through both symbol stages (bar at a time and columnar,
whole and in 2-bar chunks).

Unless a test says otherwise: drop_window N = 2, volume_window M = 3,
min_drop_pct 0.01 (drop_bps 100), volume_mult 2.0 (mult_c 200), so
- panic at bar j (j >= N + M = 5): close_j * 10_000 <= peak * 9_900 with
  peak = max(high_{j-1}, high_j), and max(volume_{j-1}, volume_j) * 3 * 100
  >= 200 * (volume_{j-4} + volume_{j-3} + volume_{j-2});
- BUY at bar k >= 6 after a panic at k-1 when close_k > open_k and
  close_k > close_{k-1}.
The standard day: bars 1-4 at 100 with volume 100, bar 5 closes 99 on volume
200 (exactly at both thresholds: a panic), bar 6 rebounds 99 -> 99.5.
"""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from operators.columnar import ColumnarSymbolState, step_block
from operators.config import PanicReboundConfig, StrategyConfig, TradingConfig
from operators.ordering import block_from_bars
from operators.signals import SignalRules
from operators.symbol_stage import SymbolState, step_symbol
from operators.types import BUY, Bar, SymbolOutput

T0 = int(datetime(2024, 3, 5, 14, 30, tzinfo=timezone.utc).timestamp())  # 09:30 New York
DAY = 86_400
PANIC = PanicReboundConfig(type="panic_rebound", drop_window=2, min_drop_pct=0.01, volume_window=3,
                           volume_mult=2.0)
PID = "panic_2_100"


def cfg(*strategies, **top) -> TradingConfig:
    return TradingConfig(strategies=strategies or (PANIC,), **top)


@pytest.fixture(params=["scalar", "columnar", "columnar_chunks_of_2"])
def kind(request):
    return request.param


def bar(k, o, c=None, v=100.0, h=None, lo=None, day=0):
    """Bar number k (1-based) of trading day `day`, one minute apart from 09:30."""
    c = o if c is None else c
    return Bar("AAA", T0 + day * DAY + 60 * (k - 1), o, max(o, c) if h is None else h,
               min(o, c) if lo is None else lo, c, v)


def standard_day(changes=None, day=0):
    """Bars 1-6 of the standard day; changes: {k: dict of bar fields}."""
    changes = changes or {}
    spec = {1: {"o": 100.0}, 2: {"o": 100.0}, 3: {"o": 100.0}, 4: {"o": 100.0},
            5: {"o": 100.0, "c": 99.0, "v": 200.0}, 6: {"o": 99.0, "c": 99.5}}
    for k, fields in changes.items():
        spec[k] = {**spec.get(k, {}), **fields}
    return [bar(k, day=day, **spec[k]) for k in sorted(spec)]


def feed(kind, config, bars):
    """Bars through one symbol's stage; returns (passed, filtered) as
    (day, k, strategy id, side) and the output."""
    rules = SignalRules.from_config(config)
    out = SymbolOutput()
    if kind == "scalar":
        step_symbol(SymbolState.new(rules), bars, list(range(len(bars))), "row ", out)
    else:
        state = ColumnarSymbolState()
        size = 2 if kind == "columnar_chunks_of_2" else len(bars)
        for i in range(0, len(bars), size):
            step_block(state, rules, block_from_bars(bars[i:i + size]), list(range(i, i + size)), "row ", out)

    def where(ts):
        day, rest = divmod(ts - T0, DAY)
        return day, rest // 60 + 1

    passed = [(*where(ts), s.strategy_id, s.side) for ts, sigs in sorted(out.signals.items()) for s in sigs]
    filtered = [(*where(s.ts), s.strategy_id, s.side, s.filtered_reason) for s in out.filtered]
    return passed, filtered, out


# ------------------------------------------------------------- the rule
def test_drop_and_spike_exactly_at_their_thresholds_then_a_rebound_buy(kind):
    # bar 5: close 99 -> 99_000_000 * 10_000 = 990_000_000_000 <= peak 100_000_000 * 9_900
    #        = 990_000_000_000 (equal: a drop); volume max(100, 200) = 200_000 milli * 300
    #        = 60_000_000 >= 200 * (100_000 * 3) = 60_000_000 (equal: a spike): panic.
    # bar 6: 99 -> 99.5 is green and above close_5: BUY at its close.
    passed, filtered, out = feed(kind, cfg(), standard_day())
    assert passed == [(0, 6, PID, BUY)] and filtered == []
    (sig,) = out.signals[T0 + 5 * 60]
    assert (sig.price, sig.confidence, sig.strategy_type) == (99.5, 0.75, "panic_rebound")
    # its own exit settings: the panic_rebound defaults 1.5 % / 0.75 %
    assert (sig.take_profit_pct, sig.stop_loss_pct, sig.risk_reward) == (0.015, 0.0075, 0.015 / 0.0075)


def test_one_micro_dollar_above_the_drop_threshold_is_no_drop(kind):
    # close 99.000001 -> 99_000_001 * 10_000 > 990_000_000_000: no drop, no panic, no BUY
    passed, _, _ = feed(kind, cfg(), standard_day({5: {"c": 99.000001}}))
    assert passed == []


def test_the_drop_is_measured_from_the_highest_high_of_the_drop_window(kind):
    # bar 4 spikes to a high of 100.5: peak 100_500_000 * 9_900 = 994_950_000_000;
    # bar 5 closes 99.49 -> 994_900_000_000 <= it: a drop (from the close 100 it is only 0.51 %)
    passed, _, _ = feed(kind, cfg(), standard_day({4: {"h": 100.5}, 5: {"c": 99.49}, 6: {"o": 99.49}}))
    assert passed == [(0, 6, PID, BUY)]


def test_drop_without_a_volume_spike_is_no_panic(kind):
    # volume 199.999 -> 199_999 milli * 300 = 59_999_700 < 60_000_000
    passed, _, _ = feed(kind, cfg(), standard_day({5: {"v": 199.999}}))
    assert passed == []


def test_volume_spike_without_a_drop_is_no_panic(kind):
    # 10x the volume, but close 99.5 is only 0.5 % below the peak
    passed, _, _ = feed(kind, cfg(), standard_day({5: {"c": 99.5, "v": 1000.0}}))
    assert passed == []


def test_the_spike_is_the_largest_volume_of_the_drop_window_against_the_baseline_before_it(kind):
    # The spike may come on bar 4 (inside the drop window j-1..j), the drop on bar 5.
    # Baseline of bar 5: bars 1..3 (not 4 or 5): 3 * 100 = 300 shares.
    passed, _, _ = feed(kind, cfg(), standard_day({4: {"v": 200.0}, 5: {"v": 50.0}}))
    assert passed == [(0, 6, PID, BUY)]
    # the baseline moves with j: a big bar 1 is in bar 5's baseline (no spike: 200 * 300 < 200 * 500)
    passed, _, _ = feed(kind, cfg(), standard_day({1: {"v": 300.0}}))
    assert passed == []


def test_fractional_volumes_are_compared_in_milli_shares(kind):
    # baseline 3 x 66.6667 -> 66_667 milli each = 200_001; spike needs max * 300 >= 200 * 200_001
    # = 40_000_200, i.e. 133_334 milli: 133.334 fires, 133.3334 (-> 133_333) does not.
    base = {1: {"v": 66.6667}, 2: {"v": 66.6667}, 3: {"v": 66.6667}, 4: {"v": 0.5}}
    passed, _, _ = feed(kind, cfg(), standard_day({**base, 5: {"c": 99.0, "v": 133.334}}))
    assert passed == [(0, 6, PID, BUY)]
    passed, _, _ = feed(kind, cfg(), standard_day({**base, 5: {"c": 99.0, "v": 133.3334}}))
    assert passed == []


def test_a_zero_volume_baseline_makes_any_volume_a_spike(kind):
    # baseline 0: max volume * 300 >= 0 always holds; the drop still decides
    base = {1: {"v": 0.0}, 2: {"v": 0.0}, 3: {"v": 0.0}, 4: {"v": 0.0}, 5: {"c": 99.0, "v": 0.0}}
    passed, _, _ = feed(kind, cfg(), standard_day(base))
    assert passed == [(0, 6, PID, BUY)]


# ------------------------------------------------------------- the rebound
def test_a_red_rebound_bar_does_not_buy(kind):
    # bar 6: open 99.8, close 99.5 > close_5 = 99 but below its open: no BUY. Bar 6 is no
    # panic itself (99.5 > 0.99 * 100), so bar 7, green and higher, buys nothing either.
    passed, _, _ = feed(kind, cfg(), standard_day({6: {"o": 99.8, "c": 99.5}, 7: {"o": 99.5, "c": 99.7}}))
    assert passed == []


def test_a_green_bar_that_does_not_close_above_the_previous_close_does_not_buy(kind):
    # bar 6: opens 98.5, closes 99.0 = close_5: green but not higher
    passed, _, _ = feed(kind, cfg(), standard_day({6: {"o": 98.5, "c": 99.0}}))
    assert passed == []


def test_a_flat_bar_is_not_green(kind):
    passed, _, _ = feed(kind, cfg(), standard_day({6: {"o": 99.5, "c": 99.5}}))
    assert passed == []


def test_a_panic_lasting_several_bars_buys_the_first_rebound_after_a_panic_bar(kind):
    # Bars 5, 6, 7 keep falling on volume, each a panic: closes 99, 98, 97.5 against the
    # peaks 100, 100 (bars 5-6) and 99 (bars 6-7, 97.5 <= 98.01); volumes 200, 300, 300
    # against baselines of 300, 300 and 400 shares. Bars 6 and 7 are red: no BUY. Bar 8 rebounds
    # 97.5 -> 98 after the panic at 7: BUY. Bar 8 is no panic (peak of bars 7-8 = 98,
    # 98 > 97.02), so bar 9, green and higher, buys nothing.
    days = standard_day({6: {"o": 99.0, "c": 98.0, "v": 300.0}, 7: {"o": 98.0, "c": 97.5, "v": 300.0},
                         8: {"o": 97.5, "c": 98.0}, 9: {"o": 98.0, "c": 98.2}})
    passed, _, _ = feed(kind, cfg(), days)
    assert passed == [(0, 8, PID, BUY)]


def test_two_rebound_bars_in_a_row_after_two_panic_bars_buy_twice(kind):
    # Bar 6 (high 100.2, 99 -> 99.1, volume 300) rebounds after bar 5's panic: BUY; and
    # it is a panic itself: 99_100_000 * 10_000 <= 100_200_000 * 9_900 = 991_980_000_000.
    # Bar 7 (99.1 -> 99.3) rebounds after it: BUY again (the portfolio ignores a BUY
    # while long).
    days = standard_day({6: {"o": 99.0, "c": 99.1, "h": 100.2, "v": 300.0}, 7: {"o": 99.1, "c": 99.3}})
    passed, _, _ = feed(kind, cfg(), days)
    assert passed == [(0, 6, PID, BUY), (0, 7, PID, BUY)]


# ------------------------------------------------------------- the trading day
def test_no_signal_before_bar_n_plus_m_plus_1_of_the_day(kind):
    # N=2, M=3: the standard pattern one bar earlier (drop and spike at bar 4, rebound
    # at bar 5) cannot signal: a panic needs j >= N + M = 5, a BUY k >= 6 (bar 6 is flat).
    early = [bar(1, 100.0), bar(2, 100.0), bar(3, 100.0), bar(4, 100.0, 99.0, v=200.0),
             bar(5, 99.0, 99.5), bar(6, 99.5)]
    passed, _, _ = feed(kind, cfg(), early)
    assert passed == []
    # one bar later it is the standard day: the earliest BUY is bar N + M + 1 = 6
    passed, _, _ = feed(kind, cfg(), standard_day())
    assert passed == [(0, 6, PID, BUY)]


def test_windows_restart_each_trading_day_the_overnight_gap_is_never_a_drop(kind):
    # Day 0 ends high (bars 1..8 at 110, volume 10); day 1 opens at 100 on big volume.
    # Carried over, bar 3 of day 1 would be a panic (100 <= 0.99 * 110, 1000 vs 30) and
    # bar 4 a BUY; restarted, day 1's windows hold only its own bars.
    day0 = [bar(k, 110.0, v=10.0) for k in range(1, 9)]
    day1 = [bar(1, 100.0, v=1000.0), bar(2, 100.0, v=1000.0), bar(3, 100.0, 99.0, v=1000.0),
            bar(4, 99.0, 99.5, v=1000.0), bar(5, 99.5, 99.0, v=1000.0), bar(6, 99.0, 99.4)]
    day1 = [Bar(b.symbol, b.ts + DAY, b.open, b.high, b.low, b.close, b.volume) for b in day1]
    passed, _, _ = feed(kind, cfg(), day0 + day1)
    assert passed == []


def test_a_new_day_baseline_holds_only_that_days_bars(kind):
    # Day 0 ends on huge volume; day 1 is the standard day. Carried over, day 1's first
    # baselines would hold day 0's volume (no spike); restarted, day 1 buys at its bar 6.
    day0 = [bar(k, 100.0, v=100_000.0) for k in range(1, 9)]
    passed, _, _ = feed(kind, cfg(), day0 + standard_day(day=1))
    assert passed == [(1, 6, PID, BUY)]


def test_the_trading_day_is_the_new_york_date_whatever_the_hour(kind):
    # 23:55 New York (04:55 UTC the next day) and 00:05 the next New York day: two
    # trading days, although the UTC date is the same; the 6 bars straddling midnight
    # (3 on each side) never make 5 bars of one day.
    late = int(datetime(2024, 3, 6, 4, 52, tzinfo=timezone.utc).timestamp())  # 23:52 NY, March 5
    closes = [100.0, 100.0, 100.0, 100.0, 99.0, 99.5]
    opens = [100.0, 100.0, 100.0, 100.0, 100.0, 99.0]
    vols = [100.0, 100.0, 100.0, 100.0, 200.0, 100.0]
    times = [late, late + 60, late + 120, late + 480, late + 540, late + 600]  # 23:52-23:54, 00:00-00:02
    bars = [Bar("AAA", t, o, max(o, c), min(o, c), c, v) for t, o, c, v in zip(times, opens, closes, vols)]
    passed, _, _ = feed(kind, cfg(), bars)
    assert passed == []
    # the same bars within one New York day: BUY at the sixth
    same_day = [Bar("AAA", T0 + 60 * i, b.open, b.high, b.low, b.close, b.volume) for i, b in enumerate(bars)]
    passed, _, _ = feed(kind, cfg(), same_day)
    assert passed == [(0, 6, PID, BUY)]


def test_gaps_in_time_within_a_day_do_not_matter_windows_count_bars(kind):
    bars = standard_day()
    spread = [Bar(b.symbol, T0 + i * 600, b.open, b.high, b.low, b.close, b.volume) for i, b in enumerate(bars)]
    passed, _, _ = feed(kind, cfg(), spread)
    assert len(passed) == 1 and passed[0][2:] == (PID, BUY)


# ------------------------------------------------------------- signal terms and filters
def test_panic_buy_is_filtered_by_its_own_risk_reward():
    # its own exit: tp 0.01 / sl 0.01 = 1.0 < min_risk_reward 2.0 -> filtered
    own = PanicReboundConfig.model_validate(
        {**PANIC.model_dump(), "exit": {"take_profit_pct": 0.01, "stop_loss_pct": 0.01}})
    passed, filtered, _ = feed("scalar", cfg(own), standard_day())
    assert passed == [] and filtered == [(0, 6, PID, BUY, "low_risk_reward")]


def test_panic_buy_below_min_confidence_is_filtered(kind):
    low = PanicReboundConfig.model_validate({**PANIC.model_dump(), "confidence": 0.6})
    passed, filtered, _ = feed(kind, cfg(low), standard_day())
    assert passed == [] and filtered == [(0, 6, PID, BUY, "low_confidence")]


def test_panic_strategies_with_other_windows_and_an_own_id_run_side_by_side(kind):
    # N=1, M=4: bar 5's drop window is bar 5 alone (peak = its high 100), its baseline
    # bars 1..4 = 400_000 milli: 200_000 * 4 * 100 = 200 * 400_000 (equal: a spike);
    # panic at 5, BUY at 6 for both, in list order.
    other = PanicReboundConfig(type="panic_rebound", id="quick", drop_window=1, min_drop_pct=0.01,
                               volume_window=4, volume_mult=2.0)
    passed, _, out = feed(kind, cfg(PANIC, other), standard_day())
    assert passed == [(0, 6, PID, BUY), (0, 6, "quick", BUY)]


def test_signals_of_one_bar_follow_the_configuration_order_across_types(kind):
    # Closes 100 100 100 100 99 101.3. sma (2,3): bar 5 fast 99.5 < slow 299 / 3 (a SELL
    # from the tie before); bar 6 fast (99 + 101.3) / 2 = 100.15 > slow 300.3 / 3 = 100.1:
    # BUY. The panic BUYs at bar 6 too: the list order decides, whatever the type.
    s = StrategyConfig(fast=2, slow=3, confidence=0.7)
    days = standard_day({6: {"o": 99.0, "c": 101.3}})
    passed, _, _ = feed(kind, cfg(PANIC, s), days)
    assert [p for p in passed if p[1] == 6] == [(0, 6, PID, BUY), (0, 6, "sma_2_3", BUY)]
    passed, _, _ = feed(kind, cfg(s, PANIC), days)
    assert [p for p in passed if p[1] == 6] == [(0, 6, "sma_2_3", BUY), (0, 6, PID, BUY)]


def test_consensus_combines_only_sma_pairs_the_panic_acts_alone_after_it(kind):
    s1, s2 = StrategyConfig(fast=2, slow=3, confidence=0.7), StrategyConfig(fast=2, slow=4, confidence=0.7)
    days = standard_day({6: {"o": 99.0, "c": 101.3}})
    config = cfg(PANIC, s1, s2, signals={"aggregation": "majority", "min_agree": 2})
    assert config.strategy_ids() == ["consensus", PID]
    passed, _, out = feed(kind, config, days)
    # bar 6: (2,3) crosses up (100.15 > 100.1); (2,4) fast 100.15 > slow 400.3 / 4 = 100.075: 2 above
    assert passed == [(0, 6, "consensus", BUY), (0, 6, PID, BUY)]
    types = [s.strategy_type for s in out.signals[T0 + 5 * 60]]
    assert types == ["sma_cross", "panic_rebound"]


def test_huge_prices_and_volumes_stay_exact_beyond_64_bit_integers(kind):
    # volumes of 1e16 shares (1e19 milli-shares) and prices of 1e9 $ (1e15 micro-dollars,
    # times 10_000 above 2**63): the same standard day, scaled, still panics at bar 5
    # exactly at both thresholds and buys at bar 6; one micro-dollar above does not.
    def scaled(day):
        return [Bar(b.symbol, b.ts, b.open * 1e7, b.high * 1e7, b.low * 1e7, b.close * 1e7, b.volume * 1e14)
                for b in day]
    passed, _, _ = feed(kind, cfg(), scaled(standard_day()))
    assert passed == [(0, 6, PID, BUY)]
    over = scaled(standard_day())
    b5 = over[4]
    over[4] = Bar(b5.symbol, b5.ts, b5.open, b5.high, b5.low, b5.close + 0.000001, b5.volume)
    passed, _, _ = feed(kind, cfg(), over)
    assert passed == []


def test_a_snapshot_mid_day_resumes_to_the_same_signals():
    # Recovery: the columnar state is snapshotted (each type's own snapshot) after bar 4,
    # the original goes on being mutated, and the snapshot resumes to the same signals
    # as an uninterrupted run (sma_cross and panic_rebound state alike).
    from operators.columnar import snapshot_state

    config = cfg(PANIC, StrategyConfig(fast=2, slow=3, confidence=0.7))
    rules = SignalRules.from_config(config)
    days = standard_day({6: {"o": 99.0, "c": 101.3}, 7: {"o": 101.3, "c": 100.0}})
    whole = SymbolOutput()
    step_block(ColumnarSymbolState(), rules, block_from_bars(days), list(range(len(days))), "row ", whole)
    state, first = ColumnarSymbolState(), SymbolOutput()
    step_block(state, rules, block_from_bars(days[:4]), [0, 1, 2, 3], "row ", first)
    saved = snapshot_state(state, rules)
    step_block(state, rules, block_from_bars(days[4:]), [4, 5, 6], "row ", SymbolOutput())  # the lost run
    resumed = SymbolOutput()
    step_block(saved, rules, block_from_bars(days[4:]), [4, 5, 6], "row ", resumed)
    assert {**first.signals, **resumed.signals} == whole.signals
    assert any(s.strategy_type == "panic_rebound" for sigs in whole.signals.values() for s in sigs)
