"""What the benchmarks measure is `cuts` as installed: with the bytecode of
its own modules compiled, as `pip install .` leaves it. An editable install
run with PYTHONDONTWRITEBYTECODE=1 (this machine sets it) would otherwise
compile every project module from source at each start (~0.3 s of a
backtest). `make` compiles them too."""
from __future__ import annotations

import compileall
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("dataflows", "operators", "connectors")


def compile_sources() -> None:
    """Write the project's missing or stale .pyc files (whatever the environment says)."""
    for package in PACKAGES:
        if not compileall.compile_dir(os.path.join(ROOT, package), quiet=1):
            raise SystemExit(f"compiling {package} failed")
