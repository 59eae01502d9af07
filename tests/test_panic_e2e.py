"""End to end with the panic detector beside the SMA pairs (`config/panic.yaml`)
on generated markets (whose panics the generator plants): the file backtest
makes panic trades and records the strategy type of every signal; one or two
workers, rows shuffled within each minute, a Kafka replay over 3 partitions
(embedded Tansu), a live worker (`cuts run`, simulated broker) and a SIGKILL
with a resume from the recovery directory all give the same trades."""
from __future__ import annotations

import csv
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from connectors.kafka.embedded import EmbeddedKafka
from test_kafka_e2e import CUTS, ROOT, _free_port, cuts, replay_args, run_and_kill, same_exports

pytestmark = pytest.mark.slow
PANIC_CONFIG = "config/panic.yaml"
PANIC_ID = "panic_15_150"


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    with EmbeddedKafka(log_path=str(tmp_path_factory.mktemp("tansu") / "tansu.log")) as kafka:
        yield kafka.bootstrap


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    path = tmp_path_factory.mktemp("market") / "bars.parquet"
    cuts("generate", "--symbols", "8", "--days", "4", "--seed", "11", "--out", str(path))
    return path


def backtest(bars, out, *extra):
    cuts("backtest", "--bars", str(bars), "--config", PANIC_CONFIG, "--clickhouse", f"chdb://{out}-ch",
         "--out", str(out), "--run-id", "panic", "--quiet", *extra)
    return out


@pytest.fixture(scope="module")
def file_results(market, tmp_path_factory):
    return backtest(market, tmp_path_factory.mktemp("file") / "out")


