"""End to end through the `cuts` command: generated bars -> Bytewax flow ->
embedded ClickHouse (chDB) -> SQL report and CSV files."""
from __future__ import annotations

import csv
import os
import subprocess
import sys

import pandas as pd
import pytest

CUTS = [sys.executable, "-m", "dataflows.cli"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRADES_HEADER = ("run_id,symbol,strategy,qty,entry_time,entry_price,exit_time,exit_price,"
                 "exit_reason,pnl,return_pct")

pytestmark = pytest.mark.slow


def cuts(*args, check=True):
    proc = subprocess.run([*CUTS, *args], capture_output=True, text=True, cwd=ROOT, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"cuts {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    d = tmp_path_factory.mktemp("market")
    path = d / "bars.parquet"
    cuts("generate", "--symbols", "8", "--days", "4", "--seed", "11", "--out", str(path))
    return path


def backtest(bars, tmp, name, *extra):
    out = tmp / name
    proc = cuts("backtest", "--bars", str(bars), "--clickhouse", f"chdb://{tmp / (name + '-ch')}",
                "--out", str(out), "--run-id", "e2e", "--quiet", *extra)
    return out, proc


def test_backtest_writes_trades_csv_with_exact_columns_and_report_reads_clickhouse(market, tmp_path):
    out, _ = backtest(market, tmp_path, "one")
    lines = (out / "trades.csv").read_text().splitlines()
    assert lines[0] == TRADES_HEADER
    assert len(lines) > 5, "the generated market should trade"
    for name in ("orders.csv", "fills.csv", "equity.csv", "rejections.csv"):
        assert (out / name).exists()
    rows = list(csv.DictReader(open(out / "trades.csv")))
    assert all(r["entry_time"].endswith("Z") and r["exit_time"] > r["entry_time"] for r in rows)
    report = cuts("report", "--clickhouse", f"chdb://{tmp_path / 'one-ch'}").stdout
    assert "Win rate" in report and "By strategy" in report and "By exit reason" in report
    trades_line = next(line for line in report.splitlines() if line.startswith("Trades "))
    assert trades_line.split()[-1] == str(len(rows))


def test_same_trades_with_one_and_two_workers(market, tmp_path):
    one, _ = backtest(market, tmp_path, "w1", "--workers", "1")
    two, _ = backtest(market, tmp_path, "w2", "--workers", "2")
    for name in ("trades.csv", "orders.csv", "fills.csv", "equity.csv", "rejections.csv"):
        assert (one / name).read_bytes() == (two / name).read_bytes(), name


def test_same_trades_when_rows_are_shuffled_across_symbols_within_each_minute(market, tmp_path):
    df = pd.read_parquet(market)
    shuffled = (df.sample(frac=1.0, random_state=5)
                .sort_values("timestamp", kind="stable").reset_index(drop=True))
    assert not shuffled["symbol"].equals(df["symbol"])
    path = tmp_path / "shuffled.csv"
    shuffled.to_csv(path, index=False)  # CSV too: same bars through the other reader
    base, _ = backtest(market, tmp_path, "base")
    mixed, _ = backtest(path, tmp_path, "mixed")
    assert (base / "trades.csv").read_bytes() == (mixed / "trades.csv").read_bytes()


def test_file_sorted_by_symbol_gives_the_same_trades_as_time_sorted(market, tmp_path):
    df = pd.read_parquet(market).sort_values(["symbol", "timestamp"], kind="stable")
    path = tmp_path / "by_symbol.parquet"
    df.to_parquet(path)
    base, _ = backtest(market, tmp_path, "base2")
    grouped, _ = backtest(path, tmp_path, "grouped")
    assert (base / "trades.csv").read_bytes() == (grouped / "trades.csv").read_bytes()


def test_a_file_larger_than_memory_gives_the_same_results_from_disk(market, tmp_path):
    # sorted by symbol, as vendors write it: the spilled plan interleaves the symbols
    df = pd.read_parquet(market).sort_values(["symbol", "timestamp"], kind="stable")
    path = tmp_path / "by_symbol.parquet"
    df.to_parquet(path, row_group_size=1000)
    base, _ = backtest(market, tmp_path, "base3")
    for workers in ("1", "2"):
        spilled, proc = backtest(path, tmp_path, f"spilled{workers}", "--memory-bars", "500",
                                 "--workers", workers)
        for name in ("trades.csv", "orders.csv", "fills.csv", "equity.csv", "rejections.csv"):
            assert (base / name).read_bytes() == (spilled / name).read_bytes(), name


def test_bad_config_value_exits_2_with_one_line_naming_the_field(market, tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("strategies:\n  - {fast: 30, slow: 10, confidence: 0.7}\n")
    proc = cuts("backtest", "--bars", str(market), "--config", str(cfg), check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "strategies.0" in proc.stderr
    cfg.write_text("risk: {initial_cash: -5}\n")
    proc = cuts("backtest", "--bars", str(market), "--config", str(cfg), check=False)
    assert proc.returncode == 2 and "risk.initial_cash" in proc.stderr
    cfg.write_text("risk: {max_leverage: 3}\n")
    proc = cuts("backtest", "--bars", str(market), "--config", str(cfg), check=False)
    assert proc.returncode == 2 and "unknown key" in proc.stderr and "Traceback" not in proc.stderr


def test_malformed_bar_file_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("symbol,timestamp,open,high,low\nAAA,2024-01-02T14:30:00Z,1,2,1\n")
    proc = cuts("backtest", "--bars", str(bad), "--clickhouse", f"chdb://{tmp_path / 'ch'}", check=False)
    assert proc.returncode == 2
    assert "missing column(s) close, volume" in proc.stderr and "Traceback" not in proc.stderr
    proc = cuts("backtest", "--bars", str(tmp_path / "nope.parquet"), check=False)
    assert proc.returncode == 2 and "not found" in proc.stderr


def test_invalid_rows_go_to_dead_letters_not_a_crash(market, tmp_path):
    df = pd.read_parquet(market)
    extra = df.iloc[[0, 1, 2]].copy()
    extra.loc[extra.index[0], "high"] = -1.0  # invalid price
    extra.loc[extra.index[1], "symbol"] = "bad sym"
    dup = df.iloc[[len(df) - 20]]  # a recently accepted minute again: duplicate
    path = tmp_path / "dirty.parquet"
    pd.concat([df, extra.iloc[:2], dup]).to_parquet(path)
    cuts("backtest", "--bars", str(path), "--clickhouse", f"chdb://{tmp_path / 'ch'}",
         "--run-id", "dirty", "--quiet")
    report = cuts("report", "--run-id", "dirty", "--clickhouse", f"chdb://{tmp_path / 'ch'}").stdout
    assert "dead_letters" in report
    assert "invalid_price" in report and "invalid_symbol" in report and "duplicate" in report


def test_the_cli_imports_alpaca_py_only_for_the_commands_that_use_it():
    """`cuts backtest`, `report`, `halt`... start without alpaca-py (~0.4 s of
    imports); its errors are named from connectors.alpaca.errors."""
    code = ("import sys; from dataflows.cli import main as cli; cli.build_parser(); from dataflows.cli import commands; "
            "print(sorted(m for m in sys.modules if m == 'alpaca' or m.startswith('alpaca.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
