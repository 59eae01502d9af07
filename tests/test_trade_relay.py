"""The trade_updates topic end to end: the local Alpaca (tests/alpaca_server.py,
real alpaca-py TradingClient / TradingStream) -> TradeUpdateRelay -> embedded
Tansu -> TradeUpdateSource -> BrokerEvent / Watermark items."""
from __future__ import annotations

import datetime as dt
import json
import sys
import time
from pathlib import Path

import bytewax.operators as op
import pytest
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide, TimeInForce
from alpaca.trading.requests import MarketOrderRequest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, run_main
from confluent_kafka import Consumer, KafkaError, TopicPartition
from kafka import KafkaProducer

from connectors.alpaca.broker import client_order_id, to_protection_request
from connectors.alpaca.trade_relay import (
    AlpacaAuthFailed,
    TradeUpdateRelay,
    TradeUpdatesWriter,
)
from connectors.kafka.admin import KafkaUnavailable, TopicChanged
from connectors.kafka.embedded import EmbeddedKafka
from connectors.kafka.trade_source import TradeUpdateSource
from connectors.kafka.trade_topic import TradeMarker, decode_trade_record
from operators.ordering import END_OF_TIME, BrokerEvent, Watermark
from operators.ordering import TRADE_UPDATES_PARTITION_BASE as BASE
from operators.types import TradeUpdate

sys.path.insert(0, str(Path(__file__).parent))
from alpaca_server import AlpacaServer  # noqa: E402

RUN = "relaytest"


@pytest.fixture(scope="module")
def kafka(tmp_path_factory):
    with EmbeddedKafka(log_path=str(tmp_path_factory.mktemp("tansu") / "tansu.log")) as k:
        yield k.bootstrap


@pytest.fixture
def server():
    with AlpacaServer(trading=True) as s:
        s.set_price("AAPL", 100)
        s.set_price("MSFT", 200)
        yield s
        assert s.errors == [], "\n".join(s.errors)


@pytest.fixture
def tc(server):
    return TradingClient(server.key, server.secret, paper=True, url_override=server.trading_url)


