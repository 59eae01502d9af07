"""Spec section 1 (bars): validation, dead letters, duplicates and late bars,
and the (timestamp, symbol) application order across partitions."""
from __future__ import annotations

import math
from datetime import datetime, timezone

import pytest

from operators.bars import RECENT_MINUTES, BarGate
from operators.columnar import ColumnarSymbolState, step_block
from operators.config import StrategyConfig, TradingConfig
from operators.ordering import END_OF_TIME, PortfolioStage, SymbolResult, Watermark, block_from_bars
from operators.portfolio import Portfolio
from operators.signals import SignalRules
from operators.symbol_stage import SymbolState, step_symbol
from operators.types import BUY, Bar, Signal, SymbolOutput

T0 = int(datetime(2024, 3, 5, 14, 30, tzinfo=timezone.utc).timestamp())  # 09:30 New York
CFG = TradingConfig(strategies=(StrategyConfig(fast=2, slow=3, confidence=0.7),))


def bar(i, o=100.0, h=None, lo=None, c=None, sym="AAA", v=1000.0) -> Bar:
    c = o if c is None else c
    h = max(o, c) if h is None else h
    lo = min(o, c) if lo is None else lo
    return Bar(sym, T0 + 60 * i, o, h, lo, c, v)


class Stage:
    """One symbol's stage, bar-at-a-time (`step_symbol`) or columnar
    (`step_block`, the flow's hot path): every rule below runs on both."""

    def __init__(self, kind):
        self.kind = kind
        self.rules = SignalRules.from_config(CFG)
        self.state = SymbolState.new(self.rules) if kind == "scalar" else ColumnarSymbolState()
        self.rows = 0

    def run(self, bars):
        """Apply a chunk; returns (accepted (ts, close) pairs, dead-letter reasons, output)."""
        out = SymbolOutput()
        origins = list(range(self.rows, self.rows + len(bars)))
        self.rows += len(bars)
        if self.kind == "scalar":
            step_symbol(self.state, bars, origins, "row ", out)
            accepted = [(b.ts, b.close) for b in out.bars]
        else:
            block = step_block(self.state, self.rules, block_from_bars(bars), origins, "row ", out)
            accepted = list(zip(block.ts.tolist(), block.close.tolist()))
        return accepted, [d.reason for d in out.dead_letters], out

    def sma_sum(self, n):
        """Sum of the last n applied closes in micro-dollars, None while undefined."""
        if self.kind == "scalar":
            return self.state.engine.smas.sum_of(n)
        return None if self.state.count < n else int(self.state.tail[-n:].sum())

    @property
    def applied(self):
        return self.state.engine.smas.count if self.kind == "scalar" else self.state.count


@pytest.fixture(params=["scalar", "columnar"])
def stage(request):
    return Stage(request.param)


# ------------------------------------------------------------- validation
def test_valid_bar_is_accepted_and_feeds_the_sma(stage):
    accepted, dead, _ = stage.run([bar(0, 10.0), bar(1, 11.0), bar(2, 12.0)])
    assert len(accepted) == 3 and dead == []
    # SMA(3) sum in micro-dollars: 10 + 11 + 12 = 33 -> 33_000_000
    assert stage.sma_sum(3) == 33_000_000


@pytest.mark.parametrize("field", ["open", "high", "low", "close"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 0.0, -5.0])
def test_price_not_finite_or_not_positive_is_invalid_price(stage, field, value):
    b = bar(0, 10.0)
    setattr(b, field, value)
    accepted, dead, _ = stage.run([b])
    assert dead == ["invalid_price"] and accepted == [] and stage.applied == 0


def test_high_below_max_of_open_and_close_is_invalid_high(stage):
    # max(open 10, close 10.5) = 10.5 > high 10.4
    assert stage.run([bar(0, 10.0, h=10.4, lo=9.9, c=10.5)])[1] == ["invalid_high"]


def test_low_above_min_of_open_and_close_is_invalid_low(stage):
    # min(open 10, close 10.5) = 10 < low 10.1
    assert stage.run([bar(0, 10.0, h=10.6, lo=10.1, c=10.5)])[1] == ["invalid_low"]


def test_high_equal_to_max_and_low_equal_to_min_is_valid(stage):
    accepted, dead, _ = stage.run([bar(0, 10.0, h=10.5, lo=10.0, c=10.5)])
    assert dead == [] and len(accepted) == 1


@pytest.mark.parametrize("volume", [-1.0, math.nan, math.inf])
def test_negative_or_not_finite_volume_is_invalid_volume(stage, volume):
    assert stage.run([bar(0, 10.0, v=volume)])[1] == ["invalid_volume"]


