"""Spec section 8: every configuration of a sweep gets exactly what a
backtest of it alone gets (orders, fills, trades, rejections, equity), with
the symbol stage computing the union of the configurations' strategies once
and the portfolio stage evaluating them together; and a run is the
one-configuration case of the same book."""
from __future__ import annotations

from dataclasses import astuple

import pytest

from connectors.config import load_trading_config
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


@pytest.fixture(scope="module")
def panic_items():
    return source_items(symbols=8, days=4, seed=11)  # the generator plants panics


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


def panic_configs():
    """A grid over the panic detector's parameters (config/panic.yaml), then
    configurations whose panic entries differ in what only labels their
    signals (confidence, exits), carry two panic entries, or combine the SMA
    pairs by majority / weighted beside the panic detector."""
    base = load_trading_config("config/panic.yaml")
    g = parse_grid({"axes": {"strategies.3.min_drop_pct": [0.01, 0.015],
                             "strategies.3.volume_mult": [2.0, 3.0]}})
    configs = [(c.config_id, c.config) for c in expand(g, base)]
    doc = base.model_dump(mode="json")
    panic = {**doc["strategies"][3], "min_drop_pct": 0.01, "volume_mult": 2.0}
    extra = [
        [panic | {"confidence": 0.6}],  # below min_confidence: filtered
        [panic | {"exit": {"take_profit_pct": 0.01}}],  # risk/reward 1.33: filtered
        [panic | {"exit": {"take_profit_pct": 0.02, "time_stop_minutes": 30}, "id": "dip"},
         panic | {"drop_window": 10, "volume_window": 20}],
    ]
    for i, strategies in enumerate(extra):
        configs.append((f"c{len(configs) + 1:03d}",
                        TradingConfig.model_validate(doc | {"strategies": doc["strategies"][:3] + strategies})))
    for signals, exit_ in (({"aggregation": "majority", "min_confidence": 0.6}, {}),
                           ({"aggregation": "weighted", "min_confidence": 0.6}, {"take_profit_pct": 0.03})):
        configs.append((f"c{len(configs) + 1:03d}", TradingConfig.model_validate(
            doc | {"strategies": doc["strategies"][:3] + [panic],
                   "signals": doc["signals"] | signals, "exit": doc["exit"] | exit_})))
    return configs


def test_every_panic_configuration_of_a_sweep_book_equals_its_backtest_alone(panic_items):
    configs = panic_configs()
    plan = SignalPlan.for_configs([c for _, c in configs])
    # each distinct strategy instance once: the 3 pairs and 5 panic parameter sets in one
    # group (confidence, exits and ids do not make another), then two consensus setups
    alone = plan.groups[0]
    assert len(plan.groups) == 3
    assert len(alone.rules_of("sma_cross").pairs) == 3 and len(alone.rules_of("panic_rebound").specs) == 5
    members = [(cid, cfg, route) for (cid, cfg), route in zip(configs, plan.routes)]
    _, _, sweeps, _ = run_book(panic_items, members, plan, daily=True, detail=True)
    panic_trades = {}
    for cid, cfg in configs:
        _, alone_outs = run_alone(panic_items, cfg)
        events = [e for s in sweeps for e in s.configs if e.config_id == cid]
        for name in ("orders", "fills", "trades", "rejections"):
            want = [astuple(x) for o in alone_outs for x in getattr(o, name)]
            got = [astuple(x) for e in events for x in getattr(e, name)]
            assert got == want, (cid, name)
        want_days = days_from_minutes([p for o in alone_outs for p in o.equity], cfg.risk.initial_cash)
        got_days = {r.day: (r.equity, r.ret) for s in sweeps for r in s.days if r.config_id == cid}
        assert got_days == {d: (w["equity"], w["ret"]) for d, w in want_days.items()}, cid
        panic_trades[cid] = [t for e in events for t in e.trades
                             if t.strategy_id not in ("consensus",) and not t.strategy_id.startswith("sma_")]
    assert all(panic_trades[c] for c in ("c001", "c002", "c003", "c004", "c008", "c009")), \
        "planted panics should trade"
    assert not panic_trades["c005"] and not panic_trades["c006"]  # their panic BUYs are filtered
    assert {t.strategy_id for t in panic_trades["c007"]} == {"dip", "panic_10_100"}


def test_configurations_with_the_same_signal_rules_share_the_backtests_symbol_stage():
    g = parse_grid({"axes": {"exit.trailing_stop": [False, True], "risk.max_positions": [2, 10]}})
    plan = SignalPlan.for_configs([c.config for c in expand(g, TradingConfig())])
    assert plan.routes == (None,) * 4 and len(plan.groups) == 1
    terms = plan.groups[0].rules_of("sma_cross").pairs[0].terms
    assert (terms.min_confidence, terms.min_risk_reward) == (0.7, 2.0)  # the configuration's own filters


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
