"""`cuts run --alpaca` stopped by SIGINT and SIGTERM at several points, as a
process against embedded Tansu and the local Alpaca server
(tests/paper_session.py): while it connects, idle before the first bar, with
an entry at the broker not yet filled, and at the end. Each stop: exit
128 + signal, one line, no traceback, panic, warning or error; nothing lost:
the same command resumes from the recovery directory to the backtest's
trades, and every order the broker accepted has its whole history. A relay
that fails for good ends the run with its error, not as an interruption.
(`cuts run` without Alpaca: tests/test_kafka_e2e.py; `cuts stream`:
tests/test_alpaca_stream.py.)
"""
from __future__ import annotations

import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from connectors.kafka.embedded import EmbeddedKafka

sys.path.insert(0, str(Path(__file__).parent))
from paper_session import Session, assert_full_history, compare, order_history  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def kafka(tmp_path_factory):
    with EmbeddedKafka(log_path=str(tmp_path_factory.mktemp("tansu") / "tansu.log")) as k:
        yield k.bootstrap


def test_stopped_at_every_point_it_resumes_to_the_backtests_trades_with_the_whole_order_history(
        kafka, tmp_path):
    s = Session(tmp_path, kafka, symbols=2, topic="bars-stops", run_id="stops1", trade_topic=None)
    s.keep_first(150)
    minutes = sorted(s.minutes)
    recovery = tmp_path / "recovery"
    try:
        # idle: listening, no bar yet (its trade topic is the run's own, named on the start-up line)
        s.start(recovery)
        first = s.wait_line("paper trading run stops1")
        assert "broker events via trade_updates.stops1" in first, first
        s.wait_ready()
        time.sleep(1.0)
        line = s.stop_cleanly(signal.SIGTERM)
        # the flow running (or, on a slow machine, still being set up): a clean stop either way
        assert ("run stops1 stopped on SIGTERM after 0 bars" in line
                or line == "cuts: interrupted by SIGTERM\n"), line

        # with an entry sent and not yet filled at the broker
        s.start(recovery)
        s.wait_ready()
        pending = None
        for i, ts in enumerate(minutes):
            s.open_minute(ts)
            s.close_minute(ts)
            s.wait_minute(ts)
            pending = [o for o in s.server.orders(status="open")
                       if o["type"] == "market" and o["client_order_id"].endswith(".entry")]
            if pending and i >= 40:
                break
        assert pending, "no entry was sent"
        line = s.stop_cleanly(signal.SIGINT)
        assert "run stops1 stopped on SIGINT" in line and str(recovery) in line, line

        # resumed: the entry fills at the next open as if nothing happened; stopped at the end
        s.start(recovery)
        s.wait_ready()
        s.play(minutes[i + 1:])
        line = s.stop_cleanly(signal.SIGTERM)
        assert "run stops1 stopped on SIGTERM" in line, line
    finally:
        s.close()
    killed = pending[0]["client_order_id"]
    assert [o["status"] for o in s.server.orders() if o["client_order_id"] == killed] == ["filled"]
    rows, backtest = compare(s, tmp_path, run="stops1")
    assert len(backtest) >= 2
    assert [r for r in rows if r["status"] != "matched"] == [] and len(rows) == len(backtest)
    assert assert_full_history(s.server, order_history(s.dsn, "stops1"), "stops1") >= 2 * len(backtest)


def test_stopped_while_it_connects_to_the_broker_it_ends_with_one_line(kafka, tmp_path):
    silent = socket.socket()  # a trade-updates endpoint that takes the connection and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    s = Session(tmp_path, kafka, symbols=1, topic="bars-connecting")
    s.env["ALPACA_TRADING_WS_URL"] = f"ws://127.0.0.1:{silent.getsockname()[1]}/stream"
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            s.start(tmp_path / "recovery")
            s.wait_line("paper trading run paper1")
            time.sleep(1.0)  # reconciled; the relay waits for the stream's greeting
            assert not any(line.startswith("trading: relay listening") for line in s.log)
            line = s.stop_cleanly(sig)
            assert line == f"cuts: interrupted by {sig.name}\n", line
    finally:
        s.close()
        silent.close()


def test_a_relay_that_fails_for_good_ends_the_run_with_its_error_not_as_an_interruption(kafka, tmp_path):
    s = Session(tmp_path, kafka, symbols=1, topic="bars-relay-fails")
    minutes = sorted(s.minutes)
    try:
        s.start(tmp_path / "recovery")
        s.wait_ready()
        s.play(minutes[:3])
        s.server.fail_trading_auth(None)  # the keys are refused from now on
        s.server.drop_trading_streams()
        code = s.proc.wait(timeout=60)
        time.sleep(0.3)
    finally:
        s.close()
    text = "".join(s.log)
    assert code == 2, text
    ends = [line for line in s.log if line.startswith("cuts:")]
    assert len(ends) == 1 and "trading stopped: the trade-updates relay failed" in ends[0], text
    assert "refused the keys" in ends[0] and "Traceback" not in text and "panicked" not in text


def test_cuts_run_without_alpaca_stopped_idle_ends_with_one_line_and_the_documented_code(kafka, tmp_path):
    """An empty topic, nothing to do: a stop is still one line and 128 + signal
    (mid-replay and at the end: tests/test_kafka_e2e.py)."""
    import subprocess

    from connectors.kafka.admin import ensure_topic
    from paper_session import CUTS, ROOT

    ensure_topic(kafka, "bars-idle", 1)
    for sig in (signal.SIGINT, signal.SIGTERM):
        proc = subprocess.Popen([*CUTS, "run", "--kafka", kafka, "--topic", "bars-idle", "--run-id", "idle1",
                                 "--clickhouse", f"chdb://{tmp_path / 'ch'}", "--recovery-dir",
                                 str(tmp_path / "rec"), "--snapshot-s", "1"],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stderr.readline().startswith("live run on "), "no start-up line"
            time.sleep(2.0)  # tailing the empty topic
            proc.send_signal(sig)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        lines = [line for line in err.splitlines() if not line.startswith("bars stored")]
        assert proc.returncode == 128 + sig and len(lines) == 1, err
        assert (lines[0].startswith(f"cuts: run idle1 stopped on {sig.name} after 0 bars")
                or lines[0] == f"cuts: interrupted by {sig.name}"), err
        assert "Traceback" not in err and "panicked" not in err and out == ""
