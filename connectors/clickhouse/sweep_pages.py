"""The sweep page's numbers and series, in ClickHouse SQL over the sweep
tables (`sweep_schema`; FINAL on every read). The page
(`connectors.html.sweep_page`) only draws what these return.

Definitions:
- a configuration's objective over the whole period is the `sweep_metrics`
  column of the sweep's objective (`sharpe`, `total_return`,
  `profit_factor`): over all days these are the spec 8 objectives. Ranking:
  highest first, undefined last, ties to the lowest config_id (as
  walk-forward selects).
- a configuration's equity curve: its `sweep_daily` equity, one point per
  trading day (a sweep keeps day-end equity, not every minute).
- out-of-sample equity: the walk-forward's selected configuration's daily
  returns on each fold's test days, chained from the in-sample best's
  initial cash (`cash * prod(1 + r)`); beside it the in-sample best (rank 1
  over the whole period) chained the same way over the same days.
"""
from __future__ import annotations

import json

import numpy as np

from connectors.clickhouse.schema import DATABASE
from operators.grid import OBJECTIVES
TOP_CURVES = 10
# metrics shown for every configuration (sweep_metrics columns)
CONFIG_METRICS = ("total_return", "sharpe", "max_drawdown", "profit_factor", "win_rate", "trades",
                  "expectancy", "exposure")
_ORDER = "length(config_id), config_id"  # c999 before c1000


def _where(table: str, database: str) -> str:
    return f"FROM `{database}`.`{table}` FINAL WHERE sweep_id = {{s:String}}"


def _rows(client, sql: str, sweep_id: str, **params) -> list[dict]:
    return list(client.query(sql, parameters={"s": sweep_id, **params}).named_results())


def ranking(client, sweep_id: str, objective: str, database: str = DATABASE) -> list[dict]:
    """Every configuration with its axis values (JSON text per axis), its
    objective and CONFIG_METRICS, best first."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective {objective!r}: expected one of {', '.join(OBJECTIVES)}")
    rows = _rows(client, f"""
        SELECT c.config_id AS config_id, c.axis_values_json AS axis_values_json,
            m.{objective} AS objective, {', '.join(f'm.{k} AS {k}' for k in CONFIG_METRICS)}
        FROM (SELECT config_id, axis_values_json {_where('sweep_configs', database)}) AS c
        LEFT JOIN (SELECT * {_where('sweep_metrics', database)}) AS m ON m.config_id = c.config_id
        ORDER BY isNull(objective), objective DESC, {_ORDER}
        SETTINGS join_use_nulls = 1""", sweep_id)
    for i, r in enumerate(rows, start=1):
        r["rank"] = i
        r["values"] = {axis: json.dumps(v) for axis, v in json.loads(r.pop("axis_values_json")).items()}
    return rows


def equity_curves(client, sweep_id: str, config_ids: list[str], database: str = DATABASE) -> dict:
    """Day-end equity of the given configurations: {config_id: {day, equity}}."""
    if not config_ids:
        return {}
    res = client.query(f"""
        SELECT config_id, groupArray(toString(day)) AS days, groupArray(equity) AS equity
        FROM (SELECT config_id, day, equity {_where('sweep_daily', database)} AND config_id IN {{ids:Array(String)}}
              ORDER BY config_id, day)
        GROUP BY config_id""", parameters={"s": sweep_id, "ids": list(config_ids)})
    return {cid: {"day": list(days), "equity": np.asarray(eq, dtype=float)}
            for cid, days, eq in res.result_rows}


def folds(client, sweep_id: str, database: str = DATABASE) -> list[dict]:
    """The walk-forward folds in order (walk_forward table), dates as text."""
    return _rows(client, f"""
        SELECT fold, toString(train_start) AS train_start, toString(train_end) AS train_end,
            toString(test_start) AS test_start, toString(test_end) AS test_end, train_days, test_days,
            config_id, objective, train_objective, test_return, test_sharpe, test_trades, test_win_rate,
            test_profit_factor, test_max_drawdown
        {_where('walk_forward', database)} ORDER BY fold""", sweep_id)


def out_of_sample(client, sweep_id: str, in_sample_best: str | None, database: str = DATABASE) -> dict:
    """Per test day of the folds: the selected configuration, its return, and
    the out-of-sample equity beside the in-sample best's over the same days
    (see the module docstring). Empty lists without folds."""
    res = client.query(f"""
        SELECT toString(d.day) AS day, w.fold AS fold, d.config_id AS config_id, d.daily_return AS ret,
            c.initial_cash * exp(sum(log1p(d.daily_return)) OVER (ORDER BY d.day ROWS UNBOUNDED PRECEDING))
                AS equity,
            c.initial_cash * exp(sum(log1p(b.daily_return)) OVER (ORDER BY d.day ROWS UNBOUNDED PRECEDING))
                AS in_sample_equity
        FROM (SELECT fold, config_id, test_start, test_end {_where('walk_forward', database)}) AS w
        INNER JOIN (SELECT config_id, day, daily_return {_where('sweep_daily', database)}) AS d
            ON d.config_id = w.config_id
        INNER JOIN (SELECT day, daily_return {_where('sweep_daily', database)} AND config_id = {{best:String}}) AS b
            ON b.day = d.day
        CROSS JOIN (SELECT initial_cash {_where('sweep_configs', database)} AND config_id = {{best:String}}) AS c
        WHERE d.day >= w.test_start AND d.day <= w.test_end
        ORDER BY d.day""", parameters={"s": sweep_id, "best": in_sample_best or ""})
    cols = dict(zip(res.column_names, zip(*res.result_rows))) if res.result_rows else {}
    return {name: list(cols.get(name, ())) for name in res.column_names}
