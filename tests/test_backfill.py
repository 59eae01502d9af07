"""`cuts backfill`: the pure planning rules, then the REAL alpaca-py REST client
against tests/alpaca_server.py, writing bar files and a REAL embedded Tansu topic."""
from __future__ import annotations

import datetime as dt
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaConsumer, TopicPartition

sys.path.insert(0, str(Path(__file__).parent))
from alpaca_server import AlpacaServer  # noqa: E402

from connectors.alpaca.bars import (  # noqa: E402
    BackfillArgumentError,
    Backoff,
    RequestWindow,
    parse_time_arg,
    parse_timeframe,
    plan_windows,
)
from connectors.alpaca.history import AlpacaHistory, AlpacaRejected, AlpacaUnavailable  # noqa: E402
from connectors.files.barfile import read_bar_file  # noqa: E402
from connectors.kafka.admin import topic_partitions  # noqa: E402
from connectors.kafka.codec import BarsRecord, WatermarkRecord, decode_record  # noqa: E402
from connectors.kafka.embedded import EmbeddedKafka  # noqa: E402
from dataflows.cli import main as cli  # noqa: E402
from operators.types import Bar  # noqa: E402

UTC = dt.timezone.utc
D0 = dt.datetime(2024, 1, 2, tzinfo=UTC)
T0 = int(D0.timestamp())
SYMBOLS = ["AAPL", "BRK.B", "MSFT"]


# ------------------------------------------------------------------ pure
def test_dates_cover_whole_utc_days_and_times_round_out_to_minutes():
    assert parse_time_arg("2024-01-02", "--start") == T0
    assert parse_time_arg("2024-01-02", "--end", end=True) == T0 + 86400  # the day is included
    assert parse_time_arg("2024-01-02T14:30:20Z", "--start") == T0 + 52200
    assert parse_time_arg("2024-01-02T09:30:20-05:00", "--end", end=True) == T0 + 52260
    assert parse_time_arg("2024-01-02T14:30", "--start") == T0 + 52200  # naive = UTC
    with pytest.raises(BackfillArgumentError, match="--start: not a date"):
        parse_time_arg("yesterday", "--start")


def test_timeframes_are_alpacas_and_long_ranges_are_cut_into_bounded_windows():
    assert parse_timeframe("1Min")[1] == 60 and parse_timeframe("15min")[1] == 900
    assert parse_timeframe("1Hour")[1] == 3600 and parse_timeframe("1Day")[1] == 86400
    for bad in ("0Min", "60Min", "2Day", "1Week", "fast"):
        with pytest.raises(BackfillArgumentError, match="--timeframe"):
            parse_timeframe(bad)
    windows = plan_windows(T0, T0 + 12 * 86400, 60)
    day = 86400
    assert windows == [(T0, T0 + 5 * day), (T0 + 5 * day, T0 + 10 * day), (T0 + 10 * day, T0 + 12 * day)]
    assert plan_windows(T0, T0 + 86400 * 400, 86400) == [(T0, T0 + 86400 * 400)]


def test_request_window_allows_at_most_limit_requests_per_period():
    w = RequestWindow(limit=3, period=60.0)
    for t in (0.0, 1.0, 2.0):
        assert w.wait(t) == 0.0
        w.record(t)
    assert w.wait(30.0) == 30.0  # the 4th waits until the 1st leaves the window
    assert w.wait(60.0) == 0.0


# ------------------------------------------------------------------ I/O fixtures
@pytest.fixture(scope="module")
def kafka():
    with EmbeddedKafka() as broker:
        yield broker


@pytest.fixture
def server():
    with AlpacaServer(max_page_size=500) as s:  # small pages: paging is exercised
        yield s
        assert s.errors == [], "\n".join(s.errors)


@pytest.fixture
def env(monkeypatch, server):
    monkeypatch.setenv("ALPACA_API_KEY", server.key)
    monkeypatch.setenv("ALPACA_SECRET_KEY", server.secret)
    monkeypatch.setenv("ALPACA_DATA_URL", server.rest_url)
    for name in ("ALPACA_FEED", "KAFKA_BOOTSTRAP"):
        monkeypatch.delenv(name, raising=False)


