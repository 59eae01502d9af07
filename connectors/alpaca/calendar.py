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

from connectors.alpaca.errors import CalendarUnavailable  # noqa: F401 - re-exported
from operators.calendar import NEW_YORK


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


class CalendarSessions:
    """`in_session(ts)` from Alpaca's calendar for `cuts stream`: fetched on
    first use and again when a date leaves the fetched window; while it
    cannot be read (keys without trading access, Alpaca down) the `fallback`
    (weekdays 09:30-16:00 New York) answers, retried every `retry_s`."""

    def __init__(self, make_client, fallback, retry_s: float = 300.0, monotonic=None):
        import time

        self.make_client, self.fallback, self.retry_s = make_client, fallback, retry_s
        self.monotonic = monotonic or time.monotonic
        self.sessions: dict = {}
        self.window: tuple[int, int] | None = None  # date ordinals covered
        self.failed_at: float | None = None

    def __call__(self, ts: int) -> bool:
        from operators.calendar import trading_day

        day = trading_day(ts)
        if self.window is None or not self.window[0] <= day <= self.window[1]:
            if self.failed_at is None or self.monotonic() - self.failed_at >= self.retry_s:
                self._fetch(date.fromordinal(day))
        if self.window is None or not self.window[0] <= day <= self.window[1]:
            return self.fallback(ts)
        session = self.sessions.get(day)
        return session is not None and session[0] <= ts < session[1]

    def _fetch(self, around: date) -> None:
        import logging

        try:
            self.sessions = fetch_sessions(self.make_client(), around)
            self.window = (around.toordinal() - 7, around.toordinal() + 45)
            self.failed_at = None
        except Exception as exc:  # unreadable: the fallback answers, retried later
            self.failed_at = self.monotonic()
            logging.getLogger(__name__).warning(
                "Alpaca calendar not readable (%s): weekdays 09:30-16:00 New York until it is",
                type(exc).__name__)
