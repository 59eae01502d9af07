"""Market sessions from Alpaca's calendar (`GET /v2/calendar`): which
minutes a live run may enter in (holidays and early closes included).

`sessions_from_calendar` is the pure mapping (Alpaca gives New York wall
times, which alpaca-py parses into naive datetimes); `fetch_sessions` is the
I/O over `TradingClient.get_calendar`.
"""
from __future__ import annotations

from datetime import date, datetime, timedelta

from alpaca.common.exceptions import APIError
from alpaca.trading.requests import GetCalendarRequest

from operators.calendar import NEW_YORK


class CalendarUnavailable(Exception):
    """The broker's calendar could not be read: retry later or start without trading."""


def _epoch(local: datetime) -> int:
    if local.tzinfo is None:
        local = local.replace(tzinfo=NEW_YORK)
    return int(local.timestamp())


def sessions_from_calendar(days) -> dict[int, tuple[int, int]]:
    """{New York date ordinal: (open, close) epoch seconds} of alpaca-py
    `Calendar` entries (or dicts with date/open/close as Alpaca sends them)."""
    out = {}
    for d in days:
        if isinstance(d, dict):
            day = date.fromisoformat(d["date"])
            open_ = datetime.strptime(f"{d['date']} {d['open']}", "%Y-%m-%d %H:%M")
            close = datetime.strptime(f"{d['date']} {d['close']}", "%Y-%m-%d %H:%M")
        else:
            day, open_, close = d.date, d.open, d.close
        out[day.toordinal()] = (_epoch(open_), _epoch(close))
    return out


def fetch_sessions(client, around: date, days_before: int = 7, days_after: int = 45) -> dict:
    """The sessions from `days_before` to `days_after` days around `around`
    (a run is restarted well within that; a day missing from it is closed)."""
    try:
        days = client.get_calendar(GetCalendarRequest(start=around - timedelta(days=days_before),
                                                      end=around + timedelta(days=days_after)))
    except APIError as exc:
        raise CalendarUnavailable(f"Alpaca calendar not readable (HTTP {exc.status_code})") from None
    return sessions_from_calendar(days)
