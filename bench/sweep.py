"""Sweep throughput: `cuts sweep` end to end (file in, ClickHouse out) beside
vectorbt 1.0 sweeping the same grid over the same bars.

    .venv/bin/python bench/sweep.py [--symbols 31] [--days 60] [--rounds 3] [--no-vectorbt]
    .venv/bin/python bench/sweep.py --days 252 --no-vectorbt      # the long-history target

The grid (issue 10): take-profit {0.01, 0.015, 0.02, 0.03} x stop-loss
{0.005, 0.0075, 0.01} x trailing {off, on} = 24 configurations with the three
default SMA pairs, on `cuts generate --seed 7` bars. Figures are medians of
`--rounds` runs, one at a time (this machine has about one core of real
compute): the `cuts sweep` process's wall time and peak RSS (os.wait4), and
vectorbt's run time with its JIT warmed (bench/vectorbt_sweep.py).

vectorbt runs in its own venv, bench/.venv-vectorbt, created here on first
use with `vectorbt==1.0.0 "plotly<6"` (vectorbt 1.0.0 imports only with
plotly 5.x; it also pins pandas < 3): never a project dependency.

Targets (issue 10): on 31 x 60 days, `cuts sweep` end to end >= 3x vectorbt's
bar-configurations per second; on 31 x 252 days, under 30 s and under 2 GiB
peak on one process.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench.installed import compile_sources  # noqa: E402
VBT_VENV = os.path.join(ROOT, "bench", ".venv-vectorbt")
GRID = """axes:
  exit.take_profit_pct: [0.01, 0.015, 0.02, 0.03]
  exit.stop_loss_pct: [0.005, 0.0075, 0.01]
  exit.trailing_stop: [false, true]
"""
CONFIGS = 24


def run_measured(cmd: list[str]) -> tuple[float, str]:
    """(wall seconds, stdout) of a child process; children print their own peak RSS."""
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    return wall, proc.stdout


# `cuts sweep` itself, with its peak RSS printed on the way out
CUTS_MEASURED = ("import resource, sys; from dataflows.cli.main import main; rc = main(sys.argv[1:]); "
                 "print('maxrss', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)")


def cuts_sweep(bars: str, grid: str, ch: str) -> tuple[float, float, float]:
    """(process wall s, flow s, peak RSS MiB) of one `cuts sweep`."""
    wall, out = run_measured([sys.executable, "-c", CUTS_MEASURED, "sweep", "--bars", bars, "--grid", grid,
                              "--clickhouse", f"chdb://{ch}", "--run-id", "bench", "--quiet"])
    flow = float(re.search(r"bars in ([\d.]+) s", out).group(1))
    rss = int(re.search(r"maxrss (\d+)", out).group(1)) / 1024
    return wall, flow, rss


def vectorbt_python() -> str:
    py = os.path.join(VBT_VENV, "bin", "python")
    if not os.path.exists(py):
        print(f"creating {VBT_VENV} (vectorbt 1.0.0, plotly 5.x) ...", file=sys.stderr)
        subprocess.run(["python3.11", "-m", "venv", VBT_VENV], check=True)
        subprocess.run([py, "-m", "pip", "install", "-q", "vectorbt==1.0.0", "plotly<6"], check=True)
    return py


def export_for_vectorbt(bars: str, path: str) -> None:
    """The bars as (minute x symbol) arrays of open, high, low and close."""
    import numpy as np
    import pandas as pd

    df = pd.read_parquet(bars)
    ts = pd.to_datetime(df["timestamp"], utc=True).dt.as_unit("ns").astype("int64") // 1_000_000_000
    df = df.assign(ts=ts)
    wide = {f: df.pivot(index="ts", columns="symbol", values=f).sort_index().ffill().bfill()
            for f in ("open", "high", "low", "close")}
    np.savez(path, ts=wide["close"].index.to_numpy(), **{f: w.to_numpy() for f, w in wide.items()})


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--symbols", type=int, default=31)
    ap.add_argument("--days", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-vectorbt", action="store_true")
    args = ap.parse_args()
    compile_sources()  # `cuts` as installed (bench/installed.py)
    cuts = os.path.join(os.path.dirname(sys.executable), "cuts")
    with tempfile.TemporaryDirectory() as tmp:
        bars = os.path.join(tmp, "bars.parquet")
        subprocess.run([cuts, "generate", "--symbols", str(args.symbols), "--days", str(args.days),
                        "--seed", "7", "--out", bars], check=True, stdout=subprocess.DEVNULL)
        import pandas as pd
        n = len(pd.read_parquet(bars, columns=["symbol"]))
        grid = os.path.join(tmp, "grid.yaml")
        with open(grid, "w") as fh:
            fh.write(GRID)
        print(f"{args.symbols} symbols x {args.days} days = {n:,} bars, {CONFIGS} configurations "
              f"= {n * CONFIGS:,} bar-configurations; medians of {args.rounds}")
        vbt = None
        if not args.no_vectorbt:
            npz = os.path.join(tmp, "bars.npz")
            export_for_vectorbt(bars, npz)
            _, out = run_measured([vectorbt_python(), os.path.join(ROOT, "bench", "vectorbt_sweep.py"),
                                            npz, "--rounds", str(args.rounds)])
            vbt = json.loads(out.strip().splitlines()[-1])
            secs = statistics.median(vbt["seconds"])
            print(f"vectorbt {vbt['vectorbt']}: {secs:.2f} s (JIT warmed; runs {', '.join(f'{s:.2f}' for s in vbt['seconds'])}) "
                  f"= {n * CONFIGS / secs:,.0f} bar-configurations/s, peak RSS {vbt['max_rss_mib']:,.0f} MiB, "
                  f"{vbt['trades']:,} trades")
        walls, flows, rsses = [], [], []
        for r in range(args.rounds):
            wall, flow, rss = cuts_sweep(bars, grid, os.path.join(tmp, f"ch{r}"))
            walls.append(wall)
            flows.append(flow)
            rsses.append(rss)
            print(f"  cuts sweep round {r + 1}: {wall:.2f} s wall, flow {flow:.2f} s, peak RSS {rss:,.0f} MiB",
                  file=sys.stderr)
        wall, flow = statistics.median(walls), statistics.median(flows)
        print(f"cuts sweep, whole process (file in, ClickHouse out): {wall:.2f} s "
              f"= {n * CONFIGS / wall:,.0f} bar-configurations/s; flow alone {flow:.2f} s "
              f"= {n * CONFIGS / flow:,.0f}/s; peak RSS {max(rsses):,.0f} MiB")
        if vbt is not None:
            ratio = (n * CONFIGS / wall) / (n * CONFIGS / statistics.median(vbt["seconds"]))
            print(f"cuts sweep / vectorbt (bar-configurations per second): {ratio:.2f}x (target >= 3x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
