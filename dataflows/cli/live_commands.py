"""`cuts stream` and `cuts backfill`: Alpaca market data into the bars topic
(or, for backfill, a bar file).

`register(subparsers)` adds the two subcommands; `COMMANDS` maps them to
functions `fn(args) -> exit code`; `USER_ERRORS` are the errors the CLI
prints as one line with exit code 2. The live loop is
`connectors.alpaca.live.run_stream`: `cmd_stream` runs it until SIGINT /
SIGTERM set its stop event.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import TYPE_CHECKING

# alpaca-py is imported by the commands that use it, not by the parser
from connectors.alpaca.errors import (
    AlpacaRejected,
    AlpacaUnavailable,
    BackfillArgumentError,
    StreamRejected,
    SymbolsError,
)
from connectors.alpaca.minutes import in_regular_session

if TYPE_CHECKING:
    from connectors.alpaca.stream import StreamSettings
from dataflows.cli.args import positive_int as _positive_int
from operators.types import iso

TEST_FEED_SYMBOL = "FAKEPACA"  # the only symbol of Alpaca's test feed (longer than SYMBOL_RE allows)


class LiveUsageError(ValueError):
    """The command cannot run as given (no broker, feed not offered here)."""


USER_ERRORS = (SymbolsError, BackfillArgumentError, AlpacaRejected, AlpacaUnavailable, StreamRejected,
               LiveUsageError)


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
    st.add_argument("--max-catch-up-h", type=_seconds, default=72.0,
                    help="a restart backfills the minutes since the topic's last marker when it is at "
                         "most this many hours old (default 72); older: from the current minute")
    st.add_argument("--session", choices=("calendar", "regular", "always", "never"), default="calendar",
                    help=hidden)
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
    bf.add_argument("--records", choices=("bars", "bar"), default="bars",
                    help="with --kafka: bars (several minutes of a symbol per record, the default; replays "
                         "3-4x faster) or bar (one bar per record, as `cuts stream`)")
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
    from connectors.alpaca.bars import read_symbols
    from connectors.alpaca.stream import StreamSettings
    from connectors.config import (
        alpaca_credentials,
        alpaca_urls,
        kafka_bootstrap,
        load_trading_config,
    )

    config = load_trading_config(args.config).stream
    feed = _feed(args, config, ("iex", "sip", "test"))
    symbols = read_symbols(args.symbols, args.symbols_file,
                           allow=(TEST_FEED_SYMBOL,) if feed == "test" else ())
    key, secret = alpaca_credentials()
    ws_url, rest_url = alpaca_urls()
    bootstrap = kafka_bootstrap(args.kafka)
    if bootstrap is None:
        raise LiveUsageError("no broker: pass --kafka BOOTSTRAP or set KAFKA_BOOTSTRAP")
    if args.session == "calendar":  # holidays and early closes from Alpaca's calendar
        from connectors.alpaca.calendar import CalendarSessions
        from connectors.config import alpaca_trading_url

        def trading_client():
            from alpaca.trading.client import TradingClient

            return TradingClient(key, secret, paper=True, url_override=alpaca_trading_url())

        session = CalendarSessions(trading_client, in_regular_session)
    else:
        session = {"regular": in_regular_session, "always": lambda _ts: True,
                   "never": lambda _ts: False}[args.session]
    return StreamSettings(
        symbols, key, secret, bootstrap, topic=args.topic, partitions=args.partitions,
        dead_letter_topic=args.dead_letter_topic or None, feed=feed,
        ws_url=args.ws_url or ws_url, rest_url=args.rest_url or rest_url, grace_s=args.grace_s,
        batch_size=config.subscribe_batch_size, batch_delay_s=config.subscribe_batch_delay_s,
        stale_after_s=args.stale_after_s, connect_timeout_s=args.connect_timeout_s,
        backoff_base_s=args.backoff_base_s, backoff_max_s=args.backoff_max_s,
        stats_every_s=args.stats_every_s, session=session, max_catch_up_s=args.max_catch_up_h * 3600)


def cmd_stream(args) -> int:
    """Streams until SIGINT / SIGTERM: a stop is how it ends (exit 0, one line
    with the counts). A second signal while it stops ends it at once
    (`dataflows.stop`, as every run)."""
    from connectors.alpaca.live import run_stream
    from dataflows.stop import StopRequest, signal_name, stop_on_signals

    settings = stream_settings(args)
    _setup_logging()
    stop = StopRequest()
    with stop_on_signals(stop):
        counters = run_stream(settings, stop)
    on = f" on {signal_name(stop.signum)}" if stop.signum is not None else ""
    print(f"stream stopped{on}: {counters.line()}", flush=True)
    return 0


def cmd_backfill(args) -> int:
    from connectors.alpaca.bars import parse_time_arg, parse_timeframe, read_symbols
    from connectors.alpaca.history import AlpacaHistory, FileSink, KafkaSink, backfill
    from connectors.config import (
        alpaca_credentials,
        alpaca_urls,
        kafka_bootstrap,
        load_trading_config,
    )

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
    sink = (FileSink(args.out) if args.out
            else KafkaSink(bootstrap, args.topic, args.partitions, args.records))
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
