"""Seeded synthetic minute bars in the Alpaca bar layout, for demos, tests and benchmarks.

`generate_bars(symbols, days, seed)` returns a frame with exactly the columns
symbol, timestamp, open, high, low, close, volume, trade_count, vwap, sorted by
(timestamp, symbol). The same arguments always give the identical frame.

Market model (all numpy-vectorised; no Python loop per bar):
- Sessions: `days` consecutive weekdays from `start` (a weekend start rolls to
  Monday). Exchange holidays are ignored. Each session is the US regular
  session 09:30-16:00 America/New_York: 390 one-minute bars stamped at the
  start of their minute, converted to UTC per day (so DST is handled).
- Prices: geometric Brownian motion per symbol, with annual drift and a
  per-minute volatility (about 0.06-0.13%) drawn from the seed, scaled by a
  U-shaped intraday profile (highest at the open, raised into the close).
  Each session opens with an overnight gap of at least 0.1%, so a session's
  first open differs from the previous close. Start prices are $20-$500.
- Panic drops: about one per 20 symbol-sessions, a 2-6% fall over 2-5 minutes
  with volume 4-10x normal, then a 30-70% rebound over 10-30 minutes.
- Bars: open is the previous close (or the gapped open), high/low add random
  wicks, prices are rounded to cents with high >= max(open, close) and
  low <= min(open, close) enforced after rounding, all prices >= $0.01.
  Volume (whole shares, float) follows a U-shaped profile with noise and
  grows with the size of the move; trade_count (int) is volume over a
  per-symbol average trade size; vwap lies within [low, high].

`write_bars(df, path)` writes .parquet (pyarrow) or .csv (ISO 8601 UTC times).
"""
from __future__ import annotations

import os
from datetime import date

import numpy as np
import pandas as pd

COLUMNS = ("symbol", "timestamp", "open", "high", "low", "close", "volume", "trade_count", "vwap")
SESSION_MINUTES = 390  # 09:30-16:00 New York
NEW_YORK = "America/New_York"
_LETTERS = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
_MINUTES_PER_YEAR = 252 * SESSION_MINUTES
_PANIC_RATE = 0.05  # expected panic drops per symbol-session


