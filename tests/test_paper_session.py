"""A paper session end to end (`tests/paper_session.py`): `cuts run --alpaca`
over a day of generated bars makes the trades `cuts backtest` makes on the
same bars; a SIGKILL between an order's submission and its fill neither
doubles the order nor loses the fill; and what the broker holds is in the
order history, whatever a restart replays.
"""
from __future__ import annotations

import datetime as dt
import signal
import sys
import time
from pathlib import Path

import pytest

from connectors.kafka.embedded import EmbeddedKafka
from operators.types import iso

sys.path.insert(0, str(Path(__file__).parent))
from paper_session import (  # noqa: E402
    UTC,
    Session,
    assert_full_history,
    compare,
    cuts,
    order_history,
    read_csv,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def kafka(tmp_path_factory):
    with EmbeddedKafka(log_path=str(tmp_path_factory.mktemp("tansu") / "tansu.log")) as k:
        yield k.bootstrap


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
    # what the broker holds is in the order history, with its broker id, never `skipped`
    history = order_history(s.dsn)
    assert assert_full_history(s.server, history) >= 20
    assert {"filled"} <= {r["event"] for r in history[killed]}
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
                            "AND event = 'refused'")
        halted = ch.command("SELECT count() FROM thousandcuts.rejections FINAL WHERE run_id = 'paper1' "
                            "AND reason = 'halted'")
    finally:
        close_clients()
    assert controls == [("ops", "halt"), ("ops", "resume"), ("circuit_breaker", "halt")]
    assert kill >= 1 and failed >= 5 and halted >= 1


def test_a_restart_after_downtime_adopts_the_replayed_orders_the_broker_holds_never_skips_them(kafka, tmp_path):
    """The issue's case: kill -9, back 11 minutes later by the broker's clock;
    the replay re-decides entries placed and filled before the kill. They are
    adopted (broker id kept), not skipped as stale; nothing is placed twice;
    the decision's age is read from the broker's clock."""
    s = Session(tmp_path, kafka, topic="bars-downtime")
    minutes = sorted(s.minutes)
    recovery = tmp_path / "recovery"
    try:
        s.start(recovery, snapshot_s=3600)  # no snapshot before the kill: the restart replays it all
        for i, ts in enumerate(minutes):
            s.play([ts])
            filled = [o for o in s.server.orders(status="filled") if o["client_order_id"].endswith(".entry")]
            if len(filled) >= 3:
                break
        s.stop(signal.SIGKILL)
        last = minutes[i]
        back = last + 60 + 660
        s.server.set_now(dt.datetime.fromtimestamp(back, UTC))
        orders_before, posts = len(s.server.orders()), len(s.server.order_posts())
        s.start(recovery, snapshot_s=3600)
        s.wait_ready()
        s.wait_minute(last)  # the replay is through
        s.stop()
    finally:
        s.close()
    assert len(s.server.orders()) == orders_before, "a replay placed an order again"
    assert [p.body["client_order_id"] for p in s.server.order_posts()[posts:]
            if p.body["client_order_id"].endswith(".entry")] == [], "a stale entry went to the broker"
    history = order_history(s.dsn)
    assert_full_history(s.server, history)
    for o in filled:
        adopted = [r for r in history[o["client_order_id"]] if r["event"] == "adopted"]
        assert adopted, history[o["client_order_id"]]
        r = adopted[-1]
        assert (r["broker_order_id"], r["status"], r["clock"]) == (o["id"], "filled", "broker")
        assert r["at"] >= back * 1000
        # its bar closed at least 11 minutes before by the broker's clock, and at most the session
        assert 660_000 <= r["decision_lag_ms"] <= (back - minutes[0]) * 1000


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


PANIC_CONFIG = """
strategies:
  - {fast: 5, slow: 15, confidence: 0.70}
  - {type: panic_rebound, drop_window: 5, volume_window: 10, min_drop_pct: 0.01, volume_mult: 3.0,
     exit: {take_profit_pct: 0.004, stop_loss_pct: 0.002, time_stop_minutes: 20}}
signals: {aggregation: independent, min_confidence: 0.7, min_risk_reward: 2.0}
exit: {take_profit_pct: 0.008, stop_loss_pct: 0.004, trailing_stop: false, time_stop_minutes: 30,
       time_stop_min_move_pct: 0.002}
risk: {max_consecutive_losses: 10}
execution: {slippage_bps: 0.0, commission_per_share: 0.0}
"""


def planted_panic(symbols=3, seed=11, minutes=100, at=40):
    """A generated morning with a panic planted in the first symbol: four bars down
    0.5 % each on 10x the volume from minute `at`, a green bar closing higher, and the
    rest of the symbol's day moved to continue from there."""
    import numpy as np

    from connectors.files.synthetic import generate_bars

    df = generate_bars(symbols, 1, seed=seed)
    first = sorted(df["timestamp"].unique())[:minutes]
    df = df[df["timestamp"].isin(first)].reset_index(drop=True)
    sym = sorted(df["symbol"].unique())[0]
    rows = df.index[df["symbol"] == sym].to_numpy()
    price = float(df.loc[rows[at - 1], "close"])
    volume = float(df.loc[rows[:at], "volume"].mean()) * 10
    for i in range(4):
        o, c = price, round(price * 0.995, 2)
        df.loc[rows[at + i], ["open", "high", "low", "close", "volume"]] = [o, o, c, c, volume]
        price = c
    o, c = price, round(price * 1.002, 2)
    df.loc[rows[at + 4], ["open", "high", "low", "close", "volume"]] = [o, c, o, c, volume / 10]
    rest = rows[at + 5:]
    scale = c / float(df.loc[rest[0], "open"])
    for col in ("open", "high", "low", "close", "vwap"):
        df.loc[rest, col] = np.round(df.loc[rest, col] * scale, 2)
    df.loc[rest, "high"] = df.loc[rest, ["open", "high", "close"]].max(axis=1)
    df.loc[rest, "low"] = df.loc[rest, ["open", "low", "close"]].min(axis=1)
    df["vwap"] = df["vwap"].clip(df["low"], df["high"])
    return df, sym


def test_paper_session_protects_a_panic_entry_with_its_own_stop_and_target(kafka, tmp_path):
    """`cuts run --alpaca` with the panic detector beside an SMA pair: the panic entry's
    OCO (placed by the relay at the fill, then asked again by the flow) is its own 0.2 % /
    0.4 %, not the top level's 0.4 % / 0.8 %, and the session makes the backtest's trades."""
    bars, sym = planted_panic()
    s = Session(tmp_path, kafka, topic="bars-panic", config=PANIC_CONFIG, bars=bars)
    try:
        s.start()
        s.play(sorted(s.minutes))
        s.stop()
        ocos = {o["client_order_id"]: o for o in s.server.orders() if o.get("order_class") == "oco"}
    finally:
        s.close()
    rows, backtest = compare(s, tmp_path)
    panic = [t for t in backtest if t["strategy"] == "panic_5_100"]
    assert panic and panic[0]["symbol"] == sym, backtest
    assert [r for r in rows if r["status"] != "matched"] == [] and len(rows) == len(backtest)
    for t in backtest:
        entry = float(t["entry_price"])
        sl, tp = (0.002, 0.004) if t["strategy"] == "panic_5_100" else (0.004, 0.008)
        decided = int(dt.datetime.fromisoformat(t["entry_time"].replace("Z", "+00:00")).timestamp()) - 60
        oco = ocos[f"paper1.{t['strategy']}.{t['symbol']}.{decided}.entry.oco"]
        assert abs(float(oco["legs"][0]["stop_price"]) - entry * (1 - sl)) < 0.01, (t, oco)
        assert abs(float(oco["limit_price"]) - entry * (1 + tp)) < 0.01, (t, oco)
