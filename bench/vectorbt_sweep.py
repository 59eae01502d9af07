"""vectorbt's side of bench/sweep.py; runs in bench/.venv-vectorbt (vectorbt
1.0.0 with plotly 5.x: never a project dependency).

    bench/.venv-vectorbt/bin/python bench/vectorbt_sweep.py BARS.npz [--rounds 3]

The same grid over the same bars as `cuts sweep`: the three default SMA
pairs (golden cross in, death cross out), take-profit x stop-loss x
trailing, every configuration x pair x symbol a column of one
`Portfolio.from_signals` (vectorbt has no portfolio-level risk: columns are
independent). Orders fill at the next bar's open with 1 bp slippage; stops
and targets are checked against the bar's open, high and low. Prints one JSON
line: per round the seconds from the close arrays to every column's total
return (signals, from_signals, total_return), JIT warmed on a first small run.
"""
from __future__ import annotations

import argparse
import itertools
import json
import resource
import time

import numpy as np
import pandas as pd
import vectorbt as vbt

PAIRS = ((5, 15), (10, 30), (20, 50))
TP = (0.01, 0.015, 0.02, 0.03)
SL = (0.005, 0.0075, 0.01)
TRAIL = (False, True)


def sma(close: np.ndarray, n: int) -> np.ndarray:
    c = np.cumsum(np.vstack([np.zeros((1, close.shape[1])), close]), axis=0)
    out = np.full(close.shape, np.nan)
    out[n - 1:] = (c[n:] - c[:-n]) / n
    return out


def signals(close: np.ndarray):
    """Entries and exits per (pair, symbol) column, one bar later (next open)."""
    entries, exits = [], []
    for fast, slow in PAIRS:
        f, s = sma(close, fast), sma(close, slow)
        above = f > s
        below = f < s
        defined = ~np.isnan(s)
        prev_defined = np.vstack([np.zeros((1, close.shape[1]), bool), defined[:-1]])
        golden = defined & prev_defined & above & ~np.vstack([np.zeros((1, close.shape[1]), bool), above[:-1]])
        death = defined & prev_defined & below & ~np.vstack([np.zeros((1, close.shape[1]), bool), below[:-1]])
        entries.append(np.vstack([np.zeros((1, close.shape[1]), bool), golden[:-1]]))
        exits.append(np.vstack([np.zeros((1, close.shape[1]), bool), death[:-1]]))
    return np.hstack(entries), np.hstack(exits)


def sweep(o, h, lo, c, index) -> tuple[float, int]:
    started = time.perf_counter()
    entries, exits = signals(c)  # columns: pair x symbol
    o, h, lo, c = (np.tile(a, (1, len(PAIRS))) for a in (o, h, lo, c))
    configs = list(itertools.product(TP, SL, TRAIL))
    k = entries.shape[1]  # pairs x symbols
    tile = lambda a: np.tile(a, (1, len(configs)))  # noqa: E731
    cols = len(configs) * k
    tp = np.repeat([cfg[0] for cfg in configs], k)[None, :]
    sl = np.repeat([cfg[1] for cfg in configs], k)[None, :]
    trail = np.repeat([cfg[2] for cfg in configs], k)[None, :]
    frame = lambda a: pd.DataFrame(tile(a), index=index)  # noqa: E731
    pf = vbt.Portfolio.from_signals(
        frame(c), frame(entries), frame(exits), price=frame(o), open=frame(o), high=frame(h), low=frame(lo),
        sl_stop=sl, tp_stop=tp, sl_trail=trail, slippage=0.0001, init_cash=100_000.0, freq="1min")
    total = pf.total_return()
    assert len(total) == cols
    return time.perf_counter() - started, int(pf.trades.count().sum())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("bars")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    data = np.load(args.bars)
    o, h, lo, c = data["open"], data["high"], data["low"], data["close"]
    index = pd.to_datetime(data["ts"], unit="s")
    sweep(o[:500], h[:500], lo[:500], c[:500], index[:500])  # JIT warm-up, not timed
    runs, trades = [], 0
    for _ in range(args.rounds):
        secs, trades = sweep(o, h, lo, c, index)
        runs.append(secs)
    print(json.dumps({"seconds": runs, "trades": trades, "vectorbt": vbt.__version__,
                      "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
