"""Kafka `bars` topic: one partition of the Bytewax source, records ->
`Chunk` / `Watermark` items (`_BarPartition`), with the fast decode path
described in `connectors.kafka_codec` (next to `_WireBar`).
"""
from __future__ import annotations

import gc
import json
from array import array
from typing import Callable

import numpy as np
from bytewax.inputs import StatefulSourcePartition

from connectors.kafka_codec import (
    _ISO_CACHE, _WIRE, MINUTE, ControlRecord, WatermarkRecord, _parse_time, _WireBar, _WireMarker, decode_record,
)
from operators.columnar import BarBlock
from operators.ordering import END_OF_TIME, Chunk, Control, Watermark
from operators.symbol_stage import bar_payload
from operators.types import Bar, DeadLetter


def _text(data: bytes | None, limit: int = 2000) -> str | None:
    return None if data is None else data[:limit].decode("utf-8", "backslashreplace")


class _Group:
    """One symbol's part of a batch, as columns (symbol "" gathers the
    undecodable records, and has no bars)."""

    __slots__ = ("symbol", "o", "h", "l", "c", "v", "n", "vw", "ts", "offsets", "dead")

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


def _late(symbol: str, ts: int, source: str, r: _WireBar) -> DeadLetter:
    bar = Bar(symbol, ts, r.o, r.h, r.l, r.c, r.v, r.n, r.vw)
    return DeadLetter(symbol, ts, "late", source, bar_payload(bar))


