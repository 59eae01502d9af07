"""Where the compiled portfolio step comes from.

`portfolio_step()` returns the entry points of `operators.portfolio_kernel`
(`apply_bars`, `close_minute`, `apply_control`, `equity`, `ledger_fold`,
`ledger_finish`), from

- its ahead-of-time build, when one was built from this very source: a C
  extension `operators/_portfolio_step_<digest>.*.so` that numba's `pycc`
  compiled from the kernel's functions with the signatures the JIT gives
  them, and beside it `<name>.json`: each entry's arguments, which every
  call is checked against (`_checked`), and the numpy and Python it was
  built for (`tools/build_portfolio_step.py`; `make` runs it). A build that
  cannot serve (built for another numpy or Python, or not loading) is
  logged and the JIT serves. Loading it takes
  milliseconds and never imports numba (~0.45 s of a backtest's start);
- else numba's JIT of the same functions, from its cache in
  `operators/__pycache__` (compiled there on first use: seconds).

One source, one compiler: tests/test_portfolio_step.py builds the extension
and pins it equal to the JIT on random books. The digest covers the kernel
and its layout (`operators.portfolio_layout`), so an edited kernel never
runs an old build: it falls back to the JIT until `make` builds it again.
Reading the two source files for the digest is this module's only I/O.
"""
from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import logging
import os
import sys
import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np

log = logging.getLogger(__name__)

SOURCES = ("portfolio_kernel.py", "portfolio_layout.py")
# entry point -> the kernel's function
ENTRIES = {"apply_bars": "apply_bars", "close_minute": "close_minute", "apply_control": "apply_control",
           "equity": "_equity", "ledger_fold": "ledger_fold", "ledger_finish": "ledger_finish"}
PREFIX = "_portfolio_step_"
HERE = os.path.dirname(os.path.abspath(__file__))


@dataclass(frozen=True)
class PortfolioStep:
    apply_bars: Callable
    close_minute: Callable
    apply_control: Callable
    equity: Callable
    ledger_fold: Callable
    ledger_finish: Callable
    ahead_of_time: bool  # False: numba's JIT


def source_digest() -> str:
    """The digest of the kernel's source files (names an ahead-of-time build)."""
    h = hashlib.sha256()
    for name in SOURCES:
        with open(os.path.join(HERE, name), "rb") as fh:
            h.update(fh.read())
    return h.hexdigest()[:16]


def module_name(digest: str | None = None) -> str:
    return PREFIX + (digest or source_digest())


def built(directory: str, name: str) -> str | None:
    """The extension file of build `name` in `directory`, if there is one."""
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = os.path.join(directory, name + suffix)
        if os.path.exists(path):
            return path
    return None


def ahead_of_time_step(directory: str = HERE) -> PortfolioStep | None:
    """The build for this source in `directory`, or None when there is none
    or it cannot serve here (another numpy or Python than it was built
    with, a file that does not load: logged, and the JIT serves)."""
    name = module_name()
    path = built(directory, name)
    if path is None or not os.path.exists(os.path.join(directory, name + ".json")):
        return None
    try:
        with open(os.path.join(directory, name + ".json")) as fh:
            built_for = json.load(fh)
        here = {"numpy": np.__version__, "python": list(sys.version_info[:2])}
        if {k: built_for.get(k) for k in here} != here:
            log.warning("portfolio step %s was built for %s, this is %s: numba's JIT serves (make builds "
                        "it again)", os.path.basename(path), {k: built_for.get(k) for k in here}, here)
            return None
        spec = importlib.util.spec_from_file_location(f"operators.{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        entries = {entry: _checked(entry, getattr(module, entry), built_for["arguments"][entry])
                   for entry in ENTRIES}
    except Exception as exc:  # a damaged build must not stop a run: the JIT is the same source
        log.warning("portfolio step %s does not load (%s: %s): numba's JIT serves", os.path.basename(path),
                    type(exc).__name__, exc)
        return None
    return PortfolioStep(**entries, ahead_of_time=True)


class StepArgumentError(TypeError):
    """An argument of the wrong kind for the ahead-of-time step: a bug in its caller."""


_SCALARS = {"int64": lambda a: isinstance(a, (int, np.integer)) and not isinstance(a, (bool, np.bool_)),
            "bool": lambda a: isinstance(a, (bool, np.bool_)),
            "float64": lambda a: isinstance(a, (float, np.floating))}


def _checked(entry: str, fn: Callable, arguments: list) -> Callable:
    """`fn` behind a check of its arguments. Unlike the JIT, which compiles
    another version for an unexpected argument, compiled code reads any array
    as the one it was built for (a strided view or another dtype would be
    read, and written, wrongly) and converts a scalar silently (a float
    truncated to an integer): refused instead."""
    arrays = [(i, np.dtype(a[1]), a[2]) for i, a in enumerate(arguments) if a[0] == "array"]
    scalars = [(i, a[0], _SCALARS[a[0]]) for i, a in enumerate(arguments) if a[0] != "array"]

    def call(*args):
        for i, dtype, ndim in arrays:
            a = args[i]
            if not (isinstance(a, np.ndarray) and a.dtype == dtype and a.ndim == ndim
                    and a.flags.c_contiguous):
                got = (f"{a.ndim}-d {a.dtype}{'' if a.flags.c_contiguous else ' strided'} array"
                       if isinstance(a, np.ndarray) else type(a).__name__)
                raise StepArgumentError(f"portfolio step {entry}: argument {i} must be a C-contiguous "
                                        f"{ndim}-d {dtype} array, got a {got}")
        for i, kind, fits in scalars:
            if not fits(args[i]):
                raise StepArgumentError(f"portfolio step {entry}: argument {i} must be {kind}, "
                                        f"got {type(args[i]).__name__}")
        return fn(*args)

    return call


def jit_step() -> PortfolioStep:
    """numba's JIT of the kernel (compiled, or loaded from its cache, on first call)."""
    from operators import portfolio_kernel as kernel

    return PortfolioStep(**{entry: getattr(kernel, fn) for entry, fn in ENTRIES.items()},
                         ahead_of_time=False)


_loaded: PortfolioStep | None = None
_lock = threading.Lock()


def use(step: PortfolioStep) -> None:
    """Make `step` the process's step (tests: the JIT, or a build elsewhere)."""
    global _loaded
    with _lock:
        _loaded = step


def portfolio_step() -> PortfolioStep:
    """The process's step: the ahead-of-time build when there is one, else the JIT."""
    global _loaded
    if _loaded is None:
        with _lock:
            if _loaded is None:
                _loaded = ahead_of_time_step() or jit_step()
    return _loaded
