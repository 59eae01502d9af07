"""`panic_rebound` (spec section 2a): after a sharp drop on a volume spike,
buy the first sign of recovery; leave through the strategy's own stop,
target or time stop (it has no SELL signal).

Per symbol and per trading day (the New York date of the bar), number the
day's applied bars 1..k. With N = drop_window, M = volume_window:

- panic at bar j (defined when j >= N + M):
    drop:  close_j * 10_000 <= peak * (10_000 - drop_bps),
           peak = the highest high of bars j-N+1 .. j;
    spike: max(volume of bars j-N+1 .. j) * M * 100 >= mult_c * sum(volume of bars j-N-M+1 .. j-N);
- BUY at bar k iff k >= N + M + 1, panic at bar k-1, close_k > open_k and
  close_k > close_{k-1}.

Everything is compared in integers: prices in micro-dollars
`round(x * 10**6)`, volumes in milli-shares `round(volume * 1000)`,
`drop_bps = round(min_drop_pct * 10_000)`, `mult_c = round(volume_mult * 100)`.

Two forms with the same signals, both O(1) amortised per bar:
- `step` (bar at a time): monotonic deques for the two window maxima and a
  running sum for the baseline, all restarted at a new trading day;
- `step_block` (a chunk, numpy): van Herk / Gil-Werman block maxima of the
  highs over the carried tail plus the chunk, then the volume windows at the
  (rare) bars that dropped. A window that matters (j >= N + M) lies inside
  its day, so the windows run across days and only the day's bar count
  decides which bars may signal.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from operators.calendar import trading_day
from operators.config import PanicReboundConfig, TradingConfig
from operators.sma import to_micros
from operators.strategies.base import SignalTerms, StrategyType
from operators.types import BUY, Bar

NAME = "panic_rebound"
# Above this, the integer products could overflow int64: use Python ints.
_EXACT_LIMIT = 2**62


@dataclass(frozen=True, slots=True)
class PanicSpec:
    """One panic_rebound entry, resolved."""

    strategy_id: str
    drop_window: int  # N
    volume_window: int  # M
    drop_bps: int
    mult_c: int  # volume_mult in hundredths
    confidence: float
    terms: SignalTerms

    @classmethod
    def of(cls, cfg: TradingConfig, s: PanicReboundConfig) -> "PanicSpec":
        return cls(s.strategy_id, s.drop_window, s.volume_window, s.drop_bps, s.volume_mult_c,
                   s.confidence, SignalTerms.of(cfg, s.strategy_id, NAME))


def to_milli(volume: float) -> int:
    return round(volume * 1000)


# ------------------------------------------------------------ bar at a time
@dataclass(slots=True)
class PanicState:
    """One symbol's windows for one panic_rebound entry, today's bars only."""

    day: int | None = None  # trading day of the last bar
    k: int = 0  # bars applied today
    highs: deque = field(default_factory=deque)  # (k, high) with decreasing highs: max of the drop window
    vols: deque = field(default_factory=deque)  # (k, volume) with decreasing volumes: same window
    recent: deque = field(default_factory=deque)  # volumes of bars k-N-M .. k (at most N + M + 1)
    baseline: int = 0  # sum of the volumes of bars max(1, k-N-M+1) .. k-N
    prev_close: int = 0
    prev_panic: bool = False


def step(spec: PanicSpec, st: PanicState, bar: Bar) -> list:
    n, m = spec.drop_window, spec.volume_window
    day = trading_day(bar.ts)
    if day != st.day:  # a new trading day: every window starts empty
        st.day, st.k, st.baseline, st.prev_panic = day, 0, 0, False
        st.highs.clear()
        st.vols.clear()
        st.recent.clear()
    st.k = k = st.k + 1
    high, vol = to_micros(bar.high), to_milli(bar.volume)
    close, open_ = to_micros(bar.close), to_micros(bar.open)
    _push_max(st.highs, k, high, n)
    _push_max(st.vols, k, vol, n)
    recent = st.recent
    recent.append(vol)
    if len(recent) > n + m + 1:
        recent.popleft()
    if k > n:  # bar k-N enters the baseline
        st.baseline += recent[-(n + 1)]
    if k > n + m:  # bar k-N-M leaves it
        st.baseline -= recent[-(n + m + 1)]
    panic = (k >= n + m
             and close * 10_000 <= st.highs[0][1] * (10_000 - spec.drop_bps)
             and st.vols[0][1] * m * 100 >= spec.mult_c * st.baseline)
    buy = k >= n + m + 1 and st.prev_panic and close > open_ and close > st.prev_close
    st.prev_panic, st.prev_close = panic, close
    if buy:
        return [spec.terms.signal(bar.symbol, BUY, bar.ts, bar.close, spec.confidence)]
    return []


def _push_max(window: deque, k: int, value: int, n: int) -> None:
    """Monotonic deque: front = max of the values of bars k-n+1 .. k."""
    while window and window[-1][1] <= value:
        window.pop()
    window.append((k, value))
    if window[0][0] <= k - n:
        window.popleft()


# ------------------------------------------------------------ columnar
@dataclass(slots=True)
class PanicBlockState:
    """One symbol's carried tail for one panic_rebound entry (across days:
    bars of an earlier day only reach windows of bars that cannot signal)."""

    day: int | None = None
    k: int = 0  # bars applied on `day`
    highs: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # last N+M-1
    vols: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # last N+M-1
    prev_close: int = 0
    prev_panic: bool = False


def bar_days(ts: np.ndarray) -> np.ndarray:
    """Trading day (New York date ordinal) per bar: one lookup per distinct hour
    (times increase, and offsets change on whole UTC hours)."""
    hours = ts // 3600
    starts = np.flatnonzero(np.concatenate(([True], hours[1:] != hours[:-1])))
    days = np.array([trading_day(int(h) * 3600) for h in hours[starts].tolist()], dtype=np.int64)
    return np.repeat(days, np.diff(np.append(starts, len(ts))))


def day_counts(days: np.ndarray, prev_day, prev_k: int) -> np.ndarray:
    """k per bar: its number among its day's applied bars (continuing `prev_k` on `prev_day`)."""
    m = len(days)
    idx = np.arange(m)
    first = days[0] != prev_day if prev_day is not None else True
    new_day = np.concatenate(([first], days[1:] != days[:-1]))
    start = np.maximum.accumulate(np.where(new_day, idx, -1))
    return np.where(start >= 0, idx - start + 1, prev_k + idx + 1)


