"""The per-symbol stage on columns: validation, then every strategy type's
signals for a whole chunk of one symbol's bars at once (numpy), with the same
results as the bar-at-a-time `symbol_stage` (a property test pins that).

This is the hot loop of a backtest: a chunk of n bars costs a few numpy
passes instead of n Python steps. Each strategy type's `step_block`
(`operators/strategies/`) carries its windows across chunks, so each bar is
still O(1) and comparisons stay exact integers (spec sections 2 and 2a).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from operators.bars import RECENT_MINUTES, SYMBOL_RE
from operators.signals import SignalRules
from operators.strategies.sma_cross import SmaCrossBlockState
from operators.types import DeadLetter


@dataclass(slots=True)
class BarBlock:
    """Bars of one symbol as columns (arrival order)."""

    symbol: str
    ts: np.ndarray  # int64 epoch seconds
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    trade_count: np.ndarray | None = None
    vwap: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ts)

    def take(self, index) -> "BarBlock":
        tc = self.trade_count[index] if self.trade_count is not None else None
        vw = self.vwap[index] if self.vwap is not None else None
        return BarBlock(self.symbol, self.ts[index], self.open[index], self.high[index],
                        self.low[index], self.close[index], self.volume[index], tc, vw)

    def payload(self, i: int) -> str:
        return (f'{{"S":"{self.symbol}","t":{int(self.ts[i])},"o":{float(self.open[i])!r},'
                f'"h":{float(self.high[i])!r},"l":{float(self.low[i])!r},'
                f'"c":{float(self.close[i])!r},"v":{float(self.volume[i])!r}}}')


@dataclass(slots=True)
class ColumnarSymbolState:
    last_ts: int | None = None
    recent: deque = field(default_factory=lambda: deque(maxlen=RECENT_MINUTES))
    count: int = 0  # accepted bars so far
    # per strategy type of the rules (`SignalRules.groups`), its columnar state (made at the first bars)
    strategies: list | None = None

    @property
    def tail(self) -> np.ndarray:
        """The last closes (micro-dollars) the sma_cross windows hold."""
        for state in self.strategies or ():
            if isinstance(state, SmaCrossBlockState):
                return state.tail
        return np.zeros(0, dtype=np.int64)


def snapshot_state(state: ColumnarSymbolState, rules: SignalRules) -> ColumnarSymbolState:
    """A copy for recovery: the gate's memory, and each strategy type's state as
    its own `snapshot` makes it."""
    strategies = state.strategies
    if strategies is not None:
        strategies = [kind.snapshot(s) for (kind, _), s in zip(rules.groups, strategies)]
    return ColumnarSymbolState(state.last_ts, deque(state.recent, maxlen=RECENT_MINUTES), state.count,
                               strategies)


def _problems(block: BarBlock) -> list:
    """Per check (bar_problem's order), the bars that fail it."""
    o, h, lo, c, v = block.open, block.high, block.low, block.close, block.volume
    with np.errstate(invalid="ignore"):
        bad_ts = (block.ts % 60) != 0
        bad_price = ~((o > 0) & (h > 0) & (lo > 0) & (c > 0)) | ~(
            np.isfinite(o) & np.isfinite(h) & np.isfinite(lo) & np.isfinite(c))
        bad_high = h < np.maximum(o, c)
        bad_low = lo > np.minimum(o, c)
        bad_vol = ~(v >= 0) | ~np.isfinite(v)
    return [bad_ts, bad_price, bad_high, bad_low, bad_vol]


_REASONS = ["invalid_timestamp", "invalid_price", "invalid_high", "invalid_low", "invalid_volume"]


def invalid_reasons(block: BarBlock, problems: list | None = None) -> np.ndarray:
    """Per bar: '' when valid, else the first reason (same order as bar_problem)."""
    n = len(block)
    if not SYMBOL_RE.fullmatch(block.symbol or ""):
        return np.full(n, "invalid_symbol", dtype=object)
    return np.select(problems if problems is not None else _problems(block), _REASONS,
                     default="").astype(object)


def step_block(state: ColumnarSymbolState, rules: SignalRules, block: BarBlock, origins,
               origin_prefix: str, out) -> BarBlock:
    """Admit a chunk, update the strategies' windows, append signals and dead
    letters to `out` (a SymbolOutput); return the accepted bars."""
    acc = admit_block(state, block, origins, origin_prefix, out)
    if len(acc):
        block_signals(state, rules, acc, out)
    return acc


def admit_block(state: ColumnarSymbolState, block: BarBlock, origins, origin_prefix: str,
                out) -> BarBlock:
    """Spec section 1 for a chunk: the accepted bars; invalid, duplicate and
    late ones go to `out.dead_letters`."""
    n = len(block)
    if n == 0:
        return block
    if SYMBOL_RE.fullmatch(block.symbol or ""):
        problems = _problems(block)
        valid = ~(problems[0] | problems[1] | problems[2] | problems[3] | problems[4])
        reasons = None  # only named when a bar is refused
    else:
        problems, valid, reasons = None, np.zeros(n, dtype=bool), invalid_reasons(block)
    ts = block.ts
    # A valid bar is accepted iff it is newer than every earlier valid bar of
    # the symbol: a valid bar refused as late never raises that maximum.
    floor = state.last_ts if state.last_ts is not None else np.iinfo(np.int64).min
    vts = np.where(valid, ts, np.iinfo(np.int64).min)
    running = np.maximum.accumulate(np.concatenate(([floor], vts)))[:-1]
    accepted = valid & (ts > running)
    if not accepted.all():
        if reasons is None:
            reasons = invalid_reasons(block, problems)
        _dead_letters(state, block, reasons, valid, accepted, running, origins, origin_prefix, out)
    acc = block if accepted.all() else block.take(np.flatnonzero(accepted))
    if len(acc):
        state.last_ts = int(acc.ts[-1])
        state.recent.extend(acc.ts[-RECENT_MINUTES:].tolist())
    return acc


def _dead_letters(state, block, reasons, valid, accepted, running, origins, prefix, out) -> None:
    # Accepted minutes strictly increase, so the recent ones plus this chunk's
    # form one sorted array; bar i's memory is the RECENT_MINUTES before it.
    history = np.concatenate((np.fromiter(state.recent, dtype=np.int64, count=len(state.recent)),
                              block.ts[accepted]))
    accepted_before = np.cumsum(accepted) - accepted + len(state.recent)
    ts = block.ts
    for i in np.flatnonzero(~accepted).tolist():
        t = int(ts[i])
        if valid[i]:
            end = int(accepted_before[i])
            window = history[max(0, end - RECENT_MINUTES):end]
            k = int(np.searchsorted(window, t))
            reason = "duplicate" if k < len(window) and window[k] == t else "late"
        else:
            reason = reasons[i]
        out.dead_letters.append(DeadLetter(block.symbol, t, reason, f"{prefix}{origins[i]}",
                                           block.payload(i)))


def block_signals(state: ColumnarSymbolState, rules: SignalRules, acc: BarBlock, out) -> None:
    """Every strategy type's signals of accepted bars (`state`'s windows), into
    `out.signals` (passed) and `out.filtered`."""
    if state.strategies is None:
        state.strategies = [kind.new_block_state(r) for kind, r in rules.groups]
    found = []
    for (kind, type_rules), type_state in zip(rules.groups, state.strategies):
        sigs = kind.step_block(type_rules, type_state, acc)
        if sigs:
            found.append(sigs)
    state.count += len(acc)
    if not found:
        return
    sigs = found[0] if len(found) == 1 else rules.in_order([s for group in found for s in group])
    signals: dict = out.signals
    filtered = out.filtered
    for sig in sigs:
        if sig.filtered_reason is None:
            signals.setdefault(sig.ts, []).append(sig)
        else:
            filtered.append(sig)