def symbol_names(n: int) -> list[str]:
    """`n` unique tickers from the index alone: AAA, AAB, ..., ZZZ, AAAA, ... (3-6 letters)."""
    names: list[str] = []
    for width in range(3, 7):
        take = min(n - len(names), 26 ** width)
        if take <= 0:
            break
        digits = (np.arange(take)[:, None] // 26 ** np.arange(width - 1, -1, -1)) % 26
        names.extend("".join(row) for row in _LETTERS[digits])
    if len(names) < n:
        raise ValueError(f"too many symbols: {n}")
    return names


def session_opens(days: int, start: str = "2024-01-02") -> np.ndarray:
    """UTC epoch nanoseconds of 09:30 New York on `days` weekdays from `start`."""
    first = pd.Timestamp(start)
    first = pd.Timestamp(date(first.year, first.month, first.day))
    dates = pd.bdate_range(first, periods=days)  # Mon-Fri; holidays ignored
    local = (dates + pd.Timedelta(hours=9, minutes=30)).tz_localize(NEW_YORK)
    return local.tz_convert("UTC").as_unit("ns").asi8.copy()


def _intraday_profiles() -> tuple[np.ndarray, np.ndarray]:
    """U-shaped volatility (RMS 1) and volume (mean 1) multipliers per minute of the session."""
    m = np.arange(SESSION_MINUTES, dtype=np.float64)
    x = (m - (SESSION_MINUTES - 1) / 2) / ((SESSION_MINUTES - 1) / 2)
    vol = 0.75 + 0.8 * x**2 + 1.2 * np.exp(-m / 15.0) + 0.3 * np.exp(-(SESSION_MINUTES - 1 - m) / 10.0)
    vol /= np.sqrt(np.mean(vol**2))
    volume = 0.6 + 1.4 * x**2 + 2.0 * np.exp(-m / 10.0) + 2.5 * np.exp(-(SESSION_MINUTES - 1 - m) / 6.0)
    volume /= volume.mean()
    return vol, volume


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Concatenated ranges [start, start+length): (positions, owning range, offset within range)."""
    owner = np.repeat(np.arange(len(starts)), lengths)
    offset = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return starts[owner] + offset, owner, offset


def generate_bars(symbols: int, days: int, seed: int, start: str = "2024-01-02") -> pd.DataFrame:
    """Seeded synthetic 1-minute bars for `symbols` tickers over `days` weekdays from `start`.

    Returns the Alpaca bar columns, timestamp as datetime64[ns, UTC] (bar start),
    sorted by (timestamp, symbol). Exchange holidays are ignored: every weekday
    is a full 390-minute session. See the module docstring for the model.
    """
    if symbols < 1 or days < 1:
        raise ValueError(f"symbols and days must be >= 1 (got {symbols}, {days})")
    rng = np.random.default_rng(seed)
    S, D, M = symbols, days, SESSION_MINUTES
    N = D * M
    vol_u, volume_u = _intraday_profiles()

    # Per-symbol parameters.
    p0 = np.exp(rng.uniform(np.log(20.0), np.log(500.0), S))
    sigma = rng.uniform(0.0006, 0.0013, S)  # per-minute volatility
    mu = rng.uniform(-0.25, 0.35, S) / _MINUTES_PER_YEAR  # per-minute drift
    base_volume = np.exp(rng.uniform(np.log(500.0), np.log(30_000.0), S))
    trade_size = rng.uniform(40.0, 200.0, S)

    # Per-bar log returns (open -> close), GBM with U-shaped volatility.
    scale = sigma[:, None, None] * vol_u[None, None, :]  # (S, 1, M)
    z = rng.standard_normal((S, D, M))
    logr = (mu[:, None, None] - 0.5 * scale**2) + scale * z
    logr = logr.reshape(S, N)
    scale = np.broadcast_to(scale, (S, D, M)).reshape(S, N)

    # Overnight gaps: |gap| >= 0.1%, random sign; none before the first session.
    gap = rng.choice([-1.0, 1.0], (S, D)) * (0.001 + np.abs(rng.normal(0.0, 0.006, (S, D))))
    gap[:, 0] = 0.0

    # Panic drops with a partial rebound, and the volume multiplier they bring.
    vmult = np.ones(S * N)
    n_ev = int(rng.poisson(_PANIC_RATE * S * D))
    ev_pos = rng.integers(0, S, n_ev) * N + rng.integers(0, D, n_ev) * M + rng.integers(5, M - 40, n_ev)
    ev_len = rng.integers(2, 6, n_ev)
    ev_drop = np.log1p(-rng.uniform(0.02, 0.06, n_ev))
    ev_reb_len = rng.integers(10, 31, n_ev)
    ev_reb = -ev_drop * rng.uniform(0.3, 0.7, n_ev)
    ev_spike = rng.uniform(4.0, 10.0, n_ev)
    flat = logr.reshape(-1)
    idx, ev, _ = _ranges(ev_pos, ev_len)
    np.add.at(flat, idx, ev_drop[ev] / ev_len[ev])
    np.maximum.at(vmult, idx, ev_spike[ev])
    idx, ev, k = _ranges(ev_pos + ev_len, ev_reb_len)
    np.add.at(flat, idx, ev_reb[ev] / ev_reb_len[ev])
    np.maximum.at(vmult, idx, 1.0 + 0.5 * (ev_spike[ev] - 1.0) * np.exp(-k / 5.0))
    vmult = vmult.reshape(S, N)

    # Prices: close path, open = previous close (gapped at each session start).
    inc = logr.copy()
    inc[:, ::M] += gap
    close = p0[:, None] * np.exp(np.cumsum(inc, axis=1))
    open_ = np.empty_like(close)
    open_[:, 0] = p0
    open_[:, 1:] = close[:, :-1]
    open_[:, M::M] *= np.exp(gap[:, 1:])
    wick = np.abs(rng.standard_normal((2, S, N))) * scale * 0.6
    high = np.maximum(open_, close) * np.exp(wick[0])
    low = np.minimum(open_, close) * np.exp(-wick[1])

    o = np.maximum(np.round(open_, 2), 0.01)
    c = np.maximum(np.round(close, 2), 0.01)
    if D > 1:  # keep every overnight gap visible after rounding
        prev = c[:, M - 1 : -1 : M]
        first = o[:, M::M]
        same = first == prev
        first[same] = prev[same] + np.where(gap[:, 1:][same] > 0, 0.01, -0.01)
        o[:, M::M] = np.maximum(first, 0.01)
    h = np.maximum(np.round(high, 2), np.maximum(o, c))
    lo = np.minimum(np.maximum(np.round(low, 2), 0.01), np.minimum(o, c))

    # Volume, trade count, vwap.
    move = np.abs(logr) / scale
    noise = np.exp(rng.normal(0.0, 0.45, (S, N)) - 0.1)
    volume = base_volume[:, None] * np.tile(volume_u, D)[None, :] * noise * (0.7 + 0.3 * move) * vmult
    volume = np.maximum(np.round(volume), 1.0)
    tsize = trade_size[:, None] * np.exp(rng.normal(0.0, 0.25, (S, N)))
    trade_count = np.clip(np.round(volume / tsize), 1, volume).astype(np.int64)
    rng_hl = h - lo
    body_mid = ((o + c) / 2 - lo) / np.where(rng_hl > 0, rng_hl, 1.0)  # in [0, 1]
    w = 0.5 * np.clip(rng.normal(0.5, 0.15, (S, N)), 0.05, 0.95) + 0.5 * body_mid
    vwap = np.clip(np.round(lo + rng_hl * w, 4), lo, h)

    # Row order (timestamp, symbol): symbols sorted by name, (S, N) -> (N, S).
    names = np.array(symbol_names(S), dtype=object)
    order = np.argsort(names, kind="stable")
    minute_ns = np.arange(M, dtype=np.int64) * 60_000_000_000
    ts = (session_opens(D, start)[:, None] + minute_ns[None, :]).reshape(-1)

    def rows(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a[order].T).reshape(-1)

    return pd.DataFrame({
        "symbol": np.tile(names[order], N),
        "timestamp": pd.to_datetime(np.repeat(ts, S), unit="ns", utc=True).as_unit("ns"),
        "open": rows(o),
        "high": rows(h),
        "low": rows(lo),
        "close": rows(c),
        "volume": rows(volume),
        "trade_count": rows(trade_count),
        "vwap": rows(vwap),
    })


def write_bars(df: pd.DataFrame, path: str) -> None:
    """Write bars to `path`: .parquet (pyarrow) or .csv (timestamps as ISO 8601 ...Z)."""
    ext = os.path.splitext(str(path))[1].lower()
    if ext not in (".parquet", ".csv"):
        raise ValueError(f"unsupported bar file extension {ext or '(none)'}: use .parquet or .csv ({path})")
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    if ext == ".parquet":
        df.to_parquet(path, engine="pyarrow", index=False)
        return
    out = df.copy()
    ts = out["timestamp"]
    if getattr(ts.dt, "tz", None) is None:
        ts = ts.dt.tz_localize("UTC")
    secs = ts.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy().astype("datetime64[s]")
    out["timestamp"] = np.datetime_as_string(secs, unit="s", timezone="UTC")
    out.to_csv(path, index=False)
