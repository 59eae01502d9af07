"""The compiled portfolio step (operators.portfolio_kernel, driven through
operators.compiled_portfolio) decides exactly what the Python `Portfolio`
(operators.portfolio) decides: every order, fill, trade, rejection, equity
point and control event, field by field, floats bit for bit (compared by
their hex text), and the state left at the end.

Random bars (gaps, time stops, trailing, overnight day resets) with random
BUY/SELL signals in a random list order, kill-switch controls (halt, halt
with flatten, resume) between bars, equity points at random moments, the
compiled side fed in random batches and snapshotted (pickle) and restored
mid-run. Configurations vary every rule the step uses: caps, loss streaks,
drawdown floors, sizing terms, slippage, commissions, trailing, time stops.

Several configurations evaluated in one book equal each configuration's own
run (they never interact), also when a signal mask gives each configuration
its own signals.
"""
from __future__ import annotations

import copy
import os
import pickle
import random
import subprocess
import sys
from dataclasses import astuple
from datetime import datetime, timezone

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from operators.compiled_portfolio import BarBatch, CompiledPortfolio, new_outputs, trading_days
from operators.calendar import trading_day
from operators.config import (
    ExecutionConfig, ExitConfig, RiskConfig, StrategyConfig, TradingConfig,
)
from operators.ordering import Control
from operators.portfolio import Portfolio
from operators.types import BUY, SELL, PortfolioOutput, Signal

# 2024-03-06 03:00 UTC = 22:00 in New York: the New York date changes two hours in
T0 = int(datetime(2024, 3, 6, 3, 0, tzinfo=timezone.utc).timestamp())
SYMBOLS = ("AAA", "BRK.B", "ZZ")
POOL = (StrategyConfig(fast=2, slow=3, confidence=0.7), StrategyConfig(fast=2, slow=5, confidence=0.75),
        StrategyConfig(fast=3, slow=8, confidence=0.8), StrategyConfig(fast=4, slow=9, confidence=0.9))
FIELDS = ("orders", "fills", "trades", "rejections", "equity", "controls")


@st.composite
def configs(draw) -> TradingConfig:
    strategies = draw(st.permutations(POOL).map(lambda p: p[:draw(st.integers(1, len(POOL)))]))
    return TradingConfig(
        strategies=tuple(strategies),
        exit=ExitConfig(
            take_profit_pct=draw(st.sampled_from([0.004, 0.01, 0.02])),
            stop_loss_pct=draw(st.sampled_from([0.002, 0.005, 0.01])),
            trailing_stop=draw(st.booleans()),
            trailing_activation_pct=draw(st.sampled_from([0.0, 0.002, 0.005])),
            trailing_pct=draw(st.sampled_from([0.001, 0.003])),
            time_stop_minutes=draw(st.sampled_from([1, 3, 10, 60])),
            time_stop_min_move_pct=draw(st.sampled_from([0.001, 0.005, 0.05])),
        ),
        risk=RiskConfig(
            initial_cash=draw(st.sampled_from([100_000, 20_000, 2_500])),
            risk_per_trade_pct=draw(st.sampled_from([0.005, 0.05, 0.3])),
            max_position_pct=draw(st.sampled_from([0.10, 0.5, 1.0])),
            max_positions=draw(st.integers(1, 8)),
            max_positions_per_symbol=draw(st.integers(1, 3)),
            max_consecutive_losses=draw(st.integers(1, 4)),
            max_daily_drawdown_pct=draw(st.sampled_from([0.002, 0.01, 0.05])),
        ),
        execution=ExecutionConfig(
            slippage_bps=draw(st.sampled_from([0.0, 1.0, 7.5])),
            commission_per_share=draw(st.sampled_from([0.0, 0.005, 1.0])),
        ),
    )


