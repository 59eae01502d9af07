"""Reconciliation, pure half: what the broker holds against what a run
believes, one status per symbol. No I/O here: `dataflows.reconciliation`
reads the account (`connectors.alpaca.account`) and the run's records
(`connectors.clickhouse.reconciliations`); `cuts reconcile` records decisions.

Statuses (one per symbol; a symbol appears when either side has a position or
an open order on it):
- `match`: broker qty == the run's qty, and no foreign open order;
- `qty_mismatch`: both sides hold the symbol, with different quantities;
- `unknown_position`: the broker holds a symbol the run believes flat;
- `missing_position`: the run believes a position the broker does not have;
- `foreign_order`: the positions agree but an open order on the symbol is not
  the run's: its client_order_id does not start with `{run_id}.` (nor is it
  one of `known_order_ids`) and it is not a leg of one of the run's orders.
A position disagreement outranks a foreign order (the foreign orders are
still listed on the symbol's line). Every status other than `match` makes the
symbol unclear: the run must not trade it until a person decides (adopt or
flatten).

A decision covers the discrepancy it was taken on, measured as the offset
broker qty - expected qty: an `adopt` accepts the offset seen when deciding; a
`flatten` leaves the broker flat, so the offset becomes -expected. While the
offset is unchanged the symbol stays decided; a different offset is a new
discrepancy and blocks the symbol again (`blocked_symbols`).
"""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Iterable, Mapping

MATCH = "match"
QTY_MISMATCH = "qty_mismatch"
UNKNOWN_POSITION = "unknown_position"
MISSING_POSITION = "missing_position"
FOREIGN_ORDER = "foreign_order"
STATUSES = (MATCH, QTY_MISMATCH, UNKNOWN_POSITION, MISSING_POSITION, FOREIGN_ORDER)

ADOPT, FLATTEN, NONE = "adopt", "flatten", "none"
DECISIONS = (ADOPT, FLATTEN, NONE)


def quantity(value: Any) -> int | float:
    """A share quantity from an int, float, Decimal or Alpaca's string: an int
    when whole (fractional shares stay floats); None and '' are 0."""
    if value is None or value == "":
        return 0
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"not a quantity: {value!r}") from None
    return int(d) if d == d.to_integral_value() else float(d)


def _field(obj: Any, name: str, default: Any = None) -> Any:
    """`obj[name]` for mappings, else `obj.name` (alpaca-py models); enums -> their value."""
    value = obj.get(name, default) if isinstance(obj, Mapping) else getattr(obj, name, default)
    return getattr(value, "value", value)


@dataclass(frozen=True)
class SymbolReconciliation:
    symbol: str
    status: str
    expected_qty: int | float  # what the run believes (signed: short < 0)
    broker_qty: int | float  # what the broker holds (signed)
    avg_entry_price: float | None  # the broker's, None without a position
    our_orders: tuple[str, ...]  # client order ids of the run's open orders (top level)
    foreign_orders: tuple[str, ...]  # client order ids of open orders that are not the run's

    @property
    def offset(self) -> int | float:
        """broker qty - expected qty."""
        return quantity(Decimal(str(self.broker_qty)) - Decimal(str(self.expected_qty)))


@dataclass(frozen=True)
class ReconcileReport:
    run_id: str
    symbols: tuple[SymbolReconciliation, ...]  # sorted by symbol

    @property
    def unclear_symbols(self) -> tuple[str, ...]:
        return tuple(s.symbol for s in self.symbols if s.status != MATCH)

    @property
    def clean(self) -> bool:
        return not self.unclear_symbols

    def get(self, symbol: str) -> SymbolReconciliation | None:
        return next((s for s in self.symbols if s.symbol == symbol), None)

    def counts(self) -> dict[str, int]:
        out = {status: 0 for status in STATUSES}
        for s in self.symbols:
            out[s.status] += 1
        return {k: v for k, v in out.items() if v}


def expected_by_symbol(positions: Mapping[tuple[str, str], Any]) -> dict[str, int | float]:
    """{(symbol, strategy_id): qty} -> {symbol: total qty}, nonzero totals only."""
    totals: dict[str, Decimal] = {}
    for (symbol, _strategy), qty in positions.items():
        totals[symbol] = totals.get(symbol, Decimal(0)) + Decimal(str(qty))
    return {s: quantity(q) for s, q in sorted(totals.items()) if q != 0}


def is_run_order(client_order_id: str | None, run_id: str, known_order_ids: Iterable[str] = ()) -> bool:
    """An order is the run's when its client_order_id starts with `{run_id}.`
    (connectors.alpaca.broker.client_order_id) or is one of `known_order_ids`."""
    if not client_order_id:
        return False
    return client_order_id.startswith(f"{run_id}.") or client_order_id in known_order_ids


def _order_keys(order: Any) -> set[str]:
    return {str(k) for k in (_field(order, "id"), _field(order, "client_order_id")) if k}


