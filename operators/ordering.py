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


@dataclass(slots=True)
class Watermark:
    partition: int
    seq: int
    ts: int  # every later bar of this partition has timestamp >= ts


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
    portfolio: Portfolio
    cursors: dict  # partition -> PartitionCursor; every source partition is known
    buffer: list = field(default_factory=list)  # (ts, symbol, bar, signals) not yet applied
    applied_until: int = -1  # bars with ts < this were applied

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
        result = item.output
        signals = result.signals
        floor = self.applied_until
        buf = self.buffer
        for bar in result.bars:
            if bar.ts < floor:
                # The source broke its watermark promise: never apply out of order.
                out.dead_letters.append(DeadLetter(
                    bar.symbol, bar.ts, "late", f"partition {item.partition} seq {item.seq}", ""
                ))
                continue
            buf.append((bar.ts, bar.symbol, bar, signals.get(bar.ts) if signals else None))

    def _advance(self, watermark: int, out: PortfolioOutput) -> None:
        if watermark <= self.applied_until:
            return
        self.applied_until = watermark
        buf = self.buffer
        if not buf:
            self.portfolio.close_minute(out)
            return
        if len(buf) > 1:
            buf.sort(key=_order_key)
        cut = len(buf)
        if buf[-1][0] >= watermark:
            cut = next(i for i, e in enumerate(buf) if e[0] >= watermark)
        apply = self.portfolio.apply_bar
        for i in range(cut):
            e = buf[i]
            apply(e[2], e[3], out)
        out.applied_bars += cut
        self.buffer = buf[cut:]
        # every minute below the watermark is complete
        self.portfolio.close_minute(out)


def _order_key(entry):
    return (entry[0], entry[1])
