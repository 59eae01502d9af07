"""Report pages: a run's or a sweep's numbers read from ClickHouse
(`connectors.clickhouse` analytics, tearsheet, compare, sweep_pages: all SQL)
drawn into one self-contained HTML file (`connectors.html`)."""
from __future__ import annotations

import json
import os
import tempfile

from connectors.clickhouse import analytics, compare, sweep_pages, sweeps, tearsheet
from connectors.clickhouse.report import resolve
from connectors.html.sweep_page import render_sweep_page
from connectors.html.tearsheet import render_tearsheet


def run_sheet(client, run_id, against: str | None = None, *,
              equity_points: int = tearsheet.EQUITY_DISPLAY_POINTS,
              candle_budget: int = tearsheet.CANDLE_BUDGET) -> dict:
    """Everything the tearsheet of `run_id` shows (and, with `against`, its
    comparison with that backtest), as `render_tearsheet` takes it: every
    number of one attempt of the run, its current one (resolved once here;
    connectors.clickhouse.runs), whose status the page shows."""
    run_id, _history = resolve(client, run_id)
    perf = analytics.performance(client, run_id)
    minutes = tearsheet.candle_minutes(client, run_id, budget=candle_budget)
    return {
        "run": {k: v for k, v in analytics.run_info(client, run_id).items()
                if k not in ("config_json", "latest")},
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


def write_run_page(client, run_id, path: str, against: str | None = None) -> int:
    """The tearsheet of `run_id` written to `path`; its size in bytes."""
    return write_page(path, render_tearsheet(run_sheet(client, run_id, against)))


def sweep_sheet(client, sweep_id: str, top: int = sweep_pages.TOP_CURVES) -> dict:
    """Everything the page of `sweep_id` shows, as `render_sweep_page` takes it."""
    info = sweeps.sweep_info(client, sweep_id)
    objective = info["objective"]
    ranking = sweep_pages.ranking(client, sweep_id, objective)
    best = ranking[0]["config_id"] if ranking else None
    folds = sweep_pages.folds(client, sweep_id)
    return {
        "info": {k: v for k, v in info.items() if k not in ("grid_json", "base_config_json")},
        "objective": objective, "axes": list(json.loads(info["grid_json"])["axes"]),
        "ranking": ranking, "best": best,
        "curves": sweep_pages.equity_curves(client, sweep_id, [r["config_id"] for r in ranking[:top]]),
        "folds": folds,
        "oos": sweep_pages.out_of_sample(client, sweep_id, best) if folds and best else
        {k: [] for k in ("day", "fold", "config_id", "ret", "equity", "in_sample_equity")},
    }


def write_sweep_page(client, sweep_id: str, path: str) -> int:
    """The page of `sweep_id` written to `path`; its size in bytes."""
    return write_page(path, render_sweep_page(sweep_sheet(client, sweep_id)))
