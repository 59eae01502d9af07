"""Walk-forward (spec section 8), hand-worked: rolling and anchored folds, a
trailing partial fold left out, the objective on the train days, ties to the
lowest config_id, an undefined value ranked last, the out-of-sample series
chained from the selected configurations' test days."""
from __future__ import annotations

import math

import pytest

from operators.grid import WalkForwardSpec
from operators.walk_forward import (
    ConfigSeries, TradeDay, folds, rank, sharpe, walk_forward,
)

DAYS = [1, 2, 3, 4, 5, 6, 7, 8]


def series(cid, returns, trade_days=None):
    return ConfigSeries(cid, dict(zip(DAYS, returns)), trade_days or {})


def spec(train, test, anchored=False, objective="total_return"):
    return WalkForwardSpec(train_days=train, test_days=test, anchored=anchored, objective=objective)


def test_rolling_folds_move_by_the_test_window_and_drop_a_partial_last_fold():
    # 8 days, train 3, test 2: test windows 4-5, 6-7; day 8 cannot fill a test window
    got = [(f.number, f.train, f.test) for f in folds(DAYS, spec(3, 2))]
    assert got == [(1, (1, 2, 3), (4, 5)), (2, (3, 4, 5), (6, 7))]


def test_anchored_folds_train_from_the_first_day():
    got = [(f.train, f.test) for f in folds(DAYS, spec(3, 2, anchored=True))]
    assert got == [((1, 2, 3), (4, 5)), ((1, 2, 3, 4, 5), (6, 7))]


def test_no_fold_when_the_days_cannot_hold_one_train_and_one_test_window():
    assert folds(DAYS[:4], spec(3, 2)) == []
    assert [f.test for f in folds(DAYS[:5], spec(3, 2))] == [(4, 5)]


C1 = [0.01, 0.01, 0.01, -0.02, 0.00, 0.03, 0.00, 0.05]
C2 = [0.02, 0.00, 0.00, 0.01, 0.01, -0.01, 0.02, 0.00]
C3 = [0.0] * 8


def test_rolling_selection_by_total_return_worked_by_hand():
    wf = walk_forward([series("c001", C1), series("c002", C2), series("c003", C3)], spec(3, 2))
    f1, f2 = wf.folds
    # fold 1, days 1-3: c001 1.01^3 - 1 = 3.0301 %, c002 2 %, c003 0
    assert (f1.config_id, f1.train_objective) == ("c001", pytest.approx(0.030301))
    # its test days 4-5: 0.98 * 1.00 - 1
    assert f1.test.total_return == pytest.approx(-0.02) and f1.test.days == 2
    # fold 2, days 3-5: c001 1.01 * 0.98 - 1 = -1.02 %, c002 1.01^2 - 1 = 2.01 %
    assert (f2.config_id, f2.train_objective) == ("c002", pytest.approx(0.0201))
    assert f2.test.total_return == pytest.approx(0.99 * 1.02 - 1)
    # out of sample: c001 on days 4-5, then c002 on days 6-7
    assert wf.out_of_sample.days == 4
    assert wf.out_of_sample.total_return == pytest.approx(0.98 * 1.0 * 0.99 * 1.02 - 1)
    # in-sample best over all 8 days: c001 (1.01^3 * .98 * 1.03 * 1.05 - 1 = 9.20 %)
    assert wf.in_sample_best == "c001"
    assert wf.in_sample_best_overall.total_return == pytest.approx(1.01 ** 3 * 0.98 * 1.03 * 1.05 - 1)
    # ... and on the out-of-sample days: 0.98 * 1.00 * 1.03 * 1.00 - 1
    assert wf.in_sample_best_on_test_days.total_return == pytest.approx(0.98 * 1.03 - 1)


def test_anchored_selection_worked_by_hand():
    wf = walk_forward([series("c001", C1), series("c002", C2), series("c003", C3)],
                      spec(3, 2, anchored=True))
    # fold 2 trains on days 1-5: c001 1.01^3 * 0.98 - 1 = 0.97 %, c002 1.02 * 1.01^2 - 1 = 4.05 %
    assert [f.config_id for f in wf.folds] == ["c001", "c002"]
    assert wf.folds[1].train_objective == pytest.approx(1.02 * 1.01 ** 2 - 1)


def test_ties_go_to_the_lowest_config_id():
    same = [0.01, 0.02, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    wf = walk_forward([series("c003", same), series("c002", same), series("c010", same)], spec(3, 2))
    assert [f.config_id for f in wf.folds] == ["c002", "c002"]
    assert rank({"c010": 1.0, "c009": 1.0, "c100": 2.0}) == ["c100", "c009", "c010"]


def test_an_undefined_sharpe_ranks_last_even_below_a_negative_one():
    losing = [-0.01, -0.03, -0.02, 0.0, 0.0, 0.0, 0.0, 0.0]
    flat = [0.0] * 8  # zero deviation: undefined
    wf = walk_forward([series("c001", flat), series("c002", losing)], spec(3, 2, objective="sharpe"))
    first = wf.folds[0]
    # days 1-3 of c002: mean -0.02, sample sd 0.01 -> -2 * sqrt(252)
    assert first.config_id == "c002"
    assert first.train_objective == pytest.approx(-2 * math.sqrt(252))
    # when every value is undefined, the lowest config_id
    wf = walk_forward([series("c002", flat), series("c001", flat)], spec(3, 2, objective="sharpe"))
    assert [f.config_id for f in wf.folds] == ["c001", "c001"]
    assert wf.folds[0].train_objective is None


def test_sharpe_needs_two_days_and_a_spread():
    assert sharpe([0.01]) is None and sharpe([0.01, 0.01]) is None
    assert sharpe([0.01, 0.03]) == pytest.approx(0.02 / math.sqrt(0.0002) * math.sqrt(252))


def test_profit_factor_objective_counts_trades_exiting_on_train_days():
    t1 = {1: TradeDay(2, 1, 300.0, -100.0), 4: TradeDay(1, 0, 0.0, -500.0)}
    t2 = {2: TradeDay(1, 1, 50.0, 0.0), 3: TradeDay(1, 0, 0.0, -10.0), 5: TradeDay(1, 1, 40.0, 0.0)}
    t3 = {1: TradeDay(1, 1, 999.0, 0.0)}  # no losing trade: undefined
    wf = walk_forward([series("c001", C3, t1), series("c002", C3, t2), series("c003", C3, t3)],
                      spec(3, 2, objective="profit_factor"))
    # fold 1 (days 1-3): c001 300 / 100 = 3, c002 50 / 10 = 5, c003 undefined
    assert (wf.folds[0].config_id, wf.folds[0].train_objective) == ("c002", 5.0)
    # its test days 4-5: one winning trade of 40, no loss: PF undefined, win rate 1
    assert (wf.folds[0].test.trades, wf.folds[0].test.win_rate, wf.folds[0].test.profit_factor) == (1, 1.0, None)
    # fold 2 (days 3-5): c001 0 / 500 = 0, c002 40 / 10 = 4
    assert (wf.folds[1].config_id, wf.folds[1].train_objective) == ("c002", 4.0)


def test_out_of_sample_drawdown_is_of_the_chained_day_end_curve():
    wf = walk_forward([series("c001", C1)], spec(3, 2))
    # days 4-7 of c001: 0.98, 1.0, 1.03, 1.0 -> worst fall from the start (peak 1): 2 %
    assert wf.out_of_sample.max_drawdown == pytest.approx(0.02)
