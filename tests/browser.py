"""Report pages in a real browser: Debian's chromium, headless, driven by
Playwright (its own browser downloads are never used), with the network
cut off: every request that is not file:, data: or blob: is aborted and
recorded, so a page that needs the network fails its test.

Chromium is required in CI (`.ci/run` installs it and sets
CUTS_REQUIRE_BROWSER=1; CI=true does the same): there a missing browser is a
failure. On a developer machine without it the browser tests skip, saying
how to install it.
"""
from __future__ import annotations

import os
import pathlib
import shutil

import pytest

ARTIFACTS = pathlib.Path(__file__).resolve().parent / "artifacts"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
        "--host-resolver-rules=MAP * ~NOTFOUND"]


def chromium_path() -> str | None:
    for candidate in (os.environ.get("CUTS_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium"):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


def _browser_required() -> bool:
    return os.environ.get("CUTS_REQUIRE_BROWSER") == "1" or os.environ.get("CI", "").lower() == "true"


@pytest.fixture(scope="module")
def browser():
    path = chromium_path()
    if path is None:
        if _browser_required():
            pytest.fail("chromium is not installed but the browser tests are required here (.ci/run installs it)")
        pytest.skip("chromium not installed: `apt-get install chromium` (.ci/run installs it in CI)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=ARGS)
        yield b
        b.close()


class OpenPage:
    """A page opened offline from a file; `problems` collects console errors,
    page errors and every request that tried to leave the machine."""

    def __init__(self, browser, path, width: int = 1400, height: int = 900):
        self.problems: list[str] = []
        self.context = browser.new_context(viewport={"width": width, "height": height})
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("console", lambda m: m.type == "error" and self.problems.append(f"console: {m.text}"))
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.page.goto(pathlib.Path(path).resolve().as_uri())
        self.page.wait_for_function("() => document.body.dataset.ready", timeout=120_000)
        assert self.page.evaluate("document.body.dataset.ready") == "1", self.problems

    def _route(self, route):
        url = route.request.url
        if url.startswith(("file:", "data:", "blob:")):
            route.continue_()
        else:
            self.problems.append(f"network request: {url}")
            route.abort()

    def lengths(self, figure_id: str) -> list[int]:
        """Points of each trace of a chart as drawn (plotly's _fullData)."""
        return self.page.evaluate(
            "id => document.getElementById(id)._fullData.map(t => t._length ?? (t.z ? t.z.length : null))",
            figure_id)

    def screenshot(self, name: str) -> pathlib.Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def close(self):
        self.context.close()
