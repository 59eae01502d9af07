"""A sweep's records in ClickHouse (I/O): its row in `sweeps`, its
configurations, the per-configuration metrics of spec section 6 computed in
SQL from `sweep_trades` and `sweep_daily`, the walk-forward folds, and the
reads the report needs. Tables: `connectors.clickhouse.sweep_schema`;
definitions of the metrics: `connectors.clickhouse.analytics` (the same SQL
as a run's report, over daily rows instead of the per-minute curve).
"""
from __future__ import annotations

import json
import time
from datetime import date

from connectors.clickhouse.analytics import NY
from connectors.clickhouse.client import client_lock, insert_columns
from connectors.clickhouse.schema import DATABASE
from connectors.clickhouse.sweep_schema import EPOCH_ORDINAL, METRIC_COLUMNS, SWEEP_TABLES
from operators.walk_forward import ConfigSeries, TradeDay, WalkForward

CLEARED_ON_RERUN = [t for t in SWEEP_TABLES if t != "sweeps"]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def clear_sweep(client, sweep_id: str, database: str = DATABASE) -> None:
    """Delete a sweep's rows before a fresh sweep of its id (never on a resume)."""
    with client_lock(client):
        for table in CLEARED_ON_RERUN:
            client.command(f"DELETE FROM `{database}`.{table} WHERE sweep_id = {{s:String}}",
                           parameters={"s": sweep_id})


def _sweep_row(client, sweep_id: str, database: str) -> dict:
    rows = list(client.query(
        f"SELECT *, toUnixTimestamp64Milli(started_at) AS started_ms FROM `{database}`.sweeps FINAL "
        f"WHERE sweep_id = {{s:String}}", parameters={"s": sweep_id}).named_results())
    return rows[0] if rows else {}


def record_sweep(client, sweep_id: str, *, grid_json: str, base_config_json: str, source: str,
                 configs: int, shards: int, objective: str, detail: bool, status: str,
                 bar_count: int = 0, fresh: bool = False, database: str = DATABASE) -> None:
    """The sweep's row (a newer version replaces it). `fresh`: a new start
    (else started_at stays: a resume, or the end of the run)."""
    now = _now_ms()
    prev = _sweep_row(client, sweep_id, database)
    started = now if fresh or not prev else prev["started_ms"]
    insert_columns(client, "sweeps", {
        "sweep_id": [sweep_id], "grid_json": [grid_json], "base_config_json": [base_config_json],
        "source": [source], "configs": [configs], "shards": [shards], "objective": [objective],
        "detail": [detail], "started_at": [started],
        "finished_at": [None if status == "running" else now], "bar_count": [bar_count],
        "status": [status], "version": [max(now, prev.get("version", 0) + 1)]}, database)


def record_configs(client, sweep_id: str, rows: list, database: str = DATABASE) -> None:
    """rows: (config_id, {axis path: value}, TradingConfig)."""
    insert_columns(client, "sweep_configs", {
        "sweep_id": [sweep_id] * len(rows), "config_id": [r[0] for r in rows],
        "axis_values_json": [json.dumps(r[1]) for r in rows],
        "config_json": [r[2].model_dump_json() for r in rows],
        "initial_cash": [float(r[2].risk.initial_cash) for r in rows]}, database)


# Float sums run over arrays sorted by a row's identity (arraySort, then
# arraySum left to right): the same value whatever the parts, merges and
# threads a table's rows went through (a resumed sweep writes other parts
# than an uninterrupted one). The definitions are analytics.performance's;
# Sharpe's deviation is the two-pass sample formula, as operators.walk_forward.
_TRADES_SQL = """
    SELECT config_id,
        arraySort(groupArray((exit_time, entry_time, symbol, strategy_id, trade_id, pnl, return_pct))) AS tt,
        arrayMap(x -> x.6, tt) AS pnls, arrayMap(x -> x.7, tt) AS rets,
        length(tt) AS trades, arrayCount(p -> p > 0, pnls) AS wins, trades - wins AS losses,
        if(trades > 0, wins / trades, NULL) AS win_rate, arraySum(pnls) AS total_pnl,
        arraySum(arrayFilter(p -> p > 0, pnls)) AS gross_win,
        arraySum(arrayFilter(p -> p <= 0, pnls)) AS gross_loss,
        if(gross_loss < 0, gross_win / abs(gross_loss), NULL) AS profit_factor,
        if(wins > 0, gross_win / wins, NULL) AS avg_win,
        if(wins > 0, arraySum(arrayFilter((r, p) -> p > 0, rets, pnls)) / wins, NULL) AS avg_win_pct,
        if(losses > 0, gross_loss / losses, NULL) AS avg_loss,
        if(losses > 0, arraySum(arrayFilter((r, p) -> p <= 0, rets, pnls)) / losses, NULL) AS avg_loss_pct,
        if(trades > 0, total_pnl / trades, NULL) AS expectancy,
        if(losses > 0, arrayMin(arrayFilter(p -> p <= 0, pnls)), NULL) AS max_loss_per_trade
    FROM {db}.sweep_trades FINAL {where} GROUP BY config_id"""
