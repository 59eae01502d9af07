"""`cuts` as a process, for the tests: one helper for every test file that
runs the command and wants its output (or its failure, with that output)."""
from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUTS = [sys.executable, "-m", "dataflows.cli"]


def cuts(*args, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `cuts args` in the checkout; with `check`, a non-zero exit fails the test."""
    proc = subprocess.run([*CUTS, *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"cuts {' '.join(map(str, args))} failed ({proc.returncode}):\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc
