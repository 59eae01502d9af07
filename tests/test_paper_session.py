"""A paper session end to end: `cuts run --alpaca` against the local Alpaca
server (real alpaca-py TradingClient / TradingStream) and embedded Tansu,
over a day of generated bars, the server filling at the bars' prices as the
spec assumes (market orders at the next open, the OCO intrabar). It makes the
trades `cuts backtest` makes on the same bars, and a SIGKILL between an
order's submission and its fill neither doubles the order nor loses the fill.
"""
from __future__ import annotations

import csv
import datetime as dt
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from connectors.files.synthetic import generate_bars, write_bars
from connectors.kafka.admin import ensure_topic
from connectors.kafka.embedded import EmbeddedKafka
from connectors.kafka.producer import BarProducer
from operators.types import Bar, iso

sys.path.insert(0, str(Path(__file__).parent))
from alpaca_server import AlpacaServer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CUTS = [sys.executable, "-m", "dataflows.cli"]
UTC = dt.timezone.utc
CONFIG = """
strategies:
  - {fast: 5, slow: 15, confidence: 0.70}
  - {fast: 10, slow: 30, confidence: 0.75}
signals: {aggregation: independent, min_confidence: 0.7, min_risk_reward: 2.0}
exit: {take_profit_pct: 0.006, stop_loss_pct: 0.003, trailing_stop: true,
       trailing_activation_pct: 0.002, trailing_pct: 0.002, time_stop_minutes: 30,
       time_stop_min_move_pct: 0.002}
execution: {slippage_bps: 0.0, commission_per_share: 0.0}
"""

pytestmark = pytest.mark.slow