def history(days: int = 7, per_day: int = 90) -> list:
    """Bars every minute from 14:30 UTC for `per_day` minutes, each day, per symbol."""
    out = []
    for d in range(days):
        for i in range(per_day):
            ts = T0 + d * 86400 + 52200 + 60 * i
            for k, sym in enumerate(SYMBOLS):
                c = 100.0 + k * 10 + d + i / 100
                out.append({"S": sym, "t": dt.datetime.fromtimestamp(ts, UTC), "o": c - 0.5, "h": c + 1,
                            "l": c - 1, "c": c, "v": 1000 + i, "n": 10 + k, "vw": c - 0.25})
    return out


def as_tuples(bars: list) -> list:
    return sorted((b["S"], int(b["t"].timestamp()), b["o"], b["h"], b["l"], b["c"], b["v"], b["n"], b["vw"])
                  for b in bars)


def run_cuts(capsys, *args) -> tuple:
    code = cli.main(["backfill", *args])
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------ I/O: to a file
@pytest.mark.parametrize("ext", ["parquet", "csv"])
def test_backfill_to_file_round_trips_through_read_bar_file(server, env, capsys, tmp_path, ext):
    loaded = history(days=7)
    server.load_history(loaded)
    path = tmp_path / f"bars.{ext}"
    code, out, err = run_cuts(capsys, "--symbols", ",".join(SYMBOLS), "--start", "2024-01-02",
                              "--end", "2024-01-08", "--out", str(path))
    assert code == 0, err
    cols = read_bar_file(str(path))
    got = sorted(zip(cols.symbol.tolist(), cols.ts.tolist(), cols.open.tolist(), cols.high.tolist(),
                     cols.low.tolist(), cols.close.tolist(), cols.volume.tolist(),
                     cols.trade_count.tolist(), cols.vwap.tolist()))
    assert got == as_tuples(loaded)
    assert np.all(np.diff(cols.ts) >= 0)  # written in time order
    assert "window 1/2" in err and "window 2/2" in err  # 7 days of 1Min: two 5-day windows
    assert f"backfilled {len(loaded):,} 1Min bars of 3 symbol(s)" in out
    reqs = server.requests("/v2/stocks/bars")
    assert len(reqs) >= len(loaded) // 500 and {r.query["feed"] for r in reqs} == {"iex"}
    assert not (tmp_path / f"bars.{ext}.part").exists()


# ------------------------------------------------------------------ I/O: to Kafka
def read_topic(bootstrap: str, topic: str, timeout: float = 10.0) -> dict:
    tps = [TopicPartition(topic, p) for p in topic_partitions(bootstrap, topic)]
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             fetch_max_wait_ms=10, group_id=None)
    try:
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out = {tp.partition: [] for tp in tps}
        deadline = time.monotonic() + timeout
        while True:
            for tp, records in consumer.poll(timeout_ms=50).items():
                out[tp.partition] += [decode_record(r.key, r.value) for r in records]
            hw = [consumer.highwater(tp) for tp in tps]
            if all(h is not None and consumer.position(tp) >= h for tp, h in zip(tps, hw)):
                return out
            assert time.monotonic() < deadline, "reading the topic timed out"
    finally:
        consumer.close()


