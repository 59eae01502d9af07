"""An independent, plain batch implementation of
/work/shared/spec/trading-semantics.md, written from the spec text.

It deliberately shares no code with operators.bars / sma / signals /
portfolio / ordering: only the event dataclasses (operators.types) and the
configuration model (operators.config). Nothing here is incremental or
optimised: SMAs are re-summed from the close history as Fractions, positions
live in plain dicts, and the portfolio is one loop over the accepted bars
sorted by (timestamp, symbol).

Where the spec is silent, the reference follows the choices documented in
docs/trading-decisions.md (each one marked "pinned" below), so that the
streaming operators can be compared with it field by field.

v2: strategy entries have a type (`sma_cross`, `panic_rebound`), an id and
their own exit settings. The panic rule (section 2a) is evaluated the naive
way: for every bar, its day's bars are counted and its windows re-scanned.

    result = run_reference(raw_bars_in_arrival_order, config)
    result.trades / orders / fills / rejections / dead / filtered / signals
"""
from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from fractions import Fraction
from zoneinfo import ZoneInfo

from operators.config import TradingConfig
from operators.types import BUY, SELL, Fill, Order, Rejection, Signal, Trade

NY = ZoneInfo("America/New_York")

# 1-6 upper-case letters or digits starting with a letter, optionally a class
# suffix: one of . / - and 1-3 upper-case letters or digits.
_SYMBOL = re.compile(r"[A-Z][A-Z0-9]{0,5}(?:[./-][A-Z0-9]{1,3})?")


@dataclass
class ReferenceResult:
    accepted: list = field(default_factory=list)  # Bars, arrival order
    dead: list = field(default_factory=list)  # (symbol, ts, reason), arrival order
    signals: list = field(default_factory=list)  # Signals that passed the filters
    filtered: list = field(default_factory=list)  # Signals dropped, with filtered_reason
    orders: list = field(default_factory=list)
    fills: list = field(default_factory=list)
    trades: list = field(default_factory=list)
    rejections: list = field(default_factory=list)


# --------------------------------------------------------------------------
# Section 1: bars
# --------------------------------------------------------------------------
def invalid_reason(bar) -> str | None:
    sym = bar.symbol
    if not isinstance(sym, str) or _SYMBOL.fullmatch(sym) is None:
        return "invalid_symbol"
    if bar.ts % 60 != 0:  # pinned: minute bars start on the minute
        return "invalid_timestamp"
    prices = (bar.open, bar.high, bar.low, bar.close)
    for p in prices:
        if not math.isfinite(p) or p <= 0:
            return "invalid_price"
    if bar.high < max(bar.open, bar.close):
        return "invalid_high"
    if bar.low > min(bar.open, bar.close):
        return "invalid_low"
    if not math.isfinite(bar.volume) or bar.volume < 0:
        return "invalid_volume"
    return None


def validate(raw_bars, result: ReferenceResult) -> None:
    accepted_ts = defaultdict(set)  # symbol -> every accepted timestamp
    newest = {}  # symbol -> newest accepted timestamp
    for bar in raw_bars:
        reason = invalid_reason(bar)
        if reason is None:
            seen = accepted_ts[bar.symbol]
            if bar.ts in seen:
                reason = "duplicate"
            elif bar.symbol in newest and bar.ts < newest[bar.symbol]:
                reason = "late"
        if reason is not None:
            result.dead.append((str(bar.symbol), bar.ts, reason))
            continue
        accepted_ts[bar.symbol].add(bar.ts)
        newest[bar.symbol] = bar.ts
        result.accepted.append(bar)


# --------------------------------------------------------------------------
# Section 2: indicators and signals
# --------------------------------------------------------------------------
def sma(closes_micros: list, k: int, n: int):
    """Exact mean of the n closes ending at index k, None while undefined."""
    if k + 1 < n:
        return None
    return Fraction(sum(closes_micros[k + 1 - n:k + 1]), n)


def relation(closes_micros, k, fast, slow):
    """sign(SMA_fast - SMA_slow) at index k, None unless both are defined."""
    if k < 0:
        return None
    f, s = sma(closes_micros, k, fast), sma(closes_micros, k, slow)
    if f is None or s is None:
        return None
    return (f > s) - (f < s)


PANIC_EXIT_DEFAULTS = {"take_profit_pct": 0.015, "stop_loss_pct": 0.0075, "time_stop_minutes": 240}
EXIT_NAMES = ("take_profit_pct", "stop_loss_pct", "time_stop_minutes", "time_stop_min_move_pct")


def strategy_id(entry) -> str:
    if entry.id:
        return entry.id
    if entry.type == "panic_rebound":
        return f"panic_{entry.drop_window}_{round(entry.min_drop_pct * 10_000)}"
    return f"sma_{entry.fast}_{entry.slow}"


