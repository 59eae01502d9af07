"""Alpaca historical bars (REST): `cuts backfill`, and the stream's gap filler.

Mapping half (pure, no I/O, no clock): `parse_symbols`, `parse_bar`,
`parse_timeframe`, `parse_time_arg`, `plan_windows`, `Backoff`,
`RequestWindow`, `bars_frame`.

I/O half: `AlpacaHistory` (alpaca-py `StockHistoricalDataClient` with a
request limiter, timeouts and typed errors), `backfill` (chunked download),
and the two sinks: `FileSink` (Parquet/CSV with Alpaca bar columns, read by
`cuts backtest --bars`) and `KafkaSink` (bars + event-time markers, exactly
as `cuts publish` writes a file: `connectors.kafka.publish_columns`).

Errors, by what to do next:
  `SymbolsError`, `BackfillArgumentError`: fix the command (one line, exit 2);
  `AlpacaRejected`: Alpaca refused the request (bad credentials, plan, bad
      parameter): retrying cannot help, stop;
  `AlpacaUnavailable`: still failing after capped exponential backoff
      (429 rate limit, 5xx, network): stop, try later.
"""
from __future__ import annotations

import logging
import math
import os
import random
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable, Iterable

import msgpack
import pandas as pd
import requests
from alpaca.common.exceptions import APIError
from alpaca.data.enums import Adjustment, DataFeed
from alpaca.data.historical import StockHistoricalDataClient
from alpaca.data.requests import StockBarsRequest
from alpaca.data.timeframe import TimeFrame, TimeFrameUnit

from operators.bars import SYMBOL_RE
from operators.types import Bar

log = logging.getLogger(__name__)

COLUMNS = ("symbol", "timestamp", "open", "high", "low", "close", "volume", "trade_count", "vwap")
MINUTE = 60
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


class SymbolsError(ValueError):
    """Bad --symbols / --symbols-file: one line, exit 2."""


class BackfillArgumentError(ValueError):
    """Bad --start / --end / --timeframe: one line, exit 2."""


class BarDecodeError(ValueError):
    """A bar message that is not a bar (the reason is the message)."""


class AlpacaRejected(RuntimeError):
    """Alpaca refused a request in a way retrying cannot fix: stop."""


class AlpacaUnavailable(RuntimeError):
    """Alpaca kept failing (rate limit, server errors, network) past the retries: stop."""


# ---------------------------------------------------------------- pure mapping
def parse_symbols(items: Iterable[str], where: str = "--symbols", allow: tuple = ()) -> list[str]:
    """Symbols in first-seen order, without duplicates; each must match
    `SYMBOL_RE` (upper case is required, not assumed) or be in `allow`."""
    out: dict = {}
    for raw in items:
        s = raw.strip()
        if not s:
            continue
        if not SYMBOL_RE.fullmatch(s) and s not in allow:
            raise SymbolsError(f"{where}: not a symbol: {s!r} (1-6 upper-case letters or digits, "
                               f"optional class suffix like BRK.B)")
        out.setdefault(s, None)
    if not out:
        raise SymbolsError(f"{where}: no symbols given")
    return list(out)


def read_symbols(symbols: str | None, symbols_file: str | None, allow: tuple = ()) -> list[str]:
    """--symbols A,B,C or --symbols-file F (one per line; blank lines and
    `#` comments ignored)."""
    if symbols_file is None:
        return parse_symbols((symbols or "").split(","), allow=allow)
    try:
        with open(symbols_file, encoding="utf-8") as fh:
            lines = [line.split("#", 1)[0] for line in fh]
    except OSError as exc:
        raise SymbolsError(f"cannot read symbols file {symbols_file}: {exc.strerror or exc}") from None
    return parse_symbols(lines, where=symbols_file, allow=allow)


def _epoch_seconds(t) -> int:
    if isinstance(t, msgpack.Timestamp):
        return t.seconds  # floor, also before 1970
    if isinstance(t, datetime):
        if t.tzinfo is None:
            t = t.replace(tzinfo=timezone.utc)
        return math.floor(t.timestamp())
    if isinstance(t, str) and len(t) <= 40:
        m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.\d+)?(Z|[+-]\d\d:\d\d)?", t)
        if m:
            return _epoch_seconds(datetime.fromisoformat(m.group(1) + (
                "+00:00" if m.group(2) in (None, "Z") else m.group(2))))
    raise BarDecodeError(f"field t: not a time: {str(t)[:40]!r}")


def _num(value, name: str, optional: bool = False):
    if value is None and optional:
        return None
    if type(value) in (int, float):  # exact: bool is not a number here
        return float(value)
    if value is None:
        raise BarDecodeError(f"missing field {name}")
    raise BarDecodeError(f"field {name}: expected a number, got {type(value).__name__}")


