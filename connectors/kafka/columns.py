"""Kafka `bars` topic: one symbol's part of a fetched batch as columns
(`_Group`), and where each of its bars came from (`MessageOrigins`). Used by
`connectors.kafka.partition`.
"""
from __future__ import annotations

from array import array
from bisect import bisect_right

import numpy as np

from operators.columnar import BarBlock


class MessageOrigins:
    """Where each bar of a chunk came from, when some came from bars records
    (several bars per message): bar i is `offsets[i]` when it was a message
    of its own, else `"{offset}#{k}"`, the k-th bar of the record at that
    offset (distinct per bar: dead letters are keyed by their origin)."""

    __slots__ = ("offsets", "starts", "spans")

    def __init__(self, offsets: list, starts: list, spans: list):
        self.offsets = offsets  # per bar: the message offset
        self.starts = starts  # sorted: first bar index of each run of a record's bars
        self.spans = spans  # per run: (bars in the run, k of its first bar)

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, i: int):
        offset = self.offsets[i]  # IndexError past the end ends iteration
        i %= len(self.offsets)
        j = bisect_right(self.starts, i) - 1
        if j >= 0:
            count, first = self.spans[j]
            if i < self.starts[j] + count:
                return f"{offset}#{first + i - self.starts[j]}"
        return offset

    def __eq__(self, other) -> bool:
        return list(self) == list(other)


class _Group:
    """One symbol's part of a batch, as columns (symbol "" gathers the
    undecodable records, and has no bars)."""

    __slots__ = ("symbol", "o", "h", "l", "c", "v", "n", "vw", "ts", "offsets", "dead", "starts", "spans")

    def __init__(self, symbol: str):
        self.symbol = symbol
        # array('d') holds the prices as C doubles (the decoded floats die at
        # once) and hands them to numpy without a copy
        self.o, self.h, self.l, self.c, self.v = (array("d") for _ in range(5))  # noqa: E741
        self.n: list = []  # trade count / vwap: None when unknown
        self.vw: list = []
        self.ts: list = []
        self.offsets: list = []
        self.dead: list = []
        self.starts: list = []  # runs of bars from bars records (see MessageOrigins)
        self.spans: list = []

    def origins(self):
        return MessageOrigins(self.offsets, self.starts, self.spans) if self.starts else self.offsets

    def add_run(self, offset: int, first: int, ts: list, o, h, lo, c, v, n, vw) -> None:
        """Bars first.. of the bars record at `offset` (lists of equal length)."""
        count = len(ts)
        self.starts.append(len(self.offsets))
        self.spans.append((count, first))
        self.o.fromlist(o)  # twice as fast as extend for a list
        self.h.fromlist(h)
        self.l.fromlist(lo)
        self.c.fromlist(c)
        self.v.fromlist(v)
        self.n.extend(n if n is not None else [None] * count)
        self.vw.extend(vw if vw is not None else [None] * count)
        self.ts.extend(ts)
        self.offsets.extend([offset] * count)

    def add(self, ts: int, offset: int, o, h, lo, c, v, n, vw) -> None:
        self.o.append(o)
        self.h.append(h)
        self.l.append(lo)
        self.c.append(c)
        self.v.append(v)
        self.n.append(n)
        self.vw.append(vw)
        self.ts.append(ts)
        self.offsets.append(offset)

    def block(self) -> BarBlock:
        n = len(self.ts)
        if not n:
            return _empty_block(self.symbol)
        f8 = np.float64
        tc, vw = self.n, self.vw
        tc = None if tc.count(None) == n else np.array(tc, dtype=f8)  # None -> NaN
        vw = None if vw.count(None) == n else np.array(vw, dtype=f8)
        return BarBlock(self.symbol, np.array(self.ts, dtype=np.int64), np.frombuffer(self.o, f8),
                        np.frombuffer(self.h, f8), np.frombuffer(self.l, f8),
                        np.frombuffer(self.c, f8), np.frombuffer(self.v, f8), tc, vw)


def _empty_block(symbol: str) -> BarBlock:
    z = np.zeros(0, dtype=np.float64)
    return BarBlock(symbol, np.zeros(0, dtype=np.int64), z, z, z, z, z)