def wait(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def relay_for(server, writer, **kw) -> TradeUpdateRelay:
    kw.setdefault("clock_poll_s", 0.1)
    kw.setdefault("grace_s", 0.2)
    return TradeUpdateRelay(server.key, server.secret, RUN, writer, stream_url=server.trading_stream_url,
                            rest_url=server.trading_url, connect_timeout_s=5, **kw)


def entry(tc, symbol, qty, ts=1704205800):
    oid = f"sma_5_20.{symbol}.{ts}.entry"
    tc.submit_order(MarketOrderRequest(symbol=symbol, qty=qty, side=OrderSide.BUY, time_in_force=TimeInForce.DAY,
                                       client_order_id=client_order_id(RUN, oid)))
    return oid


def read_topic(bootstrap, topic, partitions) -> list:
    """Every record as (partition, key, decoded), in partition order."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "t", "enable.partition.eof": True,
                  "enable.auto.commit": False})
    c.assign([TopicPartition(topic, p, 0) for p in partitions])
    out, ended = [], set()
    deadline = time.monotonic() + 10
    while len(ended) < len(partitions) and time.monotonic() < deadline:
        m = c.poll(0.2)
        if m is None:
            continue
        if m.error():
            assert m.error().code() == KafkaError._PARTITION_EOF, m.error()
            ended.add(m.partition())
            continue
        out.append((m.partition(), m.key(), decode_trade_record(m.value())))
    c.close()
    assert len(ended) == len(partitions)
    return out


def replay(bootstrap, topic) -> dict:
    """TradeUpdateSource(tail=False), parts built directly: partition id -> items."""
    src = TradeUpdateSource(bootstrap, topic, tail=False)
    out = {}
    for part_name, pid in zip(src.list_parts(), src.partition_ids()):
        part, items = src.build_part("trade_updates", part_name, None), []
        deadline = time.monotonic() + 10
        try:
            while time.monotonic() < deadline:
                items.extend(part.next_batch())
        except StopIteration:
            pass
        finally:
            part.close()
        out[pid] = items
    return out


def test_live_updates_reach_the_topic_keyed_by_symbol_with_markers_in_every_partition(kafka, server, tc):
    writer = TradeUpdatesWriter(kafka, "tu-live", partitions=3)
    seen: list = []
    relay = relay_for(server, writer, on_update=seen.append).start()
    try:
        server.set_auto_fill(True)  # market orders fill at the symbol's price at once
        aapl = entry(tc, "AAPL", 10)
        msft = entry(tc, "MSFT", 5)
        tc.submit_order(MarketOrderRequest(symbol="MSFT", qty=1, side=OrderSide.BUY,
                                           time_in_force=TimeInForce.DAY, client_order_id="manual-1"))
        tc.submit_order(to_protection_request(RUN, aapl, "AAPL", 10, 98.0, 103.0))
        server.fill_on_bar({"S": "AAPL", "o": 99, "h": 99.5, "l": 97.5, "c": 98})  # the stop leg fills
        last = int(server.now().timestamp())
        server.wait_until(lambda: relay.counts["updates"] >= 8 and (relay.last_marker or 0) > last, timeout=10)
    finally:
        relay.stop()
        writer.close()
    relay.check()
    assert relay.counts["markers"] >= 1 and relay.counts["skipped"] == 2  # manual-1: new, fill

    records = read_topic(kafka, "tu-live", [0, 1, 2])
    updates = [(p, k, r) for p, k, r in records if isinstance(r, TradeUpdate)]
    assert [(r.order_id, r.event, r.leg) for _, _, r in updates if r.symbol == "AAPL"] == [
        (aapl, "new", ""), (aapl, "fill", ""),
        (f"{aapl}.oco", "new", "target"), (f"{aapl}.oco", "new", "stop"),
        (f"{aapl}.oco", "fill", "stop"), (f"{aapl}.oco", "canceled", "target")]
    assert [(r.order_id, r.event, r.filled_qty) for _, _, r in updates if r.symbol == "MSFT"] == [
        (msft, "new", 0), (msft, "fill", 5)]
    assert all(k == r.symbol.encode() for _, k, r in updates)
    assert all(len({p for p, _, r in updates if r.symbol == s}) == 1 for s in ("AAPL", "MSFT"))
    assert sorted(seen, key=repr) == sorted((r for _, _, r in updates), key=repr)  # on_update: each live one
    markers = {p: [r.ts for q, k, r in records if q == p and isinstance(r, TradeMarker)] for p in (0, 1, 2)}
    assert markers[0] and markers[0] == markers[1] == markers[2]  # every marker in every partition
    assert markers[0] == sorted(set(markers[0])) and markers[0][-1] == relay.last_marker
    assert all(k is None for _, k, r in records if isinstance(r, TradeMarker))

    # read back as the flow does
    items = replay(kafka, "tu-live")
    assert sorted(items) == [BASE, BASE + 1, BASE + 2]
    for pid, its in items.items():
        assert [i.seq for i in its] == list(range(len(its)))
        assert all(i.partition == pid for i in its)
        assert its[-1] == Watermark(pid, len(its) - 1, END_OF_TIME)
        marks = [i.ts for i in its[:-1] if isinstance(i, Watermark)]
        assert marks == sorted(set(marks)) and all(m % 60 == 0 for m in marks)
        assert marks[-1] == relay.last_marker - relay.last_marker % 60  # floored to the minute
    events = [i.update for its in items.values() for i in its if isinstance(i, BrokerEvent)]
    assert sorted(events, key=repr) == sorted((r for _, _, r in updates), key=repr)


def test_catch_up_on_start_publishes_what_happened_while_the_relay_was_down(kafka, server, tc):
    writer = TradeUpdatesWriter(kafka, "tu-catch-up", partitions=2)
    try:
        relay = relay_for(server, writer).start()
        aapl = entry(tc, "AAPL", 10)
        server.wait_until(lambda: relay.counts["updates"] >= 1)
        relay.stop()
        server.wait_until(lambda: not any(c.listening for c in server.trading_connections()))
        # while nobody listens (Alpaca does not replay these)
        server.fill(client_order_id(RUN, aapl), qty=4, price=100.5)
        server.fill(client_order_id(RUN, aapl), price=100.0)
        tc.submit_order(to_protection_request(RUN, aapl, "AAPL", 10, 98.0, 103.0))
        server.fill_on_bar({"S": "AAPL", "o": 102, "h": 103.5, "l": 101.5, "c": 103})  # the target fills
        msft = entry(tc, "MSFT", 5)
        server.cancel(client_order_id(RUN, msft))
        assert all(not e.delivered_to for e in server.trade_events()[1:])

        relay = relay_for(server, writer).start()  # a new process: no legs known
        relay.stop()
        relay.check()
    finally:
        writer.close()
    records = [r for _, _, r in read_topic(kafka, "tu-catch-up", [0, 1]) if isinstance(r, TradeUpdate)]
    caught = [(r.order_id, r.event, r.leg, r.filled_qty, r.fill_qty, r.fill_price) for r in records]
    assert sorted(caught) == sorted([
        (aapl, "new", "", 0, 0, 0.0),  # live, before the stop
        (aapl, "fill", "", 10, 10, 100.2),  # the whole entry at its average price
        (f"{aapl}.oco", "fill", "target", 10, 10, 103.0),
        (f"{aapl}.oco", "canceled", "stop", 0, 0, 0.0),  # the stop leg, resolved through the nested legs
        (msft, "canceled", "", 0, 0, 0.0),
    ])
    assert relay.counts["caught_up"] == 4


def test_legs_of_an_oco_older_than_the_catch_up_window_still_resolve(kafka, server, tc):
    server.set_auto_fill(True)
    aapl = entry(tc, "AAPL", 10)
    tc.submit_order(to_protection_request(RUN, aapl, "AAPL", 10, 98.0, 103.0))
    time.sleep(0.01)
    writer = TradeUpdatesWriter(kafka, "tu-old-oco", partitions=1)
    relay = relay_for(server, writer, since=server.now() + dt.timedelta(milliseconds=5)).start()
    try:
        assert relay.counts["caught_up"] == 0 and len(relay.leg_parents) == 1  # the open OCO's stop leg
        server.fill_on_bar({"S": "AAPL", "o": 99, "h": 99.5, "l": 97.5, "c": 98})
        server.wait_until(lambda: relay.counts["updates"] >= 2)
    finally:
        relay.stop()
        writer.close()
    records = [r for _, _, r in read_topic(kafka, "tu-old-oco", [0]) if isinstance(r, TradeUpdate)]
    assert [(r.order_id, r.event, r.leg) for r in records] == [
        (f"{aapl}.oco", "fill", "stop"), (f"{aapl}.oco", "canceled", "target")]


def test_a_dropped_stream_catches_up_after_reconnecting(kafka, server, tc):
    writer = TradeUpdatesWriter(kafka, "tu-drop", partitions=1)
    try:
        relay = relay_for(server, writer).start()
        aapl = entry(tc, "AAPL", 10)
        server.wait_until(lambda: relay.counts["updates"] >= 1)
        assert server.drop_trading_streams() == 1
        server.fill(client_order_id(RUN, aapl), price=100.0)  # lost on the stream
        server.wait_until(lambda: relay.counts["reconnects"] == 1 and relay.counts["caught_up"] == 1, timeout=10)
        relay.stop()
        relay.check()
    finally:
        writer.close()
    records = [r for _, _, r in read_topic(kafka, "tu-drop", [0]) if isinstance(r, TradeUpdate)]
    assert [(r.order_id, r.event, r.filled_qty) for r in records] == [(aapl, "new", 0), (aapl, "fill", 10)]


def test_source_runs_in_a_bytewax_flow(kafka):
    with TradeUpdatesWriter(kafka, "tu-flow", partitions=2) as writer:
        u = TradeUpdate("s.AAPL.1.entry", "fill", "AAPL", "buy", 1704205861, filled_qty=3, fill_qty=3,
                        fill_price=100.0)
        writer.publish(u)
        writer.mark(1704205862)  # minute 14:31 not complete yet
        writer.mark(1704205920)  # 14:32:00: minute 14:31 complete
    flow = Dataflow("tu")
    out: list = []
    op.output("out", op.input("in", flow, TradeUpdateSource(kafka, "tu-flow", tail=False)), TestingSink(out))
    run_main(flow)
    by_partition = {}
    for item in out:
        by_partition.setdefault(item.partition, []).append(item)
    assert set(by_partition) == {BASE, BASE + 1}
    for pid, items in by_partition.items():
        marks = [i.ts for i in items if isinstance(i, Watermark)]
        assert marks[-2:] == [1704205920, END_OF_TIME]  # markers floored to their minute
    assert [i.update for i in out if isinstance(i, BrokerEvent)] == [u]


def test_undecodable_records_are_skipped_and_counted(kafka):
    with TradeUpdatesWriter(kafka, "tu-bad", partitions=1) as writer:
        p = KafkaProducer(bootstrap_servers=kafka)
        p.send("tu-bad", key=b"AAPL", value=b"not json", partition=0)
        p.flush()
        p.close()
        u = TradeUpdate("s.AAPL.1.entry", "canceled", "AAPL", "buy", 1704205861)
        writer.publish(u)
    src = TradeUpdateSource(kafka, "tu-bad", tail=False)
    part = src.build_part("s", src.list_parts()[0], None)
    items = []
    try:
        while True:
            items.extend(part.next_batch())
    except StopIteration:
        pass
    assert part.undecodable == 1
    assert items == [BrokerEvent(BASE, 0, u), Watermark(BASE, 1, END_OF_TIME)]
    assert part.snapshot()[:3] == (2, 2, END_OF_TIME)
    part.close()


def poll(part, n, timeout=10.0) -> list:
    items, deadline = [], time.monotonic() + timeout
    while len(items) < n and time.monotonic() < deadline:
        items.extend(part.next_batch())
    return items


def test_source_resumes_from_its_snapshot_and_keeps_late_updates(kafka):
    t = 1704205860
    u1 = TradeUpdate("s.AAPL.1.entry", "fill", "AAPL", "buy", t + 5, filled_qty=1, fill_qty=1, fill_price=10.0)
    u2 = TradeUpdate("s.AAPL.1.entry", "canceled", "AAPL", "buy", t + 6, filled_qty=1)
    src = TradeUpdateSource(kafka, "tu-resume", tail=True)
    with TradeUpdatesWriter(kafka, "tu-resume", partitions=1) as writer:
        writer.publish(u1)
        writer.mark(t + 61)
        part = src.build_part("s", src.list_parts()[0], None)
        assert poll(part, 2) == [BrokerEvent(BASE, 0, u1), Watermark(BASE, 1, t + 60)]
        snap = part.snapshot()
        part.close()
        assert snap[:3] == (2, 2, t + 60)
        writer.publish(u2)  # stamped before the watermark: late, still the broker's truth
        writer.mark(t + 125)
    part = src.build_part("s", src.list_parts()[0], snap)
    try:
        assert poll(part, 2) == [BrokerEvent(BASE, 2, u2), Watermark(BASE, 3, t + 120)]
    finally:
        part.close()
    with pytest.raises(TopicChanged):
        src.build_part("s", src.list_parts()[0], (snap[0], snap[1], snap[2], "another-topic-id"))


def test_refused_keys_are_a_typed_error(kafka, server):
    writer = TradeUpdatesWriter(kafka, "tu-auth", partitions=1)
    try:
        bad = TradeUpdateRelay("wrong", "keys", RUN, writer, stream_url=server.trading_stream_url,
                               rest_url=server.trading_url)
        with pytest.raises(AlpacaAuthFailed):
            bad.start()
        server.fail_trading_auth(None)  # REST accepts the keys, the stream refuses them
        with pytest.raises(AlpacaAuthFailed):
            relay_for(server, writer).start()
    finally:
        writer.close()


def test_unreachable_kafka_is_a_typed_error():
    with pytest.raises(KafkaUnavailable):
        TradeUpdatesWriter("127.0.0.1:1", "tu", max_block_ms=1000)


# ------------------------------------------------------------------ the clock thread, with fakes


class FakeStream:
    def __init__(self, events):
        self.events, self.stopped = events, False

    def run(self):
        while not self.stopped:
            time.sleep(0.01)

    def shutdown(self):
        self.stopped = True


class FakeWriter:
    def __init__(self):
        self.log: list = []

    def publish(self, u):
        self.log.append(("u", u.order_id, u.event))

    def publish_many(self, updates):
        for u in updates:
            self.publish(u)

    def mark(self, ts):
        self.log.append(("w", ts))


class FakeClient:
    def __init__(self, orders):
        self.orders, self.requests = orders, []

    def get_orders(self, req):
        self.requests.append(req)
        return self.orders


def test_markers_wait_for_a_listening_stream_and_its_catch_up():
    recorded = json.loads((Path(__file__).parent / "recorded" / "alpaca_trade_updates.json").read_text())
    now = [1704206000.7]
    streams: list = []

    def factory(events):
        streams.append(FakeStream(events))
        events.put(("listening",))
        return streams[-1]

    writer, client = FakeWriter(), FakeClient(recorded["orders_nested"])
    relay = TradeUpdateRelay("k", "s", "live1", writer, clock_poll_s=0.02, grace_s=0.05, trading_client=client,
                             broker_clock=lambda: now[0], stream_factory=factory).start()
    try:
        # the catch-up is written before start() returns, before any marker
        assert [e[2] for e in writer.log] == ["fill", "fill", "rejected", "canceled"]
        req, older = client.requests[:2]
        assert (req.status.value, req.nested, req.limit, req.after.timestamp()) == (
            "all", True, 500, 1704206000.7 - 86_400)
        assert (older.status.value, older.nested, older.until) == ("open", True, req.after)
        wait(lambda: ("w", 1704206000) in writer.log)
        assert all(e[0] == "u" for e in writer.log[:4])

        events = streams[0].events
        events.put(("closed",))
        wait(lambda: not relay._listening)
        n = len(writer.log)
        now[0] += 30
        time.sleep(0.3)
        assert len(writer.log) == n  # no marker while nobody listens: events may be missed

        events.put(("listening",))  # reconnected: catch up what changed since before the last marker
        events.put(("update", recorded["events"][1]))
        wait(lambda: ("w", 1704206030) in writer.log)
        assert len(client.requests) == 4  # each catch-up: since `since`, and older open orders
        # orders updated since a minute before the last marker (1704205940): not the entry
        assert writer.log[n:n + 3] == writer.log[1:4]
        assert writer.log.index(("u", "sma_5_20.AAPL.1704205800.entry", "partial_fill")) < \
            writer.log.index(("w", 1704206030))
        marks = [e[1] for e in writer.log if e[0] == "w"]
        assert marks == sorted(set(marks))  # one per broker second, increasing
        relay.check()
    finally:
        relay.stop()
    assert streams[0].stopped and not relay.alive


def test_the_broker_updates_it_writes_go_on_to_the_order_history_with_their_source(kafka, server, tc):
    from connectors.alpaca.order_history import event_of_update

    writer = TradeUpdatesWriter(kafka, "tu-history")
    seen = []

    def published(updates, source):
        seen.extend((source, u) for u in updates)

    try:
        relay = relay_for(server, writer, on_published=published).start()
        aapl = entry(tc, "AAPL", 10)
        server.fill(client_order_id(RUN, aapl), price=100.0)
        wait(lambda: len(seen) >= 2)
        relay.stop()
        relay = relay_for(server, writer, on_published=published).start()  # a restart: the catch-up
        relay.stop()
        relay.check()
    finally:
        writer.close()
    broker_id = server.order(client_order_id(RUN, aapl))["id"]
    rows = [event_of_update(u, client_order_id(RUN, u.order_id), source) for source, u in seen]
    assert [(r.source, r.event, r.clock, r.broker_order_id, r.filled_qty) for r in rows] == [
        ("trade_updates", "new", "broker_event", broker_id, 0),
        ("trade_updates", "filled", "broker_event", broker_id, 10),
        ("order_list", "filled", "broker_event", broker_id, 10)]
    # the fill seen twice is one row of the history: the same time, order, event and quantity
    assert rows[1].at == rows[2].at and rows[1].fill_price == rows[2].fill_price == 100.0


def test_our_own_updates_are_not_broker_events_of_the_history():
    from connectors.alpaca.order_history import event_of_update

    ours = [TradeUpdate("s.AAPL.1.entry", "submit_failed", "AAPL", "buy", 60, detail="HTTP 403"),
            TradeUpdate("s.AAPL.1.entry", "expired", "AAPL", "buy", 60, detail="stale decision"),
            TradeUpdate("reconcile.AAPL.60", "reconciled", "AAPL", "sell", 60)]
    assert [event_of_update(u, "r." + u.order_id, "trade_updates") for u in ours] == [None, None, None]


def test_a_relay_stop_reads_as_no_fault(kafka, server, tc, caplog):
    import logging

    caplog.set_level(logging.INFO)
    writer = TradeUpdatesWriter(kafka, "tu-stop")
    try:
        relay = relay_for(server, writer).start()
        aapl = entry(tc, "AAPL", 10)
        server.fill(client_order_id(RUN, aapl), price=100.0)
        wait(lambda: relay.counts["updates"] >= 2)
        caplog.clear()
        relay.stop()
        relay.check()
    finally:
        writer.close()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    events = [r.event for _, _, r in read_topic(kafka, "tu-stop", [0]) if isinstance(r, TradeUpdate)]
    assert events == ["new", "fill"]
    assert all(c.closed_at is not None for c in server.trading_connections())