def reconcile(expected: Mapping[str, Any], broker_positions: Mapping[str, Any],
              open_orders: Iterable[Any], run_id: str, *,
              known_order_ids: Iterable[str] = ()) -> ReconcileReport:
    """Compare a run's belief with the broker's state.

    expected: {symbol: qty} the run believes it holds (zero entries ignored).
    broker_positions: {symbol: (qty, avg_entry_price)} (or a bare qty).
    open_orders: the broker's open orders, nested (OCO / bracket legs inside
      their parent's `legs`); mappings or alpaca-py `Order`s with symbol,
      client_order_id, side, qty, legs (and id).
    known_order_ids: client order ids that are the run's although they do not
      carry its prefix (e.g. hashed ids of very long run ids).
    """
    known = set(known_order_ids)
    orders = list(open_orders)
    # legs of the run's orders are the run's whatever their own ids (Alpaca names legs itself)
    our_legs: set[str] = set()
    for order in orders:
        if is_run_order(_field(order, "client_order_id"), run_id, known):
            for leg in _field(order, "legs") or ():
                our_legs |= _order_keys(leg)
    ours: dict[str, list[str]] = {}
    foreign: dict[str, list[str]] = {}
    for order in orders:
        symbol = str(_field(order, "symbol"))
        cid = str(_field(order, "client_order_id") or _field(order, "id") or "?")
        if is_run_order(_field(order, "client_order_id"), run_id, known) or _order_keys(order) & our_legs:
            ours.setdefault(symbol, []).append(cid)
        else:
            foreign.setdefault(symbol, []).append(cid)

    want = {s: quantity(q) for s, q in expected.items() if quantity(q) != 0}
    held: dict[str, tuple[int | float, float | None]] = {}
    for symbol, value in broker_positions.items():
        qty, avg = value if isinstance(value, (tuple, list)) else (value, None)
        qty = quantity(qty)
        if qty != 0:
            held[symbol] = (qty, None if avg is None else float(avg))

    rows = []
    for symbol in sorted(set(want) | set(held) | set(ours) | set(foreign)):
        exp = want.get(symbol, 0)
        got, avg = held.get(symbol, (0, None))
        if exp == got:
            status = FOREIGN_ORDER if foreign.get(symbol) else MATCH
        elif exp == 0:
            status = UNKNOWN_POSITION
        elif got == 0:
            status = MISSING_POSITION
        else:
            status = QTY_MISMATCH
        rows.append(SymbolReconciliation(symbol, status, exp, got, avg, tuple(ours.get(symbol, ())),
                                         tuple(foreign.get(symbol, ()))))
    return ReconcileReport(run_id, tuple(rows))


def decided_offset(decision: str, broker_qty: Any, expected_qty: Any) -> int | float | None:
    """The offset (broker - expected) a recorded decision accepts; None for `none`."""
    if decision == ADOPT:
        return quantity(Decimal(str(broker_qty)) - Decimal(str(expected_qty)))
    if decision == FLATTEN:
        return quantity(-Decimal(str(expected_qty)))
    return None


def blocked_symbols(report: ReconcileReport, decisions: Mapping[str, Mapping[str, Any]]) -> set[str]:
    """Unclear symbols no standing decision covers. `decisions`: per symbol
    the latest adopt or flatten row, with decision, broker_qty and
    expected_qty (a `none` row covers nothing)."""
    blocked = set()
    for symbol in report.unclear_symbols:
        row = decisions.get(symbol)
        offset = None if row is None else decided_offset(row["decision"], row["broker_qty"],
                                                         row["expected_qty"])
        if offset is None or offset != report.get(symbol).offset:
            blocked.add(symbol)
    return blocked


def _num(value: Any) -> str:
    return "-" if value is None else (f"{value:,}" if isinstance(value, int) else f"{value:,.4g}")


def format_report(report: ReconcileReport) -> str:
    """A table, one line per symbol, then a summary line."""
    head = f"reconciliation of run {report.run_id}"
    if not report.symbols:
        return f"{head}\nno positions or open orders on either side\nall clear: nothing held, nothing unclear"
    cols = ("symbol", "status", "expected", "broker", "avg_price", "our_orders", "foreign_orders")
    rows = [(s.symbol, s.status, _num(s.expected_qty), _num(s.broker_qty),
             "-" if s.avg_entry_price is None else f"{s.avg_entry_price:.2f}",
             str(len(s.our_orders)), ",".join(s.foreign_orders) or "-") for s in report.symbols]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    right = {2, 3, 4, 5}

    def line(values) -> str:
        return "  ".join(v.rjust(w) if i in right else v.ljust(w)
                         for i, (v, w) in enumerate(zip(values, widths))).rstrip()

    counts = ", ".join(f"{n} {status}" for status, n in report.counts().items())
    unclear = report.unclear_symbols
    summary = (f"{len(report.symbols)} symbol(s): {counts}; "
               + (f"unclear: {', '.join(unclear)}" if unclear else "all clear"))
    return "\n".join([head, line(cols), *(line(r) for r in rows), summary])