# ------------------------------------------------------------------ scripts
def make_script(rng: random.Random, n_minutes: int) -> list:
    """("bar", symbol, ts, o, h, l, c, [(strategy id, side, row)]), ("control",
    Control), ("close",) steps, bars in (timestamp, symbol) order."""
    price = {s: rng.uniform(5, 300) for s in SYMBOLS}
    vol = {s: rng.choice([0.002, 0.005, 0.01]) for s in SYMBOLS}
    ids = [s.strategy_id for s in POOL]
    script, ts, row, n_controls = [], T0, 0, 0
    for _ in range(n_minutes):
        r = rng.random()
        ts += 60 * (1 if r < 0.85 else rng.randint(2, 30) if r < 0.97 else rng.randint(360, 1500))
        for sym in SYMBOLS:
            if rng.random() < 0.2:
                continue
            if rng.random() < 0.04:
                script.append(("control", _control(rng, ts, n_controls)))
                n_controls += 1
            p = price[sym]
            o = p * (1 + (rng.choice([-1, 1]) * rng.uniform(0.01, 0.04) if rng.random() < 0.05
                          else rng.gauss(0, vol[sym] / 3)))
            c = o * (1 + rng.gauss(0, vol[sym]))
            h = max(o, c) * (1 + abs(rng.gauss(0, vol[sym] / 2)))
            lo = min(o, c) * (1 - abs(rng.gauss(0, vol[sym] / 2)))
            o, h, lo, c = (round(x, 2) for x in (o, h, lo, c))
            h, lo = max(h, o, c), min(lo, o, c)
            price[sym] = c
            sigs = []
            for sid in rng.sample(ids, len(ids)):  # a random list order
                x = rng.random()
                if x < 0.12:
                    sigs.append((sid, BUY, row))
                elif x < 0.2:
                    sigs.append((sid, SELL, row))
                else:
                    continue
                row += 1
            script.append(("bar", sym, ts, o, h, lo, c, sigs))
            if rng.random() < 0.05:
                script.append(("close",))
    return script


def _control(rng, ts, n) -> Control:
    action = rng.choice(["halt", "halt", "resume"])
    return Control(0, n, f"k{n}", action, action == "halt" and rng.random() < 0.6, ts, "ops", "test")


def signal_rows(script) -> int:
    return sum(len(step[7]) for step in script if step[0] == "bar")


# ------------------------------------------------------------------ runs
def run_python(cfg: TradingConfig, script, mask=None, c: int = 0) -> tuple:
    pf = Portfolio.new(cfg)
    out = PortfolioOutput()
    own = set(cfg.strategy_ids())
    for step in script:
        if step[0] == "bar":
            _, sym, ts, o, h, lo, cl, sigs = step
            signals = [Signal(sid, sym, side, ts, cl, 0.7, cfg.exit.take_profit_pct,
                              cfg.exit.stop_loss_pct, 2.0)
                       for sid, side, row in sigs if sid in own and (mask is None or mask[row, c])]
            pf.apply(sym, ts, o, h, lo, cl, signals or None, out)
        elif step[0] == "control":
            pf.apply_control(step[1], out)
        else:
            pf.close_minute(out)
    pf.close_minute(out)
    return out, python_state(pf)


def run_compiled(cfgs, script, rng: random.Random, mask=None, snapshot: bool = True):
    book = CompiledPortfolio.new(cfgs)
    outs = new_outputs(len(cfgs))
    pending: list = []
    restore_at = rng.randrange(len(script) + 1) if snapshot else -1

    def flush():
        if not pending:
            return
        ts = [b[2] for b in pending]
        sig = [(i, book.strategy_index[sid], side == SELL, b[6], row)
               for i, b in enumerate(pending) for sid, side, row in b[7] if sid in book.strategy_index]
        batch = BarBatch.build(
            [book.code(b[1]) for b in pending], ts, [b[3] for b in pending], [b[4] for b in pending],
            [b[5] for b in pending], [b[6] for b in pending],
            [x[0] for x in sig], [x[1] for x in sig], [x[2] for x in sig], [x[3] for x in sig],
            None if mask is None else mask[[x[4] for x in sig]].reshape(len(sig), mask.shape[1]))
        cut = rng.randint(0, len(batch))  # two calls: state carries across them
        book.apply_batch(batch, 0, cut, outs)
        book.apply_batch(batch, cut, len(batch), outs)
        pending.clear()

    for i, step in enumerate(script):
        if i == restore_at:
            flush()
            book = pickle.loads(pickle.dumps(copy.deepcopy(book)))  # a checkpoint and a restart
        if step[0] == "bar":
            pending.append(step)
            if rng.random() < 0.1:
                flush()
        elif step[0] == "control":
            flush()
            book.apply_control(step[1], outs)
        else:
            flush()
            book.close_minute(outs)
    flush()
    book.close_minute(outs)
    return outs, book


def python_state(pf: Portfolio) -> tuple:
    return (pf.cash.hex(), pf.equity().hex(), pf.halt is not None, pf.day_halt,
            [(p.symbol, p.strategy_id, p.qty, p.entry_fill.hex(), p.entry_time, p.stop_price.hex(),
              p.target_price.hex(), p.hwm.hex(), p.trailed, p.exit_queued)
             for p in pf.positions.values()])


