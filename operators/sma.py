"""Incremental simple moving averages over integer micro-dollar closes.

One ring buffer per symbol holds the last `max(periods)` closes; each period
keeps a running sum, so a bar costs O(number of periods), never a re-sum.
Closes are integers (`round(close * 10**6)`) so comparisons are exact.
"""
from __future__ import annotations

from dataclasses import dataclass


def to_micros(price: float) -> int:
    return round(price * 1_000_000)


@dataclass(slots=True)
class SmaBank:
    periods: tuple  # distinct periods, ascending
    buf: list
    sums: list  # running sum per period, same order as `periods`
    count: int = 0

    @classmethod
    def for_periods(cls, periods) -> "SmaBank":
        ps = tuple(sorted(set(periods)))
        return cls(periods=ps, buf=[0] * ps[-1], sums=[0] * len(ps))

    def push(self, close_micros: int) -> None:
        """Apply one close: each period drops the close leaving its window."""
        count = self.count
        size = len(self.buf)
        buf = self.buf
        sums = self.sums
        for i, n in enumerate(self.periods):
            if count >= n:
                sums[i] += close_micros - buf[(count - n) % size]
            else:
                sums[i] += close_micros
        buf[count % size] = close_micros
        self.count = count + 1

    def sum_of(self, period: int) -> int | None:
        """Sum of the last `period` closes, None until that many were applied."""
        if self.count < period:
            return None
        return self.sums[self.periods.index(period)]


def compare_means(sum_a: int, n_a: int, sum_b: int, n_b: int) -> int:
    """Sign of mean_a - mean_b, exactly: -1, 0 or 1."""
    left = sum_a * n_b
    right = sum_b * n_a
    return (left > right) - (left < right)
