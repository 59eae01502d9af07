"""Report pages: a run's numbers read from ClickHouse (`connectors.clickhouse`
analytics, tearsheet and compare, all SQL) drawn into one self-contained HTML
file (`connectors.html`)."""
from __future__ import annotations

import os
import tempfile

from connectors.clickhouse import analytics, compare, tearsheet
from connectors.html.tearsheet import render_tearsheet


def run_sheet(client, run_id: str, against: str | None = None, *,
              equity_points: int = tearsheet.EQUITY_DISPLAY_POINTS,
              candle_budget: int = tearsheet.CANDLE_BUDGET) -> dict:
    """Everything the tearsheet of `run_id` shows (and, with `against`, its
    comparison with that backtest), as `render_tearsheet` takes it."""
    perf = analytics.performance(client, run_id)
    minutes = tearsheet.candle_minutes(client, run_id, budget=candle_budget)
    return {
        "run": {k: v for k, v in analytics.run_info(client, run_id).items() if k != "config_json"},
        "metrics": {**perf, **tearsheet.extra_metrics(client, run_id, perf["max_drawdown"])},
        "equity": tearsheet.equity_curve(client, run_id, equity_points),
        "daily": tearsheet.daily(client, run_id),
        "monthly": tearsheet.monthly(client, run_id),
        "histogram": tearsheet.return_histogram(client, run_id),
        "breakdowns": {by: analytics.breakdown(client, run_id, by) for by in ("strategy", "exit_reason", "symbol")},
        "counts": analytics.counts(client, run_id),
        "candle_minutes": minutes,
        "candles": tearsheet.candles(client, run_id, minutes),
        "trades": tearsheet.trade_list(client, run_id),
        "comparison": compare.compare_runs(client, run_id, against) if against else None,
    }


def write_page(path: str, text: str) -> int:
    """Write atomically (a reader never sees half a page); bytes written."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    data = text.encode("utf-8")
    fd, tmp = tempfile.mkstemp(prefix=".report-", suffix=".html", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return len(data)


def write_run_page(client, run_id: str, path: str, against: str | None = None) -> int:
    """The tearsheet of `run_id` written to `path`; its size in bytes."""
    return write_page(path, render_tearsheet(run_sheet(client, run_id, against)))
