"""Ctrl-C and SIGTERM through the `cuts` command as a process: exit 130 /
143, exactly one line on stderr besides the progress lines, no traceback or
Rust panic, and a resume from the recovery directory (the same command)
writes the results of an uninterrupted run. (The exact stop points are
tested in-process in test_clean_stop.py; Kafka replays and live runs in
test_kafka_e2e.py, trading runs in test_paper_session.py.)"""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from cuts_cli import CUTS, ROOT, cuts

EXPORTS = ("trades.csv", "orders.csv", "fills.csv", "equity.csv", "rejections.csv")
PROGRESS = ("bars ", "published ")

pytestmark = pytest.mark.slow


def signal_at_progress(args, sigs, after_lines=1, timeout=120, gap_s=0.0):
    """Run `cuts args`; send `sigs` (`gap_s` apart) once `after_lines`
    progress lines were printed. Returns (exit code, the other stderr lines,
    whether a signal was sent)."""
    proc = subprocess.Popen([*CUTS, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    others, seen, sent = [], 0, False
    deadline = time.monotonic() + timeout
    try:
        for line in proc.stderr:
            if line.startswith(PROGRESS):
                seen += 1
                if seen == after_lines and not sent:
                    for i, sig in enumerate(sigs):
                        if i:
                            time.sleep(gap_s)
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


def assert_one_clean_line(code, lines, sig):
    text = "\n".join(lines)
    assert code == 128 + sig, text
    assert len(lines) == 1, text
    assert "Traceback" not in text and "panicked" not in text
    assert signal.Signals(sig).name in lines[0]


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    path = tmp_path_factory.mktemp("stop-cli") / "bars.parquet"
    cuts("generate", "--symbols", "31", "--days", "40", "--seed", "23", "--out", str(path))
    return path


@pytest.fixture(scope="module")
def uninterrupted(market, tmp_path_factory):
    d = tmp_path_factory.mktemp("stop-clean")
    cuts("backtest", "--bars", str(market), "--clickhouse", f"chdb://{d / 'ch'}", "--run-id", "s",
         "--out", str(d / "out"), "--quiet")
    return d / "out"


def same_exports(a, b):
    for name in EXPORTS:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_a_file_backtest_stopped_by_sigint_and_sigterm_then_resumed_writes_the_uninterrupted_results(
        market, uninterrupted, tmp_path):
    args = ["backtest", "--bars", str(market), "--clickhouse", f"chdb://{tmp_path / 'ch'}", "--run-id", "s",
            "--recovery-dir", str(tmp_path / "rec"), "--snapshot-s", "1", "--out", str(tmp_path / "out")]
    stopped = 0
    for sig in (signal.SIGTERM, signal.SIGINT):  # more stop points, exactly placed: test_clean_stop.py
        code, lines, sent = signal_at_progress(args, [sig])
        if code == 0:  # the rest of the run took less than a progress interval
            break
        assert sent
        assert_one_clean_line(code, lines, sig)
        assert "resumes it from" in lines[0]
        stopped += 1
    assert stopped >= 1, "the run finished before the first progress line: use a larger market"
    if code != 0:
        assert cuts(*args, "--quiet").returncode == 0
    same_exports(uninterrupted, tmp_path / "out")


def test_a_second_signal_stops_at_once_and_the_recovery_directory_still_resumes(market, uninterrupted, tmp_path):
    """Whether the second Ctrl-C lands during the clean stop (os._exit, as
    kill -9) or after it, the command ends with one line and resumes."""
    args = ["backtest", "--bars", str(market), "--clickhouse", f"chdb://{tmp_path / 'ch'}", "--run-id", "s",
            "--recovery-dir", str(tmp_path / "rec"), "--snapshot-s", "1", "--out", str(tmp_path / "out")]
    code, lines, sent = signal_at_progress(args, [signal.SIGINT, signal.SIGINT], gap_s=0.02)
    assert sent
    assert_one_clean_line(code, lines, signal.SIGINT)
    # a run that never finished is reported as partial, first and last
    partial = cuts("report", "--clickhouse", f"chdb://{tmp_path / 'ch'}").stdout
    assert partial.splitlines()[0] in ("Run s -- INTERRUPTED: PARTIAL RESULTS",  # the clean stop's status
                                       "Run s -- RUNNING: PARTIAL RESULTS")  # stopped at once: never recorded
    assert partial.rstrip().splitlines()[-1].startswith("PARTIAL RESULTS: run s is ")
    proc = cuts(*args, "--quiet")
    assert "resumed" in proc.stdout
    same_exports(uninterrupted, tmp_path / "out")


def test_a_signal_outside_a_flow_ends_the_command_with_one_line(market, tmp_path):
    """`cuts publish --speed` paces a file into Kafka (no flow): SIGTERM and
    SIGINT end it with one line, 143 / 130."""
    from connectors.kafka.embedded import EmbeddedKafka

    with EmbeddedKafka(log_path=str(tmp_path / "tansu.log")) as kafka:
        for sig in (signal.SIGTERM, signal.SIGINT):
            code, lines, sent = signal_at_progress(
                ["publish", "--bars", str(market), "--kafka", kafka.bootstrap, "--topic", f"paced-{sig}",
                 "--speed", "60"], [sig])
            assert sent
            assert_one_clean_line(code, lines, sig)


def test_the_second_signal_during_a_stop_exits_at_once_with_one_line():
    """The mechanism itself, deterministically: the first signal only asks
    for a stop, the second one ends the process at once."""
    code = (
        "import os, signal, time\n"
        "from dataflows.stop import StopRequest, stop_on_signals\n"
        "stop = StopRequest()\n"
        "with stop_on_signals(stop):\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(0.05)\n"
        "    assert stop.requested and stop.signum == signal.SIGTERM\n"
        "    print('asked', flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(5)\n"
        "print('not reached')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.stdout == "asked\n"
    assert_one_clean_line(proc.returncode, proc.stderr.splitlines(), signal.SIGINT)
    assert "at once" in proc.stderr


def test_after_an_interrupted_rerun_cuts_report_still_shows_the_complete_results(market, tmp_path):
    """The issue's case: a finished run, then Ctrl-C in a rerun of the same
    id. `cuts report` (and `runs`) must show the complete results, and a run
    that never finished must say it is partial."""
    ch = ["--clickhouse", f"chdb://{tmp_path / 'ch'}"]
    cuts("backtest", "--bars", str(market), *ch, "--run-id", "r", "--quiet")
    before = cuts("report", *ch).stdout
    code, lines, sent = signal_at_progress(["backtest", "--bars", str(market), *ch, "--run-id", "r"],
                                           [signal.SIGINT])
    assert sent and code == 130 and len(lines) == 1 and "last complete attempt (1)" in lines[0], lines
    after = cuts("report", *ch).stdout
    assert after.splitlines()[2].startswith("Status: finished (attempt 1")
    assert "Note: a newer attempt (2, started" in after and "is interrupted on SIGINT" in after
    metrics = lambda text: text[text.index("Metric"):]  # noqa: E731
    assert metrics(after) == metrics(before)
    listed = cuts("runs", *ch).stdout
    assert "finished (attempt 2 interrupted)" in listed