def cuts(*args, env=None, timeout=300):
    proc = subprocess.run([*CUTS, *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout, env=env)
    assert proc.returncode == 0, f"cuts {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


class Session:
    """The market, the broker and the trading process, one minute at a time."""

    def __init__(self, tmp: Path, kafka: str, symbols=3, seed=11, topic="bars"):
        self.tmp, self.kafka, self.topic = tmp, kafka, topic
        bars = generate_bars(symbols, 1, seed=seed)
        self.bars_path = tmp / "bars.parquet"
        write_bars(bars, str(self.bars_path))
        self.minutes = {}
        for row in bars.itertuples():
            ts = int(row.timestamp.timestamp())
            self.minutes.setdefault(ts, []).append(
                Bar(row.symbol, ts, row.open, row.high, row.low, row.close, row.volume))
        (tmp / "cfg.yaml").write_text(CONFIG)
        self.dsn = f"chdb://{tmp / 'ch'}"
        self.server = AlpacaServer(trading=True)
        self.server.__enter__()
        first = min(self.minutes)
        self.server.set_now(dt.datetime.fromtimestamp(first, UTC))
        for bar in self.minutes[first]:
            self.server.set_price(bar.symbol, bar.open)
        ensure_topic(kafka, topic, 1)
        self.producer = BarProducer(kafka, topic)
        self.env = {**os.environ, "ALPACA_API_KEY": self.server.key, "ALPACA_SECRET_KEY": self.server.secret,
                    "ALPACA_TRADING_URL": self.server.trading_url,
                    "ALPACA_TRADING_WS_URL": self.server.trading_stream_url}
        self.env.pop("ALPACA_PAPER", None)
        self.proc = None
        self.lines: queue.Queue = queue.Queue()
        self.log: list[str] = []

    # -- the trading process ------------------------------------------------
    def start(self, recovery: Path | None = None):
        self.lines = queue.Queue()
        args = [*CUTS, "run", "--alpaca", "--kafka", self.kafka, "--topic", self.topic, "--run-id", "paper1",
                "--config", str(self.tmp / "cfg.yaml"), "--clickhouse", self.dsn,
                "--clock-poll-s", "0.02", "--grace-s", "0.05", "--clock-refresh-s", "0",
                "--trade-topic", f"trade_updates.{self.topic}"]  # each test its own broker account
        if recovery is not None:
            args += ["--recovery-dir", str(recovery), "--snapshot-s", "1"]
        self.proc = subprocess.Popen(args, cwd=ROOT, env=self.env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()

    def _read(self, proc):
        for line in proc.stdout:
            self.log.append(line)
            self.lines.put(line)

    def wait_minute(self, ts: int, timeout: float = 60.0):
        want = f"minute {iso(ts)} done"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.proc.poll() is not None:
                    raise AssertionError("trading process ended:\n" + "".join(self.log[-40:]))
                continue
            if line.startswith(want):
                return
        raise AssertionError(f"no '{want}' within {timeout} s:\n" + "".join(self.log[-40:]))

    def wait_ready(self, timeout: float = 60.0):
        """Until the relay listens (a restarted run has reconciled and caught up)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                assert self.proc.poll() is None, "trading process ended:\n" + "".join(self.log[-40:])
                continue
            if line.startswith("trading: relay listening"):
                return
        raise AssertionError("trading run not ready:\n" + "".join(self.log[-40:]))

    def stop(self, sig=signal.SIGINT):
        self.proc.send_signal(sig)
        self.proc.wait(timeout=60)

    # -- one minute of the market --------------------------------------------
    def open_minute(self, ts: int):
        """The broker fills the market orders at this minute's opens and the
        relay protects the entries; returns the entries filled."""
        srv = self.server
        srv.set_now(dt.datetime.fromtimestamp(ts + 1, UTC))
        filled = []
        for bar in self.minutes[ts]:
            for o in srv.orders(status="open"):
                if o["symbol"] == bar.symbol and o["type"] == "market" and o["status"] != "held":
                    srv.fill(o["id"], price=bar.open, at=dt.datetime.fromtimestamp(ts + 1, UTC))
                    if o["client_order_id"].endswith(".entry"):
                        filled.append(o["client_order_id"])
        deadline = time.monotonic() + 15
        for cid in filled:  # protection rests at the broker before the minute goes on
            while not any(o["client_order_id"] == f"{cid}.oco" for o in srv.orders()):
                assert time.monotonic() < deadline, f"no OCO for {cid}\n" + "".join(self.log[-20:])
                time.sleep(0.01)
        return filled

    def close_minute(self, ts: int):
        """Resting orders fill inside the bar; the bar and its marker go to Kafka."""
        srv = self.server
        for bar in self.minutes[ts]:
            srv.fill_on_bar({"S": bar.symbol, "o": bar.open, "h": bar.high, "l": bar.low, "c": bar.close,
                             "v": bar.volume}, at=dt.datetime.fromtimestamp(ts + 30, UTC))
        srv.set_now(dt.datetime.fromtimestamp(ts + 61, UTC))
        self.producer.send_bars(self.minutes[ts])
        self.producer.send_watermark(ts + 60)
        self.producer.flush()

    def play(self, minutes):
        for ts in minutes:
            self.open_minute(ts)
            self.close_minute(ts)
            self.wait_minute(ts)

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.producer.close(check=False)
        self.server.__exit__(None, None, None)


@pytest.fixture(scope="module")
def kafka(tmp_path_factory):
    with EmbeddedKafka(log_path=str(tmp_path_factory.mktemp("tansu") / "tansu.log")) as k:
        yield k.bootstrap


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_paper_session_makes_the_backtests_trades(kafka, tmp_path):
    s = Session(tmp_path, kafka, topic="bars-paper")
    try:
        s.start()
        s.play(sorted(s.minutes))
        s.stop()
    finally:
        s.close()
    cuts("backtest", "--bars", str(s.bars_path), "--config", str(tmp_path / "cfg.yaml"), "--clickhouse", s.dsn,
         "--run-id", "bt1", "--quiet", "--out", str(tmp_path / "bt"))
    report = cuts("report", "--run-id", "paper1", "--against", "bt1", "--clickhouse", s.dsn,
         "--csv", str(tmp_path / "cmp.csv"))
    rows = read_csv(tmp_path / "cmp.csv")
    backtest = read_csv(tmp_path / "bt" / "trades.csv")
    assert len(backtest) >= 5
    assert [r for r in rows if r.get("status") != "matched"] == []
    assert len(rows) == len(backtest)
    assert "Exit reason differences            0" in report.stdout
    summary = cuts("report", "--run-id", "paper1", "--clickhouse", s.dsn).stdout
    assert "Broker orders" in summary and "protect" in summary and "entry" in summary
    # protective prices are rounded to the tick toward the entry: exits differ by under a cent
    for r in rows:
        assert abs(float(r["live_exit_price"]) - float(r["backtest_exit_price"])) < 0.01, r
        assert r["live_qty"] == r["backtest_qty"] and r["live_entry_price"] == r["backtest_entry_price"]


def compare(s, tmp_path, run="paper1"):
    cuts("backtest", "--bars", str(s.bars_path), "--config", str(tmp_path / "cfg.yaml"), "--clickhouse", s.dsn,
         "--run-id", "bt1", "--quiet", "--out", str(tmp_path / "bt"))
    cuts("report", "--run-id", run, "--against", "bt1", "--clickhouse", s.dsn, "--csv", str(tmp_path / "cmp.csv"))
    return read_csv(tmp_path / "cmp.csv"), read_csv(tmp_path / "bt" / "trades.csv")


def test_sigkill_between_submission_and_fill_neither_doubles_the_order_nor_loses_the_fill(kafka, tmp_path):
    s = Session(tmp_path, kafka, topic="bars-kill")
    minutes = sorted(s.minutes)
    recovery = tmp_path / "recovery"
    try:
        s.start(recovery)
        killed = None
        for i, ts in enumerate(minutes):
            s.open_minute(ts)
            s.close_minute(ts)
            s.wait_minute(ts)
            pending = [o for o in s.server.orders(status="open")
                       if o["type"] == "market" and o["client_order_id"].endswith(".entry")]
            if pending and i > 40:
                killed = pending[0]["client_order_id"]
                time.sleep(1.2)  # a snapshot may or may not have passed: either way is safe
                s.stop(signal.SIGKILL)
                break
        assert killed, "no entry was submitted"
        s.start(recovery)
        s.wait_ready()
        s.play(minutes[i + 1:])
        s.stop()
    finally:
        s.close()
    assert len([o for o in s.server.orders() if o["client_order_id"] == killed]) == 1
    assert s.server.order(killed)["status"] == "filled"
    rows, backtest = compare(s, tmp_path)
    assert [r for r in rows if r["status"] != "matched"] == [] and len(rows) == len(backtest)
    entry_ts = int(killed.rsplit(".", 2)[-2]) + 60
    assert any(r["entry_time"].startswith(iso(entry_ts)[:16]) for r in rows), (killed, rows)


def test_halt_flatten_closes_every_position_and_five_rejections_halt(kafka, tmp_path):
    s = Session(tmp_path, kafka, symbols=4, topic="bars-safety")
    minutes = sorted(s.minutes)
    try:
        s.start()
        s.play(minutes[:60])
        held = s.server.positions()
        assert held, "the session should hold positions by now"
        cuts("halt", "--kafka", kafka, "--topic", "bars-safety", "--flatten", "--why", "test", "--who", "ops")
        s.play(minutes[60:63])
        assert not s.server.positions() and not s.server.orders(status="open")
        cuts("resume", "--kafka", kafka, "--topic", "bars-safety", "--why", "test", "--who", "ops")
        s.server.reject_next_orders(1000, status=403)  # the broker refuses every order
        for i, ts in enumerate(minutes[63:], start=63):
            s.open_minute(ts)
            s.close_minute(ts)
            s.wait_minute(ts)
            if any(line.startswith("halt by circuit_breaker") for line in s.log):
                break
        else:
            raise AssertionError("the circuit breaker never halted")
        with s.server._lock:
            s.server._order_rejects.clear()  # the broker takes orders again
        posts = len(s.server.order_posts())
        s.play(minutes[i + 1:i + 20])
        entries_after = [p.body.get("client_order_id") for p in s.server.order_posts()[posts:]
                         if str(p.body.get("client_order_id", "")).endswith(".entry")]
        assert entries_after == [], "no entry while halted: a person resumes"
        s.stop()
    finally:
        s.close()
    from connectors.clickhouse.client import close_clients, open_client
    try:
        ch = open_client(s.dsn)
        controls = ch.query("SELECT who, action FROM thousandcuts.controls FINAL "
                            "WHERE run_id = 'paper1' ORDER BY ts, who").result_rows
        kill = ch.command("SELECT count() FROM thousandcuts.trades FINAL WHERE run_id = 'paper1' "
                          "AND exit_reason = 'kill_switch'")
        failed = ch.command("SELECT count() FROM thousandcuts.broker_orders FINAL WHERE run_id = 'paper1' "
                            "AND status = 'failed'")
        halted = ch.command("SELECT count() FROM thousandcuts.rejections FINAL WHERE run_id = 'paper1' "
                            "AND reason = 'halted'")
    finally:
        close_clients()
    assert controls == [("ops", "halt"), ("ops", "resume"), ("circuit_breaker", "halt")]
    assert kill >= 1 and failed >= 5 and halted >= 1


def test_a_trading_run_stopped_by_sigterm_and_sigint_ends_with_one_line_and_resumes_to_the_backtests_trades(
        kafka, tmp_path):
    """SIGTERM (a supervisor) mid-session, then Ctrl-C: exit 143 / 130, one
    line, no traceback or Rust panic; the same command resumes from the
    recovery directory and the session still makes the backtest's trades
    (the first 200 minutes of the day, to keep the suite short)."""
    s = Session(tmp_path, kafka, symbols=2, topic="bars-stop")
    minutes = sorted(s.minutes)[:200]
    s.minutes = {ts: s.minutes[ts] for ts in minutes}
    import pandas as pd
    bars = pd.read_parquet(s.bars_path)
    bars[bars["timestamp"] <= pd.Timestamp(minutes[-1], unit="s", tz="UTC")].to_parquet(s.bars_path)
    recovery = tmp_path / "recovery"
    try:
        for part, sig in ((minutes[:100], signal.SIGTERM), (minutes[100:], signal.SIGINT)):
            s.start(recovery)
            s.wait_ready()
            s.play(part)
            seen = len(s.log)
            s.stop(sig)
            time.sleep(0.2)  # the reader thread takes the last lines
            after = "".join(s.log[seen:])
            assert s.proc.returncode == 128 + sig, after
            assert "Traceback" not in after and "panicked" not in after, after
            ends = [line for line in s.log[seen:] if line.startswith("cuts:")]
            assert len(ends) == 1 and f"run paper1 stopped on {signal.Signals(sig).name}" in ends[0], after
    finally:
        s.close()
    rows, backtest = compare(s, tmp_path)
    assert len(backtest) >= 2
    assert [r for r in rows if r["status"] != "matched"] == [] and len(rows) == len(backtest)
