"""The per-symbol stage on columns: validation, SMA windows and crossovers for
a whole chunk of one symbol's bars at once (numpy), with the same results as
the bar-at-a-time `symbol_stage` (a property test pins that).

This is the hot loop of a backtest: a chunk of n bars costs a few numpy
passes instead of n Python steps. Rolling sums come from cumulative sums of
integer micro-dollar closes carried across chunks, so each bar is still O(1)
and comparisons stay exact integers (spec section 2).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from operators.bars import RECENT_MINUTES, SYMBOL_RE
from operators.config import CONSENSUS
from operators.signals import SignalRules, filter_reason
from operators.types import BUY, SELL, DeadLetter, Signal

# Above this, products of window sums could overflow int64: use Python ints.
_EXACT_LIMIT = 2**62


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
    tail: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    count: int = 0  # accepted bars so far
    prev_rel: list | None = None  # per pair: -1/0/1 or None (undefined)
    prev_agg: object = None  # majority: bool; weighted: (num, den)


def invalid_reasons(block: BarBlock) -> np.ndarray:
    """Per bar: '' when valid, else the first reason (same order as bar_problem)."""
    n = len(block)
    if not SYMBOL_RE.fullmatch(block.symbol or ""):
        return np.full(n, "invalid_symbol", dtype=object)
    o, h, lo, c, v = block.open, block.high, block.low, block.close, block.volume
    with np.errstate(invalid="ignore"):
        bad_ts = (block.ts % 60) != 0
        bad_price = ~((o > 0) & (h > 0) & (lo > 0) & (c > 0)) | ~(
            np.isfinite(o) & np.isfinite(h) & np.isfinite(lo) & np.isfinite(c))
        bad_high = h < np.maximum(o, c)
        bad_low = lo > np.minimum(o, c)
        bad_vol = ~(v >= 0) | ~np.isfinite(v)
    return np.select([bad_ts, bad_price, bad_high, bad_low, bad_vol],
                     ["invalid_timestamp", "invalid_price", "invalid_high", "invalid_low",
                      "invalid_volume"], default="").astype(object)


def step_block(state: ColumnarSymbolState, rules: SignalRules, block: BarBlock, origins,
               origin_prefix: str, out) -> BarBlock:
    """Admit a chunk, update the SMA windows, append signals and dead letters to
    `out` (a SymbolOutput); return the accepted bars."""
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
    reasons = invalid_reasons(block)
    valid = reasons == ""
    ts = block.ts
    # A valid bar is accepted iff it is newer than every earlier valid bar of
    # the symbol: a valid bar refused as late never raises that maximum.
    floor = state.last_ts if state.last_ts is not None else np.iinfo(np.int64).min
    vts = np.where(valid, ts, np.iinfo(np.int64).min)
    running = np.maximum.accumulate(np.concatenate(([floor], vts)))[:-1]
    accepted = valid & (ts > running)
    if not accepted.all():
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
    """Spec section 2 for accepted bars: SMA windows (`state`'s) and signals
    into `out.signals` (passed) and `out.filtered`."""
    m = len(acc)
    micros = np.rint(acc.close * 1_000_000).astype(np.int64)
    periods = rules.periods
    pmax = periods[-1]
    exact_int64 = (micros.max(initial=0) < _EXACT_LIMIT // (pmax * pmax * pmax)
                   and (len(state.tail) == 0 or state.tail.max() < _EXACT_LIMIT // (pmax ** 3)))
    series = np.concatenate((state.tail, micros))
    if not exact_int64:
        series = series.astype(object)
    k = len(state.tail)  # closes before this chunk that are in `series`
    csum = np.concatenate(([0], np.cumsum(series)))
    before = state.count  # accepted bars before this chunk
    # window sums ending at chunk bar j (global index before + j): csum[k+j+1] - csum[k+j+1-n]
    end = np.arange(k + 1, k + m + 1)
    counts = before + np.arange(1, m + 1)  # bars applied up to and including bar j
    rel_now, defined_now = [], []
    for p in rules.pairs:
        s_fast = csum[end] - csum[np.maximum(end - p.fast, 0)]
        s_slow = csum[end] - csum[np.maximum(end - p.slow, 0)]
        left, right = s_fast * p.slow, s_slow * p.fast
        rel = (left > right).astype(np.int8) - (left < right).astype(np.int8)
        rel_now.append(rel)
        defined_now.append(counts >= p.slow)
    prev_rel = state.prev_rel or [None] * len(rules.pairs)
    # relation at the previous bar for each chunk bar (first one from the state)
    rel_prev, defined_prev = [], []
    for i, rel in enumerate(rel_now):
        r0 = prev_rel[i]
        rel_prev.append(np.concatenate(([r0 if r0 is not None else 0], rel[:-1])).astype(np.int8))
        defined_prev.append(np.concatenate(([r0 is not None], defined_now[i][:-1])))
    signals: dict = out.signals
    filtered = out.filtered
    agg = rules.aggregation
    if agg == "independent":
        for i, p in enumerate(rules.pairs):
            both = defined_prev[i] & defined_now[i]
            buys = np.flatnonzero(both & (rel_prev[i] <= 0) & (rel_now[i] > 0))
            sells = np.flatnonzero(both & (rel_prev[i] >= 0) & (rel_now[i] < 0))
            for j in buys.tolist():
                _emit(rules, acc, j, p.strategy_id, BUY, p.confidence, signals, filtered)
            for j in sells.tolist():
                _emit(rules, acc, j, p.strategy_id, SELL, p.confidence, signals, filtered)
    elif agg == "majority":
        _majority(state, rules, acc, rel_now, defined_now, rel_prev, defined_prev, signals, filtered)
    else:
        _weighted(state, rules, acc, rel_now, defined_now, signals, filtered)
    state.prev_rel = [int(r[-1]) if d[-1] else None for r, d in zip(rel_now, defined_now)]
    keep = min(pmax, len(series))
    state.tail = np.asarray(series[len(series) - keep:], dtype=np.int64) if exact_int64 else series[len(series) - keep:]
    state.count = before + m


def _majority(state, rules, acc, rel_now, defined_now, rel_prev, defined_prev, signals, filtered):
    m = len(acc)
    above = np.zeros(m, dtype=np.int64)
    crossed = np.zeros(m, dtype=bool)
    for i in range(len(rules.pairs)):
        above += (defined_now[i] & (rel_now[i] > 0))
        crossed |= defined_prev[i] & defined_now[i] & (rel_prev[i] <= 0) & (rel_now[i] > 0)
    agree = above >= rules.min_agree
    was = np.concatenate(([bool(state.prev_agg)], agree[:-1]))
    buys = crossed & agree
    sells = ~agree & was
    for j in np.flatnonzero(buys | sells).tolist():
        if buys[j]:
            confs = [p.confidence for i, p in enumerate(rules.pairs)
                     if defined_now[i][j] and rel_now[i][j] > 0]
            _emit(rules, acc, j, CONSENSUS, BUY, sum(confs) / len(confs), signals, filtered)
        else:
            _emit(rules, acc, j, CONSENSUS, SELL, _mean_conf(rules), signals, filtered)
    state.prev_agg = bool(agree[-1])


def _weighted(state, rules, acc, rel_now, defined_now, signals, filtered):
    m = len(acc)
    num = np.zeros(m, dtype=np.int64)
    den = np.zeros(m, dtype=np.int64)
    for i, p in enumerate(rules.pairs):
        num += np.where(defined_now[i], p.weight * rel_now[i].astype(np.int64), 0)
        den += np.where(defined_now[i], p.weight, 0)
    tn, td = rules.threshold.numerator, rules.threshold.denominator
    prev = state.prev_agg
    for j in np.flatnonzero(den > 0).tolist():
        cur = (int(num[j]), int(den[j]))
        if prev is not None:
            b_num, b_den = prev
            if b_num * td <= tn * b_den and tn * cur[1] < cur[0] * td:
                confs = [p.confidence for i, p in enumerate(rules.pairs)
                         if defined_now[i][j] and rel_now[i][j] > 0]
                _emit(rules, acc, j, CONSENSUS, BUY, sum(confs) / len(confs), signals, filtered)
            elif b_num >= 0 > cur[0]:
                _emit(rules, acc, j, CONSENSUS, SELL, _mean_conf(rules), signals, filtered)
        prev = cur
    state.prev_agg = prev


def _mean_conf(rules) -> float:
    return sum(p.confidence for p in rules.pairs) / len(rules.pairs)


def _emit(rules, acc, j, strategy_id, side, confidence, signals, filtered) -> None:
    ts = int(acc.ts[j])
    sig = Signal(strategy_id, acc.symbol, side, ts, float(acc.close[j]), confidence,
                 rules.take_profit_pct, rules.stop_loss_pct, rules.risk_reward)
    sig.filtered_reason = filter_reason(side, confidence, rules.risk_reward, rules.min_confidence,
                                        rules.min_risk_reward)
    if sig.filtered_reason is None:
        signals.setdefault(ts, []).append(sig)
    else:
        filtered.append(sig)
