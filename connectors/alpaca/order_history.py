"""The history of the run's orders at the broker (pure: the row type and the
mapping of trade updates to rows, no I/O). ClickHouse table `broker_orders`.

Append-only: every state change of an order is its own `OrderEvent` row,
nothing is ever rewritten. A row replaces only its identical twin (same
order, time, event, leg, broker id and filled quantity: a replayed decision,
a fill seen both on the stream and in the order list after a reconnect).

Events, in the order an order goes through them (`RANK`):

  decided           the portfolio decided a request (intent entry, exit, protect, ...)
  sent              the request went to the broker
  refused           the broker refused it, or stayed unavailable after the retries
  skipped           not sent, and the broker does not hold the order (an entry
                    decided on old bars, an exit whose OCO already filled)
  accepted          the broker took it (its id and status)
  adopted           the broker already held it (a replayed decision after a
                    restart: its id and current status; nothing placed again)
  replaced          the broker replaced it (the OCO's stop leg moved up)
  new               the broker's trade update: the order is live
  partially_filled  part of it filled (`filled_qty` is cumulative)
  canceled, expired, rejected     the broker ended it
  filled            all of it filled

The current state of an order is its most advanced event (highest rank, the
latest of those): `CURRENT_STATE_SQL`, the view `broker_order_state`.

Clocks (`clock`): `bar` the decision bar's close (event time: the bar's
timestamp + 60 s); `broker` Alpaca's clock (`GET /v2/clock`, advanced with
the local monotonic clock between reads) when the sink or the relay acted;
`broker_event` the time Alpaca stamped on a trade update or on the order in
its order list (whole seconds); `local` this machine's wall clock (rows
migrated from before the history). Durations: `decision_lag_ms` is the
broker clock at the sink minus the decision bar's close (both Alpaca's time
frame); `submit_ms` the local monotonic clock around the broker call.
"""
from __future__ import annotations

from dataclasses import dataclass

from operators.types import TradeUpdate

# our own rows (the sink's and the relay's requests) and the broker's
REQUEST_OUTCOMES = ("accepted", "adopted", "refused", "skipped")
RANK = {"decided": 0, "sent": 1, "refused": 2, "skipped": 2, "accepted": 3, "adopted": 3,
        "replaced": 4, "new": 5, "partially_filled": 6, "canceled": 7, "expired": 7,
        "rejected": 7, "filled": 8}
BROKER_EVENTS = {"new": "new", "partial_fill": "partially_filled", "fill": "filled",
                 "canceled": "canceled", "expired": "expired", "rejected": "rejected",
                 "replaced": "replaced"}
CLOCKS = ("bar", "broker", "broker_event", "local")
SOURCES = ("sink", "relay", "trade_updates", "order_list", "v1")


@dataclass(slots=True)
class OrderEvent:
    """One row of `broker_orders`: one state change of one order."""

    client_order_id: str
    at: int  # when: epoch milliseconds, read from `clock`
    event: str
    clock: str
    source: str  # sink | relay (the OCO on a fill) | trade_updates | order_list | v1 (migrated)
    order_id: str = ""  # the portfolio's order id (the client order id without `{run}.`)
    intent: str = ""  # the request's (entry, signal, protect, trail, cancel, ...); "" for the broker's
    symbol: str = ""
    side: str = ""
    qty: int = 0  # the quantity asked for
    decided_ts: int = 0  # the decision bar (epoch seconds); 0: not a decision of the flow
    decision_price: float = 0.0
    broker_order_id: str = ""
    status: str = ""  # the broker's status of the order as this event saw it
    leg: str = ""  # "" | stop | target (the protective OCO's legs)
    filled_qty: int = 0  # cumulative
    fill_price: float = 0.0  # this fill's price (a catch-up: the average)
    detail: str = ""
    decision_lag_ms: float | None = None  # the decision bar's close -> the sink (broker clock)
    submit_ms: float | None = None  # the sink -> the broker's answer (local monotonic clock)


def event_of_update(u: TradeUpdate, cid: str, source: str) -> OrderEvent | None:
    """A broker's trade update (stream or order-list catch-up) of order
    `cid` as a history row; None for our own updates (`submit_failed`,
    `reconciled`, a stale entry's `expired`), which the sink records itself."""
    event = BROKER_EVENTS.get(u.event)
    if event is None or not u.broker_order_id:
        return None
    return OrderEvent(
        cid, u.ts * 1000, event, "broker_event", source, order_id=u.order_id, symbol=u.symbol,
        side=u.side, broker_order_id=u.broker_order_id, status=event, leg=u.leg,
        filled_qty=u.filled_qty, fill_price=u.fill_price, detail=u.detail[:500])
