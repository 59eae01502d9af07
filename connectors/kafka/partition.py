"""Kafka `bars` topic: one partition of the Bytewax source, records ->
`Chunk` / `Watermark` items (`_BarPartition`), with the fast decode path
described in `connectors.kafka.codec` (next to `_WireBar`).
"""
from __future__ import annotations

import gc
import json
from typing import Callable

from bytewax.inputs import StatefulSourcePartition

from connectors.kafka.codec import (
    _ISO_CACHE,
    _WIRE,
    MINUTE,
    BarsRecord,
    ControlRecord,
    WatermarkRecord,
    _parse_time,
    _WireBar,
    _WireBars,
    _WireMarker,
    decode_record,
)
from connectors.kafka.columns import _Group
from operators.ordering import END_OF_TIME, Chunk, Control, Watermark
from operators.symbol_stage import bar_payload
from operators.types import Bar, DeadLetter

# The undecodable records' group key: no Kafka key (bytes or None) equals it,
# so a keyless bar of symbol "" is never taken for a bar of that group.
_UNDECODABLE = object()


def _text(data: bytes | None, limit: int = 2000) -> str | None:
    return None if data is None else data[:limit].decode("utf-8", "backslashreplace")


def _late(symbol: str, ts: int, source: str, r: _WireBar) -> DeadLetter:
    bar = Bar(symbol, ts, r.o, r.h, r.l, r.c, r.v, r.n, r.vw)
    return DeadLetter(symbol, ts, "late", source, bar_payload(bar))


class EventTimeKafkaPartition(StatefulSourcePartition):
    """What the bars and trade-updates partitions share: an inner Bytewax
    Kafka partition, items numbered by `seq` for item partition
    `self.partition`, and the snapshot (offset, seq, watermark, topic id).
    Subclasses set inner, partition, tail, seq, watermark, identity, ended."""

    def _end_of_replay(self, items: list, seq: int, watermark: int) -> tuple[int, int]:
        """After the end of the partition in replay: Watermark(END_OF_TIME),
        once (nothing more will come). Returns (seq, watermark) after it."""
        if not self.tail and not self.ended and getattr(self.inner, "_eof", False):
            self.ended = True
            items.append(Watermark(self.partition, seq, END_OF_TIME))
            return seq + 1, END_OF_TIME
        return seq, watermark

    def next_awake(self):
        return self.inner.next_awake()

    def snapshot(self):
        return (self.inner.snapshot(), self.seq, self.watermark, self.identity)

    def close(self) -> None:
        self.inner.close()