def compiled_state(book: CompiledPortfolio, c: int) -> tuple:
    return (book.cash(c).hex(), book.equity(c).hex(), book.halted(c), book.day_halt(c),
            [(p["symbol"], p["strategy_id"], p["qty"], p["entry_fill"].hex(), p["entry_time"],
              p["stop_price"].hex(), p["target_price"].hex(), p["hwm"].hex(), p["trailed"],
              p["exit_queued"]) for p in book.positions(c)])


def canonical(out: PortfolioOutput) -> dict:
    """Every record as a tuple, floats as their exact hex text."""
    def value(v):
        return v.hex() if isinstance(v, float) else v
    return {f: [tuple(value(v) for v in astuple(x)) for x in getattr(out, f)] for f in FIELDS}


def assert_same(got: PortfolioOutput, want: PortfolioOutput) -> None:
    g, w = canonical(got), canonical(want)
    for f in FIELDS:
        assert g[f] == w[f], f"{f} differ"


# ------------------------------------------------------------------ tests
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=configs(), seed=st.integers(0, 2**32 - 1), minutes=st.integers(5, 160))
def test_compiled_step_decides_exactly_what_the_python_portfolio_decides(cfg, seed, minutes):
    rng = random.Random(seed)
    script = make_script(rng, minutes)
    want, want_state = run_python(cfg, script)
    outs, book = run_compiled([cfg], script, rng)
    assert_same(outs[0], want)
    assert compiled_state(book, 0) == want_state


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfgs=st.lists(configs(), min_size=2, max_size=4), seed=st.integers(0, 2**32 - 1),
       minutes=st.integers(5, 120), masked=st.booleans())
def test_configurations_evaluated_together_equal_each_run_alone(cfgs, seed, minutes, masked):
    rng = random.Random(seed)
    script = make_script(rng, minutes)
    mask = None
    if masked:  # each configuration acts on its own subset of the signals
        mask = np.array([[rng.random() < 0.7 for _ in cfgs] for _ in range(signal_rows(script))],
                        dtype=bool).reshape(-1, len(cfgs))
    together, book = run_compiled(cfgs, script, random.Random(seed + 1), mask)
    for c, cfg in enumerate(cfgs):
        own_mask = None if mask is None else mask[:, c:c + 1]
        alone, alone_book = run_compiled([cfg], script, random.Random(seed + 2 + c), own_mask)
        assert_same(together[c], alone[0])
        assert compiled_state(book, c) == compiled_state(alone_book, 0)
        want, want_state = run_python(cfg, script, mask, c)
        assert_same(alone[0], want)
        assert compiled_state(alone_book, 0) == want_state


def test_trading_days_are_the_new_york_dates_of_the_bars():
    ts = np.array([T0 + 60 * m for m in range(0, 3000, 7)], dtype=np.int64)
    assert trading_days(ts).tolist() == [trading_day(int(t)) for t in ts]


CHILD = """
import operators.portfolio_step as s; s.use(s.jit_step())  # numba's JIT and its cache
import random, sys
sys.path.insert(0, "tests")
from test_compiled_portfolio import POOL, canonical, make_script, run_compiled
from operators.config import TradingConfig
cfg = TradingConfig(strategies=POOL[:2])
outs, _ = run_compiled([cfg], make_script(random.Random(5), 60), random.Random(6), snapshot=False)
print(repr(canonical(outs[0])))
"""


@pytest.mark.slow
def test_first_compiles_in_parallel_processes_all_succeed_and_decide_alike(tmp_path):
    # A fresh checkout: no numba cache yet, and several processes start at once
    # (tests, `make demo`, several cuts commands): each compiles and writes the cache.
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    procs = [subprocess.Popen([sys.executable, "-c", CHILD], cwd=root, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=600) + (p.returncode,) for p in procs]
    assert [rc for _, _, rc in results] == [0, 0], results[0][1][-2000:]
    after = subprocess.run([sys.executable, "-c", CHILD], cwd=root, env=env, capture_output=True, text=True,
                           timeout=600)  # the cache they wrote loads
    assert after.returncode == 0, after.stderr[-2000:]
    assert results[0][0] == results[1][0] == after.stdout
    assert os.listdir(tmp_path / "cache")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfgs=st.lists(configs(), min_size=2, max_size=3), seed=st.integers(0, 2**32 - 1),
       minutes=st.integers(5, 80))
