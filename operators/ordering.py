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

from dataclasses import dataclass, field
from operator import attrgetter

import numpy as np

from operators.columnar import BarBlock
from operators.portfolio import Portfolio
from operators.types import SELL, DeadLetter, PortfolioOutput, SymbolOutput

END_OF_TIME = 2**62
_ts, _strategy_id, _side, _price = (attrgetter("ts"), attrgetter("strategy_id"), attrgetter("side"),
                                    attrgetter("price"))


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
    # the simulated broker's compiled book (operators.compiled_portfolio:
    # backtests, sweeps), or a Python Portfolio (BrokerPortfolio when a broker
    # fills the orders), or a sweep shard's book (operators.config_book: compiled too)
    portfolio: Portfolio
    cursors: dict  # partition -> PartitionCursor; every source partition is known
    # (BarBlock, its signals) not yet applied: by ts, or SignalColumns for the compiled book
    buffer: list = field(default_factory=list)
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
            signals = result.signals
            if hasattr(self.portfolio, "apply_batch"):  # the compiled book takes columns
                # (a sweep's book picks each configuration's signals out of the union's)
                columns = getattr(self.portfolio, "signal_columns", None)
                signals = (columns(block, signals) if columns is not None
                           else SignalColumns.of(block, signals, self.portfolio.strategy_index))
            self.buffer.append((block, signals))

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
                ready_signals = keep_signals = signals
                if isinstance(signals, SignalColumns):
                    split = int(np.searchsorted(signals.ts, watermark, side="left"))
                    ready_signals, keep_signals = signals.take(slice(0, split)), signals.take(slice(split, None))
                if cut:
                    ready.append((block.take(slice(0, cut)), ready_signals))
                keep.append((block.take(slice(cut, None)), keep_signals))
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
        book = self.portfolio
        symbols = sorted({b.symbol for b, _ in ready})
        rank = {s: i for i, s in enumerate(symbols)}
        ts = np.concatenate([b.ts for b, _ in ready])
        ranks = np.concatenate([np.full(len(b), rank[b.symbol], dtype=np.int64) for b, _ in ready])
        order = np.lexsort((ranks, ts))
        if hasattr(book, "apply_batch"):  # the compiled book
            self._apply_compiled(ready, symbols, ts[order], ranks[order], order, out, controls)
            return
        cols = [np.concatenate([getattr(b, f) for b, _ in ready])[order].tolist()
                for f in ("open", "high", "low", "close")]
        sig_by_symbol: dict = {}
        for b, signals in ready:
            if signals:
                sig_by_symbol.setdefault(b.symbol, {}).update(signals)
        apply = book.apply
        no_signals: dict = {}
        for r, t, o, h, lo, c in zip(ranks[order].tolist(), ts[order].tolist(), *cols):
            symbol = symbols[r]
            if controls and controls[0].ts <= t:
                self._apply_controls(controls, t, out)
            if updates and (updates[0][0], updates[0][1]) <= (t, symbol):
                self._apply_updates(updates, (t, symbol), out)
            apply(symbol, t, o, h, lo, c, sig_by_symbol.get(symbol, no_signals).get(t), out)
        out.applied_bars += len(ts)

    def _apply_compiled(self, ready: list, symbols: list, ts: np.ndarray, ranks: np.ndarray,
                        order: np.ndarray, out: PortfolioOutput, controls: list) -> None:
        """The ready bars (sorted: `ts`, `ranks`) through the compiled book in
        one call, cut where kill-switch controls take effect."""
        from operators.compiled_portfolio import BarBatch  # numba: only where it runs

        book = self.portfolio
        codes = np.array([book.code(s) for s in symbols], dtype=np.int64)
        # signals: each one's bar by its (timestamp, symbol rank) key
        n_sym = len(symbols)
        keys = ts * n_sym + ranks  # strictly increasing
        rank = {s: i for i, s in enumerate(symbols)}
        sigs = [signals for _, signals in ready]
        sig_key = np.concatenate([s.ts * n_sym + rank[b.symbol] for (b, _), s in zip(ready, sigs)])
        at = np.searchsorted(keys, sig_key)
        ours = at < len(keys)
        ours[ours] = keys[at[ours]] == sig_key[ours]
        batch = BarBatch.build(
            codes[ranks], ts, *(np.concatenate([getattr(b, f) for b, _ in ready])[order]
                                for f in ("open", "high", "low", "close")),
            at[ours], *(np.concatenate([getattr(s, f) for s in sigs])[ours]
                        for f in ("strategy", "sell", "price")),
            sig_mask=np.concatenate([s.mask for s in sigs])[ours] if sigs[0].mask is not None else None)
        start = 0
        while controls:
            cut = int(np.searchsorted(ts, controls[0].ts, side="left"))
            if cut >= len(ts):
                break
            book.apply_batch(batch, start, cut, out)
            self._apply_controls(controls, int(ts[cut]), out)
            start = cut
        book.apply_batch(batch, start, len(ts), out)
        out.applied_bars += len(ts)


@dataclass(slots=True)
class SignalColumns:
    """A block's signals for the compiled book, sorted by bar time (a bar's
    own signals keep their list order)."""

    ts: np.ndarray
    strategy: np.ndarray  # the book's strategy index
    sell: np.ndarray
    price: np.ndarray
    # a sweep's book: mask[row, c], configuration c acts on the row (None: every one)
    mask: np.ndarray | None = None

    @classmethod
    def of(cls, block: BarBlock, signals: dict, strategy_index: dict) -> "SignalColumns":
        sigs = [sig for sigs in signals.values() for sig in sigs] if signals else []
        n = len(sigs)
        ts = np.fromiter(map(_ts, sigs), dtype=np.int64, count=n)
        order = np.argsort(ts, kind="stable")
        # -1: a strategy no configuration of the book trades (dropped below)
        strategy = np.fromiter((strategy_index.get(sid, -1) for sid in map(_strategy_id, sigs)),
                               dtype=np.int64, count=n)
        sell = np.fromiter((side == SELL for side in map(_side, sigs)), dtype=bool, count=n)
        price = np.fromiter(map(_price, sigs), dtype=np.float64, count=n)
        ts = ts[order]
        at = np.searchsorted(block.ts, ts)  # only the block's own bars (a late bar's signals go with it)
        mine = (at < len(block.ts)) & (strategy[order] >= 0)
        mine[mine] = block.ts[at[mine]] == ts[mine]
        order = order[mine]
        return cls(ts[mine], strategy[order], sell[order], price[order])

    def take(self, index) -> "SignalColumns":
        return SignalColumns(self.ts[index], self.strategy[index], self.sell[index], self.price[index],
                             None if self.mask is None else self.mask[index])


def block_from_bars(bars: list) -> BarBlock:
    """Columns of one symbol's bars (the bar-at-a-time path)."""
    return BarBlock(
        bars[0].symbol,
        np.fromiter((b.ts for b in bars), dtype=np.int64, count=len(bars)),
        *(np.fromiter((getattr(b, f) for b in bars), dtype=np.float64, count=len(bars))
          for f in ("open", "high", "low", "close", "volume")),
    )
