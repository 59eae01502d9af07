"""`cuts sweep` end to end over generated bars into embedded ClickHouse:
every configuration equals `cuts backtest --config` of it alone (trades.csv
byte for byte, orders, fills, rejections, daily equity, metrics), the
walk-forward selection equals a plain computation from daily.csv, the same
results with one and two workers, and a bad grid is one line, exit 2."""
from __future__ import annotations

import calendar
import csv
import json
import math
import os
import subprocess
import sys
import time
from collections import defaultdict
from datetime import date

import pytest
import yaml

from operators.config import TradingConfig
from operators.grid import expand, parse_grid
from cuts_cli import ROOT, cuts

GRID = {"axes": {"exit.take_profit_pct": [0.01, 0.02, 0.03], "exit.stop_loss_pct": [0.005, 0.01],
                 "exit.trailing_stop": [False, True]},
        "walk_forward": {"train_days": 2, "test_days": 1, "objective": "sharpe"}}

pytestmark = pytest.mark.slow


def batch(tmp, jobs):
    path = tmp / "jobs.json"
    path.write_text(json.dumps(jobs))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "cuts_batch.py"), str(path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    d = tmp_path_factory.mktemp("sweep-market")
    path = d / "bars.parquet"
    cuts("generate", "--symbols", "6", "--days", "5", "--seed", "7", "--out", str(path))
    return path


@pytest.fixture(scope="module")
def swept(market, tmp_path_factory):
    """The sweep (with --detail) and a backtest of every configuration alone."""
    d = tmp_path_factory.mktemp("sweep-run")
    (d / "grid.yaml").write_text(yaml.safe_dump(GRID, sort_keys=False))
    configs = expand(parse_grid(GRID), TradingConfig())
    jobs = [{"argv": ["sweep", "--bars", str(market), "--grid", str(d / "grid.yaml"), "--run-id", "sw-e2e",
                      "--clickhouse", f"chdb://{d / 'ch-sweep'}", "--out", str(d / "sweep"), "--detail"]}]
    for c in configs:
        cfg_path = d / f"{c.config_id}.yaml"
        cfg_path.write_text(yaml.safe_dump(json.loads(c.config.model_dump_json())))
        dsn = f"chdb://{d / 'ch-bt'}"
        jobs.append({"argv": ["backtest", "--bars", str(market), "--config", str(cfg_path), "--run-id", "sw-e2e",
                              "--clickhouse", dsn, "--out", str(d / c.config_id), "--quiet"],
                     "perf": {"dsn": dsn, "run_id": "sw-e2e", "path": str(d / c.config_id / "perf.json")}})
    proc = batch(d, jobs)
    return d, configs, proc.stdout


def per_config_lines(path, config_id):
    """A sweep CSV's lines of one configuration, without the config_id column."""
    lines = path.read_text().splitlines()
    header = lines[0].split(",", 1)[1]
    return [header] + [line.split(",", 1)[1] for line in lines[1:] if line.split(",", 1)[0] == config_id]


def test_every_configuration_gives_exactly_the_trades_orders_fills_and_rejections_of_its_backtest(swept):
    d, configs, _ = swept
    traded = 0
    for c in configs:
        for name in ("trades.csv", "orders.csv", "fills.csv", "rejections.csv"):
            want = (d / c.config_id / name).read_text().splitlines()
            assert per_config_lines(d / "sweep" / name, c.config_id) == want, (c.config_id, name)
        traded += len((d / c.config_id / "trades.csv").read_text().splitlines()) > 1
    assert traded >= 8, "the generated market should make most configurations trade"


def test_daily_equity_and_metrics_equal_the_backtests(swept):
    from connectors.clickhouse.analytics import MONEY, csv_value
    from operators.calendar import trading_day

    d, configs, _ = swept
    daily = defaultdict(list)
    for r in read_csv(d / "sweep" / "daily.csv"):
        daily[r["config_id"]].append(r)
    metrics = {r["config_id"]: r for r in read_csv(d / "sweep" / "metrics.csv")}
    for c in configs:
        last = {}
        for r in read_csv(d / c.config_id / "equity.csv"):
            ts = calendar.timegm(time.strptime(r["time"], "%Y-%m-%dT%H:%M:%SZ"))
            last[date.fromordinal(trading_day(ts)).isoformat()] = float(r["equity"])
        assert [(r["day"], float(r["equity"])) for r in daily[c.config_id]] == sorted(last.items())
        prev, cash = None, c.config.risk.initial_cash
        for r in daily[c.config_id]:  # spec 8: E_d / E_{d-1} - 1, E_0 the initial cash
            # the CSV holds equity to the cent and returns to 1e-8 (analytics.csv_value)
            assert float(r["return"]) == pytest.approx(float(r["equity"]) / (prev if prev is not None else cash)
                                                       - 1, abs=3e-7)
            prev = float(r["equity"])
        perf = json.loads((d / c.config_id / "perf.json").read_text())
        m = metrics[c.config_id]
        for k in ("trades", "trading_days", "wins", "losses"):
            assert int(m[k]) == perf[k], (c.config_id, k)
        for k in ("win_rate", "avg_win", "avg_win_pct", "avg_loss", "avg_loss_pct", "profit_factor",
                  "expectancy", "max_loss_per_trade", "total_pnl", "final_equity", "total_return",
                  "max_drawdown", "exposure", "sharpe", "mean_daily_return", "std_daily_return",
                  "avg_exposure_pct", "trades_per_day"):
            got = float(m[k]) if m[k] != "" else None
            want = perf[k]
            if got is None or want is None:
                assert got is want is None, (c.config_id, k)
            elif k in ("max_drawdown", "exposure", "final_equity", "total_return", "max_loss_per_trade",
                       "trades_per_day", "win_rate"):
                # exact: same values, same arithmetic, rounded alike in the CSV
                assert got == float(csv_value(k, want)), (c.config_id, k)
            else:  # sums of floats in ClickHouse's order, then rounded for the CSV
                step = 0.01 if k in MONEY else 1e-8
                assert got == pytest.approx(want, rel=1e-12, abs=step), (c.config_id, k)


PANIC_GRID = {"axes": {"strategies.3.min_drop_pct": [0.01, 0.015], "strategies.3.volume_mult": [2.0, 3.0]}}


@pytest.fixture(scope="module")
def panic_swept(tmp_path_factory):
    """A sweep of the panic detector's parameters over config/panic.yaml on a
    market with planted panics, and a backtest of every configuration alone."""
    d = tmp_path_factory.mktemp("panic-sweep")
    market = d / "bars.parquet"
    cuts("generate", "--symbols", "8", "--days", "4", "--seed", "11", "--out", str(market))
    (d / "grid.yaml").write_text(yaml.safe_dump(PANIC_GRID, sort_keys=False))
    base = os.path.join(ROOT, "config", "panic.yaml")
    from connectors.config import load_trading_config

    configs = expand(parse_grid(PANIC_GRID), load_trading_config(base))
    jobs = [{"argv": ["sweep", "--bars", str(market), "--grid", str(d / "grid.yaml"), "--config", base,
                      "--run-id", "sw-panic", "--clickhouse", f"chdb://{d / 'ch-sweep'}", "--out",
                      str(d / "sweep"), "--detail", "--quiet"]}]
    for c in configs:
        cfg_path = d / f"{c.config_id}.yaml"
        cfg_path.write_text(yaml.safe_dump(json.loads(c.config.model_dump_json())))
        jobs.append({"argv": ["backtest", "--bars", str(market), "--config", str(cfg_path), "--run-id",
                              "sw-panic", "--clickhouse", f"chdb://{d / 'ch-bt'}", "--out",
                              str(d / c.config_id), "--quiet"]})
    batch(d, jobs)
    return d, configs


def test_a_grid_over_panic_parameters_gives_each_configuration_exactly_its_backtest(panic_swept):
    d, configs = panic_swept
    assert [c.config.strategies[3].strategy_id for c in configs] == \
           ["panic_15_100", "panic_15_100", "panic_15_150", "panic_15_150"]
    panic_trades = []
    for c in configs:
        for name in ("trades.csv", "orders.csv", "fills.csv", "rejections.csv"):
            want = (d / c.config_id / name).read_text().splitlines()
            assert per_config_lines(d / "sweep" / name, c.config_id) == want, (c.config_id, name)
        trades = read_csv(d / c.config_id / "trades.csv")
        panic_trades.append(sum(t["strategy"].startswith("panic_") for t in trades))
    assert all(panic_trades), f"the planted panics should trade in every configuration: {panic_trades}"
    assert len(set(panic_trades)) > 1, "the parameters should matter"


def plain_walk_forward(daily_csv, train, test, anchored=False):
    """Spec 8 from daily.csv alone: folds, Sharpe of the train days, best first,
    undefined last, ties to the lowest config_id."""
    returns = defaultdict(dict)
    for r in read_csv(daily_csv):
        returns[r["config_id"]][r["day"]] = float(r["return"])
    days = sorted(next(iter(returns.values())))
    out, k = [], 0
    while train + (k + 1) * test <= len(days):
        start = 0 if anchored else k * test
        train_days = days[start:train + k * test]
        scores = []
        for cid, rs in returns.items():
            x = [rs[day] for day in train_days]
            mean = sum(x) / len(x)
            sd = math.sqrt(sum((v - mean) ** 2 for v in x) / (len(x) - 1)) if len(x) > 1 else 0.0
            scores.append((sd == 0, -(mean / sd * math.sqrt(252)) if sd else 0.0, int(cid[1:]), cid))
        best = sorted(scores)[0]
        test_days = days[train + k * test:train + (k + 1) * test]
        out.append((k + 1, train_days[0], train_days[-1], test_days[0], test_days[-1], best[3]))
        k += 1
    return out


def test_walk_forward_selection_equals_a_plain_computation_from_daily_csv(swept):
    d, _, _ = swept
    folds = [(int(r["fold"]), r["train_start"], r["train_end"], r["test_start"], r["test_end"], r["config_id"])
             for r in read_csv(d / "sweep" / "folds.csv")]
    assert len(folds) == 3  # 5 days, train 2, test 1
    assert folds == plain_walk_forward(d / "sweep" / "daily.csv", 2, 1)


def test_configs_csv_lists_every_configuration_with_its_axis_values(swept):
    d, configs, stdout = swept
    rows = read_csv(d / "sweep" / "configs.csv")
    assert list(rows[0]) == ["config_id", "exit.take_profit_pct", "exit.stop_loss_pct", "exit.trailing_stop"]
    assert [r["config_id"] for r in rows] == [c.config_id for c in configs]
    assert rows[3] == {"config_id": "c004", "exit.take_profit_pct": "0.01", "exit.stop_loss_pct": "0.01",
                       "exit.trailing_stop": "true"}
    assert "Top 10 by sharpe" in stdout and "Walk-forward (rolling, train 2 days" in stdout
    assert "exit.take_profit_pct: best" in stdout and "Out of sample" in stdout


def test_report_prints_the_sweep_again(swept):
    d, _, stdout = swept
    again = cuts("report", "--sweep", "sw-e2e", "--clickhouse", f"chdb://{d / 'ch-sweep'}").stdout
    assert again.strip() in stdout
    latest = cuts("report", "--clickhouse", f"chdb://{d / 'ch-sweep'}").stdout  # the latest run is the sweep
    assert latest == again
    unknown = cuts("report", "--sweep", "sw-nope", "--clickhouse", f"chdb://{d / 'ch-sweep'}", check=False)
    assert unknown.returncode == 2 and unknown.stderr.strip() == "cuts: error: unknown sweep id: sw-nope"
    page = cuts("report", "--sweep", "sw-nope", "--html", str(d / "sweep.html"),
                "--clickhouse", f"chdb://{d / 'ch-sweep'}", check=False)  # the page: tests/test_sweep_page.py
    assert page.returncode == 2 and page.stderr.strip() == "cuts: error: unknown sweep id: sw-nope"
    assert not (d / "sweep.html").exists()


def test_cuts_runs_lists_the_sweep_with_its_status_and_bar_file(swept, market):
    d, _, _ = swept
    rows = json.loads(cuts("runs", "--json", "--clickhouse", f"chdb://{d / 'ch-sweep'}").stdout)
    sweep = next(r for r in rows if r["run_id"] == "sw-e2e")
    assert (sweep["mode"], sweep["status"], sweep["source"]) == ("sweep", "finished", os.path.abspath(market))


def test_two_workers_give_the_same_csv_files(market, swept, tmp_path):
    d, _, _ = swept
    out = tmp_path / "w2"
    cuts("sweep", "--bars", str(market), "--grid", str(d / "grid.yaml"), "--run-id", "sw-e2e", "--detail",
         "--clickhouse", f"chdb://{tmp_path / 'ch'}", "--out", str(out), "--workers", "2", "--quiet")
    for name in ("configs.csv", "trades.csv", "orders.csv", "fills.csv", "rejections.csv", "metrics.csv",
                 "daily.csv", "folds.csv"):
        assert (out / name).read_bytes() == (d / "sweep" / name).read_bytes(), name


@pytest.mark.parametrize("grid,needle", [
    ({"axes": {"exit.take_profit_pctt": [0.01]}}, "axis exit.take_profit_pctt: unknown key path"),
    ({"axes": {"exit.stop_loss_pct": [0.01, 2.0]}}, "axis exit.stop_loss_pct, config c002"),
    ({"axes": {"exit.stop_loss_pct": []}}, "axis exit.stop_loss_pct: empty"),
])
def test_a_bad_grid_stops_before_any_work_with_one_line_and_exit_2(market, tmp_path, grid, needle):
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(grid))
    proc = cuts("sweep", "--bars", str(market), "--grid", str(tmp_path / "g.yaml"),
                "--clickhouse", f"chdb://{tmp_path / 'ch'}", check=False)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and needle in proc.stderr
    assert not (tmp_path / "ch").exists(), "nothing may start before the grid is valid"


def test_over_max_configs_is_refused(market, tmp_path):
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(GRID))
    proc = cuts("sweep", "--bars", str(market), "--grid", str(tmp_path / "g.yaml"), "--max-configs", "10",
                "--clickhouse", f"chdb://{tmp_path / 'ch'}", check=False)
    assert proc.returncode == 2 and "12 configurations" in proc.stderr and "--max-configs 10" in proc.stderr
