"""Backtest throughput: the full `cuts backtest` (file in, ClickHouse out) and
the operators alone, on 31 symbols x 60 days of generated minute bars, with
the default configuration, with `config/panic.yaml` (the three SMA pairs
plus the panic-rebound detector, ten losses in a row allowed) and with the
default plus the panic detector alone (`trading+panic_detector.yaml`, written
for the run: the detector's own cost).

    .venv/bin/python bench/backtest.py [--symbols 31] [--days 60] [--workers 1] [--rounds 5]
                                       [--configs config/trading.yaml,config/panic.yaml,DETECTOR_ONLY]

Targets: >= 100,000 bars/s end to end on one worker, peak memory under
1.5 GiB (issue 2); the panic detector costs at most 15 % of the end-to-end
rate (issue 9). With --rounds N the configurations alternate N times and the
medians are printed. Run benchmarks one at a time: this machine has about
one core of real compute.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench.installed import compile_sources  # noqa: E402


def operators_only(path: str, config_path: str) -> tuple[int, float, float, int]:
    """Symbol stage + event-time ordering + portfolio, without Bytewax or ClickHouse."""
    from connectors.config import load_trading_config
    from connectors.files.barfile import BarFileSource, read_bar_file
    from operators.columnar import ColumnarSymbolState, step_block
    from operators.ordering import Chunk, PortfolioStage, SymbolResult
    from operators.portfolio import Portfolio
    from operators.signals import SignalRules
    from operators.types import SymbolOutput

    cfg = load_trading_config(config_path)
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
    started, cpu = time.perf_counter(), time.process_time()
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
    return len(cols), time.perf_counter() - started, time.process_time() - cpu, trades


def end_to_end(cuts: str, bars: str, config_path: str, tmp: str, workers: int) -> tuple[float, float, float, str]:
    """(process wall seconds, process CPU seconds, flow rate from its own line, that line)
    of one `cuts backtest`."""
    ch = tempfile.mkdtemp(dir=tmp)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run([cuts, "backtest", "--bars", bars, "--config", config_path, "--clickhouse",
                           "chdb://" + os.path.join(ch, "ch"), "--workers", str(workers), "--quiet"],
                          capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if proc.returncode:
        raise SystemExit(f"cuts backtest failed:\n{proc.stdout}\n{proc.stderr}")
    line = proc.stdout.strip()
    flow_rate = float(line.split("(")[1].split(" bars/s")[0].replace(",", ""))
    return wall, cpu, flow_rate, line


def run_child(cmd: list) -> tuple[float, float, subprocess.CompletedProcess]:
    """Run `cmd` to its end: (wall seconds, the child's own peak RSS in MiB,
    the finished process with its output)."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        child = subprocess.Popen(cmd, stdout=out, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        done = subprocess.CompletedProcess(cmd, child.returncode, out.read().decode(errors="replace"),
                                           err.read().decode(errors="replace"))
    return wall, usage.ru_maxrss / 1024, done


def detector_only(tmp: str) -> str:
    """config/trading.yaml plus the panic entry of config/panic.yaml, nothing else
    changed: the detector's own cost (panic.yaml also allows more losses in a row,
    which lets the SMA pairs trade more)."""
    import yaml

    with open(os.path.join(ROOT, "config", "trading.yaml")) as fh:
        cfg = yaml.safe_load(fh)
    with open(os.path.join(ROOT, "config", "panic.yaml")) as fh:
        cfg["strategies"] += [s for s in yaml.safe_load(fh)["strategies"] if s.get("type") == "panic_rebound"]
    path = os.path.join(tmp, "trading+panic_detector.yaml")
    with open(path, "w") as fh:
        yaml.safe_dump(cfg, fh)
    return path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--symbols", type=int, default=31)
    ap.add_argument("--days", type=int, default=60)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--configs", default="config/trading.yaml,config/panic.yaml,DETECTOR_ONLY")
    args = ap.parse_args()
    compile_sources()  # `cuts` as installed (bench/installed.py)
    cuts = os.path.join(os.path.dirname(sys.executable), "cuts")
    with tempfile.TemporaryDirectory() as tmp:
        configs = [detector_only(tmp) if c == "DETECTOR_ONLY" else os.path.join(ROOT, c) if not os.path.isabs(c)
                   else c for c in args.configs.split(",")]
        walls, cpus, flows, ops, ops_cpu = ({c: [] for c in configs} for _ in range(5))
        bars = os.path.join(tmp, "bars.parquet")
        subprocess.run([cuts, "generate", "--symbols", str(args.symbols), "--days", str(args.days),
                        "--seed", "42", "--out", bars], check=True, stdout=subprocess.DEVNULL)
        for r in range(args.rounds):
            for c in configs:
                name = _name(c)
                n, secs, op_cpu, trades = operators_only(bars, c)
                ops[c].append(n / secs)
                ops_cpu[c].append(n / op_cpu)
                print(f"[{r + 1}] {name}: operators alone: {n:,} bars in {secs:.2f} s = {n / secs:,.0f} bars/s "
                      f"({n / op_cpu:,.0f} per CPU second; {trades} trades)")
                wall, cpu, flow, line = end_to_end(cuts, bars, c, tmp, args.workers)
                walls[c].append(n / wall)
                cpus[c].append(n / cpu)
                flows[c].append(flow)
                print(f"[{r + 1}] {name}: {line}")
                print(f"[{r + 1}] {name}: end to end (process wall time, file in, ClickHouse out, "
                      f"{args.workers} worker(s)): {n:,} bars in {wall:.2f} s = {n / wall:,.0f} bars/s; "
                      f"{cpu:.2f} CPU s = {n / cpu:,.0f} bars per CPU second")
        peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"\nmedians of {args.rounds} round(s), {n:,} bars; peak RSS of any child {peak_mib:,.0f} MiB")
        base = configs[0]
        for c in configs:
            name = _name(c)
            e2e, cpu, flow, op, op_cpu = (statistics.median(x[c]) for x in (walls, cpus, flows, ops, ops_cpu))
            print(f"{name}: end to end {e2e:,.0f} bars/s ({cpu:,.0f} per CPU second), flow {flow:,.0f} bars/s, "
                  f"operators {op:,.0f} bars/s ({op_cpu:,.0f} per CPU second)")
            if c != base:
                # ratios within each round (the rounds interleave the configurations), then their median
                def paired(x):
                    return statistics.median(a / b for a, b in zip(x[c], x[base]))
                print(f"  vs {_name(base)} (median of the rounds' ratios): end to end {paired(walls):.0%}, "
                      f"per CPU second {paired(cpus):.0%}, flow {paired(flows):.0%}, operators {paired(ops):.0%}, "
                      f"operators per CPU second {paired(ops_cpu):.0%}")
    return 0


def _name(path: str) -> str:
    return os.path.basename(path) if not path.startswith(ROOT) else os.path.relpath(path, ROOT)


if __name__ == "__main__":
    sys.exit(main())
