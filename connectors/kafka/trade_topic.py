"""Kafka `trade_updates` topic: the record format (pure: encoding and
decoding, no I/O). What goes in it is mapped from Alpaca by
`connectors.alpaca.trade_updates`; the relay (`connectors.alpaca.trade_relay`)
writes it; `connectors.kafka.trade_source.TradeUpdateSource` reads it back
into the flow.

Record format of the `trade_updates` topic
  Update: key = symbol (utf-8), value = JSON
          {"T":"u","order_id":"sma_5_20.AAPL.1704205800.entry.oco","event":"fill",
           "symbol":"AAPL","side":"sell","t":"2024-01-02T14:33:10Z","leg":"stop",
           "filled_qty":10,"fill_qty":10,"fill_price":99.0,
           "broker_order_id":"5a4c9649-...","stop_price":99.0,"detail":""}
          The fields are `TradeUpdate`'s, with `ts` written as `t` (RFC 3339,
          UTC, whole seconds: the broker's time floored). `order_id` is the
          portfolio's order id (the client_order_id without `{run}.`); the
          protective OCO of an entry is `{entry}.oco` with `leg` "target"
          (its take-profit limit, the parent order) or "stop" (its stop leg,
          a child order with a server-generated client id). `event` is one of
          `operators.types.TRADE_UPDATE_EVENTS`. Optional fields may be left
          out (defaults: "" / 0); unknown fields are ignored. The key decides
          the partition (kafka-python's default partitioner, murmur2 like the
          Java client), so one symbol's updates stay in order in one
          partition; a librdkafka producer must set partitioner=murmur2_random.
  Marker: key = None (null), value = {"T":"w","t":"2024-01-02T14:33:12Z"},
          written to EVERY partition (explicit partition number). It means
          "every later update in this partition has ts >= t", t being the
          broker's exact time in whole seconds (not a minute). The relay
          writes t = the broker clock read `grace_s` earlier, once everything
          it received until then is written. The source turns a marker into
          the watermark floor(t to the minute): an update of minute m applies
          before the bars of minute m, so a marker at 10:02:00 lets minute
          10:01 complete.

An update stamped before a marker already written (a catch-up after a
restart, a `submit_failed` from the sink, a stream reconnect) is still
applied by the flow, at the next minute it completes: the broker's truth is
never dropped. The portfolio dedupes fills by the cumulative `filled_qty`, so
a repeated update is harmless.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import msgspec

from connectors.kafka.codec import DecodeError, _one_line
from operators.types import TRADE_UPDATE_EVENTS, TradeUpdate, iso

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_SECOND = timedelta(seconds=1)
_LEGS = frozenset({"", "stop", "target"})
_SIDES = frozenset({"buy", "sell"})
# Alpaca writes up to nanoseconds; Python's datetime keeps microseconds, so
# the fraction is cut off before parsing (only whole seconds are kept anyway).
_FRACTION = re.compile(r"(\d{2}:\d{2}:\d{2})\.\d+")


@dataclass(slots=True, frozen=True)
class TradeMarker:
    """A marker of the trade_updates topic: every later update of its
    partition has ts >= `ts` (epoch seconds, the broker's time)."""

    ts: int


def epoch_seconds(t: Any) -> int | None:
    """Epoch seconds (floor) of an RFC 3339 time (nanoseconds allowed; naive =
    UTC) or a datetime; None when it is not one."""
    if isinstance(t, str):
        if len(t) > 64:
            return None
        t = _FRACTION.sub(r"\1", t.strip(), count=1)
        try:
            t = datetime.fromisoformat(t)
        except ValueError:
            return None
    if not isinstance(t, datetime):
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return (t - _EPOCH) // _SECOND


def encode_trade_update(u: TradeUpdate) -> tuple[bytes, bytes]:
    """(key, value) of an update: key = symbol, value = the JSON above."""
    value = {"T": "u", "order_id": u.order_id, "event": u.event, "symbol": u.symbol,
             "side": u.side, "t": iso(u.ts), "leg": u.leg, "filled_qty": int(u.filled_qty),
             "fill_qty": int(u.fill_qty), "fill_price": _finite(u.fill_price),
             "broker_order_id": u.broker_order_id, "stop_price": _finite(u.stop_price),
             "detail": u.detail}
    return u.symbol.encode(), json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


def _finite(x: float) -> float:
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"not a finite price: {x}")
    return x


def encode_trade_marker(ts: int) -> bytes:
    """Value of the marker "every later update here has ts >= `ts`" (key None)."""
    return f'{{"T":"w","t":"{iso(int(ts))}"}}'.encode()


class _WireUpdate(msgspec.Struct, tag_field="T", tag="u"):
    order_id: str
    event: str
    symbol: str
    side: str
    t: str
    leg: str = ""
    filled_qty: int = 0
    fill_qty: int = 0
    fill_price: float = 0.0
    broker_order_id: str = ""
    stop_price: float = 0.0
    detail: str = ""


class _WireMarker(msgspec.Struct, tag_field="T", tag="w"):
    t: str


_DECODER = msgspec.json.Decoder(_WireUpdate | _WireMarker)


def decode_trade_record(value: bytes | None) -> TradeUpdate | TradeMarker | DecodeError:
    """A record value of the topic -> `TradeUpdate` | `TradeMarker` |
    `DecodeError(reason)`. Never raises."""
    if value is None:
        return DecodeError("no value (tombstone)")
    try:
        r = _DECODER.decode(value)
    except Exception as exc:  # malformed JSON, wrong types, unknown T, ...
        return DecodeError(f"not a trade update or marker: {_one_line(exc)}"[:200])
    ts = epoch_seconds(r.t)
    if ts is None:
        return DecodeError(f"field t: not a time: {r.t[:40]!r}")
    if type(r) is _WireMarker:
        return TradeMarker(ts)
    if r.event not in TRADE_UPDATE_EVENTS:
        return DecodeError(f"unknown event {r.event[:30]!r}")
    if r.side not in _SIDES:
        return DecodeError(f"field side: expected buy or sell, not {r.side[:20]!r}")
    if r.leg not in _LEGS:
        return DecodeError(f"field leg: expected stop, target or empty, not {r.leg[:20]!r}")
    if not r.order_id or not r.symbol:
        return DecodeError("empty order_id or symbol")
    if r.filled_qty < 0 or r.fill_qty < 0:
        return DecodeError("negative quantity")
    if not (math.isfinite(r.fill_price) and math.isfinite(r.stop_price)):
        return DecodeError("price not finite")
    return TradeUpdate(r.order_id, r.event, r.symbol, r.side, ts, r.leg, r.filled_qty, r.fill_qty,
                       r.fill_price, r.broker_order_id, r.stop_price, r.detail)
