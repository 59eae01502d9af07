"""The broker sink: the portfolio's orders to Alpaca, and protection at once
when an entry fills.

`BrokerExecution` turns one `Order` of the live portfolio into calls on
alpaca-py's `TradingClient` (through `AlpacaBroker`, idempotent by
client_order_id, so at-least-once delivery after a recovery never places an
order twice):

  entry, exits (signal, time_stop, kill_switch) -> market order; an exit
      first cancels the position's protective OCO and is skipped when the OCO
      already filled (the position is closed: selling again would go short);
  protect -> the OCO (stop + target) of a filled entry;
  trail   -> moves the OCO's stop leg up (never down);
  cancel  -> cancels an entry still open (kill switch with --flatten).

A refusal (`BrokerRejected`), or a broker still unavailable after the retries,
goes back to the flow as a `submit_failed` trade update (it counts toward the
order-failure circuit breaker) through `publish`, stamped with the minute the
order was meant for (decision bar + 60 s): that minute is already applied, so
the flow takes it before its next bars, in replay as live. Every request
leaves its rows in the order history (`connectors.alpaca.order_history`,
ClickHouse table `broker_orders`): decided, sent, and accepted, adopted (the
broker already held it: a replay after a restart), refused or skipped, with
the broker's id and status, the decision's age by the broker's clock and the
call's duration by the local one.

`ProtectOnFill` is the reaction the trade-updates relay runs on each update:
an entry filled in one piece gets its OCO within milliseconds, from the fill
price (the portfolio asks for the same OCO, same id, once it applies the fill:
that second request is adopted as a duplicate).
"""
from __future__ import annotations

import logging
import time
from dataclasses import replace

import requests
from alpaca.common.exceptions import APIError
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from connectors.alpaca.broker import (
    AlpacaBroker,
    BrokerError,
    BrokerRejected,
    BrokerRetriable,
    Submitted,
    client_order_id,
    to_protection_request,
    to_stop_replace,
    to_tick,
)
from connectors.alpaca.order_history import OrderEvent
from operators.types import BUY, SELL, Order, TradeUpdate

log = logging.getLogger(__name__)

MARKET_INTENTS = frozenset({"entry", "signal", "time_stop", "kill_switch", "flatten"})
OPEN = frozenset({"new", "partially_filled", "accepted", "pending_new", "held", "pending_cancel",
                  "pending_replace", "accepted_for_bidding", "calculated", "done_for_day"})


def _status(order) -> str:
    status = getattr(order, "status", "")
    return str(getattr(status, "value", status))