_DAILY_SQL = """
    SELECT config_id, arraySort(groupArray((day, equity, daily_return, max_drawdown, exposure_sum))) AS d,
        length(d) AS trading_days, d[-1].2 AS final_equity,
        arrayMax(arrayMap(x -> x.4, d)) AS max_dd,
        arrayMap(x -> x.3, d) AS r, arraySum(r) / trading_days AS mean_daily_return,
        if(trading_days > 1, sqrt(arraySum(arrayMap(x -> (x - mean_daily_return) * (x - mean_daily_return), r))
                                  / (trading_days - 1)), NULL) AS std_daily_return,
        if(trading_days > 1 AND std_daily_return > 0,
           mean_daily_return / std_daily_return * sqrt(252), NULL) AS sharpe,
        if(sum(minutes) > 0, sum(minutes_in_market) / sum(minutes), NULL) AS exposure,
        if(sum(exposure_minutes) > 0, arraySum(arrayMap(x -> x.5, d)) / sum(exposure_minutes), NULL)
            AS avg_exposure_pct
    FROM {db}.sweep_daily FINAL {where} GROUP BY config_id"""
CHUNK = 500  # configurations per query: arrays of every trade of a chunk are held at once


def compute_metrics(client, sweep_id: str, database: str = DATABASE) -> None:
    """Per configuration, the section-6 metrics in SQL (definitions as a run's
    report, analytics.performance), into `sweep_metrics`."""
    db = f"`{database}`"
    ids = [r[0] for r in client.query(f"SELECT config_id FROM {db}.sweep_configs FINAL "
                                      f"WHERE sweep_id = {{s:String}}", parameters={"s": sweep_id}).result_rows]
    where = "WHERE sweep_id = {s:String} AND config_id IN {ids:Array(String)}"
    for i in range(0, len(ids), CHUNK):
        sql = f"""
            INSERT INTO {db}.sweep_metrics ({', '.join(['sweep_id', 'config_id', *METRIC_COLUMNS])})
            SELECT {{s:String}}, c.config_id,
                ifNull(t.trades, 0), ifNull(d.trading_days, 0),
                if(d.trading_days > 0, ifNull(t.trades, 0) / d.trading_days, NULL),
                ifNull(t.wins, 0), ifNull(t.losses, 0), t.win_rate, t.avg_win, t.avg_win_pct,
                t.avg_loss, t.avg_loss_pct, t.profit_factor, t.expectancy, t.max_loss_per_trade,
                ifNull(t.total_pnl, 0), c.initial_cash, d.final_equity,
                d.final_equity / c.initial_cash - 1, d.max_dd, d.sharpe,
                d.mean_daily_return, d.std_daily_return, d.exposure, d.avg_exposure_pct
            FROM (SELECT config_id, initial_cash FROM {db}.sweep_configs FINAL {where}) AS c
            LEFT JOIN ({_TRADES_SQL.format(db=db, where=where)}) AS t ON t.config_id = c.config_id
            LEFT JOIN ({_DAILY_SQL.format(db=db, where=where)}) AS d ON d.config_id = c.config_id
            SETTINGS join_use_nulls = 1"""
        with client_lock(client):
            client.command(sql, parameters={"s": sweep_id, "ids": ids[i:i + CHUNK]})


def record_walk_forward(client, sweep_id: str, wf: WalkForward, database: str = DATABASE) -> None:
    rows = wf.folds
    if not rows:
        return
    insert_columns(client, "walk_forward", {
        "sweep_id": [sweep_id] * len(rows), "fold": [r.fold.number for r in rows],
        "train_start": [date.fromordinal(r.fold.train[0]) for r in rows],
        "train_end": [date.fromordinal(r.fold.train[-1]) for r in rows],
        "test_start": [date.fromordinal(r.fold.test[0]) for r in rows],
        "test_end": [date.fromordinal(r.fold.test[-1]) for r in rows],
        "train_days": [len(r.fold.train) for r in rows], "test_days": [len(r.fold.test) for r in rows],
        "config_id": [r.config_id for r in rows], "objective": [wf.spec.objective] * len(rows),
        "train_objective": [r.train_objective for r in rows],
        "test_return": [r.test.total_return for r in rows], "test_sharpe": [r.test.sharpe for r in rows],
        "test_trades": [r.test.trades for r in rows], "test_win_rate": [r.test.win_rate for r in rows],
        "test_profit_factor": [r.test.profit_factor for r in rows],
        "test_max_drawdown": [r.test.max_drawdown for r in rows]}, database)


