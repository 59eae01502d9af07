"""Suite-wide set-up.

The compiled portfolio step is compiled once, here, before any test runs:
the first `cuts` process of a fresh checkout otherwise compiles it and says
so on stderr, and which test that is depends on the order tests run in
(tests that count the lines a command prints must not). Concurrent first
compiles into one cache are safe (tests/test_compiled_portfolio.py)."""

import pytest


@pytest.fixture(scope="session", autouse=True)
def compiled_portfolio_step_in_cache():
    from dataflows.runner import warm_portfolio_step

    warm_portfolio_step()
