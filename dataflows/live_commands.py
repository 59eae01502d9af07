"""`cuts stream` and `cuts backfill`: Alpaca market data into the bars topic
(or, for backfill, a bar file).

`register(subparsers)` adds the two subcommands; `COMMANDS` maps them to
functions `fn(args) -> exit code`; `USER_ERRORS` are the errors the CLI
prints as one line with exit code 2. `run_stream(settings, stop)` is the live
loop, callable in-process with a `threading.Event` (the command sets it on
SIGINT / SIGTERM, then flushes the producer and closes the stream).

The loop. The alpaca-py stream runs on its own thread and only decodes and
queues; this thread owns the Kafka producer, so stream bars, backfilled bars
and markers leave in the order decided here: events are drained first, then
`MinuteCompleter.step` decides (backfill the exposed minutes, then write the
marker), then the watchdog and the periodic counts.
"""
from __future__ import annotations

import argparse
import logging
import queue
import random
import signal
import sys
import threading
import time
from typing import Callable

from connectors.alpaca_history import (AlpacaHistory, AlpacaRejected, AlpacaUnavailable,
                                       BackfillArgumentError, Backoff, SymbolsError, read_symbols)
from connectors.alpaca_stream import (BarStream, MinuteCompleter, SentBars, StreamCounters,
                                      StreamRejected, StreamSettings, in_regular_session, is_stale,
                                      message_json)
from operators.types import iso

log = logging.getLogger(__name__)
MINUTE = 60

TEST_FEED_SYMBOL = "FAKEPACA"  # the only symbol of Alpaca's test feed (longer than SYMBOL_RE allows)


class LiveUsageError(ValueError):
    """The command cannot run as given (no broker, feed not offered here)."""


USER_ERRORS = (SymbolsError, BackfillArgumentError, AlpacaRejected, AlpacaUnavailable, StreamRejected,
               LiveUsageError)


# ---------------------------------------------------------------- the live loop
class _DeadLetters:
    """Undecodable stream messages to the dead-letter topic (the value format
    of `connectors.kafka.encode_dead_letter`; origin alpaca/<feed>@n)."""

    def __init__(self, bootstrap: str, topic: str, feed: str):
        from kafka import KafkaProducer

        from connectors.kafka import KafkaUnavailable, ensure_topic

        ensure_topic(bootstrap, topic, 1)
        self.topic, self.origin = topic, f"alpaca/{feed}"
        try:
            self._producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=10,
                                           allow_auto_create_topics=False, max_block_ms=15_000,
                                           client_id="thousandcuts-alpaca-dead-letters")
        except Exception as exc:  # kafka-python's errors: cannot reach the broker
            raise KafkaUnavailable(f"Kafka at {bootstrap} unavailable while starting the dead-letter "
                                   f"producer: {type(exc).__name__}: {exc}") from None

    def send(self, reason: str, raw: bytes, n: int) -> None:
        from connectors.kafka import encode_dead_letter

        key, value = encode_dead_letter("undecodable", self.origin, 0, n, None, raw, detail=reason)
        self._producer.send(self.topic, key=key, value=value).add_errback(
            lambda exc: log.error("dead letter %s@%d not delivered to %s: %s",
                                  self.origin, n, self.topic, exc))

    def close(self) -> None:
        self._producer.flush(timeout=10)
        self._producer.close(timeout=10)


