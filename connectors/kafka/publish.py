"""Kafka `bars` topic: publishing a bar file as live would have.

`publish_plan` (pure: which bars to send before which marker) and
`publish_columns` (runs a plan through a `connectors.kafka.BarProducer`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np

from connectors.files.barfile import plan_emission
from connectors.kafka.codec import MINUTE, iso_times

if TYPE_CHECKING:
    from connectors.kafka.producer import BarProducer


@dataclass(frozen=True)
class PublishStep:
    """Send `rows` (indices into the columns, in this order), then the marker
    for `watermark` to every partition in `partitions`."""

    rows: np.ndarray
    watermark: int
    partitions: tuple


def publish_plan(cols, partitions, min_rows: int = 1) -> Iterator[PublishStep]:
    """The steps that publish a bar file as live would have: bars in
    `connectors.files.barfile.plan_emission` order, with a marker after each
    distinct suffix-min minute (or, with `min_rows` > 1, after the first
    minute boundary once at least `min_rows` bars were sent since the last
    marker).

    Why the markers are true. Rows go out sorted by their suffix-min s (the
    earliest time among the row and its symbol's later rows), so each symbol
    keeps its row order. Let M(r) = floor(s(r) / 60) * 60, non-decreasing in
    send order. A step ends after the last row with M = m; the next row to
    send has M = m' > m, and every row still to come has s >= m' (sorted),
    hence time >= s >= m'. The marker therefore carries watermark m' ("minute
    m' - 60 is complete"), the tightest minute bound; after the last row any
    bound holds and the marker covers the latest bar (its minute + 60: a
    symbol's out-of-order rows can put its largest time before its last row,
    so this can exceed the last M + 60). The bound is global, so it holds in
    every partition, whatever partition a row's key hashes to; and the
    producer keeps per-partition order (idempotent, acks=all), so a marker
    lands after the bars sent before it. No row is ever behind a marker when
    it arrives: publishing a file makes no source-`late` bars (a symbol's own
    out-of-order rows are still judged by the symbol stage, as for the file).

    `partitions`: the topic's partition count or partition numbers.
    """
    parts = tuple(range(partitions)) if isinstance(partitions, int) else tuple(partitions)
    order, sufmin = plan_emission(cols)
    n = len(order)
    if n == 0:
        return
    minute = (sufmin[order] // MINUTE) * MINUTE
    ends = np.flatnonzero(minute[1:] != minute[:-1]) + 1  # first row of each later minute
    bounds = ends.tolist() + [n]
    # After the last row nothing follows: declare every minute up to the latest bar complete.
    last = (int(cols.ts.max()) // MINUTE) * MINUTE + MINUTE
    start = 0
    for end in bounds:
        if end - start < min_rows and end < n:
            continue
        watermark = int(minute[end]) if end < n else last
        yield PublishStep(order[start:end], watermark, parts)
        start = end


RECORDS = ("bars", "bar")  # several bars per record (stored history, the default) | one (as live)
BARS_PER_MARKER = 8_192  # bars records: a marker after about this many bars


def publish_columns(producer: BarProducer, cols, min_rows: int | None = None,
                    progress: Callable[[int, int], None] | None = None,
                    pace: Callable[[PublishStep], None] | None = None,
                    records: str = "bars") -> tuple[int, int]:
    """Publish a whole bar file through `producer` by `publish_plan`, then
    flush. Returns (bars, markers) sent. `progress(bars_so_far, total)` is
    called after each step. With `pace(step)` (called before a step is sent,
    e.g. to wait for its time at X times real time) every step is flushed
    as soon as it is sent, so its minute is complete in Kafka then.

    `records`: "bars" sends each step's bars as bars records (per symbol,
    several minutes as columns; a replay reads them 3-4x faster), "bar" one
    bar per message as `cuts stream` does. `min_rows` (default: a marker per
    minute when paced or one bar per message, else every ~8,192 bars): see
    `publish_plan`; any spacing replays to the same results, since the
    markers only say when bars may be applied, never in which order."""
    if records not in RECORDS:
        raise ValueError(f"records must be one of {', '.join(RECORDS)}, not {records!r}")
    if min_rows is None:
        min_rows = 1 if pace is not None or records == "bar" else BARS_PER_MARKER
    send = producer.send_rows if records == "bar" else producer.send_bars_records
    iso = iso_times(cols.ts)
    bars = markers = 0
    for step in publish_plan(cols, producer.partitions, min_rows=min_rows):
        if pace is not None:
            pace(step)
        bars += send(cols, step.rows, iso)
        producer.send_watermark(step.watermark)
        if pace is not None:
            producer.flush()
        markers += len(step.partitions)
        if progress is not None:
            progress(bars, len(cols))
    producer.flush()
    return bars, markers