def exit_settings(cfg: TradingConfig) -> dict:
    """strategy id -> {setting: value}: its own, else its type's default, else the top level."""
    out = {"consensus": {n: getattr(cfg.exit, n) for n in EXIT_NAMES}}
    for e in cfg.strategies:
        values = {}
        for n in EXIT_NAMES:
            v = getattr(e.exit, n)
            if v is None and e.type == "panic_rebound":
                v = PANIC_EXIT_DEFAULTS.get(n)
            values[n] = getattr(cfg.exit, n) if v is None else v
        out[strategy_id(e)] = values
    return out


def configuration_order(cfg: TradingConfig) -> list:
    if cfg.signals.aggregation == "independent":
        return [strategy_id(e) for e in cfg.strategies]
    sma = [e for e in cfg.strategies if e.type == "sma_cross"]
    return (["consensus"] if sma else []) + [strategy_id(e) for e in cfg.strategies if e.type != "sma_cross"]


def make_signal(cfg: TradingConfig, sid, bar, side, confidence, kind="sma_cross") -> Signal:
    x = exit_settings(cfg)[sid]
    tp, sl = x["take_profit_pct"], x["stop_loss_pct"]
    rr = tp / sl
    sig = Signal(sid, bar.symbol, side, bar.ts, bar.close, confidence, tp, sl, rr, None, kind)
    if side == BUY:
        if confidence < cfg.signals.min_confidence:
            sig.filtered_reason = "low_confidence"
        elif rr < cfg.signals.min_risk_reward:
            sig.filtered_reason = "low_risk_reward"
    return sig


def symbol_signals(cfg: TradingConfig, bars: list) -> list:
    """Every signal (filtered ones too) of one symbol's accepted bars: in bar
    order, a bar's signals in configuration order."""
    found = sma_signals(cfg, bars)
    for e in cfg.strategies:
        if e.type == "panic_rebound":
            found += panic_signals(cfg, e, bars)
    rank = {sid: i for i, sid in enumerate(configuration_order(cfg))}
    return sorted(found, key=lambda s: (s.ts, rank[s.strategy_id]))


def panic_signals(cfg: TradingConfig, e, bars: list) -> list:
    """Section 2a, literally: bars numbered 1..k within their New York date."""
    n, m = e.drop_window, e.volume_window
    drop_bps = round(e.min_drop_pct * 10_000)
    mult_c = round(e.volume_mult * 100)
    sid = strategy_id(e)
    dates = [ny_date(b.ts) for b in bars]

    def micros(x):
        return round(x * 10**6)

    def day_bars(i):  # today's bars up to and including bar i, numbered 1..k (list index k-1)
        return [b for b, d in zip(bars[:i + 1], dates[:i + 1]) if d == dates[i]]

    def panic(today, j):  # bar j (1-based) of `today`
        if j < n + m:
            return False
        drop_window = today[j - n:j]  # bars j-N+1 .. j
        baseline = today[j - n - m:j - n]  # bars j-N-M+1 .. j-N
        peak = max(micros(b.high) for b in drop_window)
        drop = micros(today[j - 1].close) * 10_000 <= peak * (10_000 - drop_bps)
        spike = (max(round(b.volume * 1000) for b in drop_window) * m * 100
                 >= mult_c * sum(round(b.volume * 1000) for b in baseline))
        return drop and spike

    out = []
    for i, bar in enumerate(bars):
        today = day_bars(i)
        k = len(today)
        if k >= n + m + 1 and panic(today, k - 1):
            prev = today[k - 2]
            if micros(bar.close) > micros(bar.open) and micros(bar.close) > micros(prev.close):
                out.append(make_signal(cfg, sid, bar, BUY, e.confidence, "panic_rebound"))
    return out