def parse_bar(obj, symbol: str | None = None) -> Bar:
    """An alpaca-py `Bar`, a stream message ({"T":"b","S",...,"t": msgpack
    Timestamp}) or a REST bar dict (no "S": pass `symbol`; "t" RFC 3339)
    -> `Bar`. Raises `BarDecodeError` naming the problem. Values are passed
    on as they are: judging them (prices > 0, ...) is the symbol stage's job."""
    if isinstance(obj, dict):
        sym = obj.get("S", symbol)
        t = obj.get("t")
        o, h, lo, c, v, n, vw = (obj.get(k) for k in ("o", "h", "l", "c", "v", "n", "vw"))
    elif hasattr(obj, "timestamp") and hasattr(obj, "close"):  # alpaca.data.models.Bar
        sym, t = getattr(obj, "symbol", symbol), obj.timestamp
        o, h, lo, c, v = obj.open, obj.high, obj.low, obj.close, obj.volume
        n, vw = getattr(obj, "trade_count", None), getattr(obj, "vwap", None)
    else:
        raise BarDecodeError(f"not a bar: {type(obj).__name__}")
    if not isinstance(sym, str) or not sym:
        raise BarDecodeError("missing field S" if sym is None else "field S: expected a non-empty string")
    if t is None:
        raise BarDecodeError("missing field t")
    return Bar(sym, _epoch_seconds(t), _num(o, "o"), _num(h, "h"), _num(lo, "l"), _num(c, "c"),
               _num(v, "v"), _num(n, "n", True), _num(vw, "vw", True))


_UNITS = {"min": (TimeFrameUnit.Minute, 60, 59), "hour": (TimeFrameUnit.Hour, 3600, 23),
          "day": (TimeFrameUnit.Day, 86400, 1)}


def parse_timeframe(text: str) -> tuple[TimeFrame, int]:
    """'1Min', '5Min', '1Hour', '1Day' -> (alpaca-py TimeFrame, seconds)."""
    m = re.fullmatch(r"(\d+)\s*(min|hour|day)", text.strip(), re.IGNORECASE)
    if m:
        unit, seconds, most = _UNITS[m.group(2).lower()]
        amount = int(m.group(1))
        if 1 <= amount <= most:
            return TimeFrame(amount, unit), amount * seconds
    raise BackfillArgumentError(f"--timeframe: expected 1-59Min, 1-23Hour or 1Day, got {text!r}")


def parse_time_arg(text: str, name: str, end: bool = False) -> int:
    """Epoch seconds of YYYY-MM-DD (00:00 UTC; as an --end, the whole day is
    included: next 00:00) or an ISO 8601 time (naive = UTC; an --end is
    exclusive). Rounded out to whole minutes."""
    text = text.strip()
    try:
        if re.fullmatch(r"\d{4}-\d\d-\d\d", text):
            day = datetime.fromisoformat(text).replace(tzinfo=timezone.utc)
            return int((day + timedelta(days=1 if end else 0)).timestamp())
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BackfillArgumentError(f"{name}: not a date or ISO 8601 time: {text!r}") from None
    ts = _epoch_seconds(t)
    return -(-ts // MINUTE) * MINUTE if end else ts // MINUTE * MINUTE


def plan_windows(start: int, end: int, tf_seconds: int, bars_per_symbol: int = 7200) -> list:
    """[start, end) cut into windows of at most `bars_per_symbol` bars per
    symbol (1Min: 5 days; about a page per symbol with extended hours)."""
    span = max(MINUTE, tf_seconds * bars_per_symbol)
    return [(t, min(t + span, end)) for t in range(start, end, span)]


def symbol_groups(symbols: list, size: int) -> list:
    return [symbols[i:i + size] for i in range(0, len(symbols), size)]


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff with equal jitter: attempt n (1, 2, ...)
    waits between d/2 and d, d = min(cap, base * 2**(n-1))."""

    base: float = 1.0
    cap: float = 60.0

    def delay(self, attempt: int, u: float) -> float:
        d = min(self.cap, self.base * 2 ** max(0, min(attempt, 64) - 1))
        return d / 2 + d / 2 * u


@dataclass
class RequestWindow:
    """At most `limit` requests in any `period` seconds (Alpaca: 200/min)."""

    limit: int = 200
    period: float = 60.0
    sent: deque = field(default_factory=deque)

    def wait(self, now: float) -> float:
        """Seconds to wait before the next request may go."""
        while self.sent and self.sent[0] <= now - self.period:
            self.sent.popleft()
        return 0.0 if len(self.sent) < self.limit else self.sent[0] + self.period - now

    def record(self, now: float) -> None:
        self.sent.append(now)


def bars_frame(bars: list) -> pd.DataFrame:
    """Bars -> DataFrame with Alpaca bar columns (timestamp UTC, floats)."""
    df = pd.DataFrame({
        "symbol": pd.Series([b.symbol for b in bars], dtype=object),
        "timestamp": pd.to_datetime(pd.Series([b.ts for b in bars], dtype="int64"), unit="s", utc=True),
        **{c: pd.Series([getattr(b, a) for b in bars], dtype="float64") for c, a in (
            ("open", "open"), ("high", "high"), ("low", "low"), ("close", "close"),
            ("volume", "volume"), ("trade_count", "trade_count"), ("vwap", "vwap"))},
    })
    return df.sort_values(["timestamp", "symbol"], kind="stable", ignore_index=True)


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

    def __init__(self, bootstrap: str, topic: str, partitions: int):
        from connectors.kafka import BarProducer, ensure_topic

        self.partitions = ensure_topic(bootstrap, topic, partitions)
        self.producer = BarProducer(bootstrap, topic)
        self.markers = 0

    def write(self, bars: list) -> None:
        from connectors.barfile import frame_to_columns
        from connectors.kafka import publish_columns

        _, markers = publish_columns(self.producer, frame_to_columns(bars_frame(bars), "backfill"))
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
