"""The one dataflow every mode runs: backtest, replay, live and sweep differ
only in the source, the sinks and how many configurations it evaluates.

  source (Chunk | Watermark, per partition)
    -> key by symbol -> symbol stage (validation, indicators and signals of
       the configurations' strategies, each computed once)
    -> every portfolio shard (with the watermarks) -> portfolio stage
       (event-time ordering, exits, risk, simulated broker: a run is one
       shard of one configuration; a sweep's shards, one per worker, hold
       its configurations)
  symbol outputs (bars, signals, dead letters) and portfolio outputs
  (orders, fills, trades, equity, rejections; a sweep's per-configuration
  trades and daily rows) go to the sink.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import FixedPartitionedSink

from dataflows.shards import assign, shard_keys
from operators.columnar import BarBlock
from operators.config import TradingConfig
from operators.config_book import new_book
from operators.live_portfolio import BrokerPortfolio
from operators.ordering import Chunk, PortfolioStage, SymbolResult, block_from_bars
from operators.signal_plan import SignalPlan, UnionSymbolState, step_union
from operators.types import SymbolOutput


@dataclass(frozen=True)
class SweepSettings:
    """Several configurations over the same bars (spec section 8)."""

    configs: tuple  # (config_id, TradingConfig), config_id order
    shards: int = 1  # portfolio shards, spread over the workers
    worker_count: int = 1  # workers of the whole cluster (every process)
    detail: bool = False  # also each configuration's orders, fills and rejections


@dataclass(frozen=True)
class FlowSettings:
    config: TradingConfig
    run_id: str
    broker_fills: bool = False  # paper / live: positions from the broker's trade updates
    sessions: dict | None = None  # broker fills: market sessions (no entries outside them)
    blocked: frozenset = frozenset()  # broker fills: unreconciled symbols (no orders)
    sweep: SweepSettings | None = None  # a sweep: daily records per configuration
    stop: object = None  # dataflows.stop.StopRequest of the run (None: the input always ends)

    def configs(self) -> list:
        """(config_id, TradingConfig) of every configuration; a run's one is its run id."""
        return list(self.sweep.configs) if self.sweep else [(self.run_id, self.config)]


class SymbolLogic(StatefulBatchLogic):
    """One symbol's validation and every strategy type's signals (columnar hot
    path), for the union of the configurations' strategies (operators/signal_plan)."""

    def __init__(self, plan: SignalPlan, resume: UnionSymbolState | None):
        self.plan = plan
        self.state = resume if resume is not None else plan.new_state()

    def on_batch(self, chunks):
        results = []
        for c in chunks:
            out = SymbolOutput(dead_letters=list(c.dead_letters))  # decided at the source
            if len(c.bars):
                bars = c.bars if isinstance(c.bars, BarBlock) else block_from_bars(c.bars)
                accepted = step_union(self.state, self.plan, bars, c.origins, c.origin_prefix, out)
                if len(accepted):
                    out.blocks.append(accepted)
            results.append(SymbolResult(c.partition, c.seq, out))
        return results, StatefulBatchLogic.RETAIN

    def snapshot(self):
        return self.plan.snapshot(self.state)


