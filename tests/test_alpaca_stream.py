"""`cuts stream`: the pure completion rules, then the REAL alpaca-py stream and
REST clients against tests/alpaca_server.py, writing to a REAL embedded Tansu.

Times the connector decides on (completion, staleness) come from a manual
clock the tests move; backoff and subscribe delays are real (and small).
"""
from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import msgpack
import pytest
from kafka import KafkaConsumer, TopicPartition

sys.path.insert(0, str(Path(__file__).parent))
from alpaca.data.models import Bar as AlpacaBar  # noqa: E402
from alpaca_server import AlpacaServer  # noqa: E402

from connectors.alpaca.bars import Backoff, BarDecodeError, SymbolsError, parse_bar  # noqa: E402
from connectors.alpaca.live import run_stream  # noqa: E402
from connectors.alpaca.minutes import (  # noqa: E402
    MinuteCompleter,
    SentBars,
    in_regular_session,
    is_stale,
    resume_from,
    subscribe_batches,
)
from connectors.alpaca.stream import StreamSettings  # noqa: E402
from connectors.kafka.admin import topic_partitions  # noqa: E402
from connectors.kafka.codec import WatermarkRecord, decode_record  # noqa: E402
from connectors.kafka.embedded import EmbeddedKafka  # noqa: E402
from dataflows.cli import main as cli  # noqa: E402
from dataflows.cli.live_commands import stream_settings  # noqa: E402
from operators.types import Bar  # noqa: E402

T0 = 1704205800  # 2024-01-02T14:30:00Z, a Tuesday in the regular session
ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------ pure: parse_bar
def test_parse_bar_reads_stream_rest_and_alpaca_py_shapes():
    wire = {"T": "b", "S": "AAPL", "o": 1.0, "h": 2, "l": 0.5, "c": 1.5, "v": 100,
            "t": msgpack.Timestamp.from_unix_nano(T0 * 10**9 + 5), "n": 7, "vw": 1.2}
    want = Bar("AAPL", T0, 1.0, 2.0, 0.5, 1.5, 100.0, 7.0, 1.2)
    assert parse_bar(wire) == want
    rest = {"t": "2024-01-02T14:30:00Z", "o": 1.0, "h": 2, "l": 0.5, "c": 1.5, "v": 100, "n": 7, "vw": 1.2}
    assert parse_bar(rest, "AAPL") == want
    model = AlpacaBar("AAPL", {**rest, "t": dt.datetime.fromtimestamp(T0, dt.timezone.utc)})
    assert parse_bar(model) == want
    assert parse_bar({**rest, "n": None, "vw": None}, "AAPL").trade_count is None


@pytest.mark.parametrize("change,reason", [
    ({"S": None}, "missing field S"), ({"o": "1.0"}, "field o: expected a number, got str"),
    ({"v": True}, "field v: expected a number, got bool"), ({"t": "yesterday"}, "field t: not a time"),
    ({"c": None}, "missing field c")])
def test_parse_bar_names_what_is_wrong(change, reason):
    msg = {"T": "b", "S": "AAPL", "o": 1.0, "h": 2.0, "l": 0.5, "c": 1.5, "v": 100,
           "t": msgpack.Timestamp.from_unix_nano(T0 * 10**9)}
    with pytest.raises(BarDecodeError, match=reason):
        parse_bar({k: v for k, v in {**msg, **change}.items() if v is not None})


# ------------------------------------------------------------------ pure: completion rules
def test_minute_is_complete_grace_after_its_end_once_the_stream_covered_it():
    c = MinuteCompleter.starting(T0 + 5, grace=2.0)
    c.covered(T0 + 6)  # subscribed long before minute T0's bar is pushed (T0 + 60)
    assert c.step(T0 + 61.9) is None
    assert c.step(T0 + 62.0) == ("watermark", T0 + 60)
    c.declare(T0 + 60)
    assert c.step(T0 + 121) is None
    assert c.step(T0 + 242.5) == ("watermark", T0 + 240)  # several minutes at once


def test_a_gap_exposes_only_minutes_whose_bar_was_pushed_during_it():
    c = MinuteCompleter.starting(T0 + 5, grace=2.0)
    c.covered(T0 + 6)
    c.uncovered(T0 + 70)  # a disconnect after minute T0's bar came ...
    c.covered(T0 + 100)   # ... and before minute T0+60's: nothing was missed
    assert c.step(T0 + 122.5) == ("watermark", T0 + 120)
    c.declare(T0 + 120)
    c.uncovered(T0 + 179)  # down while minute T0+120's bar is pushed (T0 + 180)
    c.covered(T0 + 185)
    assert c.step(T0 + 182.5) == ("backfill", T0 + 120, T0 + 180)
    c.filled(T0 + 120, T0 + 180)
    assert c.step(T0 + 182.5) == ("watermark", T0 + 180)


