"""Build the compiled portfolio step ahead of time (`make` runs this).

    .venv/bin/python tools/build_portfolio_step.py [--out-dir DIR] [--force]

numba's `pycc` compiles the functions of `operators/portfolio_kernel.py`
into one C extension, `operators/_portfolio_step_<digest>.*.so` (see
`operators.portfolio_step`), with exactly the signatures the JIT gives them
when a book runs (each entry is run once through the JIT first and its one
signature read back), and writes each entry's array arguments beside it
(`<name>.json`: the loader checks every call against them). Nothing to do when the build for this source exists;
older builds are removed. Needs a C compiler and Python's headers (the
machine's gcc); without them the step stays on the JIT, only slower to
start.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from operators import portfolio_step as step  # noqa: E402


def signatures() -> dict:
    """entry -> the full signature (return type and arguments) of the JIT's
    one compiled overload, after every entry ran once."""
    from dataflows.runner import _run_each_kernel_entry
    from operators import portfolio_kernel as kernel

    step.use(step.jit_step())  # not a build already there
    _run_each_kernel_entry()
    out = {}
    for entry, fn in step.ENTRIES.items():
        dispatcher = getattr(kernel, fn)
        sigs = dispatcher.signatures
        if len(sigs) != 1:
            raise SystemExit(f"portfolio_kernel.{fn} has {len(sigs)} compiled signatures, expected one: "
                             f"{sigs}")
        out[entry] = (dispatcher, dispatcher.overloads[sigs[0]].signature)
    return out


def build(out_dir: str) -> str:
    from numba.core import types
    from numba.pycc import CC

    name = step.module_name()
    with tempfile.TemporaryDirectory() as tmp:
        cc = CC(name)
        cc.output_dir = tmp
        cc.verbose = False
        exported = signatures()
        arguments = {}
        for entry, (dispatcher, signature) in exported.items():
            cc.export(entry, signature)(dispatcher.py_func)
            arguments[entry] = [["array", str(t.dtype), t.ndim] if isinstance(t, types.Array) else [str(t)]
                                for t in signature.args]
            unknown = [str(t) for t in signature.args
                       if not isinstance(t, types.Array) and str(t) not in ("int64", "bool", "float64")]
            if unknown:
                raise SystemExit(f"portfolio_kernel entry {entry}: argument types {unknown} have no check "
                                 f"in operators/portfolio_step._SCALARS")
        cc.compile()
        (made,) = glob.glob(os.path.join(tmp, name + "*"))
        target = os.path.join(out_dir, os.path.basename(made))
        # the arguments first: the loader takes a build only with them (a reader never sees half a file)
        built_for = {"numpy": np.__version__, "python": list(sys.version_info[:2]), "arguments": arguments}
        with open(os.path.join(out_dir, name + ".json.part"), "w") as fh:
            json.dump(built_for, fh)
        os.replace(os.path.join(out_dir, name + ".json.part"), os.path.join(out_dir, name + ".json"))
        shutil.copyfile(made, target + ".part")
        os.replace(target + ".part", target)
    for old in glob.glob(os.path.join(out_dir, step.PREFIX + "*")):
        if os.path.basename(old).split(".")[0] != name and not old.endswith(".part"):
            os.remove(old)
    return target


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", default=step.HERE, help="where the extension goes (default: operators/)")
    ap.add_argument("--force", action="store_true", help="build even when this source's build exists")
    args = ap.parse_args(argv)
    if not (os.path.isdir(args.out_dir) and os.access(args.out_dir, os.W_OK)):
        print(f"build_portfolio_step: error: --out-dir {args.out_dir} is not a writable directory",
              file=sys.stderr)
        return 2
    name = step.module_name()
    have = step.built(args.out_dir, name)
    if have and os.path.exists(os.path.join(args.out_dir, name + ".json")) and not args.force:
        print(f"portfolio step: up to date ({os.path.relpath(have, ROOT)})")
        return 0
    print("portfolio step: compiling ahead of time (seconds) ...", flush=True)
    started = time.monotonic()
    try:
        target = build(args.out_dir)
    except KeyboardInterrupt:  # the build is made in a temporary directory: nothing half-written is used
        print("portfolio step: interrupted, not built; numba's JIT serves", file=sys.stderr)
        return 130
    except Exception as exc:  # no C compiler, no Python headers, a full disk: the JIT still serves
        first = (str(exc).strip().splitlines() or [""])[0]
        print(f"portfolio step: not built ({type(exc).__name__}: {first}); numba's JIT serves", file=sys.stderr)
        return 1
    print(f"portfolio step: built {os.path.relpath(target, ROOT)} in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