class _Pump:
    """Owns the producer: stream events in arrival order, backfills and
    markers, the watchdog and the periodic counts. Runs on one thread."""

    def __init__(self, s: StreamSettings, producer, dead_letters, history, stream: BarStream,
                 clock: Callable[[], float]):
        self.s, self.producer, self.dlq = s, producer, dead_letters
        self.history, self.stream = history, stream
        self.clock = clock
        self.counters = StreamCounters()
        self.completer = MinuteCompleter.starting(clock(), s.grace_s, in_session=s.session,
                                                  give_up_s=s.give_up_s)
        self.sent = SentBars()
        self.connected_at = self.last_bar_at = None
        self.backoff, self.fill_failures = Backoff(s.backoff_base_s, s.backoff_max_s), 0
        self.next_stats = clock() + s.stats_every_s

    def tick(self, events: queue.Queue, timeout: float) -> None:
        try:
            item = events.get(timeout=timeout)
            while True:
                self._handle(item)
                item = events.get_nowait()
        except queue.Empty:
            pass
        now = self.clock()
        self._complete(now)
        if is_stale(now, self.connected_at, self.last_bar_at, self.s.session(int(now)),
                    self.s.stale_after_s):
            self.connected_at = None  # once per connection
            self.stream.force_reconnect(f"no bars for {self.s.stale_after_s:g} s during the session")
        if now >= self.next_stats:
            self.next_stats = now + self.s.stats_every_s
            log.info("stream: %s; complete up to %s", self.counters.line(), iso(self.completer.declared))

    def _handle(self, item: tuple) -> None:
        kind, c = item[0], self.counters
        if kind == "bar":
            _, bar, t, at = item
            c.received += 1
            self.last_bar_at = at
            if t == "u":
                c.updated += 1
            else:
                self.completer.saw_bar(bar.ts)
            self._write(bar, correction=(t == "u"))
        elif kind == "dead":
            c.dead_letters += 1
            log.error("undecodable Alpaca stream message (%s): %.200r", item[1], item[2])
            if self.dlq is not None:
                self.dlq.send(item[1], item[2], c.dead_letters)
        elif kind == "auth":
            self.connected_at = item[1]
            c.connections += 1
        elif kind == "covered":
            self.completer.covered(item[1])
        elif kind in ("uncovered", "closed"):
            self.completer.uncovered(item[1])
            if kind == "closed":
                self.connected_at = None

    def _write(self, bar, correction: bool = False, backfill: bool = False) -> bool:
        if not self.sent.first(bar.symbol, bar.ts) and not correction:
            self.counters.duplicates += 1
            return False
        self.producer.send_bars([bar])
        self.counters.produced += 1
        self.counters.backfilled += backfill
        self.counters.late += bar.ts < self.completer.declared
        return True

    def _complete(self, now: float) -> None:
        done = self.completer
        for _ in range(1000):
            action = done.step(now)
            if action is None:
                return
            if action[0] == "watermark":
                self.producer.send_watermark(action[1])
                self.producer.flush(timeout=30)
                self.counters.markers += 1
                done.declare(action[1])
                self.sent.forget_before(action[1] - 3600)
            elif action[0] == "give_up":
                log.error("minute %s declared complete WITHOUT its backfill (REST failing for %g s): "
                          "bars of it may be missing", iso(action[1]), self.s.give_up_s)
                done.give_up(action[1])
                self.counters.unverified = done.unverified
            else:
                if not self._backfill(now, action[1], action[2]):
                    return

    def _backfill(self, now: float, lo: int, hi: int) -> bool:
        try:
            bars = self.history.fetch(self.s.symbols, lo, hi, on_bad=self._bad_rest_bar)
        except (AlpacaUnavailable, AlpacaRejected) as exc:
            self.fill_failures += 1
            delay = self.backoff.delay(self.fill_failures, random.random())
            log.error("backfill of %s..%s failed (%s); minute held, retrying in %.1f s",
                      iso(lo), iso(hi), exc, delay)
            self.completer.fill_failed(now, delay)
            return False
        self.fill_failures = 0
        new = sum(self._write(b, backfill=True) for b in sorted(bars, key=lambda b: (b.ts, b.symbol)))
        log.info("backfilled %s..%s (%d minute(s)): %d bars fetched, %d new",
                 iso(lo), iso(hi), (hi - lo) // MINUTE, len(bars), new)
        self.completer.filled(lo, hi)
        return True

    def _bad_rest_bar(self, symbol: str, raw, reason: str) -> None:
        self._handle(("dead", f"REST bar of {symbol}: {reason}", message_json(raw)))

    def drain(self, events: queue.Queue) -> None:
        while True:
            try:
                self._handle(events.get_nowait())
            except queue.Empty:
                return


def run_stream(s: StreamSettings, stop: threading.Event,
               clock: Callable[[], float] = time.time) -> StreamCounters:
    """Stream until `stop` is set (then flush and close; counters returned).
    Raises `StreamRejected` (fatal Alpaca error), Kafka connector errors."""
    from connectors.kafka import BarProducer, ensure_topic

    ensure_topic(s.bootstrap, s.topic, s.partitions)
    history = AlpacaHistory(s.key, s.secret, url=s.rest_url, feed=s.feed, attempts=3, timeout_s=10.0,
                            backoff=Backoff(s.backoff_base_s, min(s.backoff_max_s, 10.0)))
    producer = BarProducer(s.bootstrap, s.topic)
    dlq = None
    ok = False
    try:
        dlq = _DeadLetters(s.bootstrap, s.dead_letter_topic, s.feed) if s.dead_letter_topic else None
        events: queue.Queue = queue.Queue()
        stream = BarStream(s, events, clock)
        pump = _Pump(s, producer, dlq, history, stream, clock)
        thread = threading.Thread(target=stream.run, name="alpaca-stream", daemon=True)
        thread.start()
        try:
            while not stop.is_set():
                pump.tick(events, 0.05)
                if stream.fatal is not None:
                    raise stream.fatal
                if not thread.is_alive():
                    raise StreamRejected("the Alpaca stream stopped unexpectedly (see the log)")
            ok = True
        finally:
            stream.shutdown()
            thread.join(10)
            try:
                pump.drain(events)  # what arrived before the close is written too
            except Exception as exc:  # don't mask the error that stopped us
                if ok:
                    raise
                log.error("bars still queued at the stop were not all written: %s", exc)
            log.info("stream stopped: %s", pump.counters.line())
        return pump.counters
    finally:
        if dlq is not None:
            dlq.close()
        producer.close(check=ok)


# ---------------------------------------------------------------- the commands
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds: {text}")
    return value


def _symbol_args(p) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--symbols", help="comma-separated symbols, e.g. AAPL,MSFT,BRK.B")
    g.add_argument("--symbols-file", help="one symbol per line (blank lines and # comments ignored)")


def register(sub) -> None:
    """Add `stream` and `backfill` to the CLI's subparsers."""
    hidden = argparse.SUPPRESS
    st = sub.add_parser("stream", help="live Alpaca minute bars into the bars topic, with event-time markers")
    _symbol_args(st)
    st.add_argument("--feed", choices=("iex", "sip", "test"),
                    help="default ALPACA_FEED, else stream.feed of the config")
    st.add_argument("--config", help="trading configuration YAML (its stream section)")
    st.add_argument("--kafka", metavar="BOOTSTRAP", help="broker (default KAFKA_BOOTSTRAP)")
    st.add_argument("--topic", default="bars")
    st.add_argument("--partitions", type=_positive_int, default=1,
                    help="partitions when the topic is created (an existing topic keeps its own)")
    st.add_argument("--dead-letter-topic", default="bars.dead_letters",
                    help="undecodable Alpaca messages go here ('' = log only)")
    st.add_argument("--grace-s", type=_seconds, default=2.0,
                    help="a minute is complete this long after it ends (default 2.0)")
    st.add_argument("--stale-after-s", type=_seconds, default=120.0,
                    help="reconnect when no bar came for this long during the session (default 120)")
    st.add_argument("--stats-every-s", type=_seconds, default=60.0, help="log the counts this often")
    st.add_argument("--session", choices=("regular", "always", "never"), default="regular", help=hidden)
    st.add_argument("--ws-url", help=hidden)
    st.add_argument("--rest-url", help=hidden)
    st.add_argument("--connect-timeout-s", type=_seconds, default=10.0, help=hidden)
    st.add_argument("--backoff-base-s", type=_seconds, default=1.0, help=hidden)
    st.add_argument("--backoff-max-s", type=_seconds, default=60.0, help=hidden)

    bf = sub.add_parser("backfill", help="historical Alpaca bars into the bars topic or a bar file")
    _symbol_args(bf)
    bf.add_argument("--start", required=True, help="YYYY-MM-DD (00:00 UTC) or ISO 8601 time")
    bf.add_argument("--end", required=True,
                    help="YYYY-MM-DD (that whole day included) or ISO 8601 time (exclusive)")
    bf.add_argument("--timeframe", default="1Min", help="1Min (default), 5Min, 1Hour, 1Day, ...")
    bf.add_argument("--feed", choices=("iex", "sip"), help="default ALPACA_FEED, else stream.feed")
    bf.add_argument("--adjustment", choices=("raw", "split", "dividend", "all"), default="raw")
    bf.add_argument("--config", help="trading configuration YAML (its stream section)")
    out = bf.add_mutually_exclusive_group()
    out.add_argument("--kafka", metavar="BOOTSTRAP", help="broker (default KAFKA_BOOTSTRAP)")
    out.add_argument("--out", help="write a .parquet or .csv bar file instead")
    bf.add_argument("--topic", default="bars")
    bf.add_argument("--partitions", type=_positive_int, default=1,
                    help="partitions when the topic is created")
    bf.add_argument("--max-requests-per-min", type=_positive_int, default=200,
                    help="REST request budget (Alpaca allows 200/min)")
    bf.add_argument("--quiet", action="store_true", help="no progress lines")
    bf.add_argument("--rest-url", help=hidden)


def _setup_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("kafka").setLevel(logging.WARNING)  # kafka-python is chatty at INFO


def _feed(args, config, allowed: tuple) -> str:
    from connectors.config import alpaca_feed

    feed = alpaca_feed(args.feed) or config.feed
    if feed not in allowed:
        raise LiveUsageError(f"feed {feed!r} not available here: use one of {', '.join(allowed)}")
    return feed


def stream_settings(args) -> StreamSettings:
    """The command's arguments, environment and config -> settings (errors: one line)."""
    from connectors.config import alpaca_credentials, alpaca_urls, kafka_bootstrap, load_trading_config

    config = load_trading_config(args.config).stream
    feed = _feed(args, config, ("iex", "sip", "test"))
    symbols = read_symbols(args.symbols, args.symbols_file,
                           allow=(TEST_FEED_SYMBOL,) if feed == "test" else ())
    key, secret = alpaca_credentials()
    ws_url, rest_url = alpaca_urls()
    bootstrap = kafka_bootstrap(args.kafka)
    if bootstrap is None:
        raise LiveUsageError("no broker: pass --kafka BOOTSTRAP or set KAFKA_BOOTSTRAP")
    session = {"regular": in_regular_session, "always": lambda _ts: True,
               "never": lambda _ts: False}[args.session]
    return StreamSettings(
        symbols, key, secret, bootstrap, topic=args.topic, partitions=args.partitions,
        dead_letter_topic=args.dead_letter_topic or None, feed=feed,
        ws_url=args.ws_url or ws_url, rest_url=args.rest_url or rest_url, grace_s=args.grace_s,
        batch_size=config.subscribe_batch_size, batch_delay_s=config.subscribe_batch_delay_s,
        stale_after_s=args.stale_after_s, connect_timeout_s=args.connect_timeout_s,
        backoff_base_s=args.backoff_base_s, backoff_max_s=args.backoff_max_s,
        stats_every_s=args.stats_every_s, session=session)


def cmd_stream(args) -> int:
    settings = stream_settings(args)
    _setup_logging()
    stop = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        counters = run_stream(settings, stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(f"stream stopped: {counters.line()}")
    return 0


def cmd_backfill(args) -> int:
    from connectors.alpaca_history import FileSink, KafkaSink, backfill, parse_time_arg, parse_timeframe
    from connectors.config import alpaca_credentials, alpaca_urls, kafka_bootstrap, load_trading_config

    symbols = read_symbols(args.symbols, args.symbols_file)
    start = parse_time_arg(args.start, "--start")
    end = parse_time_arg(args.end, "--end", end=True)
    parse_timeframe(args.timeframe)
    if end <= start:
        raise BackfillArgumentError(f"--end ({iso(end)}) must be after --start ({iso(start)})")
    feed = _feed(args, load_trading_config(args.config).stream, ("iex", "sip"))
    key, secret = alpaca_credentials()
    bootstrap = None if args.out else kafka_bootstrap(args.kafka)
    if args.out is None and bootstrap is None:
        raise LiveUsageError("nowhere to write: pass --out FILE or --kafka BOOTSTRAP "
                                    "(or set KAFKA_BOOTSTRAP)")
    history = AlpacaHistory(key, secret, url=args.rest_url or alpaca_urls()[1], feed=feed,
                            adjustment=args.adjustment, max_per_minute=args.max_requests_per_min)
    sink = FileSink(args.out) if args.out else KafkaSink(bootstrap, args.topic, args.partitions)
    started = time.monotonic()

    def progress(i: int, n: int, bars: int, requests: int) -> None:
        if not args.quiet:
            print(f"backfill: window {i}/{n}, {bars:,} bars, {requests} requests, "
                  f"{time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)

    result = backfill(history, symbols, start, end, args.timeframe, sink, progress)
    where = args.out or f"topic {args.topic} at {bootstrap} ({result.markers} markers)"
    bad = f", {result.bad} undecodable (logged)" if result.bad else ""
    print(f"backfilled {result.bars:,} {args.timeframe} bars of {len(symbols)} symbol(s), "
          f"{iso(start)}..{iso(end)}, to {where} in {time.monotonic() - started:.1f} s "
          f"({result.requests} requests{bad})")
    return 0


COMMANDS = {"stream": cmd_stream, "backfill": cmd_backfill}


def main(argv: list | None = None) -> int:
    """`python -m dataflows.live_commands stream|backfill ...` (the same as `cuts`)."""
    from dataflows.cli import main as cuts_main

    return cuts_main(argv)


if __name__ == "__main__":
    sys.exit(main())