@pytest.mark.parametrize("records", ["bars", "bar"])
def test_backfill_to_kafka_writes_event_time_markers_and_no_bar_behind_one(server, env, capsys, kafka, records):
    loaded = history(days=7, per_day=30)
    server.load_history(loaded)
    topic = f"backfill-{uuid.uuid4().hex[:6]}"
    code, out, err = run_cuts(capsys, "--symbols", ",".join(SYMBOLS), "--start", "2024-01-02",
                              "--end", "2024-01-08", "--kafka", kafka.bootstrap, "--topic", topic,
                              "--partitions", "2", "--quiet", "--records", records)
    assert code == 0, err
    assert err == ""  # --quiet
    parts = read_topic(kafka.bootstrap, topic)
    assert len(parts) == 2
    bars, markers = [], []
    for recs in parts.values():
        watermark, marks = -1, 0
        for r in recs:
            if isinstance(r, WatermarkRecord):
                assert r.ts >= watermark  # markers never go back
                watermark = r.ts
                marks += 1
                continue
            # one bar per record, or several of one symbol's (bars records, the default)
            assert isinstance(r, Bar if records == "bar" else BarsRecord), r
            for b in ([r] if records == "bar" else r.bars):
                assert b.ts >= watermark, "a bar behind a marker would be late"
                bars.append((b.symbol, b.ts, b.open, b.high, b.low, b.close, b.volume, b.trade_count, b.vwap))
        # the last marker declares the last minute complete
        assert watermark == max(int(b["t"].timestamp()) for b in loaded) + 60
        markers.append(marks)
    assert sorted(bars) == as_tuples(loaded)
    minutes = {int(b["t"].timestamp()) for b in loaded}
    assert markers[0] == markers[1] and f"({sum(markers)} markers)" in out  # every marker to each partition
    if records == "bar":
        assert markers[0] == len(minutes)  # one per minute
    else:
        assert markers[0] == 2  # one per window (two time windows, each far below 8,192 bars)


# ------------------------------------------------------------------ I/O: limits and errors
def test_requests_stay_within_the_rate_limit(server):
    server.load_history(history(days=1, per_day=5))
    h = AlpacaHistory(server.key, server.secret, url=server.rest_url, symbols_per_request=1)
    h.window = RequestWindow(limit=2, period=0.5)  # Alpaca's 200/min, scaled down
    bars = h.fetch(SYMBOLS * 2, T0, T0 + 86400)  # 6 requests, one symbol each
    assert len(bars) == 30
    times = [r.t for r in server.requests("/v2/stocks/bars")]
    assert len(times) == 6 and all(b - a >= 0.49 for a, b in zip(times, times[2:])), times


def test_rate_limited_and_failing_requests_back_off_then_stop_with_a_typed_error(server):
    server.load_history(history(days=1, per_day=3))
    h = AlpacaHistory(server.key, server.secret, url=server.rest_url, backoff=Backoff(0.1, 0.4), attempts=3)
    server.fail_requests(2, status=429)
    assert len(h.fetch(["AAPL"], T0, T0 + 86400)) == 3
    times = [r.t for r in server.requests()]
    assert [r.status for r in server.requests()] == [429, 429, 200]
    assert times[1] - times[0] >= 0.05 and times[2] - times[1] >= 0.1  # 0.05-0.1 s, then 0.1-0.2 s
    server.fail_requests(3, status=503)
    with pytest.raises(AlpacaUnavailable, match="after 3 attempts"):
        h.fetch(["AAPL"], T0, T0 + 86400)
    server.fail_requests(1, status=400, body={"message": "invalid symbol"})
    with pytest.raises(AlpacaRejected, match="HTTP 400"):
        h.fetch(["AAPL"], T0, T0 + 86400)


@pytest.mark.parametrize("args,env_change,message", [
    (["--start", "2024-01-02", "--end", "2024-01-03", "--out", "x.parquet"], {"ALPACA_SECRET_KEY": None},
     "Alpaca credentials missing: set ALPACA_SECRET_KEY"),
    (["--start", "2024-01-02", "--end", "2024-01-03", "--out", "x.parquet"], {"ALPACA_SECRET_KEY": "wrong"},
     "refused the credentials (HTTP 403)"),
    (["--start", "2024-01-03", "--end", "2024-01-02", "--out", "x.parquet"], {}, "--end"),
    (["--start", "2024-01-02", "--end", "2024-01-03"], {}, "nowhere to write"),
    (["--start", "2024-01-02", "--end", "2024-01-03", "--out", "x.txt"], {}, ".parquet or .csv"),
])
def test_bad_input_exits_2_with_one_line(server, env, monkeypatch, capsys, tmp_path, args, env_change,
                                         message):
    monkeypatch.chdir(tmp_path)
    for name, value in env_change.items():
        if value is None:
            monkeypatch.delenv(name)
        else:
            monkeypatch.setenv(name, value)
    code, out, err = run_cuts(capsys, "--symbols", "AAPL", *args)
    assert code == 2 and err.count("\n") == 1 and err.startswith("cuts: error: ") and message in err, err
    assert not list(tmp_path.iterdir())  # nothing half-written