class BrokerExecution:
    """One order at a time, in decision order (the portfolio is one key).

    Every request leaves its history (`connectors.alpaca.order_history`),
    handed to `record(rows)` once the broker answered: `decided` (at the
    decision bar's close), `sent` (when it went out) and its outcome
    `accepted` / `adopted` / `refused` / `skipped`. Clocks: `broker_clock()`
    is Alpaca's time (epoch seconds; what a decision's age and the rows'
    times are read from), `clock()` the local monotonic clock (durations,
    waits). `known_orders` ({client order id: (broker id, status)}: the
    run's orders the broker listed at start-up, `known_since` on) answers
    whether the broker already holds a replayed entry without asking it."""

    def __init__(self, broker: AlpacaBroker, publish, record, *, retries: int = 4,
                 backoff_s: float = 0.5, cancel_wait_s: float = 5.0, clock=time.monotonic,
                 sleep=time.sleep, broker_clock=time.time, max_decision_age_s: float = 90.0,
                 known_orders: dict | None = None, known_since: float | None = None):
        self.broker, self.publish, self.record = broker, publish, record
        self.client, self.run_id = broker.client, broker.run_id
        self.retries, self.backoff_s, self.cancel_wait_s = retries, backoff_s, cancel_wait_s
        self.clock, self.sleep = clock, sleep
        self.broker_clock = broker_clock  # Alpaca's time: how old a decision is, when rows happened
        self.max_decision_age_s = max_decision_age_s
        self.known = dict(known_orders or {})
        self.known_since = known_since if known_orders is not None else None

    def _oco_cid(self, order: Order) -> str:
        oco = order.oco_id or (f"{order.parent_id}.oco" if order.parent_id else "")
        return client_order_id(self.run_id, oco) if oco else ""

    def execute(self, order: Order) -> OrderEvent:
        """Send one request; returns its outcome row (all its rows are recorded)."""
        cid = (self._oco_cid(order) if order.intent in ("protect", "trail")
               else client_order_id(self.run_id, order.order_id))
        req = _Request(self, order, cid)
        if order.intent == "entry" and req.age_s > self.max_decision_age_s:
            # a decision on old bars (a first run over a topic with history, a
            # restart after downtime): never a market order at today's prices;
            # but a replayed one the broker already holds is that order
            held, checked = self._held(cid, order.decided_ts)
            if held is not None:
                self.known[cid] = held
                return req.done("adopted", *held, f"replayed decision (its bar closed {req.age_s:,.0f} s "
                                                  "ago): the broker already holds this order")
            detail = f"stale decision: its bar closed {req.age_s:,.0f} s ago"
            if not checked:
                detail += "; whether the broker holds it could not be asked (unreachable)"
            self.publish(TradeUpdate(order.order_id, "expired", order.symbol, order.side,
                                     order.decided_ts + 60, detail=detail))
            return req.done("skipped", detail=detail)
        try:
            qty = order.qty
            if order.intent in MARKET_INTENTS and order.side == SELL and self._oco_cid(order):
                qty = self._cancel_protection(self._oco_cid(order), order.qty)
                if qty <= 0:
                    return req.done("skipped", detail="protective OCO already filled: position closed "
                                                      "at the broker")
            if order.intent in MARKET_INTENTS:
                sent = order if qty == order.qty else replace(order, qty=qty)
                done = self._retrying(req.sending(lambda: self.broker.submit_order(sent)))
            elif order.intent == "protect":
                done = self._retrying(req.sending(lambda: self.broker.submit(to_protection_request(
                    self.run_id, order.parent_id, order.symbol, order.qty, order.stop_price,
                    order.target_price, oco_order_id=order.oco_id or None))))
            elif order.intent == "trail":
                done = self._retrying(lambda: self._move_stop(cid, order.stop_price, req))
            elif order.intent == "cancel":
                done = self._retrying(lambda: self._cancel(cid, req))
            else:
                raise ValueError(f"unknown order intent {order.intent!r}")
        except (BrokerRejected, BrokerRetriable, requests.ConnectionError, requests.Timeout) as exc:
            placed = None
            if not isinstance(exc, BrokerRejected) and order.intent in MARKET_INTENTS | {"protect"}:
                placed = self._placed_anyway(cid)
            if placed is not None:  # the broker took it before it stopped answering
                return req.done("adopted", str(placed.id), _status(placed), str(exc))
            if order.intent in MARKET_INTENTS or order.intent == "protect":
                self.publish(TradeUpdate(order.order_id, "submit_failed", order.symbol,
                                         order.side, order.decided_ts + 60, detail=str(exc)))
            log.warning("broker refused %s %s: %s", order.intent, cid, exc)
            return req.done("refused", detail=str(exc))
        if done is None:
            return req.done("skipped", detail="the broker does not hold this order")
        if order.intent == "entry":
            self.known[cid] = (done.order_id, done.status)
        return req.done("adopted" if done.adopted else "accepted", done.order_id, done.status,
                        done.detail)

    # -- the calls ------------------------------------------------------------
    def _retrying(self, call):
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                return call()
            except BrokerRetriable:
                if attempt == self.retries:
                    raise
                self.sleep(delay)
                delay *= 2

    def _held(self, cid: str, decided_ts: int) -> tuple[tuple[str, str] | None, bool]:
        """((broker id, status) of the order when the broker holds it, else
        None; whether that is known: False when the broker could not be asked)."""
        if cid not in self.known and self.known_since is not None and decided_ts >= self.known_since:
            return None, True  # the start-up listing covers it, and this run has not placed it since
        try:  # held: its current status (the few replayed ones)
            placed = self._get_by_cid(cid)
        except (BrokerError, requests.ConnectionError, requests.Timeout):
            return self.known.get(cid), cid in self.known
        return (None if placed is None else (str(placed.id), _status(placed))), True

    def _placed_anyway(self, cid: str):
        """After the retries: is the order at the broker all the same?"""
        try:
            return self._get_by_cid(cid)
        except (BrokerError, requests.ConnectionError, requests.Timeout):
            return None  # still unreachable: reported as failed (its fill, if any, is reconciled)

    def _get_by_cid(self, cid: str):
        try:
            return self.client.get_order_by_client_id(cid)
        except APIError as exc:
            if exc.status_code == 404:
                return None
            raise _typed(exc, cid) from None

    def _cancel_protection(self, cid: str, qty: int) -> int:
        """Cancel the position's OCO before selling (its legs hold the shares);
        how many shares are left to sell: `qty` less what the OCO filled."""
        oco = self._get_by_cid(cid)
        if oco is None:
            return qty
        if _status(oco) in OPEN:
            try:
                self.client.cancel_order_by_id(str(oco.id))
            except APIError as exc:
                if exc.status_code != 422:  # 422: no longer cancelable (filled meanwhile)
                    raise _typed(exc, cid) from None
            deadline = self.clock() + self.cancel_wait_s
            while _status(oco) in OPEN and self.clock() < deadline:
                self.sleep(0.05)
                oco = self._get_by_cid(cid)
            if _status(oco) in OPEN:  # never sell while the OCO can still fill
                raise BrokerRetriable(f"protective OCO {cid} still open after cancel")
        filled = sum(float(getattr(o, "filled_qty", 0) or 0)
                     for o in [oco, *(getattr(oco, "legs", None) or [])])
        return max(0, min(qty, int(float(oco.qty or 0) - filled)))

    def _move_stop(self, cid: str, stop_price: float, req: "_Request"):
        oco = self._get_by_cid(cid)
        if oco is None:
            return None
        for leg in [oco, *(getattr(oco, "legs", None) or [])]:
            leg_type = str(getattr(getattr(leg, "type", None), "value", getattr(leg, "type", "")))
            if leg_type == "stop" and _status(leg) in OPEN:
                current = float(leg.stop_price or 0)
                if to_tick(stop_price, "up") <= current:
                    # a replayed, older raise: the broker's stop is already there or higher
                    return Submitted(str(leg.id), cid, _status(leg), adopted=True,
                                     detail=f"stop already at {current:g}: only ever up")
                req.sent()
                try:
                    new = self.client.replace_order_by_id(str(leg.id), to_stop_replace(stop_price))
                except APIError as exc:
                    raise _typed(exc, cid) from None
                return Submitted(str(new.id), cid, _status(new), adopted=False)
        return Submitted(str(oco.id), cid, _status(oco), adopted=True,
                         detail="no open stop leg: the OCO has ended")

    def _cancel(self, cid: str, req: "_Request"):
        order = self._get_by_cid(cid)
        if order is None:
            return None
        if _status(order) not in OPEN:
            return Submitted(str(order.id), cid, _status(order), adopted=True,
                             detail="nothing to cancel: the order has ended")
        req.sent()
        try:
            self.client.cancel_order_by_id(str(order.id))
        except APIError as exc:
            if exc.status_code != 422:
                raise _typed(exc, cid) from None
        return Submitted(str(order.id), cid, "pending_cancel", adopted=False)


