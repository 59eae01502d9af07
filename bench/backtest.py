"""Backtest throughput: the full `cuts backtest` (file in, ClickHouse out) and
the operators alone, on 31 symbols x 60 days of generated minute bars.

    .venv/bin/python bench/backtest.py [--symbols 31] [--days 60] [--workers 1]

Targets (issue 2): >= 100,000 bars/s end to end on one worker, peak memory
under 1.5 GiB. Run benchmarks one at a time: this machine has about one core
of real compute.
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def operators_only(path: str) -> tuple[int, float]:
    """Symbol stage + event-time ordering + portfolio, without Bytewax or ClickHouse."""
    from connectors.files.barfile import BarFileSource, read_bar_file
    from operators.columnar import ColumnarSymbolState, step_block
    from operators.config import TradingConfig
    from operators.ordering import Chunk, PortfolioStage, SymbolResult
    from operators.portfolio import Portfolio
    from operators.signals import SignalRules
    from operators.types import SymbolOutput

    cfg = TradingConfig()
    cols = read_bar_file(path)
    source = BarFileSource(cols, partitions=1)
    part = source.build_part("bench", "0", None)
    items = []
    try:
        while True:
            items.extend(part.next_batch())
    except StopIteration:
        pass
    rules = SignalRules.from_config(cfg)
    states: dict = {}
    stage = PortfolioStage.new(Portfolio.new(cfg), [0])
    trades = 0
    started = time.perf_counter()
    batch = []
    for item in items:
        if isinstance(item, Chunk):
            state = states.get(item.symbol)
            if state is None:
                state = states[item.symbol] = ColumnarSymbolState()
            out = SymbolOutput()
            out.blocks.append(step_block(state, rules, item.bars, item.origins, item.origin_prefix, out))
            batch.append(SymbolResult(item.partition, item.seq, out))
        else:
            batch.append(item)
            trades += len(stage.on_items(batch).trades)
            batch = []
    trades += len(stage.flush().trades)
    return len(cols), time.perf_counter() - started, trades


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--symbols", type=int, default=31)
    ap.add_argument("--days", type=int, default=60)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    cuts = os.path.join(os.path.dirname(sys.executable), "cuts")
    with tempfile.TemporaryDirectory() as tmp:
        bars = os.path.join(tmp, "bars.parquet")
        subprocess.run([cuts, "generate", "--symbols", str(args.symbols), "--days", str(args.days),
                        "--seed", "42", "--out", bars], check=True, stdout=subprocess.DEVNULL)
        n, secs, trades = operators_only(bars)
        print(f"operators alone: {n:,} bars in {secs:.2f} s = {n / secs:,.0f} bars/s ({trades} trades)")
        started = time.perf_counter()
        proc = subprocess.run([cuts, "backtest", "--bars", bars, "--clickhouse",
                               "chdb://" + os.path.join(tmp, "ch"), "--workers", str(args.workers),
                               "--quiet"], capture_output=True, text=True)
        wall = time.perf_counter() - started
        if proc.returncode:
            print(proc.stdout, proc.stderr, file=sys.stderr)
            return 1
        peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(proc.stdout.strip())
        print(f"end to end (process wall time, file in, ClickHouse out, {args.workers} worker(s)): "
              f"{n:,} bars in {wall:.2f} s = {n / wall:,.0f} bars/s; peak RSS {peak_mib:,.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
