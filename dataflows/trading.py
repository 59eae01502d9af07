"""`cuts run --alpaca`: the live flow trading a paper (default) or live
Alpaca account.

Composition only: the bars topic (as `cuts run`), plus
  - the trade-updates relay (alpaca-py TradingStream -> `trade_updates`
    topic, with broker-clock markers; an entry filled in one piece gets its
    protective OCO at once),
  - the flow reading `trade_updates` beside `bars` (positions from fills),
  - the broker sink (orders -> Alpaca, idempotent by client_order_id),
  - at start-up: the account is reachable, sessions from Alpaca's calendar,
    reconciliation (unclear symbols get no orders until `cuts reconcile`
    decides; a symbol a person flattened is closed in the flow too).
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import sys
import threading
import time
from datetime import datetime, timezone

from connectors.alpaca.broker import AlpacaBroker, client_order_id
from connectors.alpaca.broker_sink import BrokerExecution, BrokerSink, ProtectOnFill, RecordingBroker
from connectors.alpaca.calendar import fetch_sessions
from connectors.alpaca.errors import CalendarUnavailable, TradingStopped, TradingUsageError
from connectors.alpaca.order_history import event_of_update
from connectors.alpaca.trade_relay import TradeUpdateRelay, TradeUpdatesWriter
from connectors.alpaca.trade_updates import catch_up_updates
from connectors.clickhouse.client import ensure_schema, open_client, shared_writer
from connectors.config import (
    alpaca_credentials,
    alpaca_trading_stream_url,
    alpaca_trading_url,
    trading_mode,
)
from connectors.kafka.admin import topic_identity
from connectors.kafka.codec import _one_line
from connectors.kafka.source import KafkaBarSource
from connectors.kafka.trade_source import TradeUpdateSource
from dataflows.runner import RunSpec, Trading, execute
from dataflows.stop import RunInterrupted
from operators.types import BUY, SELL, TradeUpdate, iso

log = logging.getLogger(__name__)
RUN_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,48}")
CATCH_UP_S = 7 * 86_400  # orders the relay re-reads at start (overnight OCOs included)


USER_ERRORS = (TradingUsageError, CalendarUnavailable, TradingStopped)


class MinuteProgress:
    """One stderr line per completed minute, after its orders went to the broker."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream

    def __call__(self, minute: int | None, orders: int, controls=()) -> None:
        for c in controls:
            print(f"{c.action} by {c.who} from {iso(c.ts)}: {c.why}", file=self.stream, flush=True)
        if minute is not None:
            print(f"minute {iso(minute)} done: {orders} orders sent", file=self.stream, flush=True)


class OrderHistory:
    """The run's order history (`broker_orders`): the sink's and the relay's
    requests, and the broker's trade updates; durable when a call returns."""

    def __init__(self, writer, run_id: str):
        self.writer, self.run_id = writer, run_id

    def record(self, rows: list) -> None:
        self.writer.add("broker_orders", rows)
        self.writer.flush()

    def record_updates(self, updates: list, source: str) -> None:
        rows = [row for u in updates
                if (row := event_of_update(u, client_order_id(self.run_id, u.order_id), source)) is not None]
        if rows:
            self.record(rows)


class BrokerClock:
    """Alpaca's clock (`GET /v2/clock`) read every `refresh_s` and advanced
    with the local monotonic clock in between: the relay asks every second,
    Alpaca allows 200 requests a minute for everything. `refresh_s=0` reads
    it every time (a simulated broker whose time jumps). Thread-safe (the
    relay and the broker sink share it). A failed read raises (the relay
    holds its markers); `lenient()` goes on from the last reading instead
    (the broker sink's rows and a decision's age must not stop the run)."""

    def __init__(self, client, refresh_s: float = 15.0, monotonic=time.monotonic):
        self.client, self.refresh_s, self.monotonic = client, refresh_s, monotonic
        self._read_at: float | None = None
        self._broker = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            now = self.monotonic()
            if self._read_at is None or now - self._read_at >= self.refresh_s:
                self._broker = self.client.get_clock().timestamp.timestamp()
                self._read_at = now = self.monotonic()
            return self._broker + (now - self._read_at)

    def lenient(self) -> float:
        try:
            return self()
        except Exception as exc:  # network, HTTP: the last reading, advanced locally
            with self._lock:
                if self._read_at is None:
                    raise
                log.warning("broker clock not read (%s): advancing the last reading locally",
                            str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
                return self._broker + (self.monotonic() - self._read_at)


class RelayWatchdog:
    """Stops the run when the trade-updates relay fails for good: without it
    no fill reaches the flow, the broker's watermark stops and nothing would
    say why. It asks for the clean stop a SIGINT asks for (`dataflows.stop`:
    every row written, the recovery directory usable); `run_trading` then
    ends with the relay's error (`failure`), not as an interrupted run."""

    def __init__(self, relay, every_s: float = 1.0):
        self.relay, self.every_s = relay, every_s
        self.failure: BaseException | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="relay-watchdog", daemon=True)

    def _watch(self) -> None:
        while not self.stop.wait(self.every_s):
            error = getattr(self.relay, "error", None)
            if error is not None:
                self.failure = error
                os.kill(os.getpid(), signal.SIGINT)
                return

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()