class _BarPartition(EventTimeKafkaPartition):
    """Wraps Bytewax's Kafka partition: records -> Chunk / Watermark items.

    State (the snapshot): (next offset, next seq, watermark, topic id). All of
    a fetched batch is turned into items inside `next_batch`, so the state is
    consistent at every snapshot.
    """

    def __init__(self, inner, topic: str, partition: int, tail: bool, seq: int, watermark: int,
                 identity: str | None, dead_letter: Callable | None, max_batch: int = 0,
                 max_bars: int = 16_384):
        self.inner = inner
        # Up to this many messages (and about max_bars bars) per batch, taken
        # in several polls of the inner partition while its polls come back
        # full (0: one poll).
        self.max_batch = max_batch
        self.max_bars = max_bars
        self.poll_size = getattr(inner, "_batch_size", 0)  # messages per poll, at most
        self._poll = self.poll_size
        self._bars_per_msg: float | None = None
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
        self._set_poll(0)
        msgs = inner.next_batch()  # raises StopIteration after the end in replay mode
        groups: dict = {}  # key bytes -> _Group (_UNDECODABLE -> the undecodable records)
        copies: list = []
        start_watermark = self.watermark
        self._controls = []
        watermark = self._take(msgs, groups, start_watermark, copies)
        # A full poll means more is waiting: take it into the same batch (one
        # poll's messages at a time: they are freed before the next poll).
        # Never poll again after the end of the partition (replay).
        taken, bars = len(msgs), self._learn(len(msgs), groups, 0)
        while (self._poll and len(msgs) >= self._poll and taken < self.max_batch and bars < self.max_bars
               and not getattr(inner, "_eof", False)):
            self._set_poll(bars)
            msgs = inner.next_batch()
            taken += len(msgs)
            watermark = self._take(msgs, groups, watermark, copies)
            bars = self._learn(len(msgs), groups, bars)
        del msgs
        if copies and self.dead_letter is not None:
            self.dead_letter(self.topic, self.partition, copies)  # before the offsets can reach a snapshot
        return self._items(groups, start_watermark, watermark)

    def _set_poll(self, bars: int) -> None:
        """The next poll's size: the inner partition's, or fewer messages
        when bars records (many bars each) would overrun `max_bars`; the
        first poll ever is small, until the bars per message are known."""
        size = self.poll_size
        if not size:
            return
        per_msg = self._bars_per_msg
        if per_msg is None:
            size = min(size, 16)
        elif per_msg > 1:
            size = max(1, min(size, int((self.max_bars - bars) / per_msg)))
        self._poll = self.inner._batch_size = size

    def _learn(self, msgs: int, groups: dict, before: int) -> int:
        """Bars in the batch so far; updates the bars-per-message estimate
        from a poll that held bars (a poll of markers alone says nothing),
        halving an older, larger estimate instead of dropping it: a few
        markers or single bars between bars records must not open the next
        poll to a thousand records."""
        bars = sum(len(g.ts) + len(g.dead) for g in groups.values())
        if msgs and bars > before:
            ratio = (bars - before) / msgs
            previous = self._bars_per_msg
            self._bars_per_msg = ratio if previous is None else max(ratio, previous / 2)
        return bars

    def _take(self, msgs: list, groups: dict, watermark: int, copies: list) -> int:
        """One poll's messages into `groups`; returns the watermark after them."""
        prefix = self.prefix
        decode, iso, wire_bar, wire_marker, wire_bars = _WIRE.decode, _ISO_CACHE, _WireBar, _WireMarker, _WireBars
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
            elif kind is wire_bars:
                watermark = self._take_bars(m, r, groups, watermark, copies)
            else:
                watermark = self._decode_slow(m, groups, watermark, copies)
        return watermark

    def _take_bars(self, m, r: _WireBars, groups: dict, watermark: int, copies: list) -> int:
        """A bars record msgspec took: the rest of `_decode_bars`'s checks,
        then its bars into the symbol's group as a run (C-level list
        extends: the reason bars records replay fast)."""
        count = len(r.t)
        if (not count or len(r.o) != count or len(r.h) != count or len(r.l) != count or len(r.c) != count
                or len(r.v) != count or (r.n is not None and len(r.n) != count)
                or (r.vw is not None and len(r.vw) != count)):
            return self._decode_slow(m, groups, watermark, copies)
        key = m.key()
        g = groups.get(key)
        if (g is None or g.symbol != r.S) and (key is None or key != r.S.encode("utf-8", "surrogatepass")):
            return self._decode_slow(m, groups, watermark, copies)
        try:
            ts = list(map(_ISO_CACHE.__getitem__, r.t))
        except KeyError:
            ts = list(map(_parse_time, r.t))
            if None in ts:
                return self._decode_slow(m, groups, watermark, copies)
        if g is None:
            g = groups[key] = _Group(r.S)
        if min(ts) >= watermark:
            g.add_run(m.offset(), 0, ts, r.o, r.h, r.l, r.c, r.v, r.n, r.vw)
        else:
            n, vw = r.n or [None] * count, r.vw or [None] * count
            self._add_record_bars(g, m.offset(), [Bar(r.S, *row) for row in zip(
                ts, r.o, r.h, r.l, r.c, r.v, n, vw)], watermark)
        return watermark

    def _add_record_bars(self, g: _Group, offset: int, bars: list, watermark: int) -> None:
        """A bars record's bars into `g`: late ones (below the watermark at
        the record's position) to its dead letters, the rest as runs."""
        run: list = []
        for k, b in enumerate(bars + [None]):
            if b is not None and b.ts >= watermark:
                run.append(b)
                continue
            if run:
                g.add_run(offset, k - len(run), [x.ts for x in run], *(
                    [getattr(x, f) for x in run] for f in
                    ("open", "high", "low", "close", "volume", "trade_count", "vwap")))
                run = []
            if b is not None:
                g.dead.append(DeadLetter(b.symbol, b.ts, "late", f"{self.prefix}{offset}#{k}", bar_payload(b)))

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
        elif kind is BarsRecord:
            g = groups.get(key)
            if g is None:
                g = groups[key] = _Group(rec.symbol)
            self._add_record_bars(g, offset, rec.bars, watermark)
        elif kind is WatermarkRecord:
            if rec.ts > watermark:
                watermark = rec.ts
        elif kind is ControlRecord:
            # effective from this partition's watermark at its position (see operators.ordering.Control)
            self._controls.append((rec, watermark))
        else:
            g = groups.get(_UNDECODABLE)  # one group for all undecodable records
            if g is None:
                g = groups[_UNDECODABLE] = _Group("")
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
            items.append(Chunk(p, seq, g.symbol, g.block(), g.origins(), prefix, g.dead))
            seq += 1
        for rec, at in self._controls:
            items.append(Control(p, seq, rec.control_id, rec.action, rec.flatten, at, rec.who, rec.why))
            seq += 1
        if watermark > start_watermark:
            items.append(Watermark(p, seq, watermark))
            seq += 1
        self.seq, self.watermark = self._end_of_replay(items, seq, watermark)
        return items

    def close(self) -> None:
        super().close()
        if self.dead_letter is not None:
            self.dead_letter.release()
