"""A paper session, the harness (not a test module): `cuts run --alpaca` as
a process against the local Alpaca server (real alpaca-py TradingClient /
TradingStream) and embedded Tansu, over a day of generated bars, the server
filling at the bars' prices as the spec assumes (market orders at the next
open, the OCO intrabar); and what the run left in ClickHouse."""
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

from connectors.files.synthetic import generate_bars, write_bars
from connectors.kafka.admin import ensure_topic
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

def cuts(*args, env=None, timeout=300):
    proc = subprocess.run([*CUTS, *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout, env=env)
    assert proc.returncode == 0, f"cuts {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


class Session:
    """The market, the broker and the trading process, one minute at a time."""

    def __init__(self, tmp: Path, kafka: str, symbols=3, seed=11, topic="bars", run_id="paper1",
                 trade_topic: str | None = "", config: str = CONFIG, bars=None):
        self.tmp, self.kafka, self.topic, self.run_id = tmp, kafka, topic, run_id
        # each test its own broker account, so its own trade topic ("": one named after the bars
        # topic; None: the run's default, trade_updates.{run id})
        self.trade_topic = f"trade_updates.{topic}" if trade_topic == "" else trade_topic
        bars = generate_bars(symbols, 1, seed=seed) if bars is None else bars  # or a given frame
        self.bars_path = tmp / "bars.parquet"
        write_bars(bars, str(self.bars_path))
        self.minutes = {}
        for row in bars.itertuples():
            ts = int(row.timestamp.timestamp())
            self.minutes.setdefault(ts, []).append(
                Bar(row.symbol, ts, row.open, row.high, row.low, row.close, row.volume))
        (tmp / "cfg.yaml").write_text(config)
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
    def start(self, recovery: Path | None = None, snapshot_s: int = 1):
        self.lines = queue.Queue()
        args = [*CUTS, "run", "--alpaca", "--kafka", self.kafka, "--topic", self.topic, "--run-id", self.run_id,
                "--config", str(self.tmp / "cfg.yaml"), "--clickhouse", self.dsn,
                "--clock-poll-s", "0.02", "--grace-s", "0.05", "--clock-refresh-s", "0",
                *(["--trade-topic", self.trade_topic] if self.trade_topic else [])]
        if recovery is not None:
            args += ["--recovery-dir", str(recovery), "--snapshot-s", str(snapshot_s)]
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

    def wait_line(self, prefix: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                assert self.proc.poll() is None, "trading process ended:\n" + "".join(self.log[-40:])
                continue
            if line.startswith(prefix):
                return line
        raise AssertionError(f"no line '{prefix}...':\n" + "".join(self.log[-40:]))

    def stop(self, sig=signal.SIGINT):
        self.proc.send_signal(sig)
        self.proc.wait(timeout=60)

    def stop_cleanly(self, sig) -> list[str]:
        """Signal the run; assert it ends as a stop should: exit 128 + signal,
        one `cuts:` line, no traceback, panic, warning or error after the
        signal. Returns that line."""
        seen = len(self.log)
        self.stop(sig)
        time.sleep(0.3)  # the reader thread takes the last lines
        after = self.log[seen:]
        text = "".join(after)
        assert self.proc.returncode == 128 + sig, text
        faults = [line for line in after if any(w in line for w in (
            "Traceback", "panicked", "WARNING", "ERROR", "Error:", "Exception"))]
        assert faults == [], text
        ends = [line for line in after if line.startswith("cuts:")]
        assert len(ends) == 1, text
        return ends[0]

    def keep_first(self, n: int) -> None:
        """Only the day's first `n` minutes (file and market), to keep a test short."""
        import pandas as pd

        kept = sorted(self.minutes)[:n]
        self.minutes = {ts: self.minutes[ts] for ts in kept}
        bars = pd.read_parquet(self.bars_path)
        bars[bars["timestamp"] <= pd.Timestamp(kept[-1], unit="s", tz="UTC")].to_parquet(self.bars_path)

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


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def compare(s, tmp_path, run="paper1"):
    cuts("backtest", "--bars", str(s.bars_path), "--config", str(tmp_path / "cfg.yaml"), "--clickhouse", s.dsn,
         "--run-id", "bt1", "--quiet", "--out", str(tmp_path / "bt"))
    cuts("report", "--run-id", run, "--against", "bt1", "--clickhouse", s.dsn, "--csv", str(tmp_path / "cmp.csv"))
    return read_csv(tmp_path / "cmp.csv"), read_csv(tmp_path / "bt" / "trades.csv")


def order_history(dsn: str, run_id: str = "paper1") -> dict[str, list[dict]]:
    """{client order id: its rows of `broker_orders`, oldest first} (the run stopped)."""
    from connectors.clickhouse.client import close_clients, open_client

    try:
        res = open_client(dsn).query(
            "SELECT client_order_id, event, broker_order_id, status, leg, filled_qty, clock, source, "
            "intent, decision_lag_ms, toUnixTimestamp64Milli(at) AS at FROM thousandcuts.broker_orders FINAL "
            "WHERE run_id = {r:String} ORDER BY at", parameters={"r": run_id})
        rows = [dict(zip(res.column_names, r)) for r in res.result_rows]
    finally:
        close_clients()
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["client_order_id"], []).append(r)
    return out


def assert_full_history(server, history: dict[str, list[dict]], run_id: str = "paper1") -> int:
    """Every order the server accepted for the run has its history, with its
    broker id: the request (decided and sent by the sink, or sent by the
    relay), the broker taking it (accepted, or adopted by a replay), and how
    it ended (filled, canceled); the OCO's legs too. No row of an accepted
    order says `skipped`. Returns how many orders were checked."""
    orders = {o["id"]: o for o in server.orders()}
    parents = {leg["id"]: o for o in orders.values() for leg in (o.get("legs") or [])}
    checked = 0
    for o in orders.values():
        top = parents.get(o["id"], o)
        while top["id"] in parents:  # a replaced leg's successor
            top = parents[top["id"]]
        cid = top["client_order_id"]
        if not cid.startswith(f"{run_id}."):
            continue
        rows = history.get(cid, [])
        events = [r["event"] for r in rows]
        assert "skipped" not in events, (cid, events)
        mine = [r for r in rows if r["broker_order_id"] == o["id"]]
        if o is top:
            assert "sent" in events, (cid, events)
            if not cid.split(".")[-1].startswith(("oco", "r")):
                assert "decided" in events, (cid, events)
            assert {"accepted", "adopted"} & {r["event"] for r in mine}, (cid, o["id"], rows)
        else:
            assert mine or o["status"] in ("held", "new"), (cid, o["id"], o["status"], rows)
        ended = {"filled": "filled", "canceled": "canceled", "replaced": "replaced", "expired": "expired"}
        if o["status"] in ended:
            assert ended[o["status"]] in {r["event"] for r in mine}, (cid, o["id"], o["status"], rows)
        if o["status"] == "filled":
            assert max(r["filled_qty"] for r in mine) == int(float(o["filled_qty"])), (cid, rows)
        checked += 1
    return checked
