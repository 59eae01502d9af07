"""The compiled portfolio step's compile cost, and first-time compiles in
parallel processes.

    .venv/bin/python bench/compile.py [--parallel 3]

1. cold: a process with an empty numba cache (NUMBA_CACHE_DIR set to a new
   directory) loads the kernel and runs each entry point once: that is the
   first `cuts backtest` in a fresh checkout;
2. warm: the same with the cache the cold run wrote;
3. parallel: N processes with one new, empty cache directory start at once
   (as tests or several `cuts` commands in a fresh clone would); every one
   must finish, and decide the same as a warm process.

The project's own cache lives in operators/__pycache__; this bench uses
separate directories and leaves it alone.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHILD = """
import time
import operators.portfolio_step as s
s.use(s.jit_step())  # the JIT's cache is what this measures (not an ahead-of-time build)
t = time.perf_counter()
from dataflows.runner import warm_portfolio_step
t1 = time.perf_counter()
warm_portfolio_step()
t2 = time.perf_counter()
from operators import portfolio_kernel as K
print(f"{t1 - t:.3f} {t2 - t1:.3f} {sum(K.apply_bars.stats.cache_hits.values())} {sum(K.apply_bars.stats.cache_misses.values())}")
"""


def child(cache_dir: str) -> subprocess.Popen:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    return subprocess.Popen([sys.executable, "-c", CHILD], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parallel", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cache = os.path.join(tmp, "cache")
        for label in ("cold", "warm"):
            started = time.perf_counter()
            p = child(cache)
            out, err = p.communicate()
            if p.returncode:
                print(err, file=sys.stderr)
                return 1
            imp, first, hits, misses = out.split()
            print(f"{label}: process {time.perf_counter() - started:.2f} s; import {imp} s, "
                  f"first calls {first} s (cache hits {hits}, misses {misses})")
        shared = os.path.join(tmp, "parallel")
        started = time.perf_counter()
        procs = [child(shared) for _ in range(args.parallel)]
        results = [p.communicate() + (p.returncode,) for p in procs]
        wall = time.perf_counter() - started
        failed = [err for _, err, rc in results if rc]
        print(f"parallel: {args.parallel} processes with one empty cache, {wall:.1f} s wall, "
              f"{len(failed)} failed")
        for out, _, rc in results:
            print("  ", out.strip())
        if failed:
            print(failed[0], file=sys.stderr)
            return 1
        p = child(shared)  # after them, the cache they wrote loads
        out, err = p.communicate()
        print(f"after: {out.strip()} (rc {p.returncode})")
        return p.returncode


if __name__ == "__main__":
    sys.exit(main())