def test_zero_volume_is_valid(stage):
    assert len(stage.run([bar(0, 10.0, v=0.0)])[0]) == 1


@pytest.mark.parametrize("symbol", ["A", "AAPL", "ABCDEF", "X1", "A12345", "BRK.B", "BF-B", "BRK/A", "ABC.XY1"])
def test_symbol_with_optional_class_suffix_is_valid(stage, symbol):
    assert len(stage.run([bar(0, 10.0, sym=symbol)])[0]) == 1, symbol


@pytest.mark.parametrize("symbol", [
    "", "aapl", "Aapl", "1ABC", "ABCDEFG", "BRK.ABCD", "BRK_B", "BRK.", "BRK.b", ".B",
    "BRK.B.C", "AAPL ", "AAPL\n",  # a trailing newline must not slip past `$`
])
def test_bad_symbol_is_invalid_symbol(stage, symbol):
    assert stage.run([bar(0, 10.0, sym=symbol)])[1] == ["invalid_symbol"], repr(symbol)


def test_non_string_symbol_is_invalid_symbol_not_a_crash(stage):
    assert stage.run([bar(0, 10.0, sym=None)])[1] == ["invalid_symbol"]


def test_pinned_choice_bar_not_on_a_whole_minute_is_invalid_timestamp(stage):
    b = bar(0, 10.0)
    b.ts += 30
    assert stage.run([b])[1] == ["invalid_timestamp"]


def test_dead_letter_carries_symbol_time_reason_source_and_payload(stage):
    _, _, out = stage.run([bar(0, 10.0), bar(1, 10.0, v=-1.0)])
    (d,) = out.dead_letters
    assert (d.symbol, d.ts, d.reason, d.source) == ("AAA", T0 + 60, "invalid_volume", "row 1")
    assert '"v":-1.0' in d.payload


def test_invalid_bar_counts_for_neither_duplicate_nor_late_and_never_feeds_the_sma(stage):
    # minute 1 arrives invalid first, then valid: the valid one is not a duplicate.
    # An invalid minute 5 does not make a later valid minute 2 late either.
    accepted, dead, _ = stage.run([bar(0, 10.0), bar(1, math.nan), bar(1, 11.0), bar(5, 0.0), bar(2, 12.0)])
    assert dead == ["invalid_price", "invalid_price"]
    assert [t for t, _ in accepted] == [T0, T0 + 60, T0 + 120]
    # SMA(3) = 10 + 11 + 12 = 33 (micro-dollars: 33e6); 3 bars applied, not 5
    assert stage.applied == 3 and stage.sma_sum(3) == 33_000_000


# ------------------------------------------------------- duplicates, late
def test_duplicate_bar_is_ignored_and_dead_lettered(stage):
    accepted, dead, _ = stage.run([bar(0, 10.0), bar(1, 11.0), bar(1, 50.0)])  # same minute, other prices
    assert dead == ["duplicate"]
    assert [c for _, c in accepted] == [10.0, 11.0]  # the first one wins
    assert stage.sma_sum(2) == 21_000_000  # 10 + 11, not 10 + 50
    if stage.kind == "scalar":
        assert stage.state.gate.duplicate_count == 1


def test_late_bar_older_than_an_accepted_bar_is_ignored_and_counted(stage):
    # minutes 0, 2 accepted, then minute 1 arrives: older than minute 2 -> late
    accepted, dead, _ = stage.run([bar(0, 10.0), bar(2, 12.0), bar(1, 11.0)])
    assert dead == ["late"] and len(accepted) == 2
    assert stage.applied == 2 and stage.sma_sum(2) == 22_000_000  # 10 + 12
    if stage.kind == "scalar":
        assert stage.state.gate.late_count == 1


def test_arrival_order_decides_across_chunks(stage):
    # The same rules hold when the symbol's bars come in several chunks.
    stage.run([bar(0, 10.0), bar(3, 13.0)])
    accepted, dead, _ = stage.run([bar(2, 12.0), bar(3, 13.0), bar(4, 14.0)])
    assert dead == ["late", "duplicate"] and [t for t, _ in accepted] == [T0 + 240]


def test_late_valid_bar_does_not_raise_the_bar_for_later_ones(stage):
    # 0, 5 accepted; 3 is late; 4 is late too (older than 5), 6 is accepted
    accepted, dead, _ = stage.run([bar(0, 1.0), bar(5, 1.0), bar(3, 1.0), bar(4, 1.0), bar(6, 1.0)])
    assert dead == ["late", "late"] and [t for t, _ in accepted] == [T0, T0 + 300, T0 + 360]


