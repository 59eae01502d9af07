"""Event time: the portfolio applies bars in (timestamp, symbol) order, however
they were partitioned, routed through workers or interleaved.

Every source partition numbers what it emits (`seq`) and emits `Watermark`s:
"every bar still to come from this partition has ts >= watermark". The
per-symbol stage passes each chunk on with its (partition, seq). Here, each
partition's items are put back in seq order (workers may reorder them), the
global watermark is the minimum over all partitions, and buffered bars below
it are applied in (timestamp, symbol) order. Nothing depends on arrival
timing, so worker count and interleaving cannot change the result.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np

from operators.columnar import BarBlock
from operators.portfolio import Portfolio
from operators.types import DeadLetter, PortfolioOutput, SymbolOutput

END_OF_TIME = 2**62


@dataclass(slots=True)
class Chunk:
    """One symbol's bars, in arrival order, from one source partition."""

    partition: int
    seq: int
    symbol: str
    bars: list
    origins: list  # per bar: row number or offset, for dead letters
    origin_prefix: str
    # DeadLetters the source already decided (a Kafka partition's `late` bars
    # behind its watermark, `undecodable` records): not in `bars`; the symbol
    # stage passes them on to its output unchanged.
    dead_letters: list = field(default_factory=list)


@dataclass(slots=True)
class Watermark:
    partition: int
    seq: int
    ts: int  # every later bar of this partition has timestamp >= ts


@dataclass(slots=True)
class Control:
    """A kill-switch message (`cuts halt` / `cuts resume`), written to every
    partition. `ts` is the partition's watermark at its position: no bar at
    or after `ts` can have been applied when it is taken, so it takes effect
    exactly before the bars of minute `ts` - the same point in a replay."""

    partition: int
    seq: int
    control_id: str
    action: str  # halt | resume
    flatten: bool
    ts: int
    who: str
    why: str


# Partition ids of the `trade_updates` topic's source partitions: offset so
# they never collide with the `bars` topic's partition numbers.
TRADE_UPDATES_PARTITION_BASE = 1 << 20


@dataclass(slots=True)
class BrokerEvent:
    """A broker trade update (`operators.types.TradeUpdate`) from a
    `trade_updates` partition. It is applied just before its symbol's bar of
    the minute of `update.ts` (where the backtest fills at the open and exits
    intrabar), after the kill-switch controls of that minute; that
    partition's `Watermark.ts` is a minute start: every later update of the
    partition has ts >= it."""

    partition: int
    seq: int
    update: object  # TradeUpdate


@dataclass(slots=True)
class SymbolResult:
    partition: int
    seq: int
    output: SymbolOutput


@dataclass(slots=True)
class PartitionCursor:
    next_seq: int = 0
    waiting: dict = field(default_factory=dict)  # seq -> item that arrived early
    watermark: int = -1


