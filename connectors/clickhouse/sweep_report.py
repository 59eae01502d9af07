"""A sweep's report and CSV files, from its ClickHouse records.

The report: the top 10 configurations by the objective (the grid's
walk-forward objective, else Sharpe) over the whole period, the best value
of each axis (highest mean objective over the configurations that have it),
and with walk-forward the folds and the out-of-sample metrics beside those of
the in-sample best. Ranking and walk-forward use `operators.walk_forward`
(undefined last, ties to the lowest config_id); the other metrics come from
`sweep_metrics` (SQL).
"""
from __future__ import annotations

import json
import os

from connectors.clickhouse import sweeps as records
from connectors.clickhouse.analytics import _EXPORTS, ISO, TRADE_CSV_COLUMNS, _fmt, _table, write_csv_file
from connectors.clickhouse.schema import DATABASE
from connectors.clickhouse.sweep_schema import METRIC_COLUMNS
from operators.grid import WalkForwardSpec
from operators.walk_forward import objective, rank, walk_forward

TOP = 10
_BY_NUMBER = "length(config_id), config_id"  # c999 before c1000


def _grid(info: dict) -> tuple[list[str], WalkForwardSpec | None]:
    grid = json.loads(info["grid_json"])
    wf = grid.get("walk_forward")
    return list(grid["axes"]), (WalkForwardSpec.model_validate(wf) if wf else None)


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float, str)):
        return str(v)
    return json.dumps(v)


_METRICS = [("total_return", "return", "%"), ("max_drawdown", "max dd", "%"), ("sharpe", "sharpe", ""),
            ("trades", "trades", ""), ("win_rate", "win rate", "%"), ("profit_factor", "profit factor", "")]
_OBJ = {"sharpe": ("sharpe", ""), "total_return": ("total return", "%"), "profit_factor": ("profit factor", "")}


def format_sweep_report(client, sweep_id: str, database: str = DATABASE) -> str:
    info = records.sweep_info(client, sweep_id, database)
    axes, spec = _grid(info)
    name = info["objective"]
    label, kind = _OBJ[name]
    cfgs = records.configs(client, sweep_id, database)
    mets = records.metrics(client, sweep_id, database)
    serieses = records.series(client, sweep_id, database)
    days = sorted(serieses[0].returns) if serieses else []
    values = {s.config_id: objective(s, days, name) for s in serieses}
    for c in cfgs:
        values.setdefault(c["config_id"], None)
    order = rank(values)
    by_id = {c["config_id"]: c for c in cfgs}
    out = [f"Sweep {sweep_id}: {len(cfgs)} configurations x {info['bar_count']:,} bars "
           f"({len(days)} trading days), status {info['status']}; objective {label}", ""]
    if info["status"] != "finished":  # never to be mistaken for a finished sweep's numbers
        out[:0] = [f"PARTIAL: sweep {sweep_id} is {info['status']}, not finished: these numbers cover only "
                   f"the bars it applied", ""]

    out.append(f"Top {min(TOP, len(order))} by {label} (whole period)")
    shown = [(k, lbl, kd) for k, lbl, kd in _METRICS if k != name]
    rows = [[str(i), cid, *(_value(by_id[cid]["values"].get(a)) for a in axes), _fmt(values[cid], kind),
             *(_fmt(mets.get(cid, {}).get(k), kd) for k, _, kd in shown)]
            for i, cid in enumerate(order[:TOP], start=1)]
    out.append(_table(["#", "config", *axes, label, *(lbl for _, lbl, _ in shown)], rows))

    top = order[0] if order else None
    out += ["", f"Best value of each axis (mean {label} over the configurations with that value; "
                f"* = the top configuration's)"]
    for a in axes:
        groups: dict = {}
        for c in cfgs:
            groups.setdefault(json.dumps(c["values"].get(a)), []).append(c["config_id"])
        lines, best = [], None
        for key, ids in groups.items():
            defined = [values[i] for i in ids if values[i] is not None]
            mean = sum(defined) / len(defined) if defined else None
            if mean is not None and (best is None or mean > best[1]):
                best = (key, mean)
            star = "*" if top in ids else ""
            lines.append([_value(json.loads(key)) + star, str(len(ids)), _fmt(mean, kind),
                          f"{_fmt(max(defined), kind)} ({rank({i: values[i] for i in ids})[0]})"
                          if defined else "-"])
        best_text = _value(json.loads(best[0])) if best else "-"
        out += ["", f"{a}: best {best_text}",
                _table(["value", "configs", f"mean {label}", f"best {label} (config)"], lines)]

    if spec is not None:
        out += ["", *_walk_forward_text(walk_forward(serieses, spec), spec, label, kind)]
    return "\n".join(out) + "\n"