def test_an_unfinished_subscription_at_start_exposes_the_first_minute():
    c = MinuteCompleter.starting(T0 + 50, grace=2.0)
    c.covered(T0 + 61)  # the subscription completed after minute T0's bar was pushed
    assert c.step(T0 + 63) == ("backfill", T0, T0 + 60)


def test_a_restart_backfills_every_minute_since_the_topics_last_marker_before_declaring_one():
    c = MinuteCompleter.starting(T0 + 185, grace=2.0, resume_from=T0 + 60)  # last marker: T0 complete
    assert c.declared == T0 + 60
    c.covered(T0 + 186)
    assert c.step(T0 + 186) == ("backfill", T0 + 60, T0 + 180)  # T0+60 and T0+120, not yet T0+180
    c.filled(T0 + 60, T0 + 180)
    assert c.step(T0 + 186) == ("watermark", T0 + 180)
    c.declare(T0 + 180)
    assert c.step(T0 + 242.5) == ("watermark", T0 + 240)  # then minute by minute, as usual


def test_a_restart_resumes_only_from_a_recent_marker_that_is_not_ahead_of_the_clock():
    hours = 3600.0
    assert resume_from(None, T0 + 5, 72 * hours) is None  # a topic without markers
    assert resume_from(T0 - 60, T0 + 5, 72 * hours) == T0 - 60
    assert resume_from(T0 - 71 * 3600, T0 + 5, 72 * hours) == T0 - 71 * 3600
    assert resume_from(T0 - 73 * 3600, T0 + 5, 72 * hours) is None  # too old: `cuts backfill` for it
    assert resume_from(T0 + 60, T0 + 5, 72 * hours) == T0 + 60  # the minute in progress was declared
    assert resume_from(T0 + 180, T0 + 5, 72 * hours) is None  # ahead of the clock


def test_a_minute_without_any_stream_bar_in_the_session_is_checked_by_backfill():
    c = MinuteCompleter.starting(T0 + 5, grace=2.0, in_session=lambda m: m < T0 + 120)
    c.covered(T0 + 6)
    c.saw_bar(T0 + 60)
    assert c.step(T0 + 63) == ("backfill", T0, T0 + 60)  # T0 had no bar at all: mute?
    c.filled(T0, T0 + 60)
    c.declare(T0 + 60)
    assert c.step(T0 + 183) == ("watermark", T0 + 180)  # T0+60 had one; T0+120 is out of session


def test_a_failed_backfill_holds_the_minute_then_gives_up_after_the_limit():
    c = MinuteCompleter.starting(T0 + 50, grace=2.0, give_up_s=100.0)
    c.covered(T0 + 65)
    assert c.step(T0 + 63) == ("backfill", T0, T0 + 60)
    c.fill_failed(T0 + 63, retry_in=10.0)
    assert c.step(T0 + 70) is None
    assert c.step(T0 + 73) == ("backfill", T0, T0 + 60)
    c.fill_failed(T0 + 170, retry_in=10.0)
    assert c.step(T0 + 171) == ("give_up", T0)
    c.give_up(T0)
    assert c.step(T0 + 171) == ("watermark", T0 + 120) and c.unverified == 1


def test_a_bar_already_written_is_not_written_again_and_old_minutes_are_forgotten():
    sent = SentBars()
    assert sent.first("AAPL", T0) and not sent.first("AAPL", T0) and sent.first("MSFT", T0)
    sent.forget_before(T0 + 60)
    assert sent.first("AAPL", T0)


def test_backoff_is_capped_exponential_and_staleness_counts_only_in_session():
    b = Backoff(base=1.0, cap=8.0)
    assert [b.delay(n, 0.999999) for n in (1, 2, 3, 4, 5, 9)] == pytest.approx([1, 2, 4, 8, 8, 8], 1e-4)
    assert [b.delay(n, 0.0) for n in (1, 2, 3)] == [0.5, 1.0, 2.0]
    assert is_stale(T0 + 130, T0, T0 + 10, True, 120) and not is_stale(T0 + 129, T0, T0 + 10, True, 120)
    assert not is_stale(T0 + 500, T0, None, False, 120) and not is_stale(T0 + 500, None, None, True, 120)
    assert in_regular_session(T0) and not in_regular_session(T0 + 7 * 3600)  # 21:30 UTC
    assert subscribe_batches(list("ABCDEFGHIJKL"), 5) == [list("ABCDE"), list("FGHIJ"), list("KL")]


# ------------------------------------------------------------------ I/O fixtures
class Clock:
    """The wall clock the connector sees; tests move it."""

    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def kafka():
    with EmbeddedKafka() as broker:
        yield broker


@pytest.fixture
def server():
    with AlpacaServer() as s:
        yield s
        assert s.errors == [], "\n".join(s.errors)


@pytest.fixture
def topic(request):
    return f"{request.node.name[:30]}-{uuid.uuid4().hex[:6]}".replace("[", "-").replace("]", "")


@pytest.fixture
def logs(caplog):
    caplog.set_level(logging.INFO, logger="connectors.alpaca.stream")
    caplog.set_level(logging.INFO, logger="connectors.alpaca.live")
    return caplog


def settings(server, kafka, topic, symbols=("AAPL", "MSFT"), **kw) -> StreamSettings:
    base = dict(ws_url=server.ws_base_url, rest_url=server.rest_url, batch_delay_s=0.05,
                backoff_base_s=0.2, backoff_max_s=1.6, connect_timeout_s=1.0,
                dead_letter_topic=f"{topic}.dlq", session=lambda ts: False, partitions=2)
    return StreamSettings(list(symbols), server.key, server.secret, kafka.bootstrap, topic=topic,
                          **{**base, **kw})


class Running:
    """run_stream on a thread, stopped through its stop event."""

    def __init__(self, s: StreamSettings, clock: Clock):
        self.stop, self.result, self.error = threading.Event(), None, None
        self.thread = threading.Thread(target=self._go, args=(s, clock), daemon=True)
        self.thread.start()

    def _go(self, s, clock):
        try:
            self.result = run_stream(s, self.stop, clock)
        except BaseException as exc:  # re-raised by finish()
            self.error = exc

    def finish(self, timeout: float = 10.0):
        self.stop.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "run_stream did not stop"
        if self.error is not None:
            raise self.error
        return self.result


def read_topic(bootstrap: str, topic: str, timeout: float = 10.0) -> dict:
    """partition -> [decoded record] up to the fetch high watermark."""
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
                out[tp.partition] += [(r.key, r.value) for r in records]
            hw = [consumer.highwater(tp) for tp in tps]
            if all(h is not None and consumer.position(tp) >= h for tp, h in zip(tps, hw)):
                return out
            assert time.monotonic() < deadline, "reading the topic timed out"
    finally:
        consumer.close()


def records(bootstrap, topic) -> dict:
    return {p: [decode_record(k, v) for k, v in recs] for p, recs in read_topic(bootstrap, topic).items()}


