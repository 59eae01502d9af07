"""The project documents itself: the trading rules live in
docs/trading-rules.md (no file points outside the repository), every link
between the docs resolves, and the README lists every file `--out` writes."""
from __future__ import annotations

import os
import re

from connectors.clickhouse.analytics import _EXPORTS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = [os.path.join(ROOT, "README.md"), os.path.join(ROOT, "bench", "README.md")] + sorted(
    os.path.join(ROOT, "docs", f) for f in os.listdir(os.path.join(ROOT, "docs")) if f.endswith(".md"))


def read(path: str) -> str:
    with open(path, encoding="utf-8") as fh:
        return fh.read()


OUTSIDE = ("../" + "shared", "shared/" + "spec", "/work/" + "shared")  # (split: this file names them)
SKIP_DIRS = {".git", ".venv", "data", "__pycache__", "node_modules", ".pytest_cache", ".hypothesis"}


def test_no_doc_points_outside_the_repository():
    for path in DOCS:
        text = read(path)
        assert not any(o in text for o in OUTSIDE), path


def test_no_file_of_the_repository_points_outside_it():
    """A user's clone has only the repository: no file (code, tests,
    config, docs) refers to the trading rules' source outside it."""
    found = []
    for top, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info")]
        for name in files:
            path = os.path.join(top, name)
            try:
                text = read(path)
            except (UnicodeDecodeError, OSError):  # binary files
                continue
            found += [f"{os.path.relpath(path, ROOT)}: {o}" for o in OUTSIDE if o in text]
    assert found == []


def test_every_relative_link_in_the_docs_resolves():
    broken = []
    for path in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", read(path)):
            if "://" in target:
                continue
            if not os.path.exists(os.path.normpath(os.path.join(os.path.dirname(path), target))):
                broken.append(f"{os.path.relpath(path, ROOT)} -> {target}")
    assert broken == []


def test_readme_and_docs_point_at_the_trading_rules():
    assert "docs/trading-rules.md" in read(os.path.join(ROOT, "README.md"))
    assert "trading-rules.md" in read(os.path.join(ROOT, "docs", "trading-decisions.md"))


def test_the_trading_rules_cover_the_whole_contract():
    text = read(os.path.join(ROOT, "docs", "trading-rules.md"))
    headings = re.findall(r"^## (\d)\. ", text, flags=re.M)
    assert headings == [str(i) for i in range(1, 9)]
    for term in ("invalid", "duplicate", "late", "(timestamp, symbol)", "micro-dollars", "golden cross",
                 "low_confidence", "low_risk_reward", "min_risk_reward", "majority", "weighted", "consensus",
                 "panic_rebound", "panic_15_150", "drop_window", "volume_mult", "milli-shares", "exit:",
                 "trailing", "time_stop", "slippage", "commission", "size_zero", "max_positions_per_symbol",
                 "daily_loss_streak", "daily_drawdown", "circuit breaker", "kill switch", "profit factor",
                 "Sharpe", "config_id", "c1000", "walk-forward", "anchored", "out-of-sample", "objective",
                 "Configuration bounds"):
        assert term.lower() in text.lower(), term


def test_readme_lists_every_file_out_writes():
    readme = read(os.path.join(ROOT, "README.md"))
    for name, (header, _sql) in _EXPORTS.items():
        assert f"`{name}`" in readme, name
        assert ",".join(header) in readme, f"{name}: columns"
