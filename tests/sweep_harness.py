"""Runs the operators of a run and of a sweep over the same source items,
without Bytewax or ClickHouse: the file source's Chunks and Watermarks (and
optional kill-switch Controls) -> symbol stage -> PortfolioStage."""
from __future__ import annotations

from connectors.files.barfile import BarFileSource, frame_to_columns
from connectors.files.synthetic import generate_bars
from operators.columnar import ColumnarSymbolState, step_block
from operators.config_book import new_book
from operators.ordering import Chunk, Control, PortfolioStage, SymbolResult, Watermark
from operators.portfolio import Portfolio
from operators.signal_plan import SignalPlan, step_union
from operators.signals import SignalRules
from operators.types import SymbolOutput


def source_items(symbols: int = 4, days: int = 3, seed: int = 3, partitions: int = 1,
                 block_rows: int = 700) -> list:
    cols = frame_to_columns(generate_bars(symbols, days, seed))
    src = BarFileSource(cols, partitions=partitions, block_rows=block_rows)
    items = []
    for p in src.partition_ids():
        part = src.build_part("t", str(p), None)
        try:
            while True:
                items.extend(part.next_batch())
        except StopIteration:
            pass
    return items


def with_controls(items: list, controls: list) -> list:
    """Insert (before_seq, control_id, action, flatten) controls into
    partition 0, renumbering its seq; a control's time is the partition's
    watermark at its position (as the Kafka source stamps it)."""
    out, seq, watermark = [], 0, 0
    pending = sorted(controls)
    for item in items:
        while pending and pending[0][0] <= seq and item.partition == 0:
            _, cid, action, flatten = pending.pop(0)
            out.append(Control(0, seq, cid, action, flatten, watermark, "test", "why"))
            seq += 1
        if item.partition == 0:
            item = _renumber(item, seq)
            seq += 1
            if isinstance(item, Watermark):
                watermark = item.ts
        out.append(item)
    return out


def _renumber(item, seq):
    if isinstance(item, Chunk):
        return Chunk(item.partition, seq, item.symbol, item.bars, item.origins, item.origin_prefix)
    return Watermark(item.partition, seq, item.ts)


def run_alone(items: list, cfg, partitions=(0,)):
    """A backtest of one configuration: (symbol outputs, portfolio outputs)."""
    rules = SignalRules.from_config(cfg)
    stage = PortfolioStage.new(Portfolio.new(cfg), partitions)
    return _run(items, stage, lambda st, c, out: step_block(st, rules, c.bars, c.origins, "row ", out),
                ColumnarSymbolState)


def run_book(items: list, members: list, plan: SignalPlan, *, daily: bool, detail: bool = True,
             partitions=(0,)):
    """`members` [(config_id, cfg, route)] through one book: (symbol outputs,
    stage outputs, sweep outputs)."""
    book = new_book(members, daily=daily, detail=detail)
    stage = PortfolioStage.new(book, partitions)
    sweeps: list = []
    sym, outs = _run(items, stage, lambda st, c, out: step_union(st, plan, c.bars, c.origins, "row ", out),
                     plan.new_state, (lambda final: sweeps.append(book.take(final))) if daily else None)
    return sym, outs, sweeps, book


def _run(items, stage, step, new_state, collect=None):
    states, sym_outs, outs = {}, [], []
    batch = []
    for item in items:
        if isinstance(item, Chunk):
            out = SymbolOutput()
            st = states.get(item.symbol)
            if st is None:
                st = states[item.symbol] = new_state()
            acc = step(st, item, out)
            if len(acc):
                out.blocks.append(acc)
            sym_outs.append(out)
            batch.append(SymbolResult(item.partition, item.seq, out))
        else:
            batch.append(item)
            if isinstance(item, Watermark):
                outs.append(stage.on_items(batch))
                batch = []
                if collect:
                    collect(False)
    if batch:
        outs.append(stage.on_items(batch))
    outs.append(stage.flush())
    if collect:
        collect(True)
    return sym_outs, outs
