"""The one dataflow every mode runs: backtest, replay and live differ only in
the source and the sinks passed in.

  source (Chunk | Watermark, per partition)
    -> key by symbol -> symbol stage (validation, SMA windows, signals)
    -> key "portfolio" (with the watermarks) -> portfolio stage
       (event-time ordering, exits, risk, simulated broker)
  symbol outputs (bars, signals, dead letters) and portfolio outputs
  (orders, fills, trades, equity, rejections) go to the sinks.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulBatchLogic

from operators.columnar import BarBlock, ColumnarSymbolState, snapshot_state, step_block
from operators.compiled_portfolio import CompiledPortfolio
from operators.config import TradingConfig
from operators.live_portfolio import BrokerPortfolio
from operators.ordering import Chunk, PortfolioStage, SymbolResult, block_from_bars
from operators.signals import SignalRules
from operators.types import SymbolOutput


@dataclass(frozen=True)
class FlowSettings:
    config: TradingConfig
    run_id: str
    broker_fills: bool = False  # paper / live: positions from the broker's trade updates
    sessions: dict | None = None  # broker fills: market sessions (no entries outside them)
    blocked: frozenset = frozenset()  # broker fills: unreconciled symbols (no orders)
    stop: object = None  # dataflows.stop.StopRequest of the run (None: the input always ends)


class SymbolLogic(StatefulBatchLogic):
    """One symbol's validation and every strategy type's signals (columnar hot path)."""

    def __init__(self, rules: SignalRules, resume: ColumnarSymbolState | None):
        self.rules = rules
        self.state = resume if resume is not None else ColumnarSymbolState()

    def on_batch(self, chunks):
        results = []
        for c in chunks:
            out = SymbolOutput(dead_letters=list(c.dead_letters))  # decided at the source
            if len(c.bars):
                bars = c.bars if isinstance(c.bars, BarBlock) else block_from_bars(c.bars)
                accepted = step_block(self.state, self.rules, bars, c.origins, c.origin_prefix, out)
                if len(accepted):
                    out.blocks.append(accepted)
            results.append(SymbolResult(c.partition, c.seq, out))
        return results, StatefulBatchLogic.RETAIN

    def snapshot(self):
        return snapshot_state(self.state, self.rules)


class PortfolioLogic(StatefulBatchLogic):
    def __init__(self, config: TradingConfig, partitions, resume: PortfolioStage | None,
                 broker_fills: bool = False, sessions: dict | None = None, blocked=frozenset(),
                 stop=None):
        self.stop = stop
        if resume is None:
            portfolio = (BrokerPortfolio.new(config, sessions, blocked) if broker_fills
                         else CompiledPortfolio.new(config))
            resume = PortfolioStage.new(portfolio, partitions)
        elif broker_fills:  # a restart reconciled again: today's blocked symbols and sessions
            resume.portfolio.blocked = frozenset(blocked)
            if sessions:
                resume.portfolio.sessions = dict(sessions)
        self.stage = resume

    def on_batch(self, items):
        out = self.stage.on_items(items)
        return ([out] if not out.empty() else []), StatefulBatchLogic.RETAIN

    def on_eof(self):
        if self.stop is not None and self.stop.cut_short:
            # A stopped run: Bytewax commits the state after this, and a resume
            # goes on from it. Applying the buffered bars "to the end of time"
            # here would make it drop every later bar as late.
            return [], StatefulBatchLogic.RETAIN
        out = self.stage.flush()
        return ([out] if not out.empty() else []), StatefulBatchLogic.RETAIN

    def snapshot(self):
        return copy.deepcopy(self.stage)


def build_flow(settings: FlowSettings, source, sink, partitions, *, trade_source=None,
               trade_partitions=(), broker_sink=None) -> Dataflow:
    """`source` emits Chunk/Watermark items from `partitions`; `sink` takes
    SymbolOutput and PortfolioOutput items. Trading (paper or live) adds
    `trade_source` (BrokerEvent/Watermark items of the `trade_updates` topic,
    from `trade_partitions`) and `broker_sink` (PortfolioOutputs: their orders
    go to the broker)."""
    rules = SignalRules.from_config(settings.config)
    config = settings.config
    parts = list(partitions) + list(trade_partitions)
    broker_fills, sessions, blocked = settings.broker_fills, settings.sessions, settings.blocked
    stop = settings.stop

    flow = Dataflow("thousandcuts")
    events = op.input("bars_in", flow, source)
    split = op.branch("chunks_or_watermarks", events, lambda e: isinstance(e, Chunk))
    by_symbol = op.key_on("by_symbol", split.trues, lambda c: c.symbol)
    symbol_results = op.stateful_batch(
        "symbol_stage", by_symbol, lambda resume: SymbolLogic(rules, resume)
    )
    results = op.key_rm("symbol_results", symbol_results)
    op.output("symbol_sink", op.map("symbol_outputs", results, lambda r: r.output), sink)

    streams = [results, split.falses]
    if trade_source is not None:
        streams.append(op.input("trade_updates_in", flow, trade_source))
    to_portfolio = op.merge("to_portfolio", *streams)
    keyed = op.key_on("portfolio_key", to_portfolio, lambda _: "portfolio")
    decisions = op.stateful_batch(
        "portfolio", keyed, lambda resume: PortfolioLogic(config, parts, resume, broker_fills, sessions, blocked,
                                                     stop)
    )
    outputs = op.key_rm("decisions", decisions)
    op.output("portfolio_sink", outputs, sink)
    if broker_sink is not None:
        op.output("broker_sink", outputs, broker_sink)
    return flow
