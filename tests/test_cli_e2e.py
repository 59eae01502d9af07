"""End to end through the `cuts` command: generated bars -> Bytewax flow ->
embedded ClickHouse (chDB) -> SQL report and CSV files."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import pandas as pd
import pytest
from cuts_cli import ROOT, cuts

TRADES_HEADER = ("run_id,symbol,strategy,qty,entry_time,entry_price,exit_time,exit_price,"
                 "exit_reason,pnl,return_pct")

pytestmark = pytest.mark.slow


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


def test_dead_letters_are_summed_up_at_the_end_and_written_with_out(tmp_path):
    """Every bar set aside is counted by reason in one line after the run and
    listed in dead_letters.csv with its place in the file (an editor's line)."""
    rows = ["symbol,timestamp,open,high,low,close,volume",
            "AAPL,2024-01-02T14:30:00Z,1,2,0.5,1.5,100",   # line 2: applied
            "AAPL,2024-01-02T14:31:00Z,1,0.5,0.5,1.5,100",  # line 3: high below the open
            "AAPL,2024-01-02T14:31:00Z,1,2,0.5,1.5,100",   # line 4: applied
            "bad sym,2024-01-02T14:32:00Z,1,2,0.5,1.5,100",  # line 5: not a symbol
            "AAPL,2024-01-02T14:30:00Z,1,2,0.5,1.5,100",   # line 6: seen already
            "AAPL,2024-01-02T14:29:00Z,1,2,0.5,1.5,100",   # line 7: older than an accepted bar
            "MSFT,2024-01-02T14:33:00Z,-1,2,0.5,1.5,100"]  # line 8: negative price
    path = tmp_path / "bars.csv"
    path.write_text("\n".join(rows) + "\n")
    proc = cuts("backtest", "--bars", str(path), "--clickhouse", f"chdb://{tmp_path / 'ch'}",
                "--out", str(tmp_path / "out"), "--quiet")
    assert ("dead letters: 5 bar(s) set aside, never applied (duplicate 1, invalid_high 1, invalid_price 1, "
            "invalid_symbol 1, late 1): see dead_letters.csv") in proc.stdout
    dead = list(csv.DictReader(open(tmp_path / "out" / "dead_letters.csv")))
    assert {(d["source"], d["reason"]) for d in dead} == {
        ("bars.csv line 3", "invalid_high"), ("bars.csv line 5", "invalid_symbol"),
        ("bars.csv line 6", "duplicate"), ("bars.csv line 7", "late"), ("bars.csv line 8", "invalid_price")}
    clean = tmp_path / "clean.csv"
    clean.write_text("\n".join(rows[:2]) + "\n")
    proc = cuts("backtest", "--bars", str(clean), "--clickhouse", f"chdb://{tmp_path / 'ch'}", "--quiet")
    assert "dead letters" not in proc.stdout


@pytest.mark.parametrize("text,message", [
    ("symbol,timestamp,open,high,low,close,volume\n", "no bars (only a header)"),
    ("", "empty file, no bars"),
    ("Symbol,Timestamp,Open,High,Low,Close,Volume,close\nA,2024-01-02T14:30:00Z,1,2,0.5,1.5,1,1\n",
     "differ only in case"),
    ("symbol,timestamp,open,high,low,close,volume\nA,2024-01-02T14:30:00Z,1,2,0.5,1.5,1\n"
     "A,2024-02-30T14:31:00Z,1,2,0.5,1.5,1\n", "line 3: timestamp '2024-02-30T14:31:00Z' is not a time"),
])
def test_a_bar_file_the_run_cannot_use_is_one_line_and_exit_2(tmp_path, text, message):
    path = tmp_path / "bars.csv"
    path.write_text(text)
    proc = cuts("backtest", "--bars", str(path), "--clickhouse", f"chdb://{tmp_path / 'ch'}", "--quiet",
                check=False)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_a_config_that_cannot_trade_is_warned_and_the_report_shows_filtered_signals_and_halts(market, tmp_path):
    """take_profit 0.015 / stop_loss 0.01 = risk/reward 1.5 < 2.0, and a
    confidence below min_confidence: every BUY is filtered and nothing
    trades. Said at start-up, and the report shows why, by reason."""
    config = tmp_path / "cfg.yaml"
    config.write_text("exit: {take_profit_pct: 0.015, stop_loss_pct: 0.01}\n"
                      "strategies:\n  - {fast: 5, slow: 15, confidence: 0.70}\n"
                      "  - {fast: 10, slow: 30, confidence: 0.60}\n")
    ch = f"chdb://{tmp_path / 'ch'}"
    proc = cuts("backtest", "--bars", str(market), "--config", str(config), "--clickhouse", ch, "--run-id", "f")
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("cuts: warning:")]
    assert warnings == [
        "cuts: warning: strategy sma_5_15 can never enter: risk/reward 1.50 (take_profit_pct 0.015 / "
        "stop_loss_pct 0.01) is below signals.min_risk_reward 2, so every BUY is filtered",
        "cuts: warning: strategy sma_10_30 can never enter: its confidence 0.6 is below "
        "signals.min_confidence 0.7, so every BUY is filtered"]
    report = json.loads(cuts("report", "--clickhouse", ch, "--json").stdout)
    assert report["performance"]["trades"] == 0
    reasons = {(r["strategy"], r["reason"]) for r in report["filtered_signals"]}
    assert reasons == {("sma_5_15", "low_risk_reward"), ("sma_10_30", "low_confidence")}
    # the default configuration on the same market: the three-losses halt stops entries on some days
    cuts("backtest", "--bars", str(market), "--clickhouse", ch, "--run-id", "d", "--quiet")
    text = cuts("report", "--run-id", "d", "--clickhouse", ch).stdout
    halts = json.loads(cuts("report", "--run-id", "d", "--clickhouse", ch, "--json").stdout)["daily_halts"]
    assert halts and all(h["reason"] in ("daily_loss_streak", "daily_drawdown") for h in halts)
    assert "Daily halts: entries refused on" in text
    first = halts[0]
    section = text[text.index("Daily halts:"):].splitlines()
    row = next(line for line in section if line.startswith(first["day"] + " "))
    assert first["reason"] in row and first["first_refused"] in row and str(first["entries_refused"]) in row
