"""What the benchmarks measure is `cuts` as `make` installs it: with the
bytecode of its own modules compiled, as `pip install .` leaves it (an
editable install run with PYTHONDONTWRITEBYTECODE=1, as this machine sets,
would otherwise compile every project module from source at each start:
~0.3 s of a backtest), and with the portfolio step built ahead of time
(`tools/build_portfolio_step.py`: without it numba's import and cache load
add ~0.45 s)."""
from __future__ import annotations

import compileall
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("dataflows", "operators", "connectors")


def compile_sources() -> None:
    """Write the project's missing or stale .pyc files (whatever the environment
    says), and build the portfolio step for this source if it is not built."""
    for package in PACKAGES:
        if not compileall.compile_dir(os.path.join(ROOT, package), quiet=1):
            raise SystemExit(f"compiling {package} failed")
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "build_portfolio_step.py")], check=True)