class _Request:
    """The history rows of one request, recorded together once it is done."""

    def __init__(self, ex: BrokerExecution, order: Order, cid: str):
        self.ex, self.order, self.cid = ex, order, cid
        self.started = ex.clock()
        received = ex.broker_clock()
        self.age_s = received - (order.decided_ts + 60)
        self.rows = [self._row("decided", (order.decided_ts + 60) * 1000, "bar")]
        self._sent = False

    def _row(self, event: str, at: int, clock: str, **kw) -> OrderEvent:
        o = self.order
        return OrderEvent(self.cid, at, event, clock, "sink", order_id=o.order_id, intent=o.intent,
                          symbol=o.symbol, side=o.side, qty=o.qty, decided_ts=o.decided_ts,
                          decision_price=o.decision_price, **kw)

    def _now_ms(self) -> int:
        return int(self.ex.broker_clock() * 1000)

    def sent(self) -> None:
        """The request goes to the broker now (once, whatever the retries)."""
        if not self._sent:
            self._sent = True
            self.rows.append(self._row("sent", self._now_ms(), "broker",
                                       decision_lag_ms=self.age_s * 1000))

    def sending(self, call):
        def go():
            self.sent()
            return call()
        return go

    def done(self, event: str, broker_order_id: str = "", status: str = "", detail: str = "") -> OrderEvent:
        outcome = self._row(event, self._now_ms(), "broker", broker_order_id=broker_order_id,
                            status=status, detail=detail[:500], decision_lag_ms=self.age_s * 1000,
                            submit_ms=(self.ex.clock() - self.started) * 1000)
        self.rows.append(outcome)
        self.ex.record(self.rows)
        return outcome