def _check_account(client, mode: str) -> None:
    from alpaca.common.exceptions import APIError

    try:
        account = client.get_account()
    except APIError as exc:
        raise TradingUsageError(f"Alpaca refused the account request (HTTP {exc.status_code}): "
                                f"check ALPACA_API_KEY / ALPACA_SECRET_KEY") from None
    except Exception as exc:  # connection refused, DNS...
        raise TradingUsageError(f"Alpaca trading API unreachable: {type(exc).__name__}") from None
    if mode == "live":
        print("*" * 72 + f"\nLIVE TRADING: real money, account {account.account_number}\n" + "*" * 72,
              file=sys.stderr, flush=True)


def orders_since(tc, since: datetime) -> list:
    """Every order submitted after `since`, oldest first, nested (pages of 500)."""
    from alpaca.common.enums import Sort
    from alpaca.trading.enums import QueryOrderStatus
    from alpaca.trading.requests import GetOrdersRequest

    orders, after = [], since
    while True:  # pages of 500 by submission time
        page = tc.get_orders(GetOrdersRequest(status=QueryOrderStatus.ALL, after=after, nested=True,
                                              limit=500, direction=Sort.ASC))
        orders += page
        last = page[-1].submitted_at if page else None
        if len(page) < 500 or last is None or last <= after:
            break
        after = last
    return orders


def run_orders_held(orders, run_id: str) -> dict[str, tuple[str, str]]:
    """{client order id: (broker id, status)} of the run's own orders in `orders`."""
    prefix = f"{run_id}."
    return {o.client_order_id: (str(o.id), str(getattr(o.status, "value", o.status)))
            for o in orders if (o.client_order_id or "").startswith(prefix)}


def in_flight_fills(tc, ch, run_id: str, since: datetime, orders: list | None = None) -> dict[str, int]:
    """{symbol: signed qty} of the run's own orders filled at the broker but
    not in the run's fills yet (filled while the run was down: the relay's
    catch-up brings them to the flow). Not a discrepancy to reconcile.
    `orders`: the broker's orders since `since` when already read."""
    if orders is None:
        orders = orders_since(tc, since)
    recorded = dict(ch.query("SELECT order_id, sum(qty) FROM thousandcuts.fills FINAL "
                             "WHERE run_id = {r:String} GROUP BY order_id", parameters={"r": run_id}
                             ).result_rows)
    out: dict[str, int] = {}
    for u in catch_up_updates(orders, run_id, {}):
        if not u.fill_qty:
            continue
        key = f"{u.order_id}.{u.leg}" if u.leg else u.order_id
        missing = u.filled_qty - int(recorded.get(key, 0))
        if missing > 0:
            out[u.symbol] = out.get(u.symbol, 0) + (missing if u.side == BUY else -missing)
    return {s: q for s, q in out.items() if q}


def _reconcile_at_start(tc, dsn: str, run_id: str, writer: TradeUpdatesWriter, now: int,
                        orders: list) -> frozenset:
    from connectors.alpaca.reconcile import format_report
    from connectors.clickhouse.reconciliations import latest_decisions
    from dataflows.reconciliation import unclear_symbols_now

    ch = open_client(dsn)
    ensure_schema(ch)
    in_flight = in_flight_fills(tc, ch, run_id, datetime.fromtimestamp(now - CATCH_UP_S, timezone.utc),
                                orders)
    if in_flight:
        print(f"filled while the run was down (the flow takes them now): {in_flight}", file=sys.stderr)
    report, blocked = unclear_symbols_now(tc, ch, run_id, in_flight)
    if not report.clean:
        print(format_report(report), file=sys.stderr)
    decisions = latest_decisions(ch, run_id, decided_only=True)
    for s in report.symbols:
        decision = (decisions.get(s.symbol) or {}).get("decision")
        if decision == "flatten" and s.expected_qty and not s.broker_qty:
            # flattened at the broker by a person: the flow closes its positions too
            writer.publish(TradeUpdate(f"reconcile.{s.symbol}.{now}", "reconciled", s.symbol, SELL, now))
    if blocked:
        print(f"no orders for {', '.join(sorted(blocked))} until `cuts reconcile --run-id {run_id} "
              f"--adopt|--flatten` decides", file=sys.stderr, flush=True)
    return frozenset(blocked)


