"""Kafka `trade_updates` topic: what the broker did, as the dataflow reads it
(the pure half: mapping and encoding, no I/O).

Alpaca's trade-updates stream (and, after a restart, its order list) becomes
`operators.types.TradeUpdate`s of our orders; the relay
(`connectors.alpaca.trade_relay`) writes them to this topic, the broker sink writes
`submit_failed` there too, and `connectors.kafka.trade_source.TradeUpdateSource`
reads them back into the flow.

Mapping rules (`to_trade_update`): our client order ids are
`{run_id}.{order_id}` (connectors.alpaca.broker.client_order_id, not hashed); other
orders are not ours (None). Our protective OCO (client id `...oco`) carries
`legs`: each leg's broker id goes into `leg_parents` (leg id -> the OCO's
client id), so the leg's own events resolve (legs of other multi-leg orders
are never taken: their fills must not pass for the parent's). A replaced
order passes its parent on to the order that replaces it (`replaced_by` on
the old order - what Alpaca's and the local server's `replaced` event
carries - or `replaces` on the new one). The catch-up after a restart
(`catch_up_updates`, from the nested order list) fills `leg_parents` too.
"""
from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from connectors.kafka.trade_topic import _SIDES, epoch_seconds
from operators.types import TRADE_UPDATE_EVENTS, TradeUpdate

_STOP_TYPES = frozenset({"stop", "stop_limit", "trailing_stop"})


# ---------------------------------------------------------------- values
def _text(x: Any) -> str:
    """Enum members (alpaca-py models) by value, None as ""."""
    if x is None:
        return ""
    return str(getattr(x, "value", x))


def _decimal(x: Any) -> Decimal | None:
    if x is None or x == "" or isinstance(x, bool):
        return None
    try:
        d = Decimal(str(x))
    except (InvalidOperation, ValueError):
        return None
    return d if d.is_finite() else None


def _int(x: Any) -> int:
    d = _decimal(x)
    return int(d) if d is not None else 0


def _float(x: Any) -> float:
    d = _decimal(x)
    return float(d) if d is not None else 0.0


def update_dict(obj: Any) -> dict | None:
    """One trade-updates message as a dict: the `data` of a raw stream message
    ({"stream": "trade_updates", "data": {...}}), the data itself, or
    alpaca-py's `TradeUpdate` model (enums as values, ids and times as text)."""
    if hasattr(obj, "model_dump"):
        obj = obj.model_dump(mode="json")
    if not isinstance(obj, dict):
        return None
    if "order" not in obj and isinstance(obj.get("data"), dict):
        obj = obj["data"]
    return obj


def _order_dict(obj: Any) -> dict | None:
    if hasattr(obj, "model_dump"):
        obj = obj.model_dump(mode="json")
    return obj if isinstance(obj, dict) else None


# ---------------------------------------------------------------- ours or not
def order_id_of(client_order_id: str, run_id: str) -> str | None:
    """The portfolio's order id of a client order id `{run_id}.{order_id}`;
    None when the order is not this run's."""
    if not isinstance(client_order_id, str) or not run_id:
        return None
    prefix = f"{run_id}."
    if len(client_order_id) <= len(prefix) or not client_order_id.startswith(prefix):
        return None
    return client_order_id[len(prefix):]


def note_legs(order: Any, run_id: str, leg_parents: dict) -> None:
    """Record in `leg_parents` what this order tells about legs: a protective
    OCO of ours carrying `legs` (each leg id -> the OCO's client id; the legs
    of any other order are not taken: their fills must never pass for the
    parent's), a replaced order's successor (`replaced_by`), a successor of a
    known leg (`replaces`)."""
    order = _order_dict(order)
    if order is None:
        return
    oid, cid = _text(order.get("id")), order.get("client_order_id")
    logical = cid if order_id_of(cid, run_id) is not None else leg_parents.get(oid)
    if logical is not None:
        legs = order.get("legs") if logical.endswith(".oco") else None
        for leg in legs if isinstance(legs, list) else ():
            leg = _order_dict(leg)
            if leg is not None and leg.get("id") and order_id_of(leg.get("client_order_id"), run_id) is None:
                leg_parents[_text(leg["id"])] = logical
                note_legs(leg, run_id, leg_parents)
        successor = _text(order.get("replaced_by"))
        if successor:
            leg_parents[successor] = logical
    replaces = _text(order.get("replaces"))
    if replaces and replaces in leg_parents and order_id_of(cid, run_id) is None:
        leg_parents[oid] = leg_parents[replaces]


def _identify(order: dict, run_id: str, leg_parents: dict) -> tuple[str, str] | None:
    """(portfolio order id, leg) of an order, or None when not ours."""
    own = order_id_of(order.get("client_order_id"), run_id)
    child = own is None
    if child:
        parent = leg_parents.get(_text(order.get("id")))
        own = order_id_of(parent, run_id) if parent is not None else None
        if own is None:
            return None
    if not own.endswith(".oco"):
        return own, ""
    kind = _text(order.get("type") or order.get("order_type"))
    if kind:
        return own, "stop" if kind in _STOP_TYPES else "target"
    return own, "stop" if child else "target"


