"""The trading day of a bar: its America/New_York calendar date."""
from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

NEW_YORK = ZoneInfo("America/New_York")
_cache: dict = {}


def trading_day(ts: int) -> int:
    """Proleptic ordinal of the New York date of `ts` (epoch seconds, UTC).

    Offsets change on whole UTC hours, so one lookup per hour is exact.
    """
    hour = ts // 3600
    day = _cache.get(hour)
    if day is None:
        day = datetime.fromtimestamp(hour * 3600, tz=timezone.utc).astimezone(NEW_YORK).date().toordinal()
        if len(_cache) > 100_000:
            _cache.clear()
        _cache[hour] = day
    return day
