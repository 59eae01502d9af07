"""Alpaca historical bars (REST): `cuts backfill`, and the stream's gap filler.

The I/O half; the pure half (parsing, time arguments, window planning,
backoff, the request window) is `connectors.alpaca.bars`.

`AlpacaHistory` (alpaca-py `StockHistoricalDataClient` with a request
limiter, timeouts and typed errors), `backfill` (chunked download), and the
two sinks: `FileSink` (Parquet/CSV with Alpaca bar columns, read by
`cuts backtest --bars`) and `KafkaSink` (bars + event-time markers, exactly
as `cuts publish` writes a file: `connectors.kafka.publish_columns`).

Errors, by what to do next:
  `SymbolsError`, `BackfillArgumentError` (`connectors.alpaca.bars`): fix
      the command (one line, exit 2);
  `AlpacaRejected`: Alpaca refused the request (bad credentials, plan, bad
      parameter): retrying cannot help, stop;
  `AlpacaUnavailable`: still failing after capped exponential backoff
      (429 rate limit, 5xx, network): stop, try later.
"""
from __future__ import annotations

import logging
import os
import random
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

import requests
from alpaca.common.exceptions import APIError
from alpaca.data.enums import Adjustment, DataFeed
from alpaca.data.historical import StockHistoricalDataClient
from alpaca.data.requests import StockBarsRequest
from alpaca.data.timeframe import TimeFrame

from connectors.alpaca.bars import (
    BackfillArgumentError,
    Backoff,
    BarDecodeError,
    RequestWindow,
    bars_frame,
    parse_bar,
    parse_timeframe,
    plan_windows,
    symbol_groups,
)
from connectors.alpaca.errors import AlpacaRejected, AlpacaUnavailable  # noqa: F401 - re-exported

log = logging.getLogger(__name__)

_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