def wait_for(predicate, timeout=10.0, interval=0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(interval)


def bars_in(bootstrap, topic) -> list:
    return [r for recs in records(bootstrap, topic).values() for r in recs if isinstance(r, Bar)]


def markers_in(bootstrap, topic) -> dict:
    return {p: [r.ts for r in recs if isinstance(r, WatermarkRecord)]
            for p, recs in records(bootstrap, topic).items()}


def written_bars(bootstrap, topic) -> tuple:
    """(every bar in the topic, those behind a marker at their position):
    what the Kafka source would flag late."""
    seen, late = [], []
    for recs in records(bootstrap, topic).values():
        watermark = -1
        for r in recs:
            if isinstance(r, WatermarkRecord):
                watermark = max(watermark, r.ts)
            else:
                seen.append(r)
                late += [r] if r.ts < watermark else []
    return seen, late


def wire_bar(sym, ts, close=100.0, **kw) -> dict:
    return {"S": sym, "t": dt.datetime.fromtimestamp(ts, dt.timezone.utc), "o": close, "h": close + 1,
            "l": close - 1, "c": close, "v": 1000, "n": 10, "vw": close, **kw}


def subscribed(server, conn_id, symbols) -> bool:
    return server.subscriptions().get(conn_id, {}).get("bars") == sorted(symbols)


# ------------------------------------------------------------------ I/O: subscribing
def test_subscribes_in_batches_of_ten_one_message_each_a_second_apart(server, kafka, topic, logs):
    symbols = [f"S{i:02d}" for i in range(25)]
    run = Running(settings(server, kafka, topic, symbols, batch_size=10, batch_delay_s=1.0), Clock(T0 + 5))
    try:
        server.wait_until(lambda: subscribed(server, 1, symbols), timeout=5)
        subs = server.client_messages("subscribe")
        assert [m.msg for m in subs] == [
            {"action": "subscribe", "bars": symbols[i:i + 10], "updatedBars": symbols[i:i + 10]}
            for i in (0, 10, 20)]
        gaps = [b.t - a.t for a, b in zip(subs, subs[1:])]
        assert all(0.9 <= g <= 1.5 for g in gaps), gaps
        lines = [r.getMessage() for r in logs.records if r.getMessage().startswith("Subscribing batch")]
        assert lines == [f"Subscribing batch {i}/3: {symbols[(i - 1) * 10:i * 10]}" for i in (1, 2, 3)]
    finally:
        run.finish()


def opened_gaps(server) -> list:
    opened = [c.opened_at for c in server.connections()]
    return [b - a for a, b in zip(opened, opened[1:])]


@pytest.mark.parametrize("code", [402, 406])
def test_auth_errors_are_logged_and_retried_with_capped_exponential_backoff(server, kafka, topic, logs, code):
    (server.fail_auth if code == 402 else server.reject_connections)(4)
    run = Running(settings(server, kafka, topic), Clock(T0 + 5))
    try:
        server.wait_until(lambda: subscribed(server, 5, ["AAPL", "MSFT"]), timeout=8)
        assert [e[2] for e in server.sent_errors()] == [code] * 4
        # base 0.2 s doubling, equal jitter: attempt n waits 0.1 * 2**(n-1) .. 0.2 * 2**(n-1)
        gaps = opened_gaps(server)
        assert len(gaps) == 4 and all(g >= 0.1 * 2 ** i - 0.02 for i, g in enumerate(gaps)), gaps
        first = server.connections()[0].opened_at
        assert sum(c.opened_at - first < 1.0 for c in server.connections()) <= 4  # no tight loop
        text = logs.text
        assert f"Alpaca stream error {code} (" in text and "reconnecting in" in text
        assert ("ALPACA_API_KEY" if code == 402 else "only stream slot") in text
    finally:
        run.finish()


@pytest.mark.parametrize("code", [405, 429])
def test_subscribe_errors_are_logged_and_resubscribed_after_backoff_on_the_same_connection(
        server, kafka, topic, logs, code):
    server.fail_subscribe(code, n=3)
    run = Running(settings(server, kafka, topic), Clock(T0 + 5))
    try:
        server.wait_until(lambda: subscribed(server, 1, ["AAPL", "MSFT"]), timeout=6)
        subs = server.client_messages("subscribe")
        assert len(subs) == 4 and server.connection_count == 1
        gaps = [b.t - a.t for a, b in zip(subs, subs[1:])]
        assert all(g >= 0.1 * 2 ** i - 0.02 for i, g in enumerate(gaps)), gaps
        assert f"Alpaca stream error {code} (" in logs.text and "subscribing again in" in logs.text
        time.sleep(0.5)  # and then quiet: no more subscribes
        assert len(server.client_messages("subscribe")) == 4
    finally:
        run.finish()


# ------------------------------------------------------------------ I/O: gaps and event time
def test_after_a_drop_it_resubscribes_and_backfills_the_gap_before_the_minute_marker(server, kafka, topic):
    clock = Clock(T0 + 5)
    run = Running(settings(server, kafka, topic), clock)
    try:
        server.wait_until(lambda: subscribed(server, 1, ["AAPL", "MSFT"]), timeout=5)
        server.push_bars([wire_bar("AAPL", T0, 100), wire_bar("MSFT", T0, 50)])
        wait_for(lambda: len(bars_in(kafka.bootstrap, topic)) == 2)
        clock.t = T0 + 62.5  # minute T0 ended 2.5 s ago: complete
        wait_for(lambda: all(m == [T0 + 60] for m in markers_in(kafka.bootstrap, topic).values()))

        clock.t = T0 + 119
        server.push_bars([wire_bar("AAPL", T0 + 60, 101)])  # minute T0+60 of AAPL, from the stream
        wait_for(lambda: len(bars_in(kafka.bootstrap, topic)) == 3)
        server.drop_connections(abrupt=True)  # down while minute T0+60's bars are pushed
        server.wait_until(lambda: subscribed(server, 2, ["AAPL", "MSFT"]), timeout=5)
        assert [m.msg["bars"] for m in server.client_messages("subscribe", conn_id=2)] == [["AAPL", "MSFT"]]
        server.push_bars([wire_bar("MSFT", T0 + 120, 52)])  # the new connection delivers
        wait_for(lambda: len(bars_in(kafka.bootstrap, topic)) == 4)

        server.load_history([wire_bar("AAPL", T0 + 60, 999), wire_bar("MSFT", T0 + 60, 51)])
        clock.t = T0 + 122.5
        wait_for(lambda: all(T0 + 120 in m for m in markers_in(kafka.bootstrap, topic).values()))
        (req,) = server.requests("/v2/stocks/bars")
        assert req.query["symbols"] == "AAPL,MSFT" and req.query["start"].startswith("2024-01-02T14:31:00")

        server.push_bars([wire_bar("MSFT", T0, 49), wire_bar("MSFT", T0 - 60, 48)])  # after completion
        server.push_bars([wire_bar("AAPL", T0 + 60, 102)], kind="u")  # a correction
        wait_for(lambda: len(bars_in(kafka.bootstrap, topic)) == 7)
    finally:
        counters = run.finish()

    bars, behind = written_bars(kafka.bootstrap, topic)
    seen = [(r.symbol, r.ts, r.close) for r in bars]
    late = [(r.symbol, r.ts, r.close) for r in behind]
    # the backfill wrote MSFT's missed bar before the marker, and not AAPL's again
    assert sorted(seen) == sorted([("AAPL", T0, 100), ("MSFT", T0, 50), ("AAPL", T0 + 60, 101),
                                   ("MSFT", T0 + 120, 52), ("MSFT", T0 + 60, 51), ("MSFT", T0 - 60, 48),
                                   ("AAPL", T0 + 60, 102)])
    # written, and flagged late by their position; the repeated MSFT T0 was not written again
    assert sorted(late) == [("AAPL", T0 + 60, 102), ("MSFT", T0 - 60, 48)]
    assert (counters.backfilled, counters.duplicates, counters.late, counters.updated) == (1, 2, 2, 1)
    assert counters.received == 7 and counters.produced == 7 and counters.connections == 2


def test_a_restart_continues_after_the_topics_last_marker_without_writing_a_bar_twice(
        server, kafka, topic, logs):
    clock = Clock(T0 + 5)
    run = Running(settings(server, kafka, topic), clock)
    try:
        server.wait_until(lambda: subscribed(server, 1, ["AAPL", "MSFT"]), timeout=5)
        server.push_bars([wire_bar("AAPL", T0, 100), wire_bar("MSFT", T0, 50)])
        # the bars follow the subscription's ack on the socket: once they are in Kafka the
        # connector has timed its coverage (T0 + 5), so minute T0 needs no backfill
        wait_for(lambda: len(bars_in(kafka.bootstrap, topic)) == 2)
        clock.t = T0 + 62.5
        wait_for(lambda: all(m == [T0 + 60] for m in markers_in(kafka.bootstrap, topic).values()))
        server.push_bars([wire_bar("AAPL", T0 + 60, 101)])  # written, its minute not yet complete
        wait_for(lambda: len(bars_in(kafka.bootstrap, topic)) == 3)
    finally:
        run.finish()  # the connector stops (a crash or a deploy) ...

    # ... and starts again three minutes later: what it missed is on REST
    server.load_history([wire_bar("AAPL", T0 + 60, 101), wire_bar("MSFT", T0 + 60, 51),
                         wire_bar("AAPL", T0 + 120, 102), wire_bar("MSFT", T0 + 120, 52)])
    clock.t = T0 + 185
    run = Running(settings(server, kafka, topic), clock)
    try:
        wait_for(lambda: all(T0 + 180 in m for m in markers_in(kafka.bootstrap, topic).values()))
    finally:
        counters = run.finish()
    assert "resuming topic" in logs.text and "2024-01-02T14:30:00Z" in logs.text
    (req,) = server.requests("/v2/stocks/bars")
    assert req.query["start"].startswith("2024-01-02T14:31:00")  # from the first minute not complete
    bars, late = written_bars(kafka.bootstrap, topic)
    seen = [(r.symbol, r.ts, r.close) for r in bars]
    assert sorted(seen) == sorted([("AAPL", T0, 100), ("MSFT", T0, 50), ("AAPL", T0 + 60, 101),
                                   ("MSFT", T0 + 60, 51), ("AAPL", T0 + 120, 102), ("MSFT", T0 + 120, 52)])
    assert late == []  # every backfilled bar came before the marker that covers it
    assert (counters.backfilled, counters.duplicates) == (3, 1)  # AAPL T0+60 was in Kafka already
    assert markers_in(kafka.bootstrap, topic) == {0: [T0 + 60, T0 + 180], 1: [T0 + 60, T0 + 180]}


def test_a_restart_after_a_marker_only_some_partitions_got_writes_no_bar_twice(server, kafka, topic, logs):
    """Stopped while writing a marker: one partition has it, the other not.
    The restart resumes from the marker both have, and the bars of the
    minutes since, also those before the newer marker, are not written
    again."""
    from kafka import KafkaProducer
    from kafka.partitioner.default import murmur2

    from connectors.kafka.admin import ensure_topic
    from connectors.kafka.codec import encode_watermark
    from connectors.kafka.producer import BarProducer

    ensure_topic(kafka.bootstrap, topic, 2)
    with BarProducer(kafka.bootstrap, topic) as producer:
        producer.send_bars([parse_bar(wire_bar("AAPL", T0, 100)), parse_bar(wire_bar("MSFT", T0, 50))])
        producer.send_watermark(T0 + 60)
        producer.send_bars([parse_bar(wire_bar("AAPL", T0 + 60, 101)), parse_bar(wire_bar("MSFT", T0 + 60, 51))])
    aapl = (murmur2(b"AAPL") & 0x7FFFFFFF) % 2
    raw = KafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all")
    raw.send(topic, value=encode_watermark(T0 + 120), partition=aapl)  # the other partition never got it
    raw.flush()
    raw.close()

    server.load_history([wire_bar("AAPL", T0 + 60, 101), wire_bar("MSFT", T0 + 60, 51),
                         wire_bar("AAPL", T0 + 120, 102), wire_bar("MSFT", T0 + 120, 52)])
    clock = Clock(T0 + 185)
    run = Running(settings(server, kafka, topic), clock)
    try:
        wait_for(lambda: all(T0 + 180 in m for m in markers_in(kafka.bootstrap, topic).values()))
    finally:
        counters = run.finish()
    assert "resuming topic" in logs.text and "after its last complete minute 2024-01-02T14:30:00Z" in logs.text
    bars, late = written_bars(kafka.bootstrap, topic)
    seen = [(r.symbol, r.ts) for r in bars]
    assert sorted(seen) == sorted([("AAPL", T0), ("MSFT", T0), ("AAPL", T0 + 60), ("MSFT", T0 + 60),
                                   ("AAPL", T0 + 120), ("MSFT", T0 + 120)])  # each once
    assert late == [] and (counters.backfilled, counters.duplicates) == (2, 2)


def test_a_restart_long_after_the_last_marker_starts_at_the_current_minute(server, kafka, topic, logs):
    from connectors.kafka.admin import ensure_topic
    from connectors.kafka.producer import BarProducer

    ensure_topic(kafka.bootstrap, topic, 2)
    with BarProducer(kafka.bootstrap, topic) as producer:
        producer.send_watermark(T0 - 4 * 86400)  # four days old
    clock = Clock(T0 + 5)
    run = Running(settings(server, kafka, topic), clock)
    try:
        server.wait_until(lambda: subscribed(server, 1, ["AAPL", "MSFT"]), timeout=5)
        server.push_bars([wire_bar("AAPL", T0, 100), wire_bar("MSFT", T0, 50)])
        wait_for(lambda: len(bars_in(kafka.bootstrap, topic)) == 2)  # coverage timed at T0 + 5
        clock.t = T0 + 62.5
        wait_for(lambda: all(T0 + 60 in m for m in markers_in(kafka.bootstrap, topic).values()))
    finally:
        run.finish()
    assert "more than 72 h ago" in logs.text and "cuts backfill --start 2023-12-29T14:29:00Z" in logs.text
    assert server.requests("/v2/stocks/bars") == []  # nothing fetched for the old gap


def test_a_silent_stream_is_reconnected_by_the_watchdog(server, kafka, topic, logs):
    clock = Clock(T0 + 5)
    run = Running(settings(server, kafka, topic, stale_after_s=30.0, connect_timeout_s=0.5,
                           session=lambda ts: True), clock)
    try:
        server.wait_until(lambda: subscribed(server, 1, ["AAPL", "MSFT"]), timeout=5)
        time.sleep(0.2)
        server.set_silent(True)  # open, answering pings, sending nothing
        clock.t = T0 + 36
        server.wait_until(lambda: server.connection_count >= 3, timeout=5)  # greeting never comes either
        assert "no bars for 30 s during the session" in logs.text
        server.set_silent(False)
        server.wait_until(lambda: any(c.is_open and c.subscribed().get("bars") == ["AAPL", "MSFT"]
                                      for c in server.connections()[1:]), timeout=5)
        gaps = opened_gaps(server)
        assert all(g >= 0.4 for g in gaps[1:]), gaps  # connect timeout 0.5 s + backoff: no tight loop
    finally:
        run.finish()


def test_malformed_messages_go_to_the_dead_letter_topic_and_good_ones_still_flow(server, kafka, topic):
    run = Running(settings(server, kafka, topic), Clock(T0 + 5))
    try:
        server.wait_until(lambda: subscribed(server, 1, ["AAPL", "MSFT"]), timeout=5)
        good = {"T": "b", "S": "AAPL", "t": T0 * 10**9, "o": 1.0, "h": 2.0, "l": 0.5, "c": 1.5, "v": 10}
        server.send_raw(b"\xc1")  # not msgpack
        server.send_raw("[]")  # a text frame
        server.send_messages([{**good, "o": "1.0"}, {k: v for k, v in good.items() if k != "S"}, good])
        wait_for(lambda: sum(map(len, read_topic(kafka.bootstrap, f"{topic}.dlq").values())) == 4)
        wait_for(lambda: len(bars_in(kafka.bootstrap, topic)) == 1)
    finally:
        counters = run.finish()
    dead = [json.loads(v) for recs in read_topic(kafka.bootstrap, f"{topic}.dlq").values() for _, v in recs]
    assert sorted(d["detail"] for d in dead) == sorted([
        "field o: expected a number, got str", "frame is not msgpack (FormatError)",
        "not a message with a type and symbol", "text frame (the stream speaks msgpack)"])
    assert all(d["reason"] == "undecodable" and d["value_b64"] for d in dead)
    bad_o = next(d for d in dead if d["detail"].startswith("field o"))
    assert json.loads(base64.b64decode(bad_o["value_b64"]))["t"] == "2024-01-02T14:30:00+00:00"
    assert counters.dead_letters == 4 and counters.produced == 1 and server.connection_count == 1


# ------------------------------------------------------------------ the command
def cuts(*args, env=None):
    return subprocess.Popen([sys.executable, "-m", "dataflows.cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


class StreamProcess:
    """`cuts stream` as a process; its stderr lines as they come."""

    def __init__(self, server, kafka, topic, *extra):
        env = {**os.environ, "ALPACA_API_KEY": server.key, "ALPACA_SECRET_KEY": server.secret,
               "ALPACA_DATA_WS_URL": server.ws_base_url, "ALPACA_DATA_URL": server.rest_url}
        env.pop("ALPACA_FEED", None)
        self.proc = cuts("stream", "--symbols", "AAPL", "--kafka", kafka.bootstrap, "--topic", topic,
                         "--session", "never", "--backoff-base-s", "2", *extra, env=env)
        self.err: list[str] = []
        self.reader = threading.Thread(target=lambda: self.err.extend(self.proc.stderr), daemon=True)
        self.reader.start()

    def stop(self, sig, then=None):
        """Signal it; (exit code, stdout, stderr lines written after the signal)."""
        seen = len(self.err)
        self.proc.send_signal(sig)
        if then is not None:
            self.proc.send_signal(then)
        try:
            out = self.proc.stdout.read()
            self.proc.wait(timeout=15)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        self.reader.join(5)
        return self.proc.returncode, out, self.err[seen:]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("point", ["connecting", "subscribed", "streaming", "reconnecting"])
def test_a_signal_is_the_normal_end_of_cuts_stream_exit_0_one_line_nothing_lost(server, kafka, topic, sig,
                                                                                point):
    if point == "connecting":
        server.set_silent(True)  # no greeting: the stream waits (--connect-timeout-s, 10 s)
    run = StreamProcess(server, kafka, topic)
    try:
        if point == "connecting":
            wait_for(lambda: any("connecting to" in line for line in run.err), timeout=30)
            time.sleep(0.2)
        else:
            server.wait_until(lambda: subscribed(server, 1, ["AAPL"]), timeout=30)
        if point not in ("connecting", "subscribed"):
            server.push_bars([wire_bar("AAPL", T0), wire_bar("AAPL", T0 + 60)])
            wait_for(lambda: len(bars_in(kafka.bootstrap, topic)) == 2)
        if point == "reconnecting":  # dropped, its reconnect refused: in the backoff
            server.reject_connections(5)
            server.drop_connections()
            wait_for(lambda: any("reconnecting in" in line for line in run.err))
        started = time.monotonic()
        code, out, after = run.stop(sig)
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
    assert code == 0, "".join(run.err)
    assert time.monotonic() - started < 8, "a stop waited for a timeout"
    bars = 0 if point in ("connecting", "subscribed") else 2
    assert out.splitlines() == [out.splitlines()[0]] and out.startswith(
        f"stream stopped on {sig.name}: received {bars} "), out
    # a normal stop reads as one: no warning, error or traceback after the signal
    assert not [line for line in after if " WARNING " in line or " ERROR " in line or "Traceback" in line], after
    assert all(c.closed_at is not None for c in server.connections())
    assert len(bars_in(kafka.bootstrap, topic)) == bars


def test_a_second_signal_stops_cuts_stream_at_once_with_one_line(server, kafka, topic):
    run = StreamProcess(server, kafka, topic)
    try:
        server.wait_until(lambda: subscribed(server, 1, ["AAPL"]), timeout=30)
        # both arrive before the first is handled (the process paused): SIGINT asks for the
        # stop, SIGTERM finds it asked (Python runs the handlers in signal-number order)
        run.proc.send_signal(signal.SIGSTOP)
        run.proc.send_signal(signal.SIGINT)
        code, out, after = run.stop(signal.SIGTERM, then=signal.SIGCONT)
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
    assert code == 143 and out == ""
    assert [line for line in after if line.startswith("cuts:")] == [
        "cuts: stopped at once on a second SIGTERM: rows since the last batch are not written\n"], after
    assert not [line for line in after if "Traceback" in line], after


def test_settings_come_from_arguments_environment_and_config(monkeypatch):
    monkeypatch.setenv("ALPACA_API_KEY", "k")
    monkeypatch.setenv("ALPACA_SECRET_KEY", "s")
    monkeypatch.setenv("ALPACA_DATA_WS_URL", "ws://127.0.0.1:9/v2/iex")  # a whole endpoint works too
    monkeypatch.setenv("KAFKA_BOOTSTRAP", "broker:9092")
    monkeypatch.delenv("ALPACA_FEED", raising=False)
    parse = cli.build_parser().parse_args
    s = stream_settings(parse(["stream", "--symbols", "FAKEPACA", "--feed", "test"]))
    assert s.symbols == ["FAKEPACA"] and s.endpoint == "ws://127.0.0.1:9/v2/test"  # the test feed's symbol
    assert (s.bootstrap, s.key, s.secret, s.batch_size, s.batch_delay_s) == ("broker:9092", "k", "s", 10, 1.0)
    monkeypatch.setenv("ALPACA_FEED", "sip")
    assert stream_settings(parse(["stream", "--symbols", "AAPL"])).endpoint == "ws://127.0.0.1:9/v2/sip"
    with pytest.raises(SymbolsError, match="FAKEPACA"):
        stream_settings(parse(["stream", "--symbols", "FAKEPACA"]))


@pytest.mark.parametrize("args,env,message", [
    (["--symbols", "AAPL"], {}, "Alpaca credentials missing: set ALPACA_API_KEY and ALPACA_SECRET_KEY"),
    (["--symbols", "AAPL,aapl"], {"ALPACA_API_KEY": "k", "ALPACA_SECRET_KEY": "s"}, "not a symbol: 'aapl'"),
    (["--symbols-file", "SYMFILE"], {"ALPACA_API_KEY": "k", "ALPACA_SECRET_KEY": "s"},
     "not a symbol: 'BAD SYMBOL'"),
])
def test_missing_credentials_and_bad_symbols_exit_2_with_one_line(monkeypatch, capsys, tmp_path, args, env,
                                                                  message):
    for name in ("ALPACA_API_KEY", "ALPACA_SECRET_KEY", "ALPACA_FEED", "KAFKA_BOOTSTRAP"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    symfile = tmp_path / "symbols.txt"
    symfile.write_text("AAPL\n# comment\n\nBAD SYMBOL\n")
    args = [str(symfile) if a == "SYMFILE" else a for a in args]
    assert cli.main(["stream", *args, "--kafka", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("cuts: error: ") and message in err
