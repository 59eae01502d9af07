"""Bar validation (spec section 1): invalid bars, duplicates and late bars.

`BarGate` is the per-symbol state: it decides, in the symbol's arrival order,
whether a bar is applied or goes to the dead-letter output with a reason.
"""
from __future__ import annotations

import math
import re
from collections import deque
from dataclasses import dataclass, field

from operators.types import Bar

# Matched with fullmatch: `$` alone would also accept a trailing newline ("AAPL\n").
SYMBOL_RE = re.compile(r"[A-Z][A-Z0-9]{0,5}(?:[./-][A-Z0-9]{1,3})?")

# How many accepted minutes a symbol remembers to tell a duplicate from a late
# bar. Both are ignored; this only names the reason. A trading day has 390
# regular minutes (960 with extended hours).
RECENT_MINUTES = 1440


def bar_problem(bar: Bar) -> str | None:
    """The reason a bar is invalid, or None when it may be applied."""
    if not isinstance(bar.symbol, str) or not SYMBOL_RE.fullmatch(bar.symbol):
        return "invalid_symbol"
    if bar.ts % 60:
        return "invalid_timestamp"  # minute bars start on the minute
    o, h, lo, c = bar.open, bar.high, bar.low, bar.close
    # `not x > 0` is also true for NaN; inf is caught by isfinite.
    if not (o > 0 and h > 0 and lo > 0 and c > 0) or not (
        math.isfinite(o) and math.isfinite(h) and math.isfinite(lo) and math.isfinite(c)
    ):
        return "invalid_price"
    if h < (o if o > c else c):
        return "invalid_high"
    if lo > (o if o < c else c):
        return "invalid_low"
    v = bar.volume
    if not (v >= 0) or not math.isfinite(v):
        return "invalid_volume"
    return None


@dataclass(slots=True)
class BarGate:
    """Per-symbol acceptance state: the last accepted minute and recent ones."""

    last_ts: int | None = None
    recent: deque = field(default_factory=lambda: deque(maxlen=RECENT_MINUTES))
    recent_set: set = field(default_factory=set)
    late_count: int = 0
    duplicate_count: int = 0
    invalid_count: int = 0

    def admit(self, bar: Bar) -> str | None:
        """Accept the bar (None) or return why it is not applied."""
        problem = bar_problem(bar)
        if problem is not None:
            self.invalid_count += 1
            return problem
        ts = bar.ts
        last = self.last_ts
        if last is not None and ts <= last:
            if ts == last or ts in self.recent_set:
                self.duplicate_count += 1
                return "duplicate"
            self.late_count += 1
            return "late"
        self.last_ts = ts
        if len(self.recent) == RECENT_MINUTES:
            self.recent_set.discard(self.recent[0])
        self.recent.append(ts)
        self.recent_set.add(ts)
        return None
