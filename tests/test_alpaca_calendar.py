"""Sessions from Alpaca's calendar: New York open/close to epoch seconds,
early closes and holidays as Alpaca lists them."""
from __future__ import annotations

import sys
from datetime import date, datetime, timezone
from pathlib import Path

from alpaca.trading.client import TradingClient

from connectors.alpaca.calendar import fetch_sessions, sessions_from_calendar

sys.path.insert(0, str(Path(__file__).parent))
from alpaca_server import AlpacaServer  # noqa: E402


def utc(*a):
    return int(datetime(*a, tzinfo=timezone.utc).timestamp())


def test_a_session_is_new_york_open_to_close_in_epoch_seconds():
    s = sessions_from_calendar([{"date": "2024-07-03", "open": "09:30", "close": "13:00"},
                                {"date": "2024-01-02", "open": "09:30", "close": "16:00"}])
    assert s[date(2024, 7, 3).toordinal()] == (utc(2024, 7, 3, 13, 30), utc(2024, 7, 3, 17, 0))  # EDT
    assert s[date(2024, 1, 2).toordinal()] == (utc(2024, 1, 2, 14, 30), utc(2024, 1, 2, 21, 0))  # EST


def test_sessions_come_from_the_brokers_calendar_holidays_left_out():
    with AlpacaServer(trading=True) as server:
        client = TradingClient(server.key, server.secret, paper=True, url_override=server.trading_url)
        s = fetch_sessions(client, date(2024, 7, 1))
    assert date(2024, 7, 4).toordinal() not in s  # Independence Day
    assert s[date(2024, 7, 2).toordinal()] == (utc(2024, 7, 2, 13, 30), utc(2024, 7, 2, 20, 0))


def test_the_stream_session_follows_the_calendar_and_falls_back_while_unreadable():
    from connectors.alpaca.calendar import CalendarSessions
    from connectors.alpaca.minutes import in_regular_session

    july4_noon = utc(2024, 7, 4, 16, 0)  # a Thursday, exchange holiday
    early_close = utc(2024, 7, 3, 17, 30)  # 13:30 New York, after the 13:00 early close
    with AlpacaServer(trading=True) as server:
        make = lambda: TradingClient(server.key, server.secret, paper=True,  # noqa: E731
                                     url_override=server.trading_url)
        session = CalendarSessions(make, in_regular_session)
        assert not session(july4_noon) and not session(early_close)
        assert session(utc(2024, 7, 2, 14, 0))
    down = CalendarSessions(lambda: TradingClient("k", "s", paper=True, url_override="http://127.0.0.1:9"),
                            in_regular_session)
    assert down(july4_noon) is True  # the fallback does not know holidays
