"""End to end on a real Kafka-protocol broker (embedded Tansu): a published
topic replays to the same results as the file, whatever the partitions and
workers; a worker killed with SIGKILL resumes from its recovery directory
with nothing lost and nothing doubled."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from connectors.kafka.embedded import EmbeddedKafka
from cuts_cli import CUTS, ROOT, cuts

EXPORTS = ("trades.csv", "orders.csv", "fills.csv", "equity.csv", "rejections.csv")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    with EmbeddedKafka(log_path=str(tmp_path_factory.mktemp("tansu") / "tansu.log")) as kafka:
        yield kafka.bootstrap


@pytest.fixture(scope="module")
def small_market(tmp_path_factory):
    path = tmp_path_factory.mktemp("market") / "bars.parquet"
    cuts("generate", "--symbols", "8", "--days", "3", "--seed", "21", "--out", str(path))
    return path


@pytest.fixture(scope="module")
def file_results(small_market, tmp_path_factory):
    d = tmp_path_factory.mktemp("file")
    cuts("backtest", "--bars", str(small_market), "--clickhouse", f"chdb://{d / 'ch'}",
         "--out", str(d / "out"), "--run-id", "same", "--quiet")
    return d / "out"


def metrics(report: str) -> str:
    """A report from its metrics on: the status lines above carry wall-clock times."""
    return report[report.index("\nMetric "):]


def same_exports(a, b):
    for name in EXPORTS:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.mark.parametrize("partitions,workers,records", [
    (1, 1, "bars"), (3, 1, "bars"), (3, 2, "bars"), (1, 2, "bars"), (1, 1, "bar"), (3, 2, "bar")])
def test_replayed_topic_gives_the_same_results_as_the_file(broker, small_market, file_results,
                                                           tmp_path, partitions, workers, records):
    """Bars records (several minutes per record, sparse markers) and one bar
    per record (a marker per minute, as live) replay alike."""
    topic = f"bars-p{partitions}-w{workers}-{records}"
    cuts("publish", "--bars", str(small_market), "--kafka", broker, "--topic", topic,
         "--partitions", str(partitions), "--records", records)
    cuts("backtest", "--kafka", broker, "--topic", topic, "--from-beginning",
         "--clickhouse", f"chdb://{tmp_path / 'ch'}", "--out", str(tmp_path / "out"),
         "--run-id", "same", "--workers", str(workers), "--quiet")
    same_exports(file_results, tmp_path / "out")


def test_replay_of_a_missing_topic_exits_2_with_one_line(broker, tmp_path):
    proc = cuts("backtest", "--kafka", broker, "--topic", "no-such-topic",
                "--clickhouse", f"chdb://{tmp_path / 'ch'}", check=False)
    assert proc.returncode == 2, proc.stderr
    assert "no-such-topic" in proc.stderr and "Traceback" not in proc.stderr


# -- recovery -----------------------------------------------------------------
@pytest.fixture(scope="module")
def recovery_topic(broker, tmp_path_factory):
    path = tmp_path_factory.mktemp("big") / "bars.parquet"
    # one bar per record, as a live topic: the slower replay leaves time for two kill points
    # (progress shows once a second; 45 days replay in ~3.5 s here, publishing them takes ~20 s)
    cuts("generate", "--symbols", "31", "--days", "45", "--seed", "8", "--out", str(path))
    cuts("publish", "--bars", str(path), "--kafka", broker, "--topic", "recover", "--partitions", "3",
         "--records", "bar")
    return "recover"


def replay_args(broker, topic, ch, *extra):
    return ["backtest", "--kafka", broker, "--topic", topic, "--clickhouse", f"chdb://{ch}",
            "--run-id", "rec", *extra]


def run_and_kill(args, at_bars: int, timeout: float = 120) -> bool:
    """Start `cuts`, SIGKILL it once it reports `at_bars` stored; False if it finished first."""
    proc = subprocess.Popen([*CUTS, *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    try:
        for line in proc.stderr:
            if line.startswith("bars stored"):
                stored = int(line.split()[2].replace(",", ""))
                if stored >= at_bars:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    return True
            if time.monotonic() > deadline:
                break
        proc.wait(timeout=30)
        return False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def recovery_clean(broker, recovery_topic, tmp_path_factory):
    """The uninterrupted replay of the recovery topic (directory with ch/ and out/)."""
    clean = tmp_path_factory.mktemp("clean")
    cuts(*replay_args(broker, recovery_topic, clean / "ch", "--out", str(clean / "out"), "--quiet"))
    return clean


def test_sigkill_twice_then_resume_gives_every_table_of_an_uninterrupted_run(broker, recovery_topic,
                                                                            recovery_clean, tmp_path):
    clean = recovery_clean

    crashed = tmp_path / "crashed"
    rec_args = replay_args(broker, recovery_topic, crashed / "ch", "--recovery-dir", str(crashed / "rec"),
                           "--snapshot-s", "1")
    assert run_and_kill(rec_args, at_bars=30_000), "the run ended before the first kill point"
    # bars stored counts this process's writes: 20,000 more after the resume (a later
    # point raced the end of the replay on a fast run: one progress line a second)
    assert run_and_kill(rec_args, at_bars=20_000), "the run ended before the second kill point"
    done = cuts(*rec_args, "--out", str(crashed / "out"), "--quiet")
    assert "resumed" in done.stdout
    same_exports(clean / "out", crashed / "out")
    report = cuts("report", "--run-id", "rec", "--clickhouse", f"chdb://{crashed / 'ch'}").stdout
    clean_report = cuts("report", "--run-id", "rec", "--clickhouse", f"chdb://{clean / 'ch'}").stdout
    assert "Status: finished" in report
    assert metrics(report) == metrics(clean_report)  # every count (bars, signals, dead letters...): no duplicates


def test_sigkill_mid_replay_of_bars_records_then_resume_gives_every_table_of_an_uninterrupted_run(
        broker, tmp_path):
    """A snapshot lands between two records, never inside one: a bars record
    (many bars at one offset) is taken whole into one batch."""
    path = tmp_path / "bars.parquet"
    # bars records replay fast: 90 days (1.1 M bars) last past the first progress line (one a second)
    cuts("generate", "--symbols", "31", "--days", "90", "--seed", "9", "--out", str(path))
    cuts("publish", "--bars", str(path), "--kafka", broker, "--topic", "recover-bars", "--partitions", "3")
    clean = tmp_path / "clean"
    cuts(*replay_args(broker, "recover-bars", clean / "ch", "--out", str(clean / "out"), "--quiet"))
    crashed = tmp_path / "crashed"
    rec_args = replay_args(broker, "recover-bars", crashed / "ch", "--recovery-dir", str(crashed / "rec"),
                           "--snapshot-s", "1")
    assert run_and_kill(rec_args, at_bars=1), "the run ended before its first progress line"
    done = cuts(*rec_args, "--out", str(crashed / "out"), "--quiet")
    assert "resumed" in done.stdout
    same_exports(clean / "out", crashed / "out")
    report = cuts("report", "--run-id", "rec", "--clickhouse", f"chdb://{crashed / 'ch'}").stdout
    assert metrics(report) == metrics(cuts("report", "--run-id", "rec", "--clickhouse",
                                           f"chdb://{clean / 'ch'}").stdout)


def test_recovery_dir_refuses_a_recreated_topic(broker, small_market, tmp_path):
    from kafka import KafkaAdminClient

    topic = "recreated"
    cuts("publish", "--bars", str(small_market), "--kafka", broker, "--topic", topic)
    args = replay_args(broker, topic, tmp_path / "ch", "--recovery-dir", str(tmp_path / "rec"), "--quiet")
    cuts(*args)
    admin = KafkaAdminClient(bootstrap_servers=broker)
    admin.delete_topics([topic])
    admin.close()
    time.sleep(0.5)
    cuts("publish", "--bars", str(small_market), "--kafka", broker, "--topic", topic)
    proc = cuts(*args, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "refusing to resume" in proc.stderr and "Traceback" not in proc.stderr


def test_halt_with_flatten_through_kafka_stops_entries_and_closes_positions(broker, small_market, tmp_path):
    import csv

    import pandas as pd

    df = pd.read_parquet(small_market)
    days = df["timestamp"].dt.tz_convert("America/New_York").dt.date
    first, rest = tmp_path / "first.parquet", tmp_path / "rest.parquet"
    df[days == days.min()].to_parquet(first)
    df[days != days.min()].to_parquet(rest)
    cuts("publish", "--bars", str(first), "--kafka", broker, "--topic", "halted", "--partitions", "3")
    sent = cuts("halt", "--flatten", "--why", "test drill", "--who", "tester", "--kafka", broker,
                "--topic", "halted")
    assert "halt with flatten sent to every partition" in sent.stdout
    cuts("publish", "--bars", str(rest), "--kafka", broker, "--topic", "halted")
    out = tmp_path / "out"
    cuts("backtest", "--kafka", broker, "--topic", "halted", "--clickhouse", f"chdb://{tmp_path / 'ch'}",
         "--out", str(out), "--run-id", "halt", "--quiet")
    controls = list(csv.DictReader(open(out / "controls.csv")))
    assert [(c["action"], c["flatten"], c["who"], c["why"]) for c in controls] == [
        ("halt", "True", "tester", "test drill")]
    halted_at = controls[0]["time"]
    entries = [o for o in csv.DictReader(open(out / "orders.csv")) if o["intent"] == "entry"]
    assert entries and all(o["decided_time"] < halted_at for o in entries)
    trades = list(csv.DictReader(open(out / "trades.csv")))
    flattened = [t for t in trades if t["exit_reason"] == "kill_switch"]
    assert len(flattened) == int(controls[0]["exits_queued"])
    assert all(t["exit_time"] >= halted_at for t in flattened)
    rejected = [r for r in csv.DictReader(open(out / "rejections.csv")) if r["reason"] == "halted"]
    assert rejected, "BUY signals after the halt are rejected as halted"
    equity = list(csv.DictReader(open(out / "equity.csv")))
    assert int(equity[-1]["open_positions"]) == 0


def test_halt_on_a_missing_topic_exits_2(broker):
    proc = cuts("halt", "--why", "x", "--kafka", broker, "--topic", "nope-topic", check=False)
    assert proc.returncode == 2 and "nope-topic" in proc.stderr and "Traceback" not in proc.stderr


def test_publish_at_x_times_real_time_paces_minutes_and_replays_the_same(broker, tmp_path):
    import pandas as pd

    full = tmp_path / "full.parquet"
    cuts("generate", "--symbols", "2", "--days", "1", "--seed", "3", "--out", str(full))
    df = pd.read_parquet(full)
    df = df[df["timestamp"] < df["timestamp"].min() + pd.Timedelta(minutes=31)]
    path = tmp_path / "short.parquet"
    df.to_parquet(path)
    started = time.monotonic()
    cuts("publish", "--bars", str(path), "--kafka", broker, "--topic", "paced", "--speed", "600")
    # 31 minutes of markers, the last due 31 min / 600 = 3.1 s after the first (start-up is ~1.5 s)
    assert time.monotonic() - started >= 3.0
    cuts("backtest", "--kafka", broker, "--topic", "paced", "--clickhouse", f"chdb://{tmp_path / 'a'}",
         "--out", str(tmp_path / "kafka"), "--run-id", "p", "--quiet")
    cuts("backtest", "--bars", str(path), "--clickhouse", f"chdb://{tmp_path / 'b'}",
         "--out", str(tmp_path / "file"), "--run-id", "p", "--quiet")
    same_exports(tmp_path / "file", tmp_path / "kafka")


def stop_at_stored(args, sig, at_bars: int, timeout: float = 120, delay_s: float = 0.0):
    """Start `cuts args`; send `sig` `delay_s` after it reports `at_bars` stored.
    Returns (exit code, stderr lines other than progress, signal sent)."""
    proc = subprocess.Popen([*CUTS, *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    others, sent = [], False
    deadline = time.monotonic() + timeout
    try:
        for line in proc.stderr:
            if line.startswith("bars stored"):
                if not sent and int(line.split()[2].replace(",", "")) >= at_bars:
                    time.sleep(delay_s)
                    proc.send_signal(sig)
                    sent = True
            elif line.strip():
                others.append(line.rstrip("\n"))
            assert time.monotonic() < deadline, "no end in time"
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, others, sent


def assert_stopped_with_one_line(code, lines, sig, status):
    lines = [line for line in lines if not line.startswith("live run on ")]  # cuts run's start line
    text = "\n".join(lines)
    assert code == 128 + sig and len(lines) == 1, text
    assert "Traceback" not in text and "panicked" not in text
    assert f" {status} on {signal.Signals(sig).name} after " in lines[0], text
    return int(lines[0].split(" after ")[1].split()[0].replace(",", ""))  # bars stored so far


def test_a_replay_stopped_by_sigterm_then_resumed_gives_every_table_of_an_uninterrupted_run(
        broker, recovery_topic, recovery_clean, tmp_path):
    """Through the command (exact stop points, SIGINT and SIGTERM, several
    times: test_clean_stop.py)."""
    rec_args = replay_args(broker, recovery_topic, tmp_path / "ch", "--recovery-dir", str(tmp_path / "rec"),
                           "--snapshot-s", "1")
    code, lines, sent = stop_at_stored(rec_args, signal.SIGTERM, 1)  # at the first progress line
    assert sent, "the replay ended before its first progress line"
    assert_stopped_with_one_line(code, lines, signal.SIGTERM, "interrupted")
    done = cuts(*rec_args, "--out", str(tmp_path / "out"), "--quiet")
    assert "resumed" in done.stdout
    same_exports(recovery_clean / "out", tmp_path / "out")


def test_a_live_worker_stopped_by_sigterm_resumes_and_stops_again_by_sigint_with_the_replays_trades(
        broker, recovery_topic, recovery_clean, tmp_path):
    """`cuts run` tails the topic; a stop is its normal end (still 130 / 143:
    the shell and a supervisor see it was signalled)."""
    args = ["run", "--kafka", broker, "--topic", recovery_topic, "--clickhouse", f"chdb://{tmp_path / 'ch'}",
            "--run-id", "rec", "--recovery-dir", str(tmp_path / "rec"), "--snapshot-s", "1"]
    code, lines, sent = stop_at_stored(args, signal.SIGTERM, 30_000)
    assert sent
    before = assert_stopped_with_one_line(code, lines, signal.SIGTERM, "stopped")
    bars = int(cuts("report", "--run-id", "rec", "--clickhouse", f"chdb://{recovery_clean / 'ch'}"
                    ).stdout.split("\nbars ")[1].split()[0])
    # resumed: the rest of the topic, then stopped once every bar is stored and
    # the last minute's marker came through (a marker may follow its bars by a batch)
    code, lines, sent = stop_at_stored(args, signal.SIGINT, bars - before, delay_s=2.0)
    assert sent
    assert assert_stopped_with_one_line(code, lines, signal.SIGINT, "stopped") == bars
    subprocess.run([sys.executable, "-c", "import sys; from connectors.clickhouse import analytics; "
                    "from connectors.clickhouse.client import open_client; "
                    "analytics.export_csv(open_client(sys.argv[1]), 'rec', sys.argv[2])",
                    f"chdb://{tmp_path / 'ch'}", str(tmp_path / "out")], cwd=ROOT, check=True)
    assert (tmp_path / "out" / "trades.csv").read_bytes() == (recovery_clean / "out" / "trades.csv").read_bytes()


# -- live worker ----------------------------------------------------------------
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_live_worker_in_cluster_mode_tails_the_topic_to_the_backtests_trades(broker, small_market,
                                                                             file_results, tmp_path):
    """`cuts run --kafka` with Bytewax's cluster entry (-a/-i, one process; two:
    tests/test_processes.py) tails the topic while it is published; once the
    last minute is complete, its trades are the file backtest's. Stopped with
    SIGINT, as an operator would."""
    topic = "live-cluster"
    cuts("publish", "--bars", str(small_market), "--kafka", broker, "--topic", topic, "--partitions", "3",
         "--records", "bar")  # one bar per record, as `cuts stream` writes
    ch = tmp_path / "ch"
    proc = subprocess.Popen([*CUTS, "run", "--kafka", broker, "--topic", topic, "--clickhouse", f"chdb://{ch}",
                             "--run-id", "same", "-a", f"127.0.0.1:{_free_port()}", "-i", "0"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    total = len(__import__("pandas").read_parquet(small_market))
    try:
        deadline = time.monotonic() + 120
        for line in proc.stderr:  # "bars stored N (...)" every second
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
    # exported in a process of its own: chDB opens one directory per process
    subprocess.run([sys.executable, "-c", "import sys; from connectors.clickhouse import analytics; "
                    "from connectors.clickhouse.client import open_client; "
                    "analytics.export_csv(open_client(sys.argv[1]), 'same', sys.argv[2])",
                    f"chdb://{ch}", str(tmp_path / "out")], cwd=ROOT, check=True)
    assert (tmp_path / "out" / "trades.csv").read_bytes() == (file_results / "trades.csv").read_bytes()