def test_a_stage_with_several_configurations_gives_each_its_own_outputs(cfgs, seed, minutes):
    """PortfolioStage over a book of several configurations (how a sweep runs
    them): `out.per_config[c]` is what a stage with configuration c alone
    emits, through watermarks, kill-switch controls and the end of input."""
    from operators.columnar import BarBlock
    from operators.ordering import PortfolioStage, SymbolResult, Watermark
    from operators.types import SymbolOutput

    script = make_script(random.Random(seed), minutes)
    items, seq, minute_bars = [], 0, []

    def flush_minute():
        nonlocal seq
        for sym in sorted({b[1] for b in minute_bars}):
            bars = [b for b in minute_bars if b[1] == sym]
            ts = np.array([b[2] for b in bars], dtype=np.int64)
            cols = [np.array([b[k] for b in bars]) for k in (3, 4, 5, 6)]
            signals = {}
            for b in bars:
                for sid, side, _ in b[7]:
                    signals.setdefault(b[2], []).append(Signal(sid, sym, side, b[2], b[6], 0.7, 0.02, 0.01, 2.0))
            items.append(SymbolResult(0, seq, SymbolOutput(blocks=[BarBlock(sym, ts, *cols, cols[3])],
                                                           signals=signals)))
            seq += 1
        minute_bars.clear()

    for step in script:
        if step[0] == "bar":
            if minute_bars and minute_bars[-1][2] != step[2]:
                flush_minute()
                items.append(Watermark(0, seq, step[2]))
                seq += 1
            minute_bars.append(step)
        elif step[0] == "control":
            flush_minute()
            c = step[1]
            items.append(Control(0, seq, c.control_id, c.action, c.flatten, c.ts, c.who, c.why))
            seq += 1
    flush_minute()

    def run(book):
        stage = PortfolioStage.new(book, [0])
        outs = [stage.on_items([it]) for it in items] + [stage.flush()]
        return outs

    together = run(CompiledPortfolio.new(cfgs))
    for c, cfg in enumerate(cfgs):
        own = set(cfg.strategy_ids())
        alone = run(CompiledPortfolio.new([cfg]))
        got = PortfolioOutput()
        for o in together:
            if o.per_config:
                for f in FIELDS:
                    getattr(got, f).extend(getattr(o.per_config[c], f))
        want = PortfolioOutput()
        for o in alone:
            for f in FIELDS:
                getattr(want, f).extend(getattr(o, f))
        assert_same(got, want)
        assert all(x.strategy_id in own for x in got.orders)


JIT_ONLY = "import operators.portfolio_step as s; s.use(s.jit_step())\n"
WARM = """
import operators.portfolio_step as s; s.use(s.jit_step())  # numba's JIT and its cache
import sys, time
import dataflows.runner as r
said = []
r._run_each_kernel_entry()  # the cache is there (or written now)
load = r._run_each_kernel_entry
r._run_each_kernel_entry = lambda: (time.sleep(4), load())  # a busy machine: loading takes seconds
r.warm_portfolio_step(said.append)
print(r._portfolio_step_cached(), said)
"""


NOTICE_CHILD = """
import operators.portfolio_step as s; s.use(s.jit_step())  # numba's JIT and its cache
from dataflows.runner import warm_portfolio_step
warm_portfolio_step(lambda line: print(line))
"""


@pytest.mark.slow
def test_a_portfolio_step_loaded_from_the_cache_says_nothing_however_long_it_takes(tmp_path):
    """Only a compile is announced (`compiling the portfolio step ...`); a
    slow load of the cached step is not a compile, and says nothing (the
    command's stderr stays one line on a stop or an error)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", WARM], cwd=root, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "True []"
    empty = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "none"))  # a fresh checkout's cache
    check = JIT_ONLY + "import dataflows.runner as r; print(r._portfolio_step_cached())"
    fresh = subprocess.run([sys.executable, "-c", check], cwd=root, env=empty, capture_output=True, text=True,
                           timeout=600)
    assert fresh.stdout.strip() == "False", fresh.stderr[-2000:]


@pytest.mark.slow
def test_the_compile_notice_shows_only_when_the_step_is_really_compiled(tmp_path):
    # Loading a warm cache can take over a second on a busy machine; that is not
    # compiling, and a command's output must not say it is.
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cold = subprocess.run([sys.executable, "-c", NOTICE_CHILD], cwd=root, env=env, capture_output=True,
                          text=True, timeout=600)
    assert cold.returncode == 0, cold.stderr[-2000:]
    assert "compiled the portfolio step in" in cold.stdout
    warm = subprocess.run([sys.executable, "-c", NOTICE_CHILD], cwd=root, env=env, capture_output=True,
                          text=True, timeout=600)
    assert warm.returncode == 0 and warm.stdout == "", warm.stdout + warm.stderr[-2000:]
