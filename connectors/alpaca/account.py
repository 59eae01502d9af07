"""The Alpaca account as reconciliation reads and changes it (I/O over
alpaca-py's `TradingClient`): positions, open orders (legs nested), and
flattening one symbol (cancel its orders, close its position).

alpaca-py is imported inside the functions: the CLI names the errors
without loading the client library.
"""
from __future__ import annotations

import time
from typing import Any

from connectors.alpaca.reconcile import quantity

CANCEL_WAIT_S = 10.0  # how long a flatten waits for its cancels before closing the position


class BrokerUnavailable(Exception):
    """The broker refused or could not be reached (credentials, network, rejection)."""


def trading_client(live: bool = False, url: str | None = None):
    """alpaca-py's TradingClient from the environment: credentials, paper unless
    --live with ALPACA_PAPER=false, ALPACA_TRADING_URL (or `url`) overriding the endpoint."""
    from alpaca.trading.client import TradingClient

    from connectors.config import alpaca_credentials, alpaca_trading_url, trading_mode

    key, secret = alpaca_credentials()
    paper = trading_mode(live) == "paper"
    return TradingClient(key, secret, paper=paper, url_override=url or alpaca_trading_url())


def _broker_call(what: str, fn, *args):
    from alpaca.common.exceptions import APIError
    from requests.exceptions import RequestException

    try:
        return fn(*args)
    except APIError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise BrokerUnavailable(f"broker refused {what} (HTTP {exc.status_code}): {first}") from None
    except RequestException as exc:
        raise BrokerUnavailable(f"broker unreachable ({what}): {type(exc).__name__}") from None


def broker_positions(tc) -> dict[str, tuple[int | float, float]]:
    """{symbol: (signed qty, avg entry price)} of every broker position."""
    out = {}
    for p in _broker_call("the positions", tc.get_all_positions):
        qty = quantity(p.qty)
        side = getattr(p.side, "value", p.side)
        if side == "short" and qty > 0:
            qty = -qty
        out[p.symbol] = (qty, float(p.avg_entry_price))
    return out


def _order_dict(o) -> dict[str, Any]:
    return {"id": str(o.id), "symbol": o.symbol, "client_order_id": o.client_order_id,
            "side": getattr(o.side, "value", o.side), "qty": quantity(o.qty),
            "status": getattr(o.status, "value", o.status),
            "legs": [_order_dict(leg) for leg in (o.legs or ())]}


def broker_open_orders(tc, symbols: list[str] | None = None) -> list[dict[str, Any]]:
    """The open orders (legs nested in their parents) as plain dicts."""
    from alpaca.trading.enums import QueryOrderStatus
    from alpaca.trading.requests import GetOrdersRequest

    request = GetOrdersRequest(status=QueryOrderStatus.OPEN, nested=True, limit=500, symbols=symbols)
    return [_order_dict(o) for o in _broker_call("the open orders", tc.get_orders, request)]


def flatten_symbol(tc, symbol: str, open_orders: list[dict], broker_qty) -> list[str]:
    """Cancel the symbol's open orders (a parent's cancel takes its legs), wait
    for the cancels, close the broker position at market. What was done, as lines."""
    from alpaca.common.exceptions import APIError

    done = []
    for order in (o for o in open_orders if o["symbol"] == symbol):
        try:
            tc.cancel_order_by_id(order["id"])
            done.append(f"{symbol}: canceled open order {order['client_order_id']} "
                        f"({order['side']} {order['qty']})")
        except APIError as exc:
            if exc.status_code not in (404, 422):  # filled or canceled meanwhile
                raise BrokerUnavailable(f"cannot cancel {order['client_order_id']} "
                                        f"(HTTP {exc.status_code})") from None
            done.append(f"{symbol}: order {order['client_order_id']} already closed")
    deadline = time.monotonic() + CANCEL_WAIT_S
    while broker_open_orders(tc, [symbol]) and time.monotonic() < deadline:
        time.sleep(0.2)
    if quantity(broker_qty) != 0:
        try:
            close = tc.close_position(symbol)
            status = getattr(close.status, "value", close.status)
            done.append(f"{symbol}: closing position of {broker_qty} at market (order {close.id}, {status})")
            if status != "filled":
                done.append(f"{symbol}: until the closing order fills, {symbol} stays blocked")
        except APIError as exc:
            if exc.status_code != 404:
                raise BrokerUnavailable(f"cannot close the {symbol} position "
                                        f"(HTTP {exc.status_code}): {str(exc)[:200]}") from None
            done.append(f"{symbol}: no position left to close")
    else:
        done.append(f"{symbol}: no broker position to close")
    return done
