"""Alpaca live minute bars: the pure half of `cuts stream` (wall-clock times
are arguments, nothing here reads a clock).

`subscribe_batches`, `in_regular_session`, `MinuteCompleter` (when a minute
is complete, which minutes need a backfill first), `resume_from` (where a
restart picks up), `SentBars`, `is_stale`,
`StreamCounters`. The I/O half: `connectors.alpaca.stream` (the websocket)
and `connectors.alpaca.live` (the loop). Design: docs/streaming.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable

from operators.calendar import NEW_YORK

MINUTE = 60


def subscribe_batches(symbols: list, size: int) -> list:
    return [list(symbols[i:i + size]) for i in range(0, len(symbols), size)]


def in_regular_session(ts: int) -> bool:
    """Mon-Fri 09:30-16:00 New York (holidays and early closes not known)."""
    t = datetime.fromtimestamp(ts, NEW_YORK)
    return t.weekday() < 5 and 570 <= t.hour * 60 + t.minute < 960


def _never(_minute: int) -> bool:
    return False


@dataclass
class MinuteCompleter:
    """When is a minute complete, and which minutes must come from REST first.

    Alpaca pushes the bar of minute m right after m + 60; minute m is *due*
    at m + 60 + grace. It is *exposed* if the stream did not cover every
    symbol at some time in [m + 60 - grace, m + 60 + grace] (startup,
    disconnect, a refused or unfinished subscription, a forced reconnect),
    or if `in_session(m)` and no stream bar at all came for it (a connection
    open but mute). A due minute that is not exposed is complete; an exposed
    one once a backfill of it succeeded, or, when REST keeps failing,
    `give_up_s` after it was due (counted in `unverified`).
    """

    grace: float
    declared: int  # the last watermark: minutes < declared are complete
    in_session: Callable[[int], bool] = _never
    give_up_s: float = 300.0
    uncovered_since: float | None = None
    gaps: list = field(default_factory=list)  # closed (from, to) wall-clock intervals
    filled_until: int = 0  # minutes < filled_until were backfilled (or given up)
    seen: set = field(default_factory=set)  # minutes >= declared with a stream bar
    retry_at: float | None = None  # after a failed backfill
    unverified: int = 0

    @classmethod
    def starting(cls, now: float, grace: float, resume_from: int | None = None, **kw) -> "MinuteCompleter":
        """From the minute in progress at `now`, uncovered until subscribed;
        with `resume_from` (a restart: the topic's last marker, see
        `resume_from`) from that minute: every minute since is exposed, so
        it is backfilled from REST before it is declared complete."""
        if resume_from is None:
            return cls(grace, int(now // MINUTE) * MINUTE, uncovered_since=now, **kw)
        return cls(grace, resume_from, uncovered_since=min(now, resume_from), **kw)

    def uncovered(self, t: float) -> None:
        if self.uncovered_since is None:
            self.uncovered_since = t

    def covered(self, t: float) -> None:
        if self.uncovered_since is not None:
            self.gaps.append((self.uncovered_since, t))
            self.uncovered_since = None

    def saw_bar(self, ts: int) -> None:
        if ts >= self.declared:
            self.seen.add(ts - ts % MINUTE)

    def exposed(self, m: int) -> bool:
        lo, hi = m + MINUTE - self.grace, m + MINUTE + self.grace
        if self.uncovered_since is not None and self.uncovered_since <= hi:
            return True
        if any(a <= hi and b >= lo for a, b in self.gaps):
            return True
        return self.in_session(m) and m not in self.seen

    def step(self, now: float):
        """The next thing to do at `now`:
        ("watermark", W): write marker W, then `declare(W)`;
        ("backfill", lo, hi): fetch minutes [lo, hi), write the new bars, then
            `filled(lo, hi)` (or `fill_failed(now, retry_in)`);
        ("give_up", m): REST failed for `give_up_s`: `give_up(m)`, log it;
        None: nothing yet."""
        due = math.floor((now - self.grace) / MINUTE) * MINUTE  # minutes < due are due
        m = self.declared
        while m < due and (m < self.filled_until or not self.exposed(m)):
            m += MINUTE
        if m > self.declared:
            return ("watermark", m)
        if m >= due:
            return None
        if self.retry_at is not None and now < self.retry_at:
            return ("give_up", m) if now >= m + MINUTE + self.grace + self.give_up_s else None
        return ("backfill", m, due)

    def declare(self, watermark: int) -> None:
        self.declared = max(self.declared, watermark)
        self.seen = {m for m in self.seen if m >= self.declared}
        self.gaps = [(a, b) for a, b in self.gaps if b >= self.declared + MINUTE - self.grace]

    def filled(self, lo: int, hi: int) -> None:
        self.filled_until = max(self.filled_until, hi)
        self.retry_at = None

    def fill_failed(self, now: float, retry_in: float) -> None:
        self.retry_at = now + retry_in

    def give_up(self, m: int) -> None:
        self.filled_until = max(self.filled_until, m + MINUTE)
        self.unverified += 1


def resume_from(last_marker: int | None, now: float, max_catch_up_s: float) -> int | None:
    """Where a restarted connector starts declaring minutes: the topic's last
    marker (minutes before it are complete in Kafka) when it is at most
    `max_catch_up_s` old and not in the future; else None: the current
    minute (the caller says why; `cuts backfill` fills an older gap)."""
    if last_marker is None:
        return None
    current = int(now // MINUTE) * MINUTE
    if now - last_marker > max_catch_up_s or last_marker > current + MINUTE:
        return None
    return last_marker


@dataclass
class SentBars:
    """(symbol, minute) written recently: a backfill does not write a bar the
    stream already wrote, nor the stream one the backfill wrote."""

    by_minute: dict = field(default_factory=dict)

    def first(self, symbol: str, ts: int) -> bool:
        """True the first time (and remembers it)."""
        seen = self.by_minute.setdefault(ts, set())
        if symbol in seen:
            return False
        seen.add(symbol)
        return True

    def forget_before(self, ts: int) -> None:
        for m in [m for m in self.by_minute if m < ts]:
            del self.by_minute[m]


def is_stale(now: float, connected_at: float | None, last_bar_at: float | None,
             in_session: bool, stale_after: float) -> bool:
    """An open connection without a bar for `stale_after` s during the session."""
    if connected_at is None or not in_session:
        return False
    return now - max(connected_at, last_bar_at or connected_at) >= stale_after


@dataclass
class StreamCounters:
    received: int = 0  # bar and updated-bar messages decoded from the stream
    updated: int = 0  # of which updatedBars corrections
    produced: int = 0  # bars written to Kafka (stream and backfill)
    backfilled: int = 0  # of which from REST
    duplicates: int = 0  # not written again: (symbol, minute) was already written
    late: int = 0  # written after their minute was declared complete
    dead_letters: int = 0  # undecodable messages
    markers: int = 0  # watermarks written (each to every partition)
    connections: int = 0  # authenticated connections
    unverified: int = 0  # exposed minutes declared complete without a backfill

    def line(self) -> str:
        return (f"received {self.received} ({self.updated} updated), produced {self.produced} "
                f"({self.backfilled} backfilled), duplicates skipped {self.duplicates}, late "
                f"{self.late}, dead letters {self.dead_letters}, markers {self.markers}, "
                f"connections {self.connections}, unverified minutes {self.unverified}")