def sma_signals(cfg: TradingConfig, bars: list) -> list:
    """Every sma_cross signal (filtered ones too) of one symbol's accepted bars, in order."""
    pairs = [e for e in cfg.strategies if e.type == "sma_cross"]
    if not pairs:
        return []
    closes = [round(b.close * 10**6) for b in bars]
    agg = cfg.signals.aggregation
    # pinned: weights are the confidences' decimal text as exact fractions
    weight = [Fraction(str(p.confidence)) for p in pairs]
    prev_score = None
    out = []
    for k, bar in enumerate(bars):
        now = [relation(closes, k, p.fast, p.slow) for p in pairs]
        before = [relation(closes, k - 1, p.fast, p.slow) for p in pairs]
        if agg == "independent":
            for p, b, n in zip(pairs, before, now):
                if b is None or n is None:
                    continue
                if b <= 0 and n > 0:
                    out.append(make_signal(cfg, strategy_id(p), bar, BUY, p.confidence))
                elif b >= 0 and n < 0:
                    out.append(make_signal(cfg, strategy_id(p), bar, SELL, p.confidence))
        elif agg == "majority":
            above = [p for p, n in zip(pairs, now) if n is not None and n > 0]
            crossed = any(b is not None and n is not None and b <= 0 < n for b, n in zip(before, now))
            if crossed and len(above) >= cfg.signals.min_agree:
                # pinned: consensus confidence = mean of the pairs above
                conf = sum(p.confidence for p in above) / len(above)
                out.append(make_signal(cfg, "consensus", bar, BUY, conf))
            elif len(above) < cfg.signals.min_agree:
                # The spec's level rule, literally: SELL on every bar without
                # agreement (the operators emit it only on the bar agreement
                # is lost; trades must come out the same). pinned: its
                # confidence is the mean of all pairs.
                conf = sum(p.confidence for p in pairs) / len(pairs)
                out.append(make_signal(cfg, "consensus", bar, SELL, conf))
        else:  # weighted
            defined = [(w, n, p) for w, n, p in zip(weight, now, pairs) if n is not None]
            if not defined:
                continue
            score = sum(w * n for w, n, _ in defined) / sum(w for w, _, _ in defined)
            threshold = Fraction(str(cfg.signals.weighted_threshold))
            if prev_score is not None:  # pinned: the first defined score crosses nothing
                if prev_score <= threshold < score:
                    above = [p for _, n, p in defined if n > 0]
                    conf = sum(p.confidence for p in above) / len(above)
                    out.append(make_signal(cfg, "consensus", bar, BUY, conf))
                elif prev_score >= 0 > score:
                    conf = sum(p.confidence for p in pairs) / len(pairs)
                    out.append(make_signal(cfg, "consensus", bar, SELL, conf))
            prev_score = score
    return out


# --------------------------------------------------------------------------
# Sections 3-5: positions, orders and fills, sizing and risk
# --------------------------------------------------------------------------
def ny_date(ts: int):
    return datetime.fromtimestamp(ts, tz=timezone.utc).astimezone(NY).date()