def run_trading(args, config, dsn: str, bootstrap: str) -> object:
    from alpaca.trading.client import TradingClient

    mode = trading_mode(args.live)
    run_id = args.run_id
    if not run_id or not RUN_ID_RE.fullmatch(run_id):
        raise TradingUsageError("trading needs --run-id of 1-48 letters, digits, _ or - (it prefixes "
                                "every client_order_id, and stays the same across restarts)")
    key, secret = alpaca_credentials()
    rest_url = args.trading_url or alpaca_trading_url()
    stream_url = alpaca_trading_stream_url()
    client = TradingClient(key, secret, paper=mode == "paper", url_override=rest_url)
    _check_account(client, mode)
    broker_now = client.get_clock().timestamp
    sessions = fetch_sessions(client, broker_now.date())
    args.trade_topic = args.trade_topic or f"trade_updates.{run_id}"  # never another run's fills
    print(f"{mode} trading run {run_id} on {bootstrap}: bars from {args.topic}, broker events via "
          f"{args.trade_topic}", file=sys.stderr, flush=True)
    writer = TradeUpdatesWriter(bootstrap, args.trade_topic)
    relay = None
    stack = contextlib.ExitStack()
    try:
        listed_since = int(broker_now.timestamp()) - CATCH_UP_S
        orders = orders_since(client, datetime.fromtimestamp(listed_since, timezone.utc))
        blocked = _reconcile_at_start(client, dsn, run_id, writer, int(broker_now.timestamp()), orders)
        history = OrderHistory(shared_writer(dsn, run_id), run_id)
        broker_clock = BrokerClock(client, args.clock_refresh_s)
        broker = RecordingBroker(AlpacaBroker(client, run_id), history.record,
                                 broker_clock=broker_clock.lenient)
        relay = TradeUpdateRelay(
            key, secret, run_id, writer, paper=mode == "paper", stream_url=stream_url,
            rest_url=rest_url, clock_poll_s=args.clock_poll_s, grace_s=args.grace_s,
            catch_up_s=CATCH_UP_S, trading_client=client, broker_clock=broker_clock,
            on_update=ProtectOnFill(broker, config.exit.stop_loss_pct, config.exit.take_profit_pct,
                                    {sid: (x.stop_loss_pct, x.take_profit_pct)  # each strategy's own OCO
                                     for sid, x in config.strategy_exits().items()}),
            on_published=history.record_updates,
        )
        relay.start()  # a stop (SIGINT, SIGTERM) while it connects: the finally below stops it
        print("trading: relay listening; the flow starts", file=sys.stderr, flush=True)
        held = run_orders_held(orders, run_id)  # a replayed entry the broker holds is adopted
        sink = BrokerSink(lambda: BrokerExecution(AlpacaBroker(client, run_id), writer.publish, history.record,
                                                  broker_clock=broker_clock.lenient, known_orders=held,
                                                  known_since=listed_since),
                          progress=MinuteProgress())
        watchdog = stack.enter_context(RelayWatchdog(relay))
        bars_identity = topic_identity(bootstrap, args.topic)
        trade_identity = topic_identity(bootstrap, args.trade_topic)
        source = KafkaBarSource(bootstrap, args.topic, tail=True, dead_letter_topic=args.dead_letter_topic,
                                identity=bars_identity)
        trade_source = TradeUpdateSource(bootstrap, args.trade_topic, tail=True)
        spec = RunSpec(config, dsn, run_id, "live", workers=args.workers, recovery_dir=args.recovery_dir,
                       snapshot_s=args.snapshot_s,
                       source_identity={"topic": args.topic, "topic_identity": bars_identity,
                                        "trade_topic": args.trade_topic, "trade_identity": trade_identity,
                                        "broker": mode})
        trading = Trading(trade_source, trade_source.partition_ids(), sink, sessions=sessions,
                          blocked=blocked)
        try:
            return execute(spec, source, source.partition_ids(), show_progress=False, trading=trading)
        except RunInterrupted:
            if watchdog.failure is not None:  # stopped by the watchdog, not by a person
                resume = (f"; the same command resumes from {args.recovery_dir} once it is fixed"
                          if args.recovery_dir else "")
                raise TradingStopped(f"trading stopped: the trade-updates relay failed: "
                                     f"{_one_line(watchdog.failure)}; every row up to the stop is "
                                     f"written{resume}") from None
            raise
    finally:
        stack.close()
        if relay is not None:
            relay.stop()
        writer.close()


__all__ = ["run_trading", "USER_ERRORS", "TradingUsageError"]
