"""The Alpaca broker: orders of the flow as alpaca-py requests (mapping half)
and a small submitting half over `TradingClient`.

Every order carries a deterministic `client_order_id` (run, strategy, symbol,
decision bar time, leg), so a replay after recovery can never place the same
order twice: Alpaca refuses a reused id (even after a cancel), and that
refusal is treated as success by adopting the existing order.
"""
from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass

import requests
from alpaca.common.exceptions import APIError
from alpaca.trading.enums import OrderClass, OrderSide, TimeInForce
from alpaca.trading.requests import (
    LimitOrderRequest,
    MarketOrderRequest,
    ReplaceOrderRequest,
    StopLossRequest,
    TakeProfitRequest,
)

from operators.types import BUY, Order

log = logging.getLogger(__name__)

MAX_CLIENT_ORDER_ID = 128  # Alpaca's limit
DUPLICATE_CLIENT_ORDER_ID = 40010001  # Alpaca error code: client_order_id must be unique
RETRIABLE_STATUS = {429, 500, 502, 503, 504}


# ---------------------------------------------------------------- mapping half
def client_order_id(run_id: str, order_id: str, leg: str | None = None) -> str:
    """`{run}.{strategy}.{symbol}.{bar ts}.{leg}`; hashed tail when too long."""
    cid = f"{run_id}.{order_id}" if leg is None else f"{run_id}.{order_id}.{leg}"
    if len(cid) <= MAX_CLIENT_ORDER_ID:
        return cid
    digest = hashlib.sha256(cid.encode()).hexdigest()[:16]
    return cid[: MAX_CLIENT_ORDER_ID - 17] + "~" + digest


def tick_size(price: float) -> float:
    """Alpaca's sub-penny rule: 0.01 at or above $1.00, 0.0001 below."""
    return 0.01 if price >= 1.0 else 0.0001


def to_tick(price: float, direction: str) -> float:
    """Round to the tick `up` or `down` (in whole ticks, so no float dust)."""
    tick = tick_size(price)
    scale = round(1 / tick)
    units = price * scale
    units = math.ceil(units - 1e-9) if direction == "up" else math.floor(units + 1e-9)
    return round(units / scale, 4)


def protective_prices(stop_price: float, target_price: float) -> tuple[float, float]:
    """Stop and target on the tick grid, each rounded toward the entry: the
    stop up and the target down, so the risk per share never exceeds the
    configured stop distance."""
    return to_tick(stop_price, "up"), to_tick(target_price, "down")


def to_order_request(run_id: str, order: Order):
    """A market order (entries, signal and time-stop exits, flatten)."""
    return MarketOrderRequest(
        symbol=order.symbol, qty=order.qty,
        side=OrderSide.BUY if order.side == BUY else OrderSide.SELL,
        time_in_force=TimeInForce.DAY, client_order_id=client_order_id(run_id, order.order_id),
    )


def to_protection_request(run_id: str, entry_order_id: str, symbol: str, qty: int,
                          stop_price: float, target_price: float,
                          oco_order_id: str | None = None) -> LimitOrderRequest:
    """After an entry fills: an OCO sell (take-profit limit + stop) so both
    exits rest at the broker and fill intrabar, as the backtest assumes.
    Its id is `{entry}.oco`, or `oco_order_id` when placed again."""
    stop, target = protective_prices(stop_price, target_price)
    cid = client_order_id(run_id, oco_order_id) if oco_order_id else client_order_id(
        run_id, entry_order_id, "oco")
    return LimitOrderRequest(
        symbol=symbol, qty=qty, side=OrderSide.SELL, time_in_force=TimeInForce.GTC,
        order_class=OrderClass.OCO, limit_price=target,
        take_profit=TakeProfitRequest(limit_price=target), stop_loss=StopLossRequest(stop_price=stop),
        client_order_id=cid,
    )


def to_stop_replace(new_stop: float) -> ReplaceOrderRequest:
    """The trailing stop moves the stop leg (only ever up)."""
    return ReplaceOrderRequest(stop_price=to_tick(new_stop, "up"))


# ---------------------------------------------------------------- errors
class BrokerError(Exception):
    """Base of broker failures."""


class BrokerRetriable(BrokerError):
    """Rate limit or server error after alpaca-py's own retries: back off and retry."""


class BrokerRejected(BrokerError):
    """The broker refused the order (buying power, invalid): counts toward the
    order-failure circuit breaker; do not retry the same request."""

    def __init__(self, status: int | None, code: int | None, message: str):
        super().__init__(f"order rejected (HTTP {status}, code {code}): {message}")
        self.status, self.code = status, code


def _error_code(exc: APIError) -> int | None:
    """Alpaca's numeric error code; None when the body has none (a gateway's
    error page, say): alpaca-py parses the body lazily and raises then."""
    try:
        return int(exc.code)
    except (TypeError, ValueError, KeyError, AttributeError):
        return None


def _error_message(exc: APIError) -> str:
    try:
        message = exc.message
    except (TypeError, ValueError, KeyError, AttributeError):
        message = None
    return message if isinstance(message, str) else str(exc).splitlines()[0][:200]


# ---------------------------------------------------------------- I/O half
@dataclass
class Submitted:
    order_id: str  # Alpaca's id
    client_order_id: str
    status: str
    adopted: bool  # the order already existed (a replay): adopted, not placed again
    detail: str = ""


class AlpacaBroker:
    """Submits requests through alpaca-py's `TradingClient`, idempotently."""

    def __init__(self, client, run_id: str):
        self.client, self.run_id = client, run_id

    def submit(self, request) -> Submitted:
        cid = request.client_order_id
        try:
            placed = self.client.submit_order(request)
            return Submitted(str(placed.id), cid, str(placed.status.value), adopted=False)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise BrokerRetriable(f"broker unreachable for {cid} ({type(exc).__name__})") from None
        except APIError as exc:
            status, code = exc.status_code, _error_code(exc)
            if code == DUPLICATE_CLIENT_ORDER_ID:
                # 40010001 is Alpaca's code for other invalid requests too: a
                # duplicate only when the order with this id is really there
                try:
                    existing = self.client.get_order_by_client_id(cid)
                except APIError:
                    existing = None
                if existing is not None:
                    log.info("order %s already at the broker: adopted (%s)", cid, existing.status)
                    return Submitted(str(existing.id), cid, str(existing.status.value), adopted=True)
                raise BrokerRejected(status, code, _error_message(exc)) from None
            if status in RETRIABLE_STATUS:
                raise BrokerRetriable(f"broker unavailable for {cid} (HTTP {status})") from None
            raise BrokerRejected(status, code, _error_message(exc)) from None

    def submit_order(self, order: Order) -> Submitted:
        return self.submit(to_order_request(self.run_id, order))
