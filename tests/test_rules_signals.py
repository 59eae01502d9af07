"""Spec section 2 (indicators and signals): exact SMAs, crosses, filters and
the three aggregation modes, each worked by hand on small periods."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from operators.columnar import ColumnarSymbolState, step_block
from operators.config import SignalConfig, StrategyConfig, TradingConfig
from operators.ordering import block_from_bars
from operators.signals import SignalRules
from operators.symbol_stage import SymbolState, step_symbol
from operators.types import BUY, SELL, Bar, SymbolOutput

T0 = int(datetime(2024, 3, 5, 14, 30, tzinfo=timezone.utc).timestamp())  # 09:30 New York
S23 = StrategyConfig(fast=2, slow=3, confidence=0.70)
S24 = StrategyConfig(fast=2, slow=4, confidence=0.75)
S35 = StrategyConfig(fast=3, slow=5, confidence=0.80)
# Sequence A, used by the aggregation tests. Relations sign(fast - slow) per
# pair (2,3), (2,4), (3,5), worked below where they matter:
#   t:     0   1   2   3   4   5   6   7   8   9  10  11
#   close 10  10  10  10  10   8   9  10  11   8   7   7
#   (2,3)  .   .   0   0   0  -1  -1  +1  +1  -1  -1  -1
#   (2,4)  .   .   .   0   0  -1  -1  +1  +1   0  -1  -1
#   (3,5)  .   .   .   .   0  -1  -1  -1  +1  +1  -1  -1
SEQ_A = [10, 10, 10, 10, 10, 8, 9, 10, 11, 8, 7, 7]


def cfg(*strategies, **signals) -> TradingConfig:
    return TradingConfig(strategies=strategies, signals=SignalConfig(**signals))


@pytest.fixture(params=["scalar", "columnar", "columnar_chunks_of_2"])
def kind(request):
    """Every rule runs on both symbol stages: bar-at-a-time (`step_symbol`) and
    columnar (`step_block`, the flow's hot path), the latter also fed in
    2-bar chunks so that state carried across chunks is exercised."""
    return request.param


def feed(kind, config, closes, times=None):
    """Closes through one symbol's stage in one chunk; returns (state, output,
    passed, filtered) with signals as (bar index, strategy id, side)."""
    rules = SignalRules.from_config(config)
    times = times or [T0 + 60 * i for i in range(len(closes))]
    bars = [Bar("AAA", t, c, c, c, c, 100.0) for t, c in zip(times, closes)]
    out = SymbolOutput()
    if kind == "scalar":
        state = SymbolState.new(rules)
        step_symbol(state, bars, list(range(len(bars))), "row ", out)
    else:
        state = ColumnarSymbolState()
        size = 2 if kind == "columnar_chunks_of_2" else len(bars)
        for i in range(0, len(bars), size):
            step_block(state, rules, block_from_bars(bars[i:i + size]), list(range(i, i + size)), "row ", out)
    idx = {t: i for i, t in enumerate(times)}
    passed = [(idx[ts], s.strategy_id, s.side) for ts, sigs in sorted(out.signals.items()) for s in sigs]
    filtered = [(idx[s.ts], s.strategy_id, s.side, s.filtered_reason) for s in out.filtered]
    return state, out, passed, filtered


def sma_sum(state, n):
    """Sum of the last n closes in micro-dollars (None while undefined), either stage."""
    if isinstance(state, SymbolState):
        return state.engine.smas.sum_of(n)
    return None if state.count < n else int(state.tail[-n:].sum())


# ------------------------------------------------------------------- SMA
def test_sma_is_undefined_until_n_bars_were_applied(kind):
    state, *_ = feed(kind, cfg(S23), [10, 11])
    assert sma_sum(state, 2) == 21_000_000  # 10 + 11 in micro-dollars
    assert sma_sum(state, 3) is None  # only 2 bars applied


def test_sma_is_count_based_and_ignores_time_gaps(kind):
    # 3 bars a minute, a day and a week apart: SMA(3) is still their mean
    times = [T0, T0 + 86_400, T0 + 7 * 86_400]
    state, *_ = feed(kind, cfg(S23), [10, 20, 30], times)
    assert sma_sum(state, 3) == 60_000_000  # (10 + 20 + 30) = 60 -> mean 20


def test_closes_are_taken_in_integer_micro_dollars(kind):
    # round(close * 10**6): 0.1 + 0.2 = 0.30000000000000004 -> 300000.00000000006 -> 300_000;
    # 19.99 -> 19_990_000; 1.005 -> 1004999.9999999999 -> 1_005_000 (rounded, not truncated).
    state, *_ = feed(kind, cfg(S23), [0.1 + 0.2, 19.99, 1.005])
    assert sma_sum(state, 3) == 300_000 + 19_990_000 + 1_005_000
    assert sma_sum(state, 2) == 20_995_000  # 19.99 + 1.005


def test_equal_means_are_a_tie_compared_exactly_not_in_floats(kind):
    # Pair (2,4), closes 0.5 1.1 2.2 1.3 2.0 2.0
    # t3: fast (2.2+1.3)/2 = 1.75 > slow (0.5+1.1+2.2+1.3)/4 = 1.275  (first defined)
    # t4: fast (1.3+2.0)/2 = 1.65, slow (1.1+2.2+1.3+2.0)/4 = 6.6/4 = 1.65: a tie in
    #     micro-dollars (3_300_000 * 4 == 6_600_000 * 2), so no SELL; floats
    #     would say 1.65 < 1.6500000000000001 and SELL.
    # t5: fast (2.0+2.0)/2 = 2.0 > slow (2.2+1.3+2.0+2.0)/4 = 1.875, from a tie:
    #     fast[t-1] <= slow[t-1] and fast[t] > slow[t] -> BUY
    closes = [0.5, 1.1, 2.2, 1.3, 2.0, 2.0]
    assert (1.3 + 2.0) / 2 < (1.1 + 2.2 + 1.3 + 2.0) / 4  # the float trap is real
    _, _, passed, _ = feed(kind, cfg(StrategyConfig(fast=2, slow=4, confidence=0.75)), closes)
    assert passed == [(5, "sma_2_4", BUY)]


def test_tie_then_below_is_a_death_cross(kind):
    # Pair (2,3): t2 10/10/10 tie; t3 close 13: fast 11.5 > slow 11 -> BUY (from a tie);
    # t4 close 7: fast (13+7)/2 = 10 = slow (10+13+7)/3 = 10 -> tie, nothing;
    # t5 close 7: fast 7 < slow (13+7+7)/3 = 9, fast[t-1] >= slow[t-1] (tie) -> SELL
    _, _, passed, _ = feed(kind, cfg(S23), [10, 10, 10, 13, 7, 7])
    assert passed == [(3, "sma_2_3", BUY), (5, "sma_2_3", SELL)]


# ------------------------------------------------------------- crosses
def test_golden_and_death_cross_need_both_smas_defined_at_t_minus_1_and_t(kind):
    # Pair (2,3), closes 10 9 12 12 8
    # t2: first bar with SMA(3): fast (9+12)/2 = 10.5 > slow 31/3 = 10.33, but
    #     t1 is undefined -> no BUY.
    # t3: fast 12 > slow 11: above before and now -> nothing.
    # t4: fast 10 < slow (12+12+8)/3 = 10.67, above at t3 -> SELL
    _, _, passed, _ = feed(kind, cfg(S23), [10, 9, 12, 12, 8])
    assert passed == [(4, "sma_2_3", SELL)]


def test_signal_carries_strategy_symbol_side_time_close_confidence_and_exit_fractions(kind):
    config = TradingConfig(strategies=(S23,), exit={"take_profit_pct": 0.03, "stop_loss_pct": 0.01})
    _, out, passed, _ = feed(kind, config, [10, 10, 10, 13])
    (sig,) = out.signals[T0 + 180]
    assert (sig.strategy_id, sig.symbol, sig.side, sig.ts, sig.price) == ("sma_2_3", "AAA", BUY, T0 + 180, 13)
    assert (sig.confidence, sig.take_profit_pct, sig.stop_loss_pct) == (0.70, 0.03, 0.01)
    assert sig.risk_reward == 0.03 / 0.01  # 3.0 (float division)
    assert sig.filtered_reason is None


# ------------------------------------------------------------- filters
def test_buy_below_min_confidence_is_dropped_and_recorded_as_filtered(kind):
    # confidence 0.65 < min_confidence 0.7
    low = StrategyConfig(fast=2, slow=3, confidence=0.65)
    _, out, passed, filtered = feed(kind, cfg(low), [10, 10, 10, 13, 7, 7])
    assert passed == [(5, "sma_2_3", SELL)]  # SELLs are never filtered
    assert filtered == [(3, "sma_2_3", BUY, "low_confidence")]


def test_buy_at_exactly_min_confidence_passes(kind):
    _, _, passed, filtered = feed(kind, cfg(S23, min_confidence=0.7), [10, 10, 10, 13])
    assert passed == [(3, "sma_2_3", BUY)] and filtered == []


def test_buy_below_min_risk_reward_is_dropped_and_recorded_as_filtered(kind):
    # risk/reward = take_profit 0.015 / stop_loss 0.01 = 1.5 < 2.0
    config = TradingConfig(strategies=(S23,), exit={"take_profit_pct": 0.015, "stop_loss_pct": 0.01})
    _, out, passed, filtered = feed(kind, config, [10, 10, 10, 13])
    assert passed == [] and filtered == [(3, "sma_2_3", BUY, "low_risk_reward")]
    assert out.signals == {}


# ------------------------------------------------------------- aggregation
def test_independent_pairs_act_separately_one_buys_while_another_sells(kind):
    # closes 10 10 10 10 10 11 9 12 8, pairs (2,3), (2,4), (3,5):
    # t7: (2,3) fast (9+12)/2 = 10.5 < slow (11+9+12)/3 = 10.67; (3,5) fast 32/3 = 10.67 > slow 52/5 = 10.4
    # t8: (2,3) fast (12+8)/2 = 10 > slow (9+12+8)/3 = 9.67  -> BUY  sma_2_3
    #     (3,5) fast (9+12+8)/3 = 9.67 < slow (10+11+9+12+8)/5 = 10 -> SELL sma_3_5
    #     (2,4) fast 10.5 = slow 42/4 at t7, fast 10 = slow 40/4 at t8: ties, nothing
    _, _, passed, _ = feed(kind, cfg(S23, S24, S35), [10, 10, 10, 10, 10, 11, 9, 12, 8])
    assert [p for p in passed if p[0] == 8] == [(8, "sma_2_3", BUY), (8, "sma_3_5", SELL)]


def test_majority_buys_when_a_pair_crosses_up_and_min_agree_pairs_are_above(kind):
    # Sequence A, min_agree 2.
    # t7 (closes 8 9 10 at t5..t7): (2,3) fast 9.5 > slow 9 (was 8.5 < 9 at t6): crossed up;
    #     (2,4) fast 9.5 > slow 37/4 = 9.25 (was 8.5 < 9.25): crossed up;
    #     (3,5) fast 27/3 = 9 < slow 47/5 = 9.4. Above: 2 >= 2 -> BUY.
    # t8 (close 11): (3,5) fast 10 > slow 48/5 = 9.6 crosses up, 3 above -> BUY again.
    # t9 (close 8): (2,3) 9.5 < 29/3; (2,4) 9.5 = 38/4 (tie, not above); (3,5) 29/3 > 46/5:
    #     1 above < 2 -> SELL. t10, t11: still no agreement.
    _, _, passed, _ = feed(kind, cfg(S23, S24, S35, aggregation="majority", min_agree=2), SEQ_A)
    assert passed == [(7, "consensus", BUY), (8, "consensus", BUY), (9, "consensus", SELL)]


def test_majority_does_not_buy_on_a_cross_without_enough_pairs_above(kind):
    # Same closes, min_agree 3: at t7 only 2 pairs are above -> no BUY;
    # at t8 (3,5) crosses up with all 3 above -> BUY; t9: 1 above < 3 -> SELL.
    _, _, passed, _ = feed(kind, cfg(S23, S24, S35, aggregation="majority", min_agree=3), SEQ_A)
    assert passed == [(8, "consensus", BUY), (9, "consensus", SELL)]


def test_majority_no_buy_when_pairs_are_above_but_none_crossed_up(kind):
    # Pairs (2,3), (2,4), closes 10 10 10 10 11 12: t4 both cross up from a
    # tie -> BUY; t5 both still above, nobody crossed -> nothing.
    s23, s24 = S23, S24
    _, _, passed, _ = feed(kind, cfg(s23, s24, aggregation="majority", min_agree=2), [10, 10, 10, 10, 11, 12])
    assert passed == [(4, "consensus", BUY)]


def test_pinned_choice_majority_sells_only_on_the_bar_agreement_is_lost(kind):
    # Sequence A, min_agree 2: agreement lost at t9 -> SELL; t10 and t11 have
    # no agreement either but emit nothing (a consensus position only opens
    # while agreement holds, so the exit is the same as a level rule's).
    _, _, passed, _ = feed(kind, cfg(S23, S24, S35, aggregation="majority", min_agree=2), SEQ_A)
    assert [i for i, _, side in passed if side == SELL] == [9]


def test_pinned_choice_majority_buy_confidence_is_the_mean_of_the_pairs_above(kind):
    # t7: pairs above (2,3) 0.70 and (2,4) 0.75 -> mean 0.725 < min_confidence 0.73: filtered.
    # t8: all three above -> mean (0.70 + 0.75 + 0.80) / 3 = 0.75 >= 0.73: passes.
    config = cfg(S23, S24, S35, aggregation="majority", min_agree=2, min_confidence=0.73)
    _, out, passed, filtered = feed(kind, config, SEQ_A)
    assert filtered == [(7, "consensus", BUY, "low_confidence")]
    assert passed == [(8, "consensus", BUY), (9, "consensus", SELL)]
    assert out.filtered[0].confidence == (0.70 + 0.75) / 2
    assert out.signals[T0 + 8 * 60][0].confidence == (0.70 + 0.75 + 0.80) / 3
    # a consensus SELL carries the mean confidence of all pairs (SELLs are never filtered)
    assert out.signals[T0 + 9 * 60][0].confidence == (0.70 + 0.75 + 0.80) / 3


def test_weighted_buys_when_the_score_crosses_above_the_threshold_and_sells_below_zero(kind):
    # Sequence A; weights 0.70, 0.75, 0.80 (sum 2.25), threshold 0.5.
    # t2: only (2,3) defined, tie: score 0 (first score: no cross). t3, t4: 0.
    # t5: all -1: score -1, crosses below 0 (0 >= 0 > -1) -> SELL.
    # t7: (+0.70 + 0.75 - 0.80) / 2.25 = 0.65 / 2.25 = 0.289 <= 0.5 -> nothing.
    # t8: all +1: score 1 > 0.5, was 0.289 <= 0.5 -> BUY.
    # t9: (-0.70 + 0 + 0.80) / 2.25 = 0.044 >= 0 -> nothing.
    # t10: all -1: -1 < 0, was 0.044 >= 0 -> SELL.
    _, out, passed, _ = feed(kind, cfg(S23, S24, S35, aggregation="weighted", weighted_threshold=0.5), SEQ_A)
    assert passed == [(5, "consensus", SELL), (8, "consensus", BUY), (10, "consensus", SELL)]
    assert out.signals[T0 + 8 * 60][0].confidence == (0.70 + 0.75 + 0.80) / 3


def test_weighted_lower_threshold_buys_earlier_and_does_not_rebuy_while_above(kind):
    # threshold 0.2: t7 score 0.289 > 0.2, was -1 -> BUY (confidence: mean of
    # the pairs above, (0.70 + 0.75) / 2); t8 score 1, was 0.289 > 0.2: no new cross.
    _, out, passed, _ = feed(kind, cfg(S23, S24, S35, aggregation="weighted", weighted_threshold=0.2), SEQ_A)
    assert passed == [(5, "consensus", SELL), (7, "consensus", BUY), (10, "consensus", SELL)]
    assert out.signals[T0 + 7 * 60][0].confidence == (0.70 + 0.75) / 2


def test_weighted_score_equal_to_threshold_is_not_above_it(kind):
    # Pairs (2,3), (2,4) both confidence 0.7; threshold 0.5; closes 10 10 10 8 8 10 8.
    # t2: (2,3) tie, score 0 (first). t3: both below: -1 -> SELL (0 >= 0 > -1).
    # t5 (8 8 10 after 10 10 10 8): (2,3) fast 9 > slow 26/3 = 8.67; (2,4) fast 9 = slow 36/4 = 9 (tie)
    #     score (0.7 * 1 + 0.7 * 0) / 1.4 = 0.5 exactly: not above 0.5 -> nothing.
    # t6 (close 8): (2,3) fast 9 > slow 26/3; (2,4) fast 9 > slow 34/4 = 8.5: score 1,
    #     was 0.5 <= 0.5 -> BUY.
    a, b = StrategyConfig(fast=2, slow=3, confidence=0.7), StrategyConfig(fast=2, slow=4, confidence=0.7)
    _, _, passed, _ = feed(kind, cfg(a, b, aggregation="weighted", weighted_threshold=0.5), [10, 10, 10, 8, 8, 10, 8])
    assert passed == [(3, "consensus", SELL), (6, "consensus", BUY)]


def test_pinned_choice_weighted_first_defined_score_is_not_a_cross(kind):
    # Pair (2,3) alone, closes 10 11 12 13: the first score (t2: fast 11.5 > slow 11)
    # is already 1 > 0.5, but there is no earlier score to cross from -> no BUY.
    _, _, passed, _ = feed(kind, cfg(S23, aggregation="weighted", weighted_threshold=0.5), [10, 11, 12, 13])
    assert passed == []


def test_weighted_score_uses_only_pairs_with_both_smas_defined(kind):
    # Pairs (2,3) 0.7 and (2,6) 0.8, threshold 0.5, closes 10 10 10 9 12 12:
    # t2: (2,3) tie -> score 0 (first).  t3: (2,3) fast 9.5 < slow 29/3 -> -1: SELL.
    # t4: (2,3) fast 10.5 > slow 31/3 = 10.33; (2,6) still undefined, so it is
    #     out of both sums: score 0.7 / 0.7 = 1 > 0.5, was -1 -> BUY.
    #     (Counting it as 0 with its weight in the denominator would give
    #     0.7 / 1.5 = 0.467 <= 0.5: no BUY.)
    s26 = StrategyConfig(fast=2, slow=6, confidence=0.8)
    _, out, passed, _ = feed(kind, cfg(S23, s26, aggregation="weighted", weighted_threshold=0.5), [10, 10, 10, 9, 12, 12])
    assert passed == [(3, "consensus", SELL), (4, "consensus", BUY)]
    assert out.signals[T0 + 4 * 60][0].confidence == 0.7  # the only pair above