def test_pinned_choice_old_repeat_is_named_duplicate_while_remembered_then_late(stage):
    # Both are ignored; only the name differs. A minute accepted within the
    # last RECENT_MINUTES accepted minutes is a duplicate, an older one late.
    stage.run([bar(i, 10.0) for i in range(RECENT_MINUTES + 1)])
    _, dead, _ = stage.run([bar(RECENT_MINUTES, 10.0), bar(1, 10.0), bar(0, 10.0)])
    assert dead == ["duplicate", "duplicate", "late"]
    gate = BarGate()  # the scalar gate says the same, bar by bar
    for i in range(RECENT_MINUTES + 1):
        assert gate.admit(bar(i, 10.0)) is None
    assert [gate.admit(bar(i, 10.0)) for i in (RECENT_MINUTES, 1, 0)] == ["duplicate", "duplicate", "late"]


# ------------------------------------------------------------- ordering
class Recorder:
    """Stands in for Portfolio: records the order bars are applied in."""

    def __init__(self):
        self.applied = []

    def apply(self, symbol, ts, open_, high, low, close, signals, out):
        self.applied.append((ts, symbol))

    def close_minute(self, out):
        pass


def result(partition, seq, *bars):
    out = SymbolOutput()
    out.bars.extend(bars)
    return SymbolResult(partition, seq, out)


def test_portfolio_stage_applies_bars_in_ts_symbol_order_whatever_the_partition_interleaving():
    rec = Recorder()
    stage = PortfolioStage.new(rec, [0, 1])
    p0 = [result(0, 0, bar(0, sym="MSFT"), bar(1, sym="MSFT")),
          Watermark(0, 1, T0 + 120),
          result(0, 2, bar(2, sym="MSFT")),
          Watermark(0, 3, END_OF_TIME)]
    p1 = [result(1, 0, bar(1, sym="BRK.B"), bar(2, sym="BRK.B")),
          result(1, 1, bar(0, sym="AAA"), bar(1, sym="AAA"), bar(2, sym="AAA")),
          Watermark(1, 2, T0 + 60),
          Watermark(1, 3, END_OF_TIME)]
    # Delivered out of seq order: nothing may be applied before its partition's
    # earlier items and both partitions' watermarks have arrived.
    stage.on_items([p0[2], p1[1], p0[3]])
    assert rec.applied == []  # p0 waits for seq 0, 1; p1 for seq 0
    stage.on_items([p0[0], p0[1]])  # p0 watermark T0+120, p1 still -1
    assert rec.applied == []
    stage.on_items([p1[0], p1[2]])  # p1 seq 0..2 in order: global watermark = min(T0+120, T0+60)
    assert rec.applied == [(T0, "AAA"), (T0, "MSFT")]
    stage.on_items([p1[3]])  # global watermark = T0+120 (p0): minute 1 complete
    stage.flush()
    assert rec.applied == [
        (T0, "AAA"), (T0, "MSFT"),
        (T0 + 60, "AAA"), (T0 + 60, "BRK.B"), (T0 + 60, "MSFT"),
        (T0 + 120, "AAA"), (T0 + 120, "BRK.B"), (T0 + 120, "MSFT"),
    ]


def test_bar_behind_the_applied_watermark_is_dead_lettered_late_never_applied():
    rec = Recorder()
    stage = PortfolioStage.new(rec, [0])
    stage.on_items([result(0, 0, bar(5)), Watermark(0, 1, T0 + 600)])
    out = stage.on_items([result(0, 2, bar(3, sym="BBB"))])  # the source broke its promise
    assert [d.reason for d in out.dead_letters] == ["late"]
    stage.flush()
    assert rec.applied == [(T0 + 300, "AAA")]


def test_same_minute_bars_apply_in_symbol_order_so_the_first_symbol_gets_the_last_slot():
    # max_positions 1: BUYs on BBB and AAA in the same minute. Whatever the
    # delivery order, AAA (first in symbol order) takes the slot and BBB is
    # rejected with max_positions.
    cfg = TradingConfig(strategies=CFG.strategies, risk={"max_positions": 1})
    for first, second in (("AAA", "BBB"), ("BBB", "AAA")):
        stage = PortfolioStage.new(Portfolio.new(cfg), [0, 1])
        items = []
        for part, sym in ((0, first), (1, second)):
            out = SymbolOutput()
            b = bar(0, 100.0, sym=sym)
            out.bars.append(b)
            out.signals[b.ts] = [Signal("sma_2_3", sym, BUY, b.ts, 100.0, 0.7, 0.02, 0.01, 2.0)]
            items += [SymbolResult(part, 0, out), Watermark(part, 1, END_OF_TIME)]
        out = stage.on_items(items)
        assert [o.symbol for o in out.orders] == ["AAA"]
        assert [(r.symbol, r.reason) for r in out.rejections] == [("BBB", "max_positions")]
