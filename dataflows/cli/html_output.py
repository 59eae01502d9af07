"""`--html PATH` of `cuts report`, `cuts backtest`, `cuts sweep` and `cuts
demo`: writes the page of a run or a sweep and prints where it is."""
from __future__ import annotations

import os


class HtmlPathError(Exception):
    """The page cannot be written where --html asks (one line, exit 2)."""


def check_html_path(path: str) -> None:
    """Refuse a PATH no page can be written to, before a long run or sweep
    starts: a directory, or a folder that is a file. (Permissions and a full
    disk are met when writing.)"""
    if os.path.isdir(path):
        raise HtmlPathError(f"--html {path}: is a directory; give a file name such as "
                            f"{path.rstrip('/')}/report.html")
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(folder):  # the nearest existing ancestor must be a directory
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise HtmlPathError(f"cannot write {path}: {folder} is a file, not a directory")


def write_html_page(path: str, kind: str, ident: str, client, against: str | None = None) -> None:
    """The page of a run or a sweep (`kind`) at `path`; prints where it is."""
    from dataflows.reports import write_run_page, write_sweep_page

    check_html_path(path)
    try:
        size = (write_run_page(client, ident, path, against) if kind == "run"
                else write_sweep_page(client, ident, path))
    except OSError as exc:
        raise HtmlPathError(f"cannot write {path}: {exc.strerror or exc}") from exc
    print(f"report of {kind} {ident}: {os.path.abspath(path)} ({size / 1e6:.1f} MB)")