def _walk_forward_text(wf, spec: WalkForwardSpec, label: str, kind: str) -> list[str]:
    from datetime import date

    def d(ordinal):
        return date.fromordinal(ordinal).isoformat()

    mode = "anchored" if spec.anchored else "rolling"
    out = [f"Walk-forward ({mode}, train {spec.train_days} days, test {spec.test_days} days, "
           f"objective {label}): {len(wf.folds)} fold(s)"]
    if not wf.folds:
        return out + ["  no fold: the sweep's days cannot hold one train and one test window"]
    out.append(_table(["fold", "train", "test", "config", f"train {label}", "test return", "test sharpe",
                       "test trades", "test win rate"],
                      [[str(f.fold.number), f"{d(f.fold.train[0])}..{d(f.fold.train[-1])}",
                        f"{d(f.fold.test[0])}..{d(f.fold.test[-1])}", f.config_id,
                        _fmt(f.train_objective, kind), _fmt(f.test.total_return, "%"), _fmt(f.test.sharpe),
                        str(f.test.trades), _fmt(f.test.win_rate, "%")] for f in wf.folds]))
    o, same, whole = wf.out_of_sample, wf.in_sample_best_on_test_days, wf.in_sample_best_overall
    metrics = [("days", "days", ""), ("total return", "total_return", "%"), ("sharpe", "sharpe", ""),
               ("max drawdown (day-end)", "max_drawdown", "%"), ("trades", "trades", ""),
               ("win rate", "win_rate", "%"), ("profit factor", "profit_factor", "")]
    out += ["", f"Out of sample (the selected configurations on their test days) beside the in-sample "
                f"best, {wf.in_sample_best} (best {label} over all days)",
            _table(["metric", "walk-forward", f"{wf.in_sample_best}, same days", f"{wf.in_sample_best}, all days"],
                   [[lbl, _fmt(getattr(o, k), kd), _fmt(getattr(same, k), kd), _fmt(getattr(whole, k), kd)]
                    for lbl, k, kd in metrics])]
    return out


def export_sweep_csv(client, sweep_id: str, out_dir: str, database: str = DATABASE) -> dict[str, int]:
    """configs.csv, trades.csv, metrics.csv, daily.csv, with --detail orders.csv,
    fills.csv and rejections.csv, with walk-forward folds.csv; floats rounded by
    what they are as in `cuts backtest --out` (`analytics.csv_value`),
    undefined values are empty."""
    os.makedirs(out_dir, exist_ok=True)
    info = records.sweep_info(client, sweep_id, database)
    axes, spec = _grid(info)
    db, p = f"`{database}`", {"s": sweep_id}
    where = "FINAL WHERE sweep_id = {s:String}"
    files = {
        "configs.csv": (["config_id", *axes],
                        [[c["config_id"], *(_value(c["values"].get(a)) for a in axes)]
                         for c in records.configs(client, sweep_id, database)]),
        "trades.csv": (["config_id", *TRADE_CSV_COLUMNS], client.query(f"""
            SELECT config_id, sweep_id, symbol, strategy_id, qty, formatDateTime(entry_time, {ISO}),
                entry_price, formatDateTime(exit_time, {ISO}), exit_price, exit_reason, pnl, return_pct
            FROM {db}.sweep_trades {where}
            ORDER BY {_BY_NUMBER}, exit_time, entry_time, symbol, strategy_id, trade_id""",
                                                                          parameters=p).result_rows),
        "metrics.csv": (["config_id", *METRIC_COLUMNS], client.query(
            f"SELECT config_id, {', '.join(METRIC_COLUMNS)} FROM {db}.sweep_metrics {where} "
            f"ORDER BY {_BY_NUMBER}", parameters=p).result_rows),
        "daily.csv": (["config_id", "day", "equity", "return"], client.query(
            f"SELECT config_id, toString(day), equity, daily_return FROM {db}.sweep_daily {where} "
            f"ORDER BY {_BY_NUMBER}, day", parameters=p).result_rows),
    }
    if info.get("detail"):  # the backtest's orders/fills/rejections.csv columns, after config_id
        for name, table in (("orders.csv", "sweep_orders"), ("fills.csv", "sweep_fills"),
                            ("rejections.csv", "sweep_rejections")):
            header, sql = _EXPORTS[name]
            sql = sql.replace("SELECT run_id,", "SELECT config_id, sweep_id,").replace(
                "ORDER BY", f"ORDER BY {_BY_NUMBER},")
            files[name] = (["config_id", *header], client.query(
                sql.format(src=f"FROM {db}.{table} {where}"), parameters=p).result_rows)
    if spec is not None:
        files["folds.csv"] = (
            ["fold", "train_start", "train_end", "test_start", "test_end", "config_id", "train_objective",
             "test_return", "test_sharpe", "test_trades", "test_win_rate", "test_profit_factor",
             "test_max_drawdown"],
            client.query(f"""
                SELECT fold, toString(train_start), toString(train_end), toString(test_start),
                    toString(test_end), config_id, train_objective, test_return, test_sharpe, test_trades,
                    test_win_rate, test_profit_factor, test_max_drawdown
                FROM {db}.walk_forward {where} ORDER BY fold""", parameters=p).result_rows)
    return {name: write_csv_file(os.path.join(out_dir, name), header, rows)
            for name, (header, rows) in files.items()}