class PortfolioLogic(StatefulBatchLogic):
    """One portfolio shard: its configurations (a run has one) over every bar
    and watermark, in event-time order. Items arrive as (shard, item); the
    shard's book is built from its first item."""

    def __init__(self, settings: FlowSettings, plan: SignalPlan, partitions,
                 resume: PortfolioStage | None):
        self.settings, self.plan, self.partitions = settings, plan, partitions
        self.stage = resume
        if resume is not None and settings.broker_fills:
            # a restart reconciled again: today's blocked symbols and sessions
            resume.portfolio.blocked = frozenset(settings.blocked)
            if settings.sessions:
                resume.portfolio.sessions = dict(settings.sessions)

    def _new_stage(self, shard: int) -> PortfolioStage:
        s = self.settings
        if s.broker_fills:
            return PortfolioStage.new(BrokerPortfolio.new(s.config, s.sessions, s.blocked), self.partitions)
        configs = s.configs()
        index = {cid: i for i, (cid, _) in enumerate(configs)}
        if s.sweep is None:
            mine = [cid for cid, _ in configs]
        else:
            mine = assign([cid for cid, _ in configs], s.sweep.shards)[shard]
        members = [(cid, configs[index[cid]][1], self.plan.routes[index[cid]]) for cid in mine]
        book = new_book(members, daily=s.sweep is not None,
                        detail=bool(s.sweep and s.sweep.detail), shard=shard)
        return PortfolioStage.new(book, self.partitions)

    def on_batch(self, items):
        if self.stage is None:
            self.stage = self._new_stage(items[0][0])
        out = self.stage.on_items([item for _, item in items])
        return self._outputs(out, final=False), StatefulBatchLogic.RETAIN

    def on_eof(self):
        stop = self.settings.stop
        if self.stage is None or (stop is not None and stop.cut_short):
            # A stopped run: Bytewax commits the state after this, and a resume
            # goes on from it. Applying the buffered bars "to the end of time"
            # here would make it drop every later bar as late.
            return [], StatefulBatchLogic.RETAIN
        out = self.stage.flush()
        return self._outputs(out, final=True), StatefulBatchLogic.RETAIN

    def _outputs(self, out, final: bool) -> list:
        result = []
        book = self.stage.portfolio
        take = getattr(book, "take", None)
        sweep = take(final) if take is not None else None
        # the stage's own outputs (late bars) are the same in every shard: shard 0's are kept
        if not out.empty() and (sweep is None or sweep.shard == 0):
            result.append(out)
        if sweep is not None and not sweep.empty():
            result.append(sweep)
        return result

    def snapshot(self):
        return copy.deepcopy(self.stage)


def build_flow(settings: FlowSettings, source, sink, partitions, *, trade_source=None,
               trade_partitions=(), broker_sink=None) -> Dataflow:
    """`source` emits Chunk/Watermark items from `partitions`; `sink` takes
    SymbolOutput, PortfolioOutput and (sweeps) SweepOutput items (as
    (key, item) when it is a FixedPartitionedSink: every item to its one
    partition). Trading (paper or live) adds `trade_source` (BrokerEvent /
    Watermark items of the `trade_updates` topic, from `trade_partitions`) and
    `broker_sink` (PortfolioOutputs: their orders go to the broker)."""
    plan = SignalPlan.for_configs([cfg for _, cfg in settings.configs()])
    parts = list(partitions) + list(trade_partitions)
    sweep = settings.sweep
    n_shards = sweep.shards if sweep is not None else 1
    keys = shard_keys(n_shards, sweep.worker_count) if sweep is not None else ["portfolio"]

    flow = Dataflow("thousandcuts")
    events = op.input("bars_in", flow, source)
    split = op.branch("chunks_or_watermarks", events, lambda e: isinstance(e, Chunk))
    by_symbol = op.key_on("by_symbol", split.trues, lambda c: c.symbol)
    symbol_results = op.stateful_batch(
        "symbol_stage", by_symbol, lambda resume: SymbolLogic(plan, resume)
    )
    results = op.key_rm("symbol_results", symbol_results)
    if sweep is None:
        symbol_outputs = op.map("symbol_outputs", results, lambda r: r.output)
    else:  # a sweep stores no bars or union signals: only what was refused
        symbol_outputs = op.filter_map(
            "symbol_outputs", results,
            lambda r: SymbolOutput(dead_letters=r.output.dead_letters) if r.output.dead_letters else None)

    streams = [results, split.falses]
    if trade_source is not None:
        streams.append(op.input("trade_updates_in", flow, trade_source))
    to_portfolio = op.merge("to_portfolio", *streams)
    # every shard sees every bar result and watermark, in each partition's order
    to_shards = op.flat_map("to_shards", to_portfolio,
                            lambda item: [(k, (i, item)) for i, k in enumerate(keys)])
    decisions = op.stateful_batch(
        "portfolio", to_shards, lambda resume: PortfolioLogic(settings, plan, parts, resume)
    )
    outputs = op.key_rm("decisions", decisions)
    _output("outputs", op.merge("all_outputs", symbol_outputs, outputs), sink)
    if broker_sink is not None:
        op.output("broker_sink", outputs, broker_sink)
    return flow


def _output(step_id: str, stream, sink) -> None:
    if isinstance(sink, FixedPartitionedSink):
        key = getattr(sink, "partition_key", "all")
        stream = op.key_on(f"{step_id}_key", stream, lambda _item: key)
    op.output(step_id, stream, sink)
