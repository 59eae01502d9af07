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
from test_kafka_e2e import CUTS, ROOT, _free_port, cuts, same_exports

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


class LiveWorker:
    """`cuts run` (simulated broker) tailing a topic, through Bytewax's cluster
    entry (-a/-i, as in test_kafka_e2e: stopped with SIGINT it exits 130)."""

    def __init__(self, broker, topic, ch, *extra):
        self.proc = subprocess.Popen(
            [*CUTS, "run", "--kafka", broker, "--topic", topic, "--config", PANIC_CONFIG, "--clickhouse",
             f"chdb://{ch}", "--run-id", "panic", "-a", f"127.0.0.1:{_free_port()}", "-i", "0", *extra],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        self.stored = 0  # the last "bars stored N" (every second): bars this process wrote

    def _read(self, line: str) -> None:
        if line.startswith("bars stored"):
            self.stored = int(line.split()[2].replace(",", ""))

    def wait_stored(self, bars: int, timeout: float = 120) -> None:
        """Until this process reports `bars` bars stored."""
        deadline = time.monotonic() + timeout
        for line in self.proc.stderr:
            self._read(line)
            if self.stored >= bars:
                return
            assert time.monotonic() < deadline, f"the live worker did not store {bars} bars in time"
        raise AssertionError(f"the live worker ended: {self.proc.wait()}")

    def stop(self, sig=signal.SIGINT) -> int:
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=30)
            for line in self.proc.stderr:
                self._read(line)
            return code
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


def export_trades(ch, out) -> bytes:
    subprocess.run([sys.executable, "-c", "import sys; from connectors.clickhouse import analytics; "
                    "from connectors.clickhouse.client import open_client; "
                    "analytics.export_csv(open_client(sys.argv[1]), 'panic', sys.argv[2])",
                    f"chdb://{ch}", str(out)], cwd=ROOT, check=True)
    return (out / "trades.csv").read_bytes()


def test_panic_config_live_worker_makes_the_file_backtests_trades(broker, market, file_results, tmp_path):
    """`cuts run` (simulated broker) tails a topic written one bar per record, as live."""
    topic = "panic-live"
    cuts("publish", "--bars", str(market), "--kafka", broker, "--topic", topic, "--partitions", "3",
         "--records", "bar")
    worker = LiveWorker(broker, topic, tmp_path / "ch")
    try:
        worker.wait_stored(len(pd.read_parquet(market)))
        time.sleep(3.0)  # the last minute's orders, fills and trades are written after its bars
    finally:
        code = worker.stop()
    assert code == 130
    assert export_trades(tmp_path / "ch", tmp_path / "out") == (file_results / "trades.csv").read_bytes()


def test_panic_config_live_worker_killed_and_restarted_makes_the_file_backtests_trades(broker, market,
                                                                                     file_results, tmp_path):
    """SIGKILL a live worker after it stored the first two days, publish the rest while it
    is down, restart it on its recovery directory: nothing lost, nothing doubled (every
    table equals an uninterrupted run's), whatever the machine's speed."""
    df = pd.read_parquet(market)
    days = df["timestamp"].dt.tz_convert("America/New_York").dt.date
    first, rest = tmp_path / "first.parquet", tmp_path / "rest.parquet"
    df[days <= sorted(days.unique())[1]].to_parquet(first)
    df[days > sorted(days.unique())[1]].to_parquet(rest)
    topic, ch, rec = "panic-crash", tmp_path / "ch", tmp_path / "rec"
    cuts("publish", "--bars", str(first), "--kafka", broker, "--topic", topic, "--partitions", "3")
    worker = LiveWorker(broker, topic, ch, "--recovery-dir", str(rec), "--snapshot-s", "1")
    try:
        worker.wait_stored(len(pd.read_parquet(first)))
        time.sleep(1.5)  # a snapshot may or may not have passed since: either way is safe
    finally:
        assert worker.stop(signal.SIGKILL) == -signal.SIGKILL
    cuts("publish", "--bars", str(rest), "--kafka", broker, "--topic", topic)
    worker = LiveWorker(broker, topic, ch, "--recovery-dir", str(rec), "--snapshot-s", "1")
    try:
        worker.wait_stored(len(pd.read_parquet(rest)))  # at least the bars it had not seen
        time.sleep(3.0)
    finally:
        assert worker.stop() == 130
    # it resumed from its snapshot: it did not read the topic again from the start
    assert len(pd.read_parquet(rest)) <= worker.stored < len(df)
    assert export_trades(ch, tmp_path / "out") == (file_results / "trades.csv").read_bytes()
    same_exports(file_results, tmp_path / "out")
    report = cuts("report", "--run-id", "panic", "--clickhouse", f"chdb://{ch}").stdout
    clean = cuts("report", "--run-id", "panic", "--clickhouse", f"chdb://{file_results}-ch").stdout
    rows = lambda text: text.split("\nRows\n")[1]  # noqa: E731 - every table's row count
    assert rows(report) == rows(clean)


def test_a_bad_strategy_entry_exits_2_with_one_line_naming_the_field(market, tmp_path):
    """(Every refused value is pinned in tests/test_config.py; this is the command's side.)"""
    bad = tmp_path / "bad.yaml"
    bad.write_text("strategies:\n  - {fast: 5, slow: 15, confidence: 0.7}\n"
                   "  - {type: panic_rebound, min_drop_pct: 0.01555}\n")
    field = "strategies.1.min_drop_pct: must be a whole number of basis points"
    proc = cuts("backtest", "--bars", str(market), "--config", str(bad), "--clickhouse",
                f"chdb://{tmp_path / 'ch'}", check=False)
    assert proc.returncode == 2 and field in proc.stderr, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