def run_reference(raw_bars, cfg: TradingConfig) -> ReferenceResult:
    res = ReferenceResult()
    validate(raw_bars, res)

    by_symbol = defaultdict(list)
    for b in res.accepted:
        by_symbol[b.symbol].append(b)
    bar_signals = defaultdict(list)  # (symbol, ts) -> passed signals, config order
    for sym, bars in by_symbol.items():
        for sig in symbol_signals(cfg, bars):
            if sig.filtered_reason is None:
                bar_signals[(sym, sig.ts)].append(sig)
                res.signals.append(sig)
            else:
                res.filtered.append(sig)

    ex, risk, exe = cfg.exit, cfg.risk, cfg.execution
    strategy_ids = configuration_order(cfg)
    exits = exit_settings(cfg)  # each strategy's stop, target and time stop

    def buy_price(o):
        return o * (1 + exe.slippage_bps / 10_000)

    def sell_price(p):
        return p * (1 - exe.slippage_bps / 10_000)

    cash = float(risk.initial_cash)
    positions = {}  # (symbol, strategy) -> dict, in fill order
    pending = defaultdict(list)  # symbol -> orders to fill at its next open
    last_close = {}
    day = None
    sod_equity = None
    losses_in_row = 0
    day_halt = None

    def equity():
        value = cash
        for (sym, _), pos in positions.items():
            value += pos["qty"] * last_close[sym]
        return value

    def close_position(pos, price_before_slippage, ts, reason, order_id):
        nonlocal cash, losses_in_row, day_halt
        fill = sell_price(price_before_slippage)
        commission = pos["qty"] * exe.commission_per_share
        cash += pos["qty"] * fill - commission
        del positions[(pos["symbol"], pos["strategy"])]
        res.fills.append(Fill(order_id, pos["strategy"], pos["symbol"], SELL, pos["qty"], ts,
                              fill, commission, reason))
        commissions = pos["commission"] + commission
        pnl = pos["qty"] * (fill - pos["fill"]) - commissions
        res.trades.append(Trade(
            f"{pos['strategy']}.{pos['symbol']}.{pos['entry_time']}", pos["symbol"],
            pos["strategy"], pos["qty"], pos["entry_time"], pos["fill"], ts, fill, reason,
            pnl, fill / pos["fill"] - 1, commissions,
        ))
        if pnl > 0:
            losses_in_row = 0
        else:
            losses_in_row += 1
            if losses_in_row >= risk.max_consecutive_losses and day_halt is None:
                day_halt = "daily_loss_streak"

    for bar in sorted(res.accepted, key=lambda b: (b.ts, b.symbol)):
        sym, ts = bar.symbol, bar.ts
        d = ny_date(ts)
        if d != day:  # a new trading day starts before step 1 of its first bar
            day = d
            sod_equity = equity()
            losses_in_row = 0
            day_halt = None

        # 1. the symbol's orders from its previous bar fill at this open
        for o in pending.pop(sym, []):
            if o.side == BUY:
                fill = buy_price(bar.open)
                commission = o.qty * exe.commission_per_share
                cash -= o.qty * fill + commission
                positions[(sym, o.strategy_id)] = {
                    "symbol": sym, "strategy": o.strategy_id, "qty": o.qty, "fill": fill,
                    "entry_time": ts, "commission": commission,
                    "stop": fill * (1 - exits[o.strategy_id]["stop_loss_pct"]),
                    "target": fill * (1 + exits[o.strategy_id]["take_profit_pct"]),
                    "hwm": fill, "trailed": False, "exit_queued": False,
                }
                res.fills.append(Fill(o.order_id, o.strategy_id, sym, BUY, o.qty, ts, fill,
                                      commission, "entry"))
            else:
                close_position(positions[(sym, o.strategy_id)], bar.open, ts, o.intent, o.order_id)
        last_close[sym] = bar.close

        sigs = bar_signals.get((sym, ts), [])
        sell_ids = {s.strategy_id for s in sigs if s.side == SELL}

        # 2. exits, configuration order
        for sid in strategy_ids:
            pos = positions.get((sym, sid))
            if pos is None or pos["exit_queued"]:
                continue
            stop_reason = "trailing_stop" if pos["trailed"] else "stop_loss"
            hit = None
            if bar.open <= pos["stop"]:
                hit = (bar.open, stop_reason, "stop")
            elif bar.open >= pos["target"]:
                hit = (bar.open, "take_profit", "target")
            elif bar.low <= pos["stop"]:
                hit = (pos["stop"], stop_reason, "stop")
            elif bar.high >= pos["target"]:
                hit = (pos["target"], "take_profit", "target")
            if hit is not None:
                price, reason, leg = hit
                # pinned: a bracket leg is an order decided and filled on this bar
                oid = f"{sid}.{sym}.{ts}.{leg}"
                res.orders.append(Order(oid, sid, sym, SELL, pos["qty"], ts, price, reason))
                close_position(pos, price, ts, reason, oid)
                continue
            if ex.trailing_stop:
                pos["hwm"] = max(pos["hwm"], bar.high)
                if pos["hwm"] >= pos["fill"] * (1 + ex.trailing_activation_pct):
                    new_stop = pos["hwm"] * (1 - ex.trailing_pct)
                    if new_stop > pos["stop"]:
                        pos["stop"] = new_stop
                        pos["trailed"] = True
            intent = None
            if sid in sell_ids:
                intent = "signal"
            elif (ts - pos["entry_time"] >= exits[sid]["time_stop_minutes"] * 60
                  and abs(bar.close / pos["fill"] - 1) < exits[sid]["time_stop_min_move_pct"]):
                intent = "time_stop"
            if intent is not None:
                o = Order(f"{sid}.{sym}.{ts}.exit", sid, sym, SELL, pos["qty"], ts, bar.close, intent)
                res.orders.append(o)
                pending[sym].append(o)
                pos["exit_queued"] = True

        if day_halt is None and equity() <= sod_equity * (1 - risk.max_daily_drawdown_pct):
            day_halt = "daily_drawdown"

        # 3. BUY signals through risk and sizing, configuration order
        for s in sigs:
            if s.side != BUY:
                continue
            key = (sym, s.strategy_id)
            if key in positions or any(o.side == BUY and o.strategy_id == s.strategy_id
                                       for o in pending[sym]):
                continue  # BUY when long does nothing
            pending_entries = [o for orders in pending.values() for o in orders if o.side == BUY]
            reason = None
            # pinned precedence: halt, the day's halt, the two caps, then size
            if day_halt is not None:
                reason = day_halt
            elif len(positions) + len(pending_entries) >= risk.max_positions:
                reason = "max_positions"
            elif (sum(1 for (ps, _) in positions if ps == sym)
                  + sum(1 for o in pending_entries if o.symbol == sym)
                  >= risk.max_positions_per_symbol):
                reason = "max_positions_per_symbol"
            qty = 0
            if reason is None:
                eq = equity()
                available = cash - sum(o.qty * o.decision_price for o in pending_entries)
                price = s.price
                qty = math.floor(min(
                    eq * risk.risk_per_trade_pct / (price * exits[s.strategy_id]["stop_loss_pct"]),
                    eq * risk.max_position_pct / price,
                    available / price,
                ))
                if qty < 1:
                    reason = "size_zero"
            if reason is not None:
                res.rejections.append(Rejection(s.strategy_id, sym, ts, reason, s.price))
                continue
            o = Order(f"{s.strategy_id}.{sym}.{ts}.entry", s.strategy_id, sym, BUY, qty, ts,
                      s.price, "entry")
            res.orders.append(o)
            pending[sym].append(o)
    return res