def sliding_max(x: np.ndarray, n: int) -> np.ndarray:
    """max(x[i-n+1 .. i]) for i = n-1 .. len(x)-1: van Herk / Gil-Werman,
    three passes whatever n (prefix and suffix maxima within blocks of n)."""
    if n == 1:
        return x.copy()
    size = len(x)
    pad = (-size) % n
    if pad:
        x = np.concatenate((x, np.full(pad, x.min(), dtype=x.dtype)))
    blocks = x.reshape(-1, n)
    prefix = np.maximum.accumulate(blocks, axis=1).reshape(-1)
    suffix = np.maximum.accumulate(blocks[:, ::-1], axis=1)[:, ::-1].reshape(-1)
    return np.maximum(suffix[:size - n + 1], prefix[n - 1:size])


def step_block(spec: PanicSpec, st: PanicBlockState, acc, days: np.ndarray) -> list:
    n, m = spec.drop_window, spec.volume_window
    size = len(acc)
    k = day_counts(days, st.day, st.k)
    keep = n + m - 1  # bars before a chunk bar that its windows reach
    reach = (keep + size) * max(100, spec.mult_c)
    exact = (float(acc.high.max()) < _EXACT_LIMIT / 20_000_000_000
             and float(acc.volume.max()) * 1000 * reach < _EXACT_LIMIT
             and (not len(st.highs) or (st.highs.dtype != object
                                        and int(st.vols.max()) * reach < _EXACT_LIMIT)))
    if exact:  # (close, open <= high: validated bars)
        highs = np.rint(acc.high * 1_000_000).astype(np.int64)
        vols = np.rint(acc.volume * 1000).astype(np.int64)
        closes = np.rint(acc.close * 1_000_000).astype(np.int64)
        tail_highs, tail_vols = st.highs, st.vols
    else:  # huge prices or volumes: exact Python integers
        def ints(values, convert):
            return np.array([convert(x) for x in values.tolist()] + [0], dtype=object)[:-1]
        highs, closes, vols = ints(acc.high, to_micros), ints(acc.close, to_micros), ints(acc.volume, to_milli)
        tail_highs, tail_vols = st.highs.astype(object), st.vols.astype(object)
    zeros = np.zeros(keep - len(tail_highs), dtype=highs.dtype)  # before the symbol's first bar
    s_high = np.concatenate((zeros, tail_highs, highs))
    s_vol = np.concatenate((zeros, tail_vols, vols))
    # chunk bar j is series index keep + j; its drop window ends there
    peak = sliding_max(s_high, n)[m:]  # window ending at series index i: result i - (n - 1) = m + j
    drop = (k >= n + m) & (closes * 10_000 <= peak * (10_000 - spec.drop_bps)).astype(bool)
    # drops are rare: the volume windows are looked at there only
    panics = np.flatnonzero(drop)
    if len(panics):
        ends = panics + keep
        vmax = s_vol[ends[:, None] - np.arange(n)].max(axis=1)  # bars j-N+1 .. j
        baseline = s_vol[ends[:, None] - n - np.arange(m)].sum(axis=1)  # bars j-N-M+1 .. j-N
        panics = panics[(vmax * (m * 100) >= baseline * spec.mult_c).astype(bool)]
    # BUY at a bar after a panic bar (today: k >= N + M + 1), green and closing higher
    after = (panics + 1).tolist()
    if st.prev_panic:
        after.insert(0, 0)
    out = []
    terms, symbol, conf = spec.terms, acc.symbol, spec.confidence
    for j in after:
        if j < size and k[j] >= n + m + 1:
            close = int(closes[j])
            if close > to_micros(float(acc.open[j])) and close > (int(closes[j - 1]) if j else st.prev_close):
                out.append(terms.signal(symbol, BUY, int(acc.ts[j]), float(acc.close[j]), conf))
    st.day, st.k = int(days[-1]), int(k[-1])
    st.highs, st.vols = s_high[len(s_high) - keep:], s_vol[len(s_vol) - keep:]
    st.prev_close, st.prev_panic = int(closes[-1]), bool(len(panics) and panics[-1] == size - 1)
    return out


# ------------------------------------------------------------ the type
@dataclass(frozen=True, slots=True)
class PanicRules:
    specs: tuple  # PanicSpec, configuration order


class PanicRebound(StrategyType):
    name = NAME

    def resolve(self, cfg: TradingConfig) -> PanicRules | None:
        specs = tuple(PanicSpec.of(cfg, s) for s in cfg.strategies if s.type == NAME)
        return PanicRules(specs) if specs else None

    def new_state(self, rules: PanicRules) -> list:
        return [PanicState() for _ in rules.specs]

    def step(self, rules: PanicRules, state: list, bar: Bar) -> list:
        out = []
        for spec, st in zip(rules.specs, state):
            sigs = step(spec, st, bar)
            if sigs:
                out += sigs
        return out

    def new_block_state(self, rules: PanicRules) -> list:
        return [PanicBlockState() for _ in rules.specs]

    def step_block(self, rules: PanicRules, state: list, block) -> list:
        days = bar_days(block.ts)
        out = []
        for spec, st in zip(rules.specs, state):
            out += step_block(spec, st, block, days)
        if len(rules.specs) > 1 and out:
            out.sort(key=lambda s: s.ts)  # stable: a bar's signals stay in configuration order
        return out


TYPE = PanicRebound()