class _BarPartition(StatefulSourcePartition):
    """Wraps Bytewax's Kafka partition: records -> Chunk / Watermark items.

    State (the snapshot): (next offset, next seq, watermark, topic id). All of
    a fetched batch is turned into items inside `next_batch`, so the state is
    consistent at every snapshot.
    """

    def __init__(self, inner, topic: str, partition: int, tail: bool, seq: int, watermark: int,
                 identity: str | None, dead_letter: Callable | None, max_batch: int = 0):
        self.inner = inner
        # Up to this many messages per batch, taken in several polls of the
        # inner partition while its polls come back full (0: one poll).
        self.max_batch = max_batch
        self.topic = topic
        self.partition = partition
        self.prefix = f"{topic}/{partition}@"
        self.tail = tail
        self.seq = seq
        self.watermark = watermark
        self.identity = identity
        self.dead_letter = dead_letter  # (topic, partition, [(reason, offset, key, value)])
        self.ended = False
        self._controls: list = []  # this batch's (ControlRecord, watermark at its position)

    def next_batch(self) -> list:
        """One batch -> a Chunk per symbol (and one for undecodable records),
        then one Watermark when markers in the batch advanced it.

        A batch is one poll of the inner partition, or several while the
        polls come back full (a backlog, as in a replay), up to `max_batch`
        messages: each poll is decoded into the batch's columns before the
        next, so only one poll's librdkafka messages are alive at a time
        (small polls stay in the CPU caches: 1,000-message polls made the
        replay's source 7-9 % cheaper than one 10,000-message poll, see
        bench/README.md). Where the polls end changes nothing but how items
        are cut.

        Late is decided per bar with the watermark at its position; emitting
        the batch's watermark after all its chunks only delays the promise,
        which keeps it true: a non-late bar after a marker has ts >= that
        marker, and bars before it are emitted before the Watermark item.
        So a batch costs a few items however many markers it holds (live
        topics carry a marker per minute per partition).

        The cyclic GC is paused for the batch: librdkafka's messages are
        GC-tracked objects that live exactly as long as their poll and hold
        no cycles, but a collection during the batch would promote them to
        the old generation and trigger full collections of the whole heap (a
        fifth of a replay's time). Freed with their poll, they never reach
        it. Collections resume after, for everything else."""
        enabled = gc.isenabled()
        gc.disable()
        try:
            return self._next_batch()
        finally:
            if enabled:
                gc.enable()

    def _next_batch(self) -> list:
        inner = self.inner
        msgs = inner.next_batch()  # raises StopIteration after the end in replay mode
        groups: dict = {}  # key bytes -> _Group (None -> the undecodable records)
        copies: list = []
        start_watermark = self.watermark
        self._controls = []
        watermark = self._take(msgs, groups, start_watermark, copies)
        # A full poll means more is waiting: take it into the same batch (one
        # poll's messages at a time: they are freed before the next poll).
        # Never poll again after the end of the partition (replay).
        poll = getattr(inner, "_batch_size", 0)  # the inner partition's poll size
        taken = len(msgs)
        while poll and len(msgs) >= poll and taken < self.max_batch and not getattr(inner, "_eof", False):
            msgs = inner.next_batch()
            taken += len(msgs)
            watermark = self._take(msgs, groups, watermark, copies)
        del msgs
        if copies and self.dead_letter is not None:
            self.dead_letter(self.topic, self.partition, copies)  # before the offsets can reach a snapshot
        return self._items(groups, start_watermark, watermark)

    def _take(self, msgs: list, groups: dict, watermark: int, copies: list) -> int:
        """One poll's messages into `groups`; returns the watermark after them."""
        prefix = self.prefix
        decode, iso, wire_bar, wire_marker = _WIRE.decode, _ISO_CACHE, _WireBar, _WireMarker
        for m in msgs:
            try:
                r = decode(m.value())
            except Exception:  # malformed, a tombstone (None), too deep...: decode_record says why
                r = None
            kind = type(r)
            if kind is wire_bar:
                ts = iso.get(r.t)
                if ts is None:
                    ts = _parse_time(r.t)
                    if ts is None:
                        watermark = self._decode_slow(m, groups, watermark, copies)
                        continue
                key = m.key()
                g = groups.get(key)
                if g is None or g.symbol != r.S:
                    # first bar of this key in the batch, or a key that is not its symbol
                    if key is None or key != r.S.encode("utf-8", "surrogatepass"):
                        watermark = self._decode_slow(m, groups, watermark, copies)
                        continue
                    g = groups[key] = _Group(r.S)
                if ts < watermark:
                    g.dead.append(_late(g.symbol, ts, f"{prefix}{m.offset()}", r))
                else:  # _Group.add, inlined
                    g.o.append(r.o)
                    g.h.append(r.h)
                    g.l.append(r.l)
                    g.c.append(r.c)
                    g.v.append(r.v)
                    g.n.append(r.n)
                    g.vw.append(r.vw)
                    g.ts.append(ts)
                    g.offsets.append(m.offset())
            elif kind is wire_marker:
                ts = iso.get(r.t)
                if ts is None:
                    ts = _parse_time(r.t)
                if ts is None or ts % MINUTE:
                    watermark = self._decode_slow(m, groups, watermark, copies)
                elif ts + MINUTE > watermark:  # an older or repeated marker promises nothing new
                    watermark = ts + MINUTE
            else:
                watermark = self._decode_slow(m, groups, watermark, copies)
        return watermark

    def _decode_slow(self, m, groups: dict, watermark: int, copies: list) -> int:
        """One record the fast path did not take, by `decode_record`; returns
        the watermark after it."""
        key, value, offset = m.key(), m.value(), m.offset()
        rec = decode_record(key, value)
        kind = type(rec)
        if kind is Bar:
            g = groups.get(key)
            if g is None:
                g = groups[key] = _Group(rec.symbol)
            if rec.ts < watermark:
                g.dead.append(DeadLetter(rec.symbol, rec.ts, "late", f"{self.prefix}{offset}",
                                         bar_payload(rec)))
            else:
                g.add(rec.ts, offset, rec.open, rec.high, rec.low, rec.close, rec.volume,
                      rec.trade_count, rec.vwap)
        elif kind is WatermarkRecord:
            if rec.ts > watermark:
                watermark = rec.ts
        elif kind is ControlRecord:
            # effective from this partition's watermark at its position (see operators.ordering.Control)
            self._controls.append((rec, watermark))
        else:
            g = groups.get(None)  # one group for all undecodable records
            if g is None:
                g = groups[None] = _Group("")
            _, ms = m.timestamp()
            ts = ms // 1000 if ms > 0 else 0
            payload = json.dumps({"error": rec.reason, "key": _text(key), "value": _text(value)})
            symbol = _text(key, 40) if key is not None else ""
            g.dead.append(DeadLetter(symbol, ts, "undecodable", f"{self.prefix}{offset}", payload))
            copies.append((rec.reason, offset, key, value))
        return watermark

    def _items(self, groups: dict, start_watermark: int, watermark: int) -> list:
        p, prefix = self.partition, self.prefix
        items: list = []
        seq = self.seq
        for g in groups.values():
            items.append(Chunk(p, seq, g.symbol, g.block(), g.offsets, prefix, g.dead))
            seq += 1
        for rec, at in self._controls:
            items.append(Control(p, seq, rec.control_id, rec.action, rec.flatten, at, rec.who, rec.why))
            seq += 1
        if watermark > start_watermark:
            items.append(Watermark(p, seq, watermark))
            seq += 1
        if not self.tail and not self.ended and getattr(self.inner, "_eof", False):
            # End of the partition in replay: nothing more will come.
            self.ended = True
            watermark = END_OF_TIME
            items.append(Watermark(p, seq, END_OF_TIME))
            seq += 1
        self.seq, self.watermark = seq, watermark
        return items

    def next_awake(self):
        return self.inner.next_awake()

    def snapshot(self):
        return (self.inner.snapshot(), self.seq, self.watermark, self.identity)

    def close(self) -> None:
        self.inner.close()
        if self.dead_letter is not None:
            self.dead_letter.release()


def _empty_block(symbol: str) -> BarBlock:
    z = np.zeros(0, dtype=np.float64)
    return BarBlock(symbol, np.zeros(0, dtype=np.int64), z, z, z, z, z)
