"""Several processes on one machine with embedded chDB and Tansu: every
ClickHouse write goes through one sink partition that only process 0 lists,
so `cuts sweep`, `cuts backtest --kafka` and `cuts run` give with two
processes (-i 0/1 with -a) exactly what one process gives; a sweep of a
replayed topic equals the file's, and a sweep killed with SIGKILL resumes
from its recovery directory with nothing lost and nothing doubled."""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import pytest
import yaml

from connectors.kafka.embedded import EmbeddedKafka
from cuts_cli import CUTS, ROOT, cuts

GRID = {"axes": {"exit.take_profit_pct": [0.01, 0.02], "exit.stop_loss_pct": [0.005, 0.01],
                 "exit.trailing_stop": [False, True]},
        "walk_forward": {"train_days": 2, "test_days": 1}}
SWEEP_CSVS = ("configs.csv", "trades.csv", "metrics.csv", "daily.csv", "folds.csv")
RUN_CSVS = ("trades.csv", "orders.csv", "fills.csv", "equity.csv", "rejections.csv")

pytestmark = pytest.mark.slow


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def two_processes(*args, timeout=600):
    """`cuts ARGS` as processes 0 and 1 of a cluster; (stdout of 0, stdout of 1)."""
    addresses = ";".join(f"127.0.0.1:{p}" for p in free_ports(2))
    procs = [subprocess.Popen([*CUTS, *args, "-a", addresses, "-i", str(i)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (1, 0)]
    try:
        outs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, f"{p.args}\n{out}\n{err}"
    return outs[1][0], outs[0][0]


def same_files(a, b, names):
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    with EmbeddedKafka(log_path=str(tmp_path_factory.mktemp("tansu") / "tansu.log")) as kafka:
        yield kafka.bootstrap


@pytest.fixture(scope="module")
def market(broker, tmp_path_factory):
    """Bars in a file and in a topic of 3 partitions; the grid; the one-process file sweep."""
    d = tmp_path_factory.mktemp("procs")
    cuts("generate", "--symbols", "8", "--days", "4", "--seed", "5", "--out", str(d / "bars.parquet"))
    cuts("publish", "--bars", str(d / "bars.parquet"), "--kafka", broker, "--topic", "procs",
         "--partitions", "3")
    (d / "grid.yaml").write_text(yaml.safe_dump(GRID, sort_keys=False))
    cuts("sweep", "--bars", str(d / "bars.parquet"), "--grid", str(d / "grid.yaml"), "--run-id", "sw",
         "--clickhouse", f"chdb://{d / 'ch'}", "--out", str(d / "sweep"), "--quiet")
    cuts("backtest", "--bars", str(d / "bars.parquet"), "--run-id", "bt", "--clickhouse",
         f"chdb://{d / 'ch-bt'}", "--out", str(d / "backtest"), "--quiet")
    return d


def test_a_replayed_topic_sweeps_to_the_files_results(broker, market, tmp_path):
    cuts("sweep", "--kafka", broker, "--topic", "procs", "--grid", str(market / "grid.yaml"), "--run-id", "sw",
         "--clickhouse", f"chdb://{tmp_path / 'ch'}", "--out", str(tmp_path / "out"), "--quiet",
         "--workers", "2")
    same_files(market / "sweep", tmp_path / "out", SWEEP_CSVS)


def test_two_processes_sweep_a_topic_into_one_embedded_database_like_one_process(broker, market, tmp_path):
    out0, out1 = two_processes("sweep", "--kafka", broker, "--topic", "procs", "--grid",
                               str(market / "grid.yaml"), "--run-id", "sw", "--clickhouse",
                               f"chdb://{tmp_path / 'ch'}", "--out", str(tmp_path / "out"), "--quiet")
    assert "process 1 done; process 0 holds the results" in out1
    assert not (tmp_path / "ch").exists() or "8 configurations" in out0
    same_files(market / "sweep", tmp_path / "out", SWEEP_CSVS)


def test_two_processes_sweep_a_file_like_one_process(market, tmp_path):
    two_processes("sweep", "--bars", str(market / "bars.parquet"), "--grid", str(market / "grid.yaml"),
                  "--run-id", "sw", "--clickhouse", f"chdb://{tmp_path / 'ch'}", "--out",
                  str(tmp_path / "out"), "--quiet", "--workers", "2")
    same_files(market / "sweep", tmp_path / "out", SWEEP_CSVS)


def test_two_processes_replay_a_topic_to_the_file_backtests_results(broker, market, tmp_path):
    two_processes("backtest", "--kafka", broker, "--topic", "procs", "--run-id", "bt", "--clickhouse",
                  f"chdb://{tmp_path / 'ch'}", "--out", str(tmp_path / "out"), "--quiet")
    same_files(market / "backtest", tmp_path / "out", RUN_CSVS)


def test_two_live_processes_tail_a_topic_to_the_backtests_trades(broker, market, tmp_path):
    """`cuts run` as two processes on one chDB directory, stopped with SIGINT."""
    topic = "procs-live"
    cuts("publish", "--bars", str(market / "bars.parquet"), "--kafka", broker, "--topic", topic,
         "--partitions", "3", "--records", "bar")
    addresses = ";".join(f"127.0.0.1:{p}" for p in free_ports(2))
    ch = tmp_path / "ch"
    procs = [subprocess.Popen([*CUTS, "run", "--kafka", broker, "--topic", topic, "--clickhouse", f"chdb://{ch}",
                               "--run-id", "bt", "-a", addresses, "-i", str(i)],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in (1, 0)]
    total = len(__import__("pandas").read_parquet(market / "bars.parquet"))
    try:
        deadline = time.monotonic() + 180
        for line in procs[1].stderr:  # process 0 stores, and says so every second
            if line.startswith("bars stored") and int(line.split()[2].replace(",", "")) >= total:
                break
            assert time.monotonic() < deadline, "the live processes did not store every bar in time"
        time.sleep(3.0)  # the last minute's orders, fills and trades are written after its bars
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            p.wait(timeout=60)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert procs[1].returncode == 130, procs[1].stderr.read()
    subprocess.run([sys.executable, "-c", "import sys; from connectors.clickhouse import analytics; "
                    "from connectors.clickhouse.client import open_client; "
                    "analytics.export_csv(open_client(sys.argv[1]), 'bt', sys.argv[2])",
                    f"chdb://{ch}", str(tmp_path / "out")], cwd=ROOT, check=True)
    assert (tmp_path / "out" / "trades.csv").read_bytes() == (market / "backtest" / "trades.csv").read_bytes()


def test_sigkill_and_restart_of_a_sweep_loses_and_doubles_nothing(broker, tmp_path_factory):
    d = tmp_path_factory.mktemp("sigkill")
    cuts("generate", "--symbols", "31", "--days", "30", "--seed", "6", "--out", str(d / "bars.parquet"))
    cuts("publish", "--bars", str(d / "bars.parquet"), "--kafka", broker, "--topic", "sigkill",
         "--partitions", "2", "--records", "bar")
    (d / "grid.yaml").write_text(yaml.safe_dump(GRID, sort_keys=False))
    args = ["sweep", "--kafka", broker, "--topic", "sigkill", "--grid", str(d / "grid.yaml"), "--run-id", "sw"]
    cuts(*args, "--clickhouse", f"chdb://{d / 'clean-ch'}", "--out", str(d / "clean"), "--quiet")

    crashed = [*args, "--clickhouse", f"chdb://{d / 'ch'}", "--recovery-dir", str(d / "rec"), "--snapshot-s", "1"]
    proc = subprocess.Popen([*CUTS, *crashed], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    killed = False
    try:
        for line in proc.stderr:  # "bars stored N": bars the portfolio applied, every second
            if line.startswith("bars stored") and int(line.split()[2].replace(",", "")) >= 10_000:
                proc.send_signal(signal.SIGKILL)
                killed = True
                break
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert killed, "the sweep ended before the kill point"
    done = cuts(*crashed, "--out", str(d / "resumed"))
    assert "resumed from the recovery directory" in done.stdout
    same_files(d / "clean", d / "resumed", SWEEP_CSVS)
    # every count of the report (bars included) is the clean run's: nothing doubled
    report = cuts("report", "--sweep", "sw", "--clickhouse", f"chdb://{d / 'ch'}").stdout
    clean = cuts("report", "--sweep", "sw", "--clickhouse", f"chdb://{d / 'clean-ch'}").stdout
    assert report == clean
