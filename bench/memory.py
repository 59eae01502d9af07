"""Peak memory of `cuts backtest` as the bar file grows: 31 symbols x 252
days (3.05 M bars) against 31 x 2,520 days (30.5 M bars).

    .venv/bin/python bench/memory.py [--data DIR] [--order time|symbol] [--report]
                                     [--small-days 252] [--large-days 2520]

Generates the two markets with `cuts generate --seed 42` (kept in --data DIR
for later rounds; generating 30 M bars takes a minute and ~10 GB), with
`--order symbol` rewrites them sorted by symbol (as Alpaca and most vendors
write files), then runs `cuts backtest` on each, one after the other, and
prints each process's peak RSS (`ru_maxrss` from wait4) and the ratio.
`--report` lets `cuts backtest` print its report (SQL over the whole run)
instead of `--quiet`. Target (issue 10): the large peak within 10 % of the
small one.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench.backtest import run_child  # noqa: E402


def market(cuts: str, data: str, days: int, order: str) -> str:
    path = os.path.join(data, f"bars-31x{days}.parquet")
    if not os.path.exists(path):
        subprocess.run([cuts, "generate", "--symbols", "31", "--days", str(days), "--seed", "42",
                        "--out", path], check=True, stdout=subprocess.DEVNULL)
    if order == "time":
        return path
    by_symbol = os.path.join(data, f"bars-31x{days}-by-symbol.parquet")
    if not os.path.exists(by_symbol):  # a child process: sorting 30 M rows takes GBs
        subprocess.run([sys.executable, "-c", (
            "import sys, pyarrow.parquet as pq\n"
            "t = pq.read_table(sys.argv[1])\n"
            "pq.write_table(t.sort_by([('symbol', 'ascending'), ('timestamp', 'ascending')]), sys.argv[2])\n"),
            path, by_symbol], check=True)
    return by_symbol


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "cuts-bench-memory"))
    ap.add_argument("--order", choices=("time", "symbol"), default="time")
    ap.add_argument("--report", action="store_true", help="print the report (default --quiet)")
    ap.add_argument("--small-days", type=int, default=252)
    ap.add_argument("--large-days", type=int, default=2520)
    args = ap.parse_args()
    cuts = os.path.join(os.path.dirname(sys.executable), "cuts")
    os.makedirs(args.data, exist_ok=True)
    peaks = {}
    with tempfile.TemporaryDirectory() as tmp:
        for days in (args.small_days, args.large_days):
            bars = market(cuts, args.data, days, args.order)
            started = time.perf_counter()
            cmd = [cuts, "backtest", "--bars", bars, "--clickhouse", "chdb://" + os.path.join(tmp, f"ch{days}")]
            wall, peak, proc = run_child(cmd + ([] if args.report else ["--quiet"]))
            if proc.returncode:
                print(proc.stdout[-2000:], proc.stderr[-2000:], file=sys.stderr)
                return 1
            peaks[days] = peak
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("run ")), "")
            print(f"31 x {days} days ({args.order} order): {line}; process {wall:.0f} s, "
                  f"peak RSS {peak:,.0f} MiB (took {time.perf_counter() - started:.0f} s)")
    small, large = peaks[args.small_days], peaks[args.large_days]
    print(f"peak RSS {args.large_days} days / {args.small_days} days: {large / small:.3f} "
          f"({large - small:+,.0f} MiB); target <= 1.10")
    return 0


if __name__ == "__main__":
    sys.exit(main())
