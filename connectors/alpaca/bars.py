"""Alpaca bars and arguments, the pure half shared by `cuts backfill` and
`cuts stream` (no I/O but reading a symbols file, no clock).

`parse_symbols`, `read_symbols`, `parse_bar` (stream message, REST dict or
alpaca-py `Bar` -> `Bar`), `parse_timeframe`, `parse_time_arg`,
`plan_windows`, `symbol_groups`, `Backoff`, `RequestWindow`, `bars_frame`.
The I/O that uses them: `connectors.alpaca.history` (REST) and
`connectors.alpaca.stream` (websocket).

Errors: `SymbolsError`, `BackfillArgumentError`: fix the command (one line,
exit 2); `BarDecodeError`: a bar message that is not a bar (dead letter).
"""
from __future__ import annotations

import math
import re
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Iterable

import msgpack
import pandas as pd
from alpaca.data.timeframe import TimeFrame, TimeFrameUnit

from connectors.alpaca.errors import BackfillArgumentError, SymbolsError  # noqa: F401 - re-exported
from operators.bars import SYMBOL_RE
from operators.types import Bar

COLUMNS = ("symbol", "timestamp", "open", "high", "low", "close", "volume", "trade_count", "vwap")
MINUTE = 60


class BarDecodeError(ValueError):
    """A bar message that is not a bar (the reason is the message)."""


# ---------------------------------------------------------------- parsing and planning
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