class RecordingBroker:
    """An `AlpacaBroker` whose submissions leave their history rows (`sent`,
    then `accepted` / `adopted` / `refused`; source `relay`, no decision of
    the flow): the trade-updates relay protects a filled entry through it.
    A failure to record is logged, never in the way of the protection."""

    def __init__(self, broker: AlpacaBroker, record, *, broker_clock=time.time, clock=time.monotonic):
        self.broker, self.record = broker, record
        self.client, self.run_id = broker.client, broker.run_id
        self.broker_clock, self.clock = broker_clock, clock

    def submit(self, request) -> Submitted:
        cid = request.client_order_id
        prefix = f"{self.run_id}."
        base = {"order_id": cid[len(prefix):] if cid.startswith(prefix) else "", "intent": "protect",
                "symbol": request.symbol, "side": str(getattr(request.side, "value", request.side)),
                "qty": int(float(request.qty or 0))}
        started = self.clock()
        rows = [OrderEvent(cid, int(self.broker_clock() * 1000), "sent", "broker", "relay", **base)]

        def outcome(event: str, **kw) -> None:
            rows.append(OrderEvent(cid, int(self.broker_clock() * 1000), event, "broker", "relay",
                                   submit_ms=(self.clock() - started) * 1000, **base, **kw))
            try:
                self.record(rows)
            except Exception as exc:  # ClickHouse: the order stands, its rows are lost
                log.error("history of %s not recorded: %s", cid, str(exc).splitlines()[0][:300])

        try:
            done = self.broker.submit(request)
        except BrokerError as exc:
            outcome("refused", detail=str(exc)[:500])
            raise
        outcome("adopted" if done.adopted else "accepted", broker_order_id=done.order_id,
                status=done.status)
        return done


def _typed(exc: APIError, cid: str) -> Exception:
    status = exc.status_code
    if status is None or status in (429,) or status >= 500:
        return BrokerRetriable(f"broker unavailable for {cid} (HTTP {status})")
    return BrokerRejected(status, None, f"{cid}: HTTP {status}")


class ProtectOnFill:
    """Relay hook: an entry filled in one piece gets its OCO at once, from its
    strategy's own stop and target (`by_strategy`: strategy id -> (stop_loss_pct,
    take_profit_pct), as `TradingConfig.strategy_exits()`; the strategy id is
    the first part of the entry's order id); other ids: the given defaults."""

    def __init__(self, broker: AlpacaBroker, stop_loss_pct: float, take_profit_pct: float,
                 by_strategy: dict | None = None):
        self.broker, self.sl, self.tp = broker, stop_loss_pct, take_profit_pct
        self.by_strategy = dict(by_strategy or {})

    def __call__(self, u: TradeUpdate) -> None:
        if (u.event != "fill" or u.side != BUY or u.leg or not u.order_id.endswith(".entry")
                or u.fill_qty != u.filled_qty):
            return  # partial entries are protected by the portfolio once they end
        sl, tp = self.by_strategy.get(u.order_id.split(".", 1)[0], (self.sl, self.tp))
        try:
            self.broker.submit(to_protection_request(
                self.broker.run_id, u.order_id, u.symbol, u.filled_qty,
                u.fill_price * (1 - sl), u.fill_price * (1 + tp)))
        except (BrokerRejected, BrokerRetriable) as exc:
            log.warning("protection of %s not placed now (the flow asks again): %s", u.order_id, exc)


class _BrokerPartition(StatelessSinkPartition):
    def __init__(self, execution: BrokerExecution, progress):
        self.execution, self.progress = execution, progress

    def write_batch(self, items) -> None:
        for out in items:  # PortfolioOutput, in decision order
            for order in out.orders:
                self.execution.execute(order)
            if self.progress is not None and (out.equity or out.controls):
                self.progress(out.equity[-1].ts if out.equity else None, len(out.orders), out.controls)


class BrokerSink(DynamicSink):
    """Bytewax sink of the portfolio's `PortfolioOutput`s (only the worker
    holding the portfolio receives any): their orders go to the broker in
    decision order. `make_execution()` builds the I/O per worker;
    `progress(minute, orders, controls)` is told each completed minute after
    its orders were sent, and the halts and resumes obeyed."""

    def __init__(self, make_execution, progress=None):
        self.make_execution, self.progress = make_execution, progress

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _BrokerPartition:
        return _BrokerPartition(self.make_execution(), self.progress)