@dataclass(slots=True)
class PortfolioStage:
    portfolio: Portfolio  # or a book of configurations (operators.config_book)
    cursors: dict  # partition -> PartitionCursor; every source partition is known
    buffer: list = field(default_factory=list)  # (BarBlock, signals by ts) not yet applied
    applied_until: int = -1  # bars with ts < this were applied
    controls: dict = field(default_factory=dict)  # control_id -> earliest copy, not yet applied
    applied_controls: set = field(default_factory=set)
    updates: list = field(default_factory=list)  # (minute, symbol, partition, seq, TradeUpdate) not applied

    @classmethod
    def new(cls, portfolio: Portfolio, partitions) -> "PortfolioStage":
        return cls(portfolio, {p: PartitionCursor() for p in partitions})

    def on_items(self, items) -> PortfolioOutput:
        out = PortfolioOutput()
        for item in items:
            cur = self.cursors[item.partition]
            if item.seq != cur.next_seq:
                cur.waiting[item.seq] = item
                continue
            self._take(item, cur, out)
            while cur.next_seq in cur.waiting:
                self._take(cur.waiting.pop(cur.next_seq), cur, out)
        self._advance(min(c.watermark for c in self.cursors.values()), out)
        return out

    def flush(self) -> PortfolioOutput:
        """Apply everything buffered: no more input will come."""
        out = PortfolioOutput()
        self._advance(END_OF_TIME, out)
        return out

    def _take(self, item, cur: PartitionCursor, out: PortfolioOutput) -> None:
        cur.next_seq += 1
        if isinstance(item, Watermark):
            if item.ts > cur.watermark:
                cur.watermark = item.ts
            return
        if isinstance(item, Control):
            # one copy per partition: the earliest effective time wins (still unapplied, see Control)
            if item.control_id not in self.applied_controls:
                known = self.controls.get(item.control_id)
                if known is None or item.ts < known.ts:
                    self.controls[item.control_id] = item
            return
        if isinstance(item, BrokerEvent):
            # the broker's truth is never dropped: a late one applies at the next bars
            # A late update applies at its partition's watermark at its position
            # (never behind the global one, and the same in a replay).
            u = item.update
            minute = max(u.ts - u.ts % 60, cur.watermark)
            self.updates.append((minute, u.symbol, item.partition, item.seq, u))
            return
        result = item.output
        blocks = list(result.blocks)
        if result.bars:
            blocks.append(block_from_bars(result.bars))
        for block in blocks:
            if not len(block):
                continue
            if block.ts[0] < self.applied_until:
                # The source broke its watermark promise: never apply out of order.
                late = block.ts < self.applied_until
                for t in block.ts[late].tolist():
                    out.dead_letters.append(DeadLetter(
                        block.symbol, t, "late", f"partition {item.partition} seq {item.seq}", ""))
                block = block.take(np.flatnonzero(~late))
            self.buffer.append((block, result.signals))

    def _advance(self, watermark: int, out: PortfolioOutput) -> None:
        if watermark <= self.applied_until:
            return
        self.applied_until = watermark
        ready, keep = [], []
        for block, signals in self.buffer:
            # accepted bars of a symbol strictly increase in time
            cut = int(np.searchsorted(block.ts, watermark, side="left"))
            if cut == len(block):
                ready.append((block, signals))
            else:
                if cut:
                    ready.append((block.take(slice(0, cut)), signals))
                keep.append((block.take(slice(cut, None)), signals))
        self.buffer = keep
        controls = sorted((c for c in self.controls.values() if c.ts < watermark),
                          key=lambda c: (c.ts, c.control_id))
        updates = []
        if self.updates:
            updates = sorted(u for u in self.updates if u[0] < watermark)
            self.updates = [u for u in self.updates if u[0] >= watermark]
        if ready:
            self._apply_in_order(ready, out, controls, updates)
        self._apply_updates(updates, (END_OF_TIME, ""), out)
        self._apply_controls(controls, END_OF_TIME, out)
        # every minute below the watermark is complete
        self.portfolio.close_minute(out)

    def _apply_controls(self, controls: list, before: int, out: PortfolioOutput) -> None:
        """Apply (and drop from `controls`) those effective before bar time `before`."""
        while controls and controls[0].ts <= before:
            c = controls.pop(0)
            del self.controls[c.control_id]
            self.applied_controls.add(c.control_id)
            self.portfolio.apply_control(c, out)

    def _apply_updates(self, updates: list, upto: tuple, out: PortfolioOutput) -> None:
        """Apply (and drop from `updates`) the trade updates up to (minute,
        symbol) `upto`: a symbol's updates of minute M go just before its bar
        of minute M, where the backtest fills (step 1) and exits (step 2) it,
        so the symbols before it in that minute do not see them yet."""
        i = 0
        while i < len(updates) and (updates[i][0], updates[i][1]) <= upto:
            self.portfolio.enter_minute(updates[i][0], out)  # a new minute (day) begins first
            self.portfolio.apply_update(updates[i][4], out)
            i += 1
        del updates[:i]

    def _apply_in_order(self, ready: list, out: PortfolioOutput, controls: list = (),
                        updates: list = ()) -> None:
        """Apply the ready bars of all symbols in (timestamp, symbol) order."""
        batch = OrderedBars.of(ready)
        book = self.portfolio
        if hasattr(book, "apply_bars"):  # a book of configurations (operators.config_book)
            self._apply_book(batch, out, controls)
            out.applied_bars += len(batch.ts)
            return
        symbols, sig_by_symbol = batch.symbols, batch.signals
        apply = book.apply
        no_signals: dict = {}
        for r, t, o, h, lo, c in zip(batch.rank, batch.ts, batch.open, batch.high, batch.low, batch.close):
            symbol = symbols[r]
            if controls and controls[0].ts <= t:
                self._apply_controls(controls, t, out)
            if updates and (updates[0][0], updates[0][1]) <= (t, symbol):
                self._apply_updates(updates, (t, symbol), out)
            apply(symbol, t, o, h, lo, c, sig_by_symbol.get(symbol, no_signals).get(t), out)
        out.applied_bars += len(batch.ts)

    def _apply_book(self, batch: "OrderedBars", out: PortfolioOutput, controls: list) -> None:
        """The bars in runs between the controls: a control effective at ts
        applies before the first bar at or after ts (as in the loop above)."""
        lo, n = 0, len(batch.ts)
        while controls and lo < n:
            hi = bisect.bisect_left(batch.ts, controls[0].ts, lo)
            if hi >= n:
                break
            if hi > lo:
                self.portfolio.apply_bars(batch, lo, hi, out)
            self._apply_controls(controls, batch.ts[hi], out)
            lo = hi
        if lo < n:
            self.portfolio.apply_bars(batch, lo, n, out)


@dataclass(slots=True)
class OrderedBars:
    """Ready bars of several symbols in (timestamp, symbol) order, as lists."""

    symbols: list  # the distinct symbols, sorted; `rank` indexes them
    rank: list
    ts: list
    open: list
    high: list
    low: list
    close: list
    signals: dict  # symbol -> {ts: [Signal]}

    @classmethod
    def of(cls, ready: list) -> "OrderedBars":
        """From (BarBlock, signals by ts) pairs."""
        symbols = sorted({b.symbol for b, _ in ready})
        rank = {s: i for i, s in enumerate(symbols)}
        ts = np.concatenate([b.ts for b, _ in ready])
        ranks = np.concatenate([np.full(len(b), rank[b.symbol], dtype=np.int64) for b, _ in ready])
        order = np.lexsort((ranks, ts))
        cols = [np.concatenate([getattr(b, f) for b, _ in ready])[order].tolist()
                for f in ("open", "high", "low", "close")]
        sig_by_symbol: dict = {}
        for b, signals in ready:
            if signals:
                sig_by_symbol.setdefault(b.symbol, {}).update(signals)
        return cls(symbols, ranks[order].tolist(), ts[order].tolist(), *cols, sig_by_symbol)


def block_from_bars(bars: list) -> BarBlock:
    """Columns of one symbol's bars (the bar-at-a-time path)."""
    return BarBlock(
        bars[0].symbol,
        np.fromiter((b.ts for b in bars), dtype=np.int64, count=len(bars)),
        *(np.fromiter((getattr(b, f) for b in bars), dtype=np.float64, count=len(bars))
          for f in ("open", "high", "low", "close", "volume")),
    )
