"""Spec section 8: every configuration of a sweep gets exactly what a
backtest of it alone gets (orders, fills, trades, rejections, equity), with
the symbol stage computing the union of the configurations' strategies once
and the portfolio stage evaluating them together; and a run is the
one-configuration case of the same book."""
from __future__ import annotations

from dataclasses import astuple

import pytest

from operators.calendar import trading_day
from operators.config import TradingConfig
from operators.grid import expand, parse_grid
from operators.signal_plan import SignalPlan
from tests.sweep_harness import run_alone, run_book, source_items, with_controls

STRATS = [{"fast": 5, "slow": 15, "confidence": 0.7}, {"fast": 10, "slow": 30, "confidence": 0.75},
          {"fast": 20, "slow": 50, "confidence": 0.8}]


def grid_configs():
    """TP x SL x trailing, then configurations whose signal rules differ."""
    g = parse_grid({"axes": {"exit.take_profit_pct": [0.01, 0.02, 0.03],
                             "exit.stop_loss_pct": [0.005, 0.01],
                             "exit.trailing_stop": [False, True]}})
    configs = [(c.config_id, c.config) for c in expand(g, TradingConfig())]
    extra = [
        {"strategies": [{"fast": 3, "slow": 9, "confidence": 0.8}, *STRATS[:1]]},
        {"signals": {"min_confidence": 0.75}},
        {"signals": {"aggregation": "majority", "min_confidence": 0.6}, "risk": {"max_positions": 3}},
        {"signals": {"aggregation": "weighted", "min_confidence": 0.6, "weighted_threshold": 0.3}},
        {"signals": {"aggregation": "majority", "min_confidence": 0.6, "min_agree": 3}},
    ]
    for i, doc in enumerate(extra, start=len(configs) + 1):
        configs.append((f"c{i:03d}", TradingConfig.model_validate(doc)))
    return configs


@pytest.fixture(scope="module")
def items():
    return source_items(symbols=5, days=4, seed=3)


def days_from_minutes(equity, cash):
    """A plain computation of spec 8's daily rows from a run's equity curve."""
    rows, peak, prev = {}, None, cash
    for p in equity:
        d = trading_day(p.ts)
        r = rows.setdefault(d, {"minutes": 0, "in_market": 0, "dd": 0.0, "exp": 0.0, "exp_n": 0})
        r["equity"] = p.equity
        r["minutes"] += 1
        r["in_market"] += p.open_positions > 0
        peak = p.equity if peak is None else max(peak, p.equity)
        r["dd"] = max(r["dd"], 1 - p.equity / max(peak, cash))
        if p.equity != 0:
            r["exp"] += p.exposure / p.equity
            r["exp_n"] += 1
    for d in sorted(rows):
        rows[d]["ret"] = rows[d]["equity"] / prev - 1
        prev = rows[d]["equity"]
    return rows


def test_every_configuration_of_a_sweep_book_equals_its_backtest_alone(items):
    configs = grid_configs()
    plan = SignalPlan.for_configs([c for _, c in configs])
    assert len(plan.groups) == 4  # the independent union + three consensus setups
    members = [(cid, cfg, route) for (cid, cfg), route in zip(configs, plan.routes)]
    _, stage_outs, sweeps, _ = run_book(items, members, plan, daily=True, detail=True)
    assert sweeps[-1].final and all(not o.trades for o in stage_outs)
    traded = 0
    for cid, cfg in configs:
        _, alone = run_alone(items, cfg)
        events = [e for s in sweeps for e in s.configs if e.config_id == cid]
        for name in ("orders", "fills", "trades", "rejections"):
            want = [astuple(x) for o in alone for x in getattr(o, name)]
            got = [astuple(x) for e in events for x in getattr(e, name)]
            assert got == want, (cid, name)
        traded += bool([t for o in alone for t in o.trades])
        want_days = days_from_minutes([p for o in alone for p in o.equity], cfg.risk.initial_cash)
        got_days = {r.day: r for s in sweeps for r in s.days if r.config_id == cid}
        assert sorted(got_days) == sorted(want_days)
        for d, w in want_days.items():
            g = got_days[d]
            assert (g.equity, g.ret, g.minutes, g.minutes_in_market, g.max_drawdown,
                    g.exposure_sum, g.exposure_minutes) == (
                w["equity"], w["ret"], w["minutes"], w["in_market"], w["dd"], w["exp"], w["exp_n"]), (cid, d)
    assert traded >= len(configs) - 3, "the generated market should make most configurations trade"


def test_configurations_with_the_same_signal_rules_share_the_backtests_symbol_stage():
    g = parse_grid({"axes": {"exit.trailing_stop": [False, True], "risk.max_positions": [2, 10]}})
    plan = SignalPlan.for_configs([c.config for c in expand(g, TradingConfig())])
    assert plan.routes == (None,) * 4 and len(plan.groups) == 1
    assert plan.groups[0].min_confidence == 0.7  # the configuration's own filters


def test_a_runs_book_is_the_plain_portfolio_kill_switch_included(items):
    cfg = TradingConfig()
    items = with_controls(items, [(40, "h1", "halt", True), (60, "r1", "resume", False)])
    plan = SignalPlan.for_configs([cfg])
    sym_a, alone = run_alone(items, cfg)
    sym_b, outs, _, _ = run_book(items, [("run", cfg, plan.routes[0])], plan, daily=False)
    for name in ("orders", "fills", "trades", "rejections", "equity", "controls", "dead_letters"):
        assert [astuple(x) for o in outs for x in getattr(o, name)] == \
               [astuple(x) for o in alone for x in getattr(o, name)], name
    assert sum(o.applied_bars for o in outs) == sum(o.applied_bars for o in alone) > 0
    assert [c.action for o in outs for c in o.controls] == ["halt", "resume"]
    assert [astuple(s) for o in sym_a for v in o.signals.values() for s in v] == \
           [astuple(s) for o in sym_b for v in o.signals.values() for s in v]


def test_kill_switch_controls_reach_every_configuration_at_the_same_bar():
    # fine-grained watermarks; the halt comes while positions are open
    items = with_controls(source_items(symbols=5, days=4, seed=3, block_rows=50),
                          [(240, "h1", "halt", True), (280, "r1", "resume", False)])
    configs = grid_configs()[:4]
    plan = SignalPlan.for_configs([c for _, c in configs])
    members = [(cid, cfg, route) for (cid, cfg), route in zip(configs, plan.routes)]
    _, _, sweeps, _ = run_book(items, members, plan, daily=True, detail=True)
    reasons = set()
    for cid, cfg in configs:
        _, alone = run_alone(items, cfg)
        reasons |= {t.exit_reason for o in alone for t in o.trades}
        for name in ("orders", "fills", "trades", "rejections", "controls"):
            want = [astuple(x) for o in alone for x in getattr(o, name)]
            got = [astuple(x) for s in sweeps for e in s.configs if e.config_id == cid
                   for x in getattr(e, name)]
            assert got == want, (cid, name)
    assert "kill_switch" in reasons, "the halt should flatten open positions"
