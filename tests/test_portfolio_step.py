"""Where the compiled portfolio step comes from (operators.portfolio_step):
the ahead-of-time build of the kernel (tools/build_portfolio_step.py)
decides exactly what numba's JIT of the same source decides, an edited
kernel never runs an old build, a backtest on the build never loads numba,
the build refuses arrays it was not built for (compiled code would misread
them), and the kernel refuses a layout it was not written for.

The build is made here, in a temporary directory, whatever `make` built."""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import operators.portfolio_step as step
from operators.day_ledger import DayLedgers
from test_compiled_portfolio import (
    canonical,
    compiled_state,
    configs,
    make_script,
    run_compiled,
    signal_rows,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("step")
    proc = subprocess.run([sys.executable, "tools/build_portfolio_step.py", "--out-dir", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "built" in proc.stdout
    return str(out)


@pytest.fixture(scope="module")
def both(build_dir):
    aot = step.ahead_of_time_step(build_dir)
    assert aot is not None and aot.ahead_of_time
    before = step.portfolio_step()
    yield aot, step.jit_step()
    step.use(before)


def outcome(which, cfgs, script, seed, mask=None):
    step.use(which)
    outs, book = run_compiled(cfgs, script, random.Random(seed), mask)
    return [canonical(o) for o in outs], [compiled_state(book, c) for c in range(len(cfgs))]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(cfgs=st.lists(configs(), min_size=1, max_size=3), seed=st.integers(0, 2**32 - 1),
       minutes=st.integers(5, 120), masked=st.booleans())
def test_the_ahead_of_time_build_decides_exactly_what_the_jit_decides(both, cfgs, seed, minutes, masked):
    aot, jit = both
    rng = random.Random(seed)
    script = make_script(rng, minutes)
    mask = None
    if masked:
        mask = np.array([[rng.random() < 0.7 for _ in cfgs] for _ in range(signal_rows(script))],
                        dtype=bool).reshape(-1, len(cfgs))
    assert outcome(aot, cfgs, script, seed + 1, mask) == outcome(jit, cfgs, script, seed + 1, mask)


def test_the_ahead_of_time_build_folds_days_exactly_as_the_jit(both):
    rng = np.random.default_rng(3)
    n = 2000
    cfg = np.sort(rng.integers(0, 3, n), kind="stable")
    day = np.concatenate([np.sort(rng.integers(19000, 19010, int((cfg == c).sum()))) for c in range(3)])
    equity = 100_000 * (1 + rng.normal(0, 0.01, n))
    points = (cfg, day, equity, rng.integers(0, 3, n), rng.random(n) * 5000)

    def rows(which):
        step.use(which)
        ledgers = DayLedgers(["a", "b", "c"], [100_000.0])
        return ledgers.fold(*points) + ledgers.finish()

    aot, jit = both
    got, want = rows(aot), rows(jit)
    assert len(want) > 20 and [repr(r) for r in got] == [repr(r) for r in want]
    log = np.stack(points, axis=1)  # the points as columns of one array, as a sweep's event log holds them
    points = tuple(log[:, k] for k in range(5))
    assert not points[0].flags.c_contiguous
    assert [repr(r) for r in rows(aot)] == [repr(r) for r in want]


def test_a_build_that_cannot_serve_here_leaves_the_run_to_the_jit(build_dir, tmp_path, caplog):
    name = step.module_name()
    build = step.built(build_dir, name)
    for what in ("another numpy", "not a library"):
        here = tmp_path / what.replace(" ", "-")
        here.mkdir()
        shutil.copy(os.path.join(build_dir, name + ".json"), here)
        shutil.copy(build, here)
        if what == "another numpy":
            with open(here / (name + ".json")) as fh:
                built_for = json.load(fh)
            built_for["numpy"] = "1.0.0"
            with open(here / (name + ".json"), "w") as fh:
                json.dump(built_for, fh)
        else:
            with open(here / os.path.basename(build), "wb") as fh:
                fh.write(b"not a shared object")
        with caplog.at_level("WARNING", logger="operators.portfolio_step"):
            assert step.ahead_of_time_step(str(here)) is None, what
        assert "numba's JIT serves" in caplog.text


def test_the_build_refuses_an_array_it_was_not_built_for(both):
    aot, _ = both
    st_i, st_f = np.zeros((1, 4), dtype=np.int64), np.zeros((1, 6))
    out_i, out_f, n_out = np.zeros((4, 5), dtype=np.int64), np.zeros((4, 4)), np.zeros(1, dtype=np.int64)
    good = np.zeros(2, dtype=np.int64)
    cases = {"strided": np.zeros(4, dtype=np.int64)[::2], "another dtype": np.zeros(2, dtype=np.int32),
             "a list": [0, 0]}
    for what, cfg in cases.items():
        with pytest.raises(step.StepArgumentError, match="ledger_fold: argument 2 must be a C-contiguous 1-d int64"):
            aot.ledger_fold(st_i, st_f, cfg, good, np.zeros(2), good, np.zeros(2), out_i, out_f, n_out)
    assert n_out[0] == 0  # refused before any work
    acct_f, acct_i = np.zeros((1, 3)), np.zeros((1, 7), dtype=np.int64)
    pos_i, last_close = np.zeros((1, 1, 6), dtype=np.int64), np.zeros(1)
    with pytest.raises(step.StepArgumentError, match="equity: argument 0 must be int64, got float"):
        aot.equity(0.0, acct_f, acct_i, pos_i, last_close)  # compiled code would truncate it silently
    assert aot.equity(0, acct_f, acct_i, pos_i, last_close) == 0.0


def test_an_edited_kernel_never_runs_an_old_build(build_dir, tmp_path, monkeypatch):
    sources = tmp_path / "operators"
    sources.mkdir()
    for name in step.SOURCES:
        shutil.copy(os.path.join(step.HERE, name), sources / name)
    build = step.built(build_dir, step.module_name())
    shutil.copy(build, sources / os.path.basename(build))
    shutil.copy(os.path.join(build_dir, step.module_name() + ".json"), sources)
    monkeypatch.setattr(step, "HERE", str(sources))
    assert step.ahead_of_time_step(str(sources)) is not None  # the same source: its build
    with open(sources / "portfolio_kernel.py", "a") as fh:
        fh.write("\n# an edit\n")
    assert step.module_name() != os.path.basename(build).split(".")[0]
    assert step.ahead_of_time_step(str(sources)) is None  # the JIT, until `make` builds again


CHILD = """
import sys
import operators.portfolio_step as s
s.use(s.ahead_of_time_step(sys.argv[1]))
from dataflows.cli.main import main
code = main(["backtest", "--bars", sys.argv[2], "--clickhouse", "chdb://" + sys.argv[3], "--quiet"])
print(code, "numba" in sys.modules, s.portfolio_step().ahead_of_time)
"""


def test_a_backtest_on_the_build_never_loads_numba(build_dir, tmp_path):
    bars = tmp_path / "bars.parquet"
    subprocess.run([sys.executable, "-m", "dataflows.cli", "generate", "--symbols", "3", "--days", "2",
                    "--seed", "4", "--out", str(bars)], cwd=ROOT, check=True, capture_output=True, timeout=300)
    proc = subprocess.run([sys.executable, "-c", CHILD, build_dir, str(bars), str(tmp_path / "ch")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[-1] == "0 False True"


def test_the_kernel_refuses_a_layout_it_was_not_written_for(monkeypatch):
    from operators import portfolio_kernel as kernel

    kernel._check_layout()  # the layout it was written for
    monkeypatch.setattr(kernel, "LAYOUT_DIGEST", "0" * 64)
    with pytest.raises(ImportError, match="set LAYOUT_DIGEST in operators/portfolio_kernel.py to '[0-9a-f]{64}'"):
        kernel._check_layout()
