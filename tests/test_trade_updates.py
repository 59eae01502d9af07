"""The trade_updates topic's pure half (connectors/alpaca/trade_updates.py) on
payloads recorded from the local Alpaca (tests/recorded/alpaca_trade_updates.json:
run `live1`, an entry filled in two parts, its protective OCO, a trailing
replace of the stop leg, the stop leg filled, a foreign order, a rejection)."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from alpaca.trading.models import Order as AlpacaOrder
from alpaca.trading.models import TradeUpdate as AlpacaTradeUpdate

from connectors.alpaca.trade_updates import (
    catch_up_updates,
    order_id_of,
    submit_failure,
    to_trade_update,
)
from connectors.kafka.codec import DecodeError
from connectors.kafka.trade_topic import (
    TradeMarker,
    decode_trade_record,
    encode_trade_marker,
    encode_trade_update,
    epoch_seconds,
)
from operators.types import TradeUpdate

RECORDED = json.loads((Path(__file__).parent / "recorded" / "alpaca_trade_updates.json").read_text())
EVENTS = RECORDED["events"]
RUN = "live1"
ENTRY = "sma_5_20.AAPL.1704205800.entry"
OCO = f"{ENTRY}.oco"
T = 1704205860  # 2024-01-02T14:31:00Z


def mapped(events=EVENTS, run=RUN):
    legs: dict = {}
    return [to_trade_update(e, run, legs) for e in events], legs


def summary(u: TradeUpdate | None):
    return None if u is None else (u.order_id, u.event, u.leg, u.filled_qty, u.fill_qty, u.fill_price)


def test_order_ids_are_ours_only_with_our_run_prefix():
    assert order_id_of(f"{RUN}.{ENTRY}", RUN) == ENTRY
    assert order_id_of(f"{RUN}.{OCO}", RUN) == OCO
    assert order_id_of("manual-1", RUN) is None
    assert order_id_of(f"{RUN}x.{ENTRY}", RUN) is None  # another run sharing a prefix
    assert order_id_of(f"{RUN}.", RUN) is None
    assert order_id_of(ENTRY, RUN) is None
    assert order_id_of(None, RUN) is None


def test_recorded_session_maps_to_the_portfolios_order_ids_and_legs():
    updates, _ = mapped()
    assert [summary(u) for u in updates] == [
        (ENTRY, "new", "", 0, 0, 0.0),
        (ENTRY, "partial_fill", "", 4, 4, 100.5),
        (ENTRY, "fill", "", 10, 6, 100.25),
        (OCO, "new", "target", 0, 0, 0.0),  # the OCO parent is its take-profit limit
        (OCO, "new", "stop", 0, 0, 0.0),  # its stop leg: a server-generated client id
        (OCO, "replaced", "stop", 0, 0, 0.0),  # the trailing stop moved
        (OCO, "new", "stop", 0, 0, 0.0),  # ... the order replacing the stop leg
        (OCO, "fill", "stop", 10, 10, 99.0),  # the replacement filled: still the OCO's stop
        (OCO, "canceled", "target", 0, 0, 0.0),
        None,  # manual-1: not ours
        ("sma_5_20.MSFT.1704205860.entry", "rejected", "", 0, 0, 0.0),
    ]
    u = updates[1]
    assert (u.symbol, u.side, u.broker_order_id) == ("AAPL", "buy", EVENTS[1]["order"]["id"])


def test_times_are_broker_epoch_seconds_floored():
    updates, _ = mapped()
    # 14:31:00.25, 14:31:01.373456, 14:31:02.25 ...
    assert [u.ts for u in updates[:3]] == [T, T + 1, T + 2]
    assert epoch_seconds("2024-01-02T14:31:01.999999999Z") == T + 1
    assert epoch_seconds("2024-01-02T09:31:01.5-05:00") == T + 1
    assert epoch_seconds("2024-01-02T14:31:01") == T + 1  # naive = UTC
    assert epoch_seconds("yesterday") is None and epoch_seconds(None) is None


def test_stop_price_comes_from_the_stop_leg_and_the_replacement_carries_the_new_one():
    updates, _ = mapped()
    assert updates[3].stop_price == 98.0  # the parent: its stop leg's price
    assert updates[4].stop_price == 98.0
    # Alpaca's `replaced` event carries the OLD order: its price is not the new one
    assert updates[5].stop_price == 0.0
    assert updates[6].stop_price == 99.0


def test_oco_stop_leg_attribution_needs_the_parent_seen_first():
    stop_leg_new = EVENTS[4]
    assert to_trade_update(stop_leg_new, RUN, {}) is None  # a server id alone is nobody's
    legs: dict = {}
    to_trade_update(EVENTS[3], RUN, legs)  # the parent's `new` carries its legs
    assert legs == {stop_leg_new["order"]["id"]: f"{RUN}.{OCO}"}
    assert summary(to_trade_update(stop_leg_new, RUN, legs)) == (OCO, "new", "stop", 0, 0, 0.0)


def test_replaced_leg_passes_its_parent_to_the_replacement_either_way():
    _, legs = mapped(EVENTS[:5])
    old, new = EVENTS[5]["order"]["id"], EVENTS[6]["order"]["id"]
    # by `replaced_by` on the old order (the `replaced` event)
    by_event = dict(legs)
    to_trade_update(EVENTS[5], RUN, by_event)
    assert by_event[new] == f"{RUN}.{OCO}"
    # by `replaces` on the new order alone (the `replaced` event missed)
    by_new = dict(legs)
    assert summary(to_trade_update(EVENTS[6], RUN, by_new)) == (OCO, "new", "stop", 0, 0, 0.0)
    assert by_new[new] == f"{RUN}.{OCO}" and old in by_new


def test_not_ours_and_unknown_events_map_to_none():
    assert to_trade_update(EVENTS[0], "live2", {}) is None  # another run
    assert to_trade_update(EVENTS[9], RUN, {}) is None  # manual-1
    for event in ("pending_new", "done_for_day", "calculated", "pending_cancel", "accepted",
                  "submit_failed", "restated"):
        e = copy.deepcopy(EVENTS[0])
        e["event"] = event
        assert to_trade_update(e, RUN, {}) is None, event
    assert to_trade_update({"event": "fill"}, RUN, {}) is None
    assert to_trade_update("nonsense", RUN, {}) is None


def test_unmapped_events_still_record_legs():
    e = copy.deepcopy(EVENTS[3])
    e["event"] = "pending_new"
    legs: dict = {}
    assert to_trade_update(e, RUN, legs) is None
    assert legs == {EVENTS[4]["order"]["id"]: f"{RUN}.{OCO}"}


def test_raw_stream_message_and_alpaca_py_model_map_alike():
    _, legs_a = mapped(EVENTS[:3])
    legs_b: dict = {}
    for e in EVENTS:
        model = AlpacaTradeUpdate(**e)
        raw = {"stream": "trade_updates", "data": e}
        a = to_trade_update(raw, RUN, legs_a)
        b = to_trade_update(model, RUN, legs_b)
        assert a == b == to_trade_update(e, RUN, dict(legs_a))


def test_string_or_number_quantities_and_prices():
    e = copy.deepcopy(EVENTS[1])
    e["qty"], e["price"], e["order"]["filled_qty"] = 4.0, 100.5, 4
    assert summary(to_trade_update(e, RUN, {})) == (ENTRY, "partial_fill", "", 4, 4, 100.5)
    # a fill without qty/price still shows: the cumulative quantity and average price
    del e["qty"], e["price"]
    e["order"]["filled_avg_price"] = "100.5"
    assert summary(to_trade_update(e, RUN, {})) == (ENTRY, "partial_fill", "", 4, 4, 100.5)


def test_catch_up_synthesizes_fills_and_endings_from_the_nested_order_list():
    legs: dict = {}
    updates = catch_up_updates(RECORDED["orders_nested"], RUN, legs)
    assert [(u.order_id, u.event, u.leg, u.filled_qty, u.fill_qty, u.fill_price, u.ts)
            for u in updates] == [
        (ENTRY, "fill", "", 10, 10, 100.35, T + 2),  # filled_at, average price
        (OCO, "fill", "stop", 10, 10, 99.0, T + 130),  # the nested (replacing) stop leg
        ("sma_5_20.MSFT.1704205860.entry", "rejected", "", 0, 0, 0.0, T + 130),
        (OCO, "canceled", "target", 0, 0, 0.0, T + 130),
    ]
    leg = RECORDED["orders_nested"][2]["legs"][0]["id"]
    assert legs == {leg: f"{RUN}.{OCO}"}
    # later live events of that leg resolve
    assert to_trade_update(EVENTS[7], RUN, legs).leg == "stop"
    # only what changed since a time
    assert catch_up_updates(RECORDED["orders_nested"], RUN, {}, changed_since=T + 100)[0].order_id == OCO
    assert catch_up_updates(RECORDED["orders_nested"], "live2", {}) == []


def test_catch_up_of_an_order_still_filling_is_a_partial_fill_and_takes_models():
    order = copy.deepcopy(EVENTS[1]["order"])  # partially filled: 4 of 10
    [u] = catch_up_updates([AlpacaOrder(**order)], RUN, {})
    assert (u.event, u.filled_qty, u.fill_qty, u.fill_price, u.ts) == ("partial_fill", 4, 4, 100.5, T + 1)


def test_encode_decode_round_trip():
    updates, _ = mapped()
    for u in filter(None, updates):
        key, value = encode_trade_update(u)
        assert key == u.symbol.encode()
        assert decode_trade_record(value) == u
        assert json.loads(value)["T"] == "u"
    failed = submit_failure(OCO, "AAPL", "sell", T + 5, "order rejected (HTTP 403): insufficient qty")
    assert failed.event == "submit_failed" and decode_trade_record(encode_trade_update(failed)[1]) == failed


def test_marker_is_the_exact_broker_second_not_a_minute():
    value = encode_trade_marker(T + 7)
    assert json.loads(value) == {"T": "w", "t": "2024-01-02T14:31:07Z"}
    assert decode_trade_record(value) == TradeMarker(T + 7)
    assert decode_trade_record(b'{"T":"w","t":"2024-01-02T14:31:07.9Z"}') == TradeMarker(T + 7)


@pytest.mark.parametrize("value", [
    None, b"", b"{", b"[]", b'"u"', b'{"T":"b","S":"AAPL"}', b'{"T":"w"}', b'{"T":"w","t":"soon"}',
    b'{"T":"u","order_id":"x","event":"fill","symbol":"A","side":"buy"}',
    b'{"T":"u","order_id":"x","event":"exploded","symbol":"A","side":"buy","t":"2024-01-02T14:31:07Z"}',
    b'{"T":"u","order_id":"x","event":"fill","symbol":"A","side":"long","t":"2024-01-02T14:31:07Z"}',
    b'{"T":"u","order_id":"x","event":"fill","symbol":"A","side":"buy","t":"2024-01-02T14:31:07Z","leg":"x"}',
    b'{"T":"u","order_id":"x","event":"fill","symbol":"A","side":"buy","t":"2024-01-02T14:31:07Z","fill_qty":1.5}',
    b'{"T":"u","order_id":"x","event":"fill","symbol":"A","side":"buy","t":"2024-01-02T14:31:07Z","fill_qty":-1}',
    b'{"T":"u","order_id":"","event":"fill","symbol":"A","side":"buy","t":"2024-01-02T14:31:07Z"}',
    b'\xff\xfe', b'{"T":"u"' + b"[" * 5000,
])
def test_bad_record_is_a_decode_error_never_an_exception(value):
    assert isinstance(decode_trade_record(value), DecodeError)


def test_decoding_ignores_unknown_fields_and_fills_defaults():
    value = b'{"T":"u","order_id":"x","event":"canceled","symbol":"A","side":"buy","t":"2024-01-02T14:31:07Z","new":1}'
    assert decode_trade_record(value) == TradeUpdate("x", "canceled", "A", "buy", T + 7)


def test_legs_of_orders_other_than_our_oco_never_pass_for_the_parent():
    parent = copy.deepcopy(EVENTS[3])
    parent["order"]["client_order_id"] = f"{RUN}.{ENTRY}"  # a bracket entry, say
    legs: dict = {}
    to_trade_update(parent, RUN, legs)
    assert legs == {}
    fill = copy.deepcopy(EVENTS[7])
    fill["order"]["replaces"] = None
    assert to_trade_update(fill, RUN, legs) is None