# ------------------------------------------------------------------ reads
def sweep_info(client, sweep_id: str, database: str = DATABASE) -> dict:
    """The sweep's row (times ISO 8601 UTC), or {} when unknown."""
    row = _sweep_row(client, sweep_id, database)
    if row:
        for k in ("started_at", "finished_at"):
            if row.get(k) is not None:
                row[k] = row[k].strftime("%Y-%m-%dT%H:%M:%SZ")
    return row


def latest_sweep_id(client, database: str = DATABASE) -> str | None:
    rows = client.query(f"SELECT sweep_id FROM `{database}`.sweeps FINAL "
                        f"ORDER BY started_at DESC, sweep_id DESC LIMIT 1").result_rows
    return rows[0][0] if rows else None


def configs(client, sweep_id: str, database: str = DATABASE) -> list[dict]:
    """[{config_id, values: {axis: value}, config_json, initial_cash}] in config_id order."""
    rows = client.query(
        f"SELECT config_id, axis_values_json, config_json, initial_cash FROM `{database}`.sweep_configs "
        f"FINAL WHERE sweep_id = {{s:String}}", parameters={"s": sweep_id}).result_rows
    out = [{"config_id": c, "values": json.loads(v), "config_json": j, "initial_cash": cash}
           for c, v, j, cash in rows]
    return sorted(out, key=lambda r: _number(r["config_id"]))


def metrics(client, sweep_id: str, database: str = DATABASE) -> dict[str, dict]:
    """config_id -> its section-6 metrics."""
    rows = client.query(
        f"SELECT config_id, {', '.join(METRIC_COLUMNS)} FROM `{database}`.sweep_metrics FINAL "
        f"WHERE sweep_id = {{s:String}}", parameters={"s": sweep_id}).named_results()
    return {r["config_id"]: r for r in rows}


def series(client, sweep_id: str, database: str = DATABASE) -> list[ConfigSeries]:
    """Every configuration's daily returns and trades by exit day, for walk-forward."""
    by_id: dict[str, ConfigSeries] = {}
    days = client.query(
        f"SELECT config_id, toInt32(day), daily_return FROM `{database}`.sweep_daily FINAL "
        f"WHERE sweep_id = {{s:String}} ORDER BY config_id, day", parameters={"s": sweep_id})
    epoch = EPOCH_ORDINAL
    for cid, day, ret in days.result_rows:
        s = by_id.get(cid)
        if s is None:
            s = by_id[cid] = ConfigSeries(cid, {})
        s.returns[epoch + day] = ret
    ids = sorted(by_id)
    for i in range(0, len(ids), CHUNK):  # sums in a fixed order (see _TRADES_SQL)
        trades = client.query(
            f"SELECT config_id, toInt32(toDate(exit_time, '{NY}')) AS d, "
            f"arrayMap(x -> x.2, arraySort(groupArray((trade_id, pnl)))) AS pnls, length(pnls), "
            f"arrayCount(p -> p > 0, pnls), arraySum(arrayFilter(p -> p > 0, pnls)), "
            f"arraySum(arrayFilter(p -> p <= 0, pnls)) FROM `{database}`.sweep_trades FINAL "
            f"WHERE sweep_id = {{s:String}} AND config_id IN {{ids:Array(String)}} GROUP BY config_id, d",
            parameters={"s": sweep_id, "ids": ids[i:i + CHUNK]})
        for cid, day, _pnl, n, wins, gross_win, gross_loss in trades.result_rows:
            by_id[cid].trade_days[epoch + day] = TradeDay(n, wins, gross_win, gross_loss)
    return sorted(by_id.values(), key=lambda s: _number(s.config_id))


def folds(client, sweep_id: str, database: str = DATABASE) -> list[dict]:
    return list(client.query(
        f"SELECT * EXCEPT (sweep_id) FROM `{database}`.walk_forward FINAL WHERE sweep_id = {{s:String}} "
        f"ORDER BY fold", parameters={"s": sweep_id}).named_results())


def _number(config_id: str) -> int:
    return int(config_id[1:]) if config_id[1:].isdigit() else 0