# ---------------------------------------------------------------- I/O: REST client
class _Client(StockHistoricalDataClient):
    """alpaca-py's client with every HTTP request going through `owner._request_once`
    (alpaca-py 0.44 calls `_one_request` once per HTTP request, pages included)."""

    def __init__(self, owner: "AlpacaHistory", *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._owner = owner
        self._retry_codes = []  # retries are ours (backoff), not a fixed 3 s sleep

    def _one_request(self, method, url, opts, retry):
        return self._owner._request_once(lambda: super(_Client, self)._one_request(
            method, url, {**opts, "timeout": self._owner.timeout_s}, 0))


class AlpacaHistory:
    """Minute (or other) bars from Alpaca's historical API, paged by
    alpaca-py, at most `max_per_minute` HTTP requests per minute, each
    failing request retried with capped exponential backoff."""

    def __init__(self, key: str, secret: str, *, url: str | None = None, feed: str | None = "iex",
                 adjustment: str = "raw", max_per_minute: int = 200, symbols_per_request: int = 100,
                 backoff: Backoff = Backoff(1.0, 30.0), attempts: int = 6, timeout_s: float = 30.0):
        self.feed = DataFeed(feed) if feed in ("iex", "sip") else None  # "test" has no history
        self.adjustment = Adjustment(adjustment)
        self.symbols_per_request = symbols_per_request
        self.backoff, self.attempts, self.timeout_s = backoff, attempts, timeout_s
        self.window = RequestWindow(max_per_minute, 60.0)
        self.requests = 0
        self._lock = threading.Lock()
        self._client = _Client(self, key, secret, raw_data=True, url_override=url)

    def _request_once(self, call):
        for attempt in range(1, self.attempts + 1):
            with self._lock:  # the limiter is shared by every thread using this client
                while (pause := self.window.wait(time.monotonic())) > 0:
                    time.sleep(pause)
                self.window.record(time.monotonic())
                self.requests += 1
            try:
                return call()
            except APIError as exc:
                status = exc.status_code
                if status in (401, 403):
                    raise AlpacaRejected(f"Alpaca market data refused the credentials (HTTP {status}): "
                                         f"check ALPACA_API_KEY / ALPACA_SECRET_KEY") from None
                if status not in _RETRY_STATUS:
                    raise AlpacaRejected(f"Alpaca market data rejected the request (HTTP {status}): "
                                         f"{str(exc).strip()[:200]}") from None
                why = f"HTTP {status}"
            except requests.RequestException as exc:
                why = type(exc).__name__
            if attempt == self.attempts:
                raise AlpacaUnavailable(f"Alpaca market data still failing after {attempt} attempts "
                                        f"({why})")
            pause = self.backoff.delay(attempt, random.random())
            log.warning("Alpaca market data: %s, retrying in %.1f s (attempt %d/%d)",
                        why, pause, attempt + 1, self.attempts)
            time.sleep(pause)

    def fetch(self, symbols: list, start: int, end: int, timeframe: TimeFrame = TimeFrame.Minute,
              on_bad: Callable[[str, object, str], None] | None = None) -> list:
        """Bars of `symbols` with start <= timestamp < end, symbol by symbol
        in time order. A bar that does not parse goes to `on_bad(symbol, raw,
        reason)` (or is logged), never silently away."""
        out = []
        last = datetime.fromtimestamp(end - 1, tz=timezone.utc)  # Alpaca's end is inclusive
        first = datetime.fromtimestamp(start, tz=timezone.utc)
        for group in symbol_groups(list(symbols), self.symbols_per_request):
            req = StockBarsRequest(symbol_or_symbols=group, timeframe=timeframe, start=first, end=last,
                                   feed=self.feed, adjustment=self.adjustment)
            raw = self._client.get_stock_bars(req) or {}
            for sym, items in raw.items():
                for item in items:
                    try:
                        bar = parse_bar(item, sym)
                    except BarDecodeError as exc:
                        if on_bad is None:
                            log.error("Alpaca REST bar of %s not decodable (%s): %r", sym, exc, item)
                        else:
                            on_bad(sym, item, str(exc))
                        continue
                    if start <= bar.ts < end:
                        out.append(bar)
        return out


# ---------------------------------------------------------------- I/O: sinks
class FileSink:
    """Parquet or CSV with Alpaca bar columns, written chunk by chunk to
    `path + '.part'` and renamed into place on success."""

    def __init__(self, path: str):
        ext = os.path.splitext(path)[1].lower()
        if ext not in (".parquet", ".csv"):
            raise BackfillArgumentError(f"--out: use a .parquet or .csv file name, got {path!r}")
        self.path, self.ext, self.tmp = path, ext, path + ".part"
        self._writer = None
        self._started = False
        self.markers = 0

    def write(self, bars: list) -> None:
        df = bars_frame(bars)
        if self.ext == ".csv":
            df = df.assign(timestamp=df["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%SZ"))
            df.to_csv(self.tmp, mode="a" if self._started else "w", header=not self._started, index=False)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(df, preserve_index=False)
            if self._writer is None:
                self._writer = pq.ParquetWriter(self.tmp, table.schema)
            self._writer.write_table(table.cast(self._writer.schema))
        self._started = True

    def close(self, ok: bool = True) -> None:
        if ok and not self._started:
            self.write([])  # no bars: still a file with the columns
        if self._writer is not None:
            self._writer.close()
        if ok:
            os.replace(self.tmp, self.path)
        elif os.path.exists(self.tmp):
            os.remove(self.tmp)


class KafkaSink:
    """Bars to the bars topic with the markers `cuts publish` writes."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, records: str = "bars"):
        from connectors.kafka.admin import ensure_topic
        from connectors.kafka.producer import BarProducer

        self.records = records
        self.partitions = ensure_topic(bootstrap, topic, partitions)
        self.producer = BarProducer(bootstrap, topic)
        self.markers = 0

    def write(self, bars: list) -> None:
        from connectors.files.barfile import frame_to_columns
        from connectors.kafka.publish import publish_columns

        _, markers = publish_columns(self.producer, frame_to_columns(bars_frame(bars), "backfill"),
                                     records=self.records)
        self.markers += markers

    def close(self, ok: bool = True) -> None:
        self.producer.close(check=ok)


@dataclass
class BackfillResult:
    bars: int = 0
    bad: int = 0
    requests: int = 0
    markers: int = 0


def backfill(history: AlpacaHistory, symbols: list, start: int, end: int, timeframe: str, sink,
             progress: Callable[[int, int, int, int], None] | None = None) -> BackfillResult:
    """Download [start, end) window by window into `sink` (windows are
    disjoint and in time order, so each window's markers stay true for the
    next). `progress(window, windows, bars, requests)` after each window."""
    tf, tf_seconds = parse_timeframe(timeframe)
    if end <= start:
        raise BackfillArgumentError("--end must be after --start")
    windows = plan_windows(start, end, tf_seconds)
    result = BackfillResult()

    def bad(sym, raw, reason):
        result.bad += 1
        log.error("Alpaca REST bar of %s not decodable (%s): %r", sym, reason, raw)

    ok = False
    try:
        for i, (lo, hi) in enumerate(windows, 1):
            bars = history.fetch(symbols, lo, hi, tf, on_bad=bad)
            if bars:
                sink.write(bars)
            result.bars += len(bars)
            result.requests = history.requests
            if progress is not None:
                progress(i, len(windows), result.bars, result.requests)
        ok = True
    finally:
        sink.close(ok)
    result.markers = sink.markers
    return result