def _stop_price(order: dict) -> float:
    price = _float(order.get("stop_price"))
    if price:
        return price
    legs = order.get("legs")
    for leg in legs if isinstance(legs, list) else ():
        leg = _order_dict(leg) or {}
        if _text(leg.get("type") or leg.get("order_type")) in _STOP_TYPES and _float(leg.get("stop_price")):
            return _float(leg.get("stop_price"))
    return 0.0


# ---------------------------------------------------------------- mapping
def to_trade_update(data: Any, run_id: str, leg_parents: dict) -> TradeUpdate | None:
    """One Alpaca trade-updates message (`update_dict` shapes) -> a
    `TradeUpdate` of ours, or None (not ours, an event the portfolio does not
    take - pending_new, done_for_day, calculated, ... - or a message without
    order, symbol, side or time). Records legs in `leg_parents` first (also
    for events that map to None)."""
    d = update_dict(data)
    order = _order_dict(d.get("order")) if d is not None else None
    if order is None:
        return None
    note_legs(order, run_id, leg_parents)
    event = _text(d.get("event"))
    if event not in TRADE_UPDATE_EVENTS or event == "submit_failed":
        return None
    who = _identify(order, run_id, leg_parents)
    if who is None:
        return None
    ts = epoch_seconds(d.get("timestamp"))
    if ts is None:
        ts = epoch_seconds(order.get("updated_at"))
    symbol, side = _text(order.get("symbol")), _text(order.get("side"))
    if ts is None or not symbol or side not in _SIDES:
        return None
    filled_qty = _int(order.get("filled_qty"))
    fill_qty, fill_price = 0, 0.0
    if event in ("fill", "partial_fill"):
        # Alpaca always sends qty and price with a fill; the fallbacks keep a
        # fill visible (the portfolio takes the delta of filled_qty)
        fill_qty = _int(d.get("qty")) or filled_qty
        fill_price = _float(d.get("price")) or _float(order.get("filled_avg_price"))
    # a `replaced` event carries the OLD order (its old stop): the new price
    # comes with the new order's `new` event
    stop = 0.0 if event == "replaced" and order.get("replaced_by") else _stop_price(order)
    return TradeUpdate(who[0], event, symbol, side, ts, who[1], filled_qty, fill_qty, fill_price,
                       _text(order.get("id")), stop)


_TERMINAL_AT = {"canceled": "canceled_at", "expired": "expired_at", "rejected": "failed_at"}


def _flatten(order: dict, out: list) -> None:
    out.append(order)
    legs = order.get("legs")
    for leg in legs if isinstance(legs, list) else ():
        leg = _order_dict(leg)
        if leg is not None:
            _flatten(leg, out)


def catch_up_updates(orders, run_id: str, leg_parents: dict,
                     changed_since: int | None = None) -> list[TradeUpdate]:
    """What the broker did that a relay may have missed, from its order list
    (`GET /v2/orders?status=all&nested=true`: dicts or alpaca-py `Order`s):
    per order of ours (legs included, recorded in `leg_parents`) a `fill`
    (`partial_fill` while short of its qty) with fill_qty = filled_qty at
    filled_avg_price, stamped filled_at (else updated_at), and a `canceled`,
    `expired` or `rejected` for an order that ended so. With
    `changed_since`, only orders updated at or after it (epoch seconds).
    Sorted by time, fills first within a second. Repeats of what the flow already has are harmless: the
    portfolio takes fills by the cumulative filled_qty."""
    flat: list = []
    for order in orders or ():
        order = _order_dict(order)
        if order is not None:
            note_legs(order, run_id, leg_parents)
            _flatten(order, flat)
    updates: list = []
    for i, order in enumerate(flat):
        who = _identify(order, run_id, leg_parents)
        updated = epoch_seconds(order.get("updated_at"))
        if who is None or updated is None or (changed_since is not None and updated < changed_since):
            continue
        symbol, side = _text(order.get("symbol")), _text(order.get("side"))
        if not symbol or side not in _SIDES:
            continue
        status = _text(order.get("status"))
        filled, qty = _int(order.get("filled_qty")), _decimal(order.get("qty"))
        broker_id, stop = _text(order.get("id")), _stop_price(order)
        if filled > 0:
            complete = status == "filled" or (qty is not None and filled >= qty)
            ts = epoch_seconds(order.get("filled_at")) if complete else None
            updates.append((ts if ts is not None else updated, 0, i, TradeUpdate(
                who[0], "fill" if complete else "partial_fill", symbol, side,
                ts if ts is not None else updated, who[1], filled, filled,
                _float(order.get("filled_avg_price")), broker_id, stop)))
        if status in _TERMINAL_AT:
            ts = epoch_seconds(order.get(_TERMINAL_AT[status]))
            ts = ts if ts is not None else updated
            updates.append((ts, 1, i, TradeUpdate(who[0], status, symbol, side, ts, who[1], filled,
                                               0, 0.0, broker_id, stop)))
    updates.sort(key=lambda x: x[:3])  # by time; at the same second fills before endings
    return [x[3] for x in updates]


def submit_failure(order_id: str, symbol: str, side: str, ts: int, detail: str) -> TradeUpdate:
    """A submission the broker refused (or never answered): counts toward the
    order-failure circuit breaker."""
    return TradeUpdate(order_id, "submit_failed", symbol, side, int(ts), detail=detail[:500])
