"""Tearsheet page of a year of minute bars: generation time and size.

    .venv/bin/python bench/report_page.py [--symbols 33] [--days 252] [--keep DIR]

Generates the market (`cuts generate --seed 42`), backtests it (`cuts
backtest`, embedded ClickHouse), then measures `cuts report --html` on that
run: the whole process's wall time, the page's size, and what is in it
(equity minutes and points drawn, candle resolution, trades). With chromium
installed it also opens the page headless and offline and times until every
chart is drawn.

Targets (issue 11): under 10 s and under 15 MB for a year of minute bars
(2.6 M bars, ~100 k equity minutes, ~3,400 trades). Run benchmarks one at a
time: this machine has about one core of real compute.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUTS = [sys.executable, "-m", "dataflows.cli"]


def cuts(*args: str) -> tuple[str, float]:
    started = time.monotonic()
    proc = subprocess.run([*CUTS, *args], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"cuts {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout, time.monotonic() - started


def contents(page: pathlib.Path) -> dict:
    """What the page's data block holds (decoded lengths)."""
    import base64

    text = page.read_text(encoding="utf-8")
    start = text.index('id="report-data">') + len('id="report-data">')
    data = json.loads(text[start:text.index("</script>", start)])
    size = {"u4": 4, "f4": 4, "f8": 8}
    def n(col):
        return len(base64.b64decode(col["b64"])) // size[col["dtype"]]
    return {"equity_points": n(data["equity"]["t"]), "symbols": len(data["candles"]),
            "candles": sum(n(c["t"]) for c in data["candles"].values()), "trades": n(data["trades"]["entry_t"]),
            "data_bytes": len(text) - len(text.split("<script>", 1)[1].split("</script>", 1)[0])}


def render_time(page: pathlib.Path) -> float | None:
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from browser import ARGS, chromium_path

    path = chromium_path()
    if path is None:
        return None
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=ARGS)
        ctx = b.new_context(viewport={"width": 1400, "height": 900})
        ctx.route("**/*", lambda r: r.continue_() if r.request.url.startswith(("file:", "data:")) else r.abort())
        pg = ctx.new_page()
        started = time.monotonic()
        pg.goto(page.resolve().as_uri())
        pg.wait_for_function("() => document.body.dataset.ready", timeout=300_000)
        took = time.monotonic() - started
        b.close()
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--symbols", type=int, default=33)
    ap.add_argument("--days", type=int, default=252)
    ap.add_argument("--keep", help="work in this directory and keep it (reuses its bars and run)")
    a = ap.parse_args()
    work = pathlib.Path(a.keep or tempfile.mkdtemp(prefix="bench-report-"))
    work.mkdir(parents=True, exist_ok=True)
    bars, db, page = work / "bars.parquet", f"chdb://{work / 'ch'}", work / "report.html"
    if not bars.exists():
        print(f"generating {a.symbols} symbols x {a.days} days ...", flush=True)
        cuts("generate", "--symbols", str(a.symbols), "--days", str(a.days), "--seed", "42", "--out", str(bars))
    if not (work / "ch").exists():
        print("backtesting ...", flush=True)
        out, took = cuts("backtest", "--bars", str(bars), "--clickhouse", db, "--run-id", "year", "--quiet")
        print(out.strip(), f"({took:.1f} s wall)")
    out, took = cuts("report", "--clickhouse", db, "--run-id", "year", "--html", str(page))
    size = page.stat().st_size
    inside = contents(page)
    print(out.strip())
    print(f"cuts report --html: {took:.2f} s wall (process start-up included), page {size / 1e6:.2f} MB")
    print("page holds: " + ", ".join(f"{k} {v:,}" for k, v in inside.items()))
    shown = render_time(page)
    if shown is not None:
        print(f"chromium (headless, no GPU): every chart drawn {shown:.1f} s after opening")
    verdict = "met" if took < 10 and size < 15e6 else "MISSED"
    print(f"targets (< 10 s, < 15 MB): {verdict}")


if __name__ == "__main__":
    main()