def read(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def query(dsn: str, sql: str) -> list:
    """Rows of a SQL query, in a process of its own (chDB: one directory per process)."""
    code = ("import json, sys; from connectors.clickhouse.client import open_client; "
            "print(json.dumps(open_client(sys.argv[1]).query(sys.argv[2]).result_rows))")
    out = subprocess.run([sys.executable, "-c", code, dsn, sql], capture_output=True, text=True, cwd=ROOT,
                         check=True)
    import json

    return json.loads(out.stdout)


def test_panic_config_makes_panic_trades_with_their_own_exits_and_records_signal_types(market, file_results, tmp_path):
    trades = read(file_results / "trades.csv")
    panic = [t for t in trades if t["strategy"] == PANIC_ID]
    assert panic, "the generated market's planted panics should make panic trades"
    assert {t["strategy"] for t in trades} > {PANIC_ID}  # beside the SMA pairs
    # its own exits from the entry fill: a target of 1.5 % (not 2 %), a stop of 0.75 % (not
    # 1 %), less the exit's 1 bp slippage (or beyond them, at an open that gapped past)
    for t in panic:
        r = float(t["return_pct"])
        if t["exit_reason"] == "take_profit":
            assert r == pytest.approx(1.015 * (1 - 1e-4) - 1, abs=1e-9) or r > 0.015
        elif t["exit_reason"] == "stop_loss":
            assert r == pytest.approx(0.9925 * (1 - 1e-4) - 1, abs=1e-9) or r < -0.0075
    rows = query(f"chdb://{file_results}-ch", "SELECT strategy_id, strategy_type, count() FROM thousandcuts.signals "
                 "FINAL WHERE run_id = 'panic' GROUP BY strategy_id, strategy_type ORDER BY strategy_id")
    types = {sid: kind for sid, kind, _ in rows}
    assert types[PANIC_ID] == "panic_rebound"
    assert {types[s] for s in ("sma_5_15", "sma_10_30", "sma_20_50")} == {"sma_cross"}
    report = cuts("report", "--run-id", "panic", "--clickhouse", f"chdb://{file_results}-ch").stdout
    by_strategy = report.split("By strategy")[1].split("By exit reason")[0]
    line = next(line for line in by_strategy.splitlines() if line.startswith(PANIC_ID))
    assert line.split()[1] == str(len(panic))


def test_panic_config_same_trades_with_one_and_two_workers(market, file_results, tmp_path):
    same_exports(file_results, backtest(market, tmp_path / "w2", "--workers", "2"))


def test_panic_config_same_trades_when_rows_are_shuffled_within_each_minute(market, file_results, tmp_path):
    df = pd.read_parquet(market)
    shuffled = (df.sample(frac=1.0, random_state=7)
                .sort_values("timestamp", kind="stable").reset_index(drop=True))
    assert not shuffled["symbol"].equals(df["symbol"])
    path = tmp_path / "shuffled.parquet"
    shuffled.to_parquet(path)
    same_exports(file_results, backtest(path, tmp_path / "mixed"))


def test_panic_config_kafka_replay_over_three_partitions_gives_the_file_results(broker, market, file_results,
                                                                              tmp_path):
    cuts("publish", "--bars", str(market), "--kafka", broker, "--topic", "panic-p3", "--partitions", "3")
    cuts("backtest", "--kafka", broker, "--topic", "panic-p3", "--config", PANIC_CONFIG,
         "--clickhouse", f"chdb://{tmp_path / 'ch'}", "--out", str(tmp_path / "out"), "--run-id", "panic",
         "--workers", "2", "--quiet")
    same_exports(file_results, tmp_path / "out")


def test_panic_config_live_worker_makes_the_file_backtests_trades(broker, market, file_results, tmp_path):
    """`cuts run` (simulated broker) tails a topic written one bar per record, as live."""
    topic = "panic-live"
    cuts("publish", "--bars", str(market), "--kafka", broker, "--topic", topic, "--partitions", "3",
         "--records", "bar")
    ch = tmp_path / "ch"
    # Bytewax's cluster entry (-a/-i) as in test_kafka_e2e: stopped with SIGINT, it exits 130
    proc = subprocess.Popen([*CUTS, "run", "--kafka", broker, "--topic", topic, "--config", PANIC_CONFIG,
                             "--clickhouse", f"chdb://{ch}", "--run-id", "panic",
                             "-a", f"127.0.0.1:{_free_port()}", "-i", "0"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    total = len(pd.read_parquet(market))
    try:
        deadline = time.monotonic() + 120
        for line in proc.stderr:
            if line.startswith("bars stored") and int(line.split()[2].replace(",", "")) >= total:
                break
            assert time.monotonic() < deadline, "the live worker did not store every bar in time"
        time.sleep(3.0)  # the last minute's orders, fills and trades are written after its bars
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, proc.stderr.read()
    subprocess.run([sys.executable, "-c", "import sys; from connectors.clickhouse import analytics; "
                    "from connectors.clickhouse.client import open_client; "
                    "analytics.export_csv(open_client(sys.argv[1]), 'panic', sys.argv[2])",
                    f"chdb://{ch}", str(tmp_path / "out")], cwd=ROOT, check=True)
    assert (tmp_path / "out" / "trades.csv").read_bytes() == (file_results / "trades.csv").read_bytes()


def test_panic_config_sigkill_then_resume_gives_every_table_of_an_uninterrupted_run(broker, tmp_path):
    path = tmp_path / "bars.parquet"
    cuts("generate", "--symbols", "31", "--days", "8", "--seed", "1", "--out", str(path))  # 8 panic trades
    cuts("publish", "--bars", str(path), "--kafka", broker, "--topic", "panic-recover", "--partitions", "3",
         "--records", "bar")
    clean = tmp_path / "clean"
    cuts(*replay_args(broker, "panic-recover", clean / "ch", "--config", PANIC_CONFIG,
                      "--out", str(clean / "out"), "--quiet"))
    assert [t for t in read(clean / "out" / "trades.csv") if t["strategy"] == PANIC_ID]
    crashed = tmp_path / "crashed"
    rec_args = replay_args(broker, "panic-recover", crashed / "ch", "--config", PANIC_CONFIG,
                           "--recovery-dir", str(crashed / "rec"), "--snapshot-s", "1")
    assert run_and_kill(rec_args, at_bars=30_000), "the run ended before the kill point"
    done = cuts(*rec_args, "--out", str(crashed / "out"), "--quiet")
    assert "resumed" in done.stdout
    same_exports(clean / "out", crashed / "out")
    report = cuts("report", "--run-id", "rec", "--clickhouse", f"chdb://{crashed / 'ch'}").stdout
    assert report == cuts("report", "--run-id", "rec", "--clickhouse", f"chdb://{clean / 'ch'}").stdout
