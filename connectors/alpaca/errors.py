"""Errors of the Alpaca connectors that stop a command with one line (exit
code 2), in a module without alpaca-py: the CLI names them without paying
for importing the client library. Each connector module re-exports its own.
"""
from __future__ import annotations


class SymbolsError(ValueError):
    """Bad --symbols / --symbols-file: one line, exit 2."""


class BackfillArgumentError(ValueError):
    """Bad --start / --end / --timeframe: one line, exit 2."""


class AlpacaRejected(RuntimeError):
    """Alpaca refused a request in a way retrying cannot fix: stop."""


class AlpacaUnavailable(RuntimeError):
    """Alpaca kept failing (rate limit, server errors, network) past the retries: stop."""


class StreamRejected(ValueError):
    """Alpaca refused the stream in a way retrying cannot fix (one line, exit 2)."""


class TradingUsageError(ValueError):
    """The trading run cannot start as asked (bad run id, account unreachable...)."""


class CalendarUnavailable(Exception):
    """The broker's calendar could not be read: retry later or start without trading."""


class TradingStopped(RuntimeError):
    """A trading run stopped because a part it cannot trade without failed
    for good (the trade-updates relay): one line, exit 2."""
