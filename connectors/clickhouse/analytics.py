"""Run reports (spec section 6) computed in ClickHouse SQL over the tables of
`connectors.clickhouse`; every read uses FINAL so replayed rows count once.

Definitions (fractions, not percent):
- win: pnl > 0; loss: pnl <= 0 (as the risk rules count them).
- profit factor: sum of winning pnl / abs(sum of losing pnl); None when the
  losing pnl sums to 0 (no losses, or no trades): undefined rather than inf,
  so reports stay JSON/CSV friendly.
- max loss per trade: the most negative pnl among losses (None without losses).
- total return: final equity / initial cash - 1; initial cash is the run's
  config_json `risk.initial_cash` (100,000 when absent).
- max drawdown: max over minutes of 1 - equity / peak, where peak is the
  running maximum of the `equity` curve, starting at the initial cash.
- Sharpe: daily return = last equity of an America/New_York day / previous
  day's last equity - 1 (first day vs initial cash);
  mean / stddev_samp * sqrt(252); None with fewer than two days or no spread.
- exposure: fraction of equity minutes with at least one open position
  (time in the market); `avg_exposure_pct` adds the mean of
  open-position market value / equity over those minutes.
- trading days: distinct America/New_York dates in the equity curve.
- breakdown by day groups trades by the New York date of their exit.
"""
from __future__ import annotations

import csv
import json
import math
import os
from typing import Any, Literal

from connectors.clickhouse.runs import RunAttempt, attempts, pick_current, public_id
from connectors.clickhouse.runs import data_id as _data_id
from connectors.clickhouse.schema import DATABASE

DEFAULT_INITIAL_CASH = 100_000.0
NY = "America/New_York"
ISO = "'%Y-%m-%dT%H:%i:%SZ', 'UTC'"
TRADE_CSV_COLUMNS = ["run_id", "symbol", "strategy", "qty", "entry_time", "entry_price", "exit_time",
                     "exit_price", "exit_reason", "pnl", "return_pct"]


def _rows(client, sql: str, run_id: str | None = None, **params) -> list[dict]:
    if run_id is not None:
        params["run_id"] = run_id
    return list(client.query(sql, parameters=params).named_results())


def _one(client, sql: str, run_id: str | None = None, **params) -> dict:
    rows = _rows(client, sql, run_id, **params)
    return rows[0] if rows else {}


def _f(db: str, table: str) -> str:
    """FROM clause of one run's rows of a table (`run_id` = the attempt's data id)."""
    return f"FROM `{db}`.`{table}` FINAL WHERE run_id = {{run_id:String}}"


# Every public function takes `run`: a run id (its current attempt, see
# connectors.clickhouse.runs) or a RunAttempt. A report of several queries
# passes the RunAttempt it resolved once, so all its numbers are of one attempt.


def latest_run_id(client, database: str = DATABASE) -> str | None:
    row = _one(client, f"SELECT run_id FROM `{database}`.runs FINAL ORDER BY started_at DESC, run_id DESC LIMIT 1")
    return row.get("run_id")


def iso_ms(ms: int | None) -> str | None:
    if ms is None:
        return None
    from datetime import datetime, timezone
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def attempt_info(a: RunAttempt) -> dict:
    """An attempt as plain values (times ISO 8601 UTC)."""
    return {"run_id": a.run_id, "attempt": a.attempt, "status": a.status, "mode": a.mode,
            "started_at": iso_ms(a.started_at), "finished_at": iso_ms(a.finished_at),
            "bar_count": a.bar_count, "source": a.source, "detail": a.detail,
            "config_json": a.config_json, "process_gone": a.process_gone()}


def run_info(client, run, database: str = DATABASE) -> dict:
    """The run's current attempt (see connectors.clickhouse.runs) as plain
    values, with `attempts` (how many) and `latest` (the newest attempt,
    when it is not the current one); {} when the run is unknown."""
    history = attempts(client, public_id(run), database)
    if not history:
        return {}
    current = run if isinstance(run, RunAttempt) else pick_current(history)
    info = attempt_info(current)
    info["attempts"] = len(history)
    if history[-1].attempt != current.attempt:
        info["latest"] = attempt_info(history[-1])
    return info


def initial_cash(client, run, database: str = DATABASE) -> float:
    if isinstance(run, RunAttempt):
        config = run.config_json or "{}"
    else:
        config = run_info(client, run, database).get("config_json") or "{}"
    try:
        cash = float((json.loads(config).get("risk") or {}).get("initial_cash") or 0)
    except (ValueError, TypeError, AttributeError):
        cash = 0.0
    return cash if cash > 0 else DEFAULT_INITIAL_CASH


def trade_stats_sql() -> str:
    """Trade statistics (win: pnl > 0) as SELECT expressions over a trades table."""
    return f"""count() AS trades, countIf(pnl > 0) AS wins, countIf(pnl <= 0) AS losses,
        if(trades > 0, wins / trades, NULL) AS win_rate, sum(pnl) AS total_pnl,
        sumIf(pnl, pnl > 0) AS gross_win, sumIf(pnl, pnl <= 0) AS gross_loss,
        if(gross_loss < 0, gross_win / abs(gross_loss), NULL) AS profit_factor"""


def performance(client, run, database: str = DATABASE) -> dict:
    """Overall metrics of a run (see the module docstring for definitions)."""
    cash = initial_cash(client, run, database)
    run_id = _data_id(client, run, database)
    t = _one(client, f"""
        SELECT {trade_stats_sql()},
            avgIfOrNull(pnl, pnl > 0) AS avg_win, avgIfOrNull(return_pct, pnl > 0) AS avg_win_pct,
            avgIfOrNull(pnl, pnl <= 0) AS avg_loss, avgIfOrNull(return_pct, pnl <= 0) AS avg_loss_pct,
            avgOrNull(pnl) AS expectancy, minIfOrNull(pnl, pnl <= 0) AS max_loss_per_trade
        {_f(database, 'trades')}""", run_id)
    eq = f"(SELECT ts, equity, open_positions, exposure {_f(database, 'equity')})"
    e = _one(client, f"""
        SELECT count() AS minutes, uniqExact(toDate(ts, '{NY}')) AS trading_days,
            if(minutes > 0, argMax(equity, ts), NULL) AS final_equity,
            if(minutes > 0, countIf(open_positions > 0) / minutes, NULL) AS time_in_market,
            avgIfOrNull(exposure / equity, equity != 0) AS avg_exposure_pct
        FROM {eq}""", run_id)
    dd = _one(client, f"""
        SELECT maxOrNull(greatest(0., 1 - equity / greatest(peak, {{cash:Float64}}))) AS max_drawdown
        FROM (SELECT equity, max(equity) OVER (ORDER BY ts ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
                  AS peak FROM {eq})""", run_id, cash=cash)
    sr = _one(client, f"""
        SELECT count() AS days, avgOrNull(r) AS mean_daily_return,
            if(days > 1, stddevSamp(r), NULL) AS std_daily_return,
            if(days > 1 AND std_daily_return > 0, mean_daily_return / std_daily_return * sqrt(252), NULL)
                AS sharpe
        FROM (SELECT eq / lagInFrame(eq, 1, {{cash:Float64}}) OVER
                  (ORDER BY day ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING) - 1 AS r
              FROM (SELECT toDate(ts, '{NY}') AS day, argMax(equity, ts) AS eq FROM {eq} GROUP BY day))
        """, run_id, cash=cash)
    days = e.get("trading_days") or 0
    final = e.get("final_equity")
    return {
        "run_id": public_id(run),
        "trades": t["trades"], "trading_days": days,
        "trades_per_day": t["trades"] / days if days else None,
        "wins": t["wins"], "losses": t["losses"], "win_rate": t["win_rate"],
        "avg_win": t["avg_win"], "avg_win_pct": t["avg_win_pct"],
        "avg_loss": t["avg_loss"], "avg_loss_pct": t["avg_loss_pct"],
        "profit_factor": t["profit_factor"], "expectancy": t["expectancy"],
        "max_loss_per_trade": t["max_loss_per_trade"], "total_pnl": t["total_pnl"],
        "initial_cash": cash, "final_equity": final,
        "total_return": final / cash - 1 if final is not None else None,
        "max_drawdown": dd.get("max_drawdown"),
        "sharpe": sr.get("sharpe"), "mean_daily_return": sr.get("mean_daily_return"),
        "std_daily_return": sr.get("std_daily_return"),
        "exposure": e.get("time_in_market"), "avg_exposure_pct": e.get("avg_exposure_pct"),
        "equity_minutes": e.get("minutes", 0),
    }


_GROUP = {"strategy": "strategy_id", "exit_reason": "exit_reason", "symbol": "symbol",
          "day": f"toString(toDate(exit_time, '{NY}'))"}


def breakdown(client, run, by: Literal["strategy", "exit_reason", "symbol", "day"],
              database: str = DATABASE) -> list[dict]:
    """Per group (ordered by key): trades, wins, win_rate, pnl, avg_return_pct,
    profit_factor (plus gross_win/gross_loss)."""
    if by not in _GROUP:
        raise ValueError(f"breakdown by {by!r}: expected one of {', '.join(_GROUP)}")
    run_id = _data_id(client, run, database)
    rows = _rows(client, f"""
        SELECT {_GROUP[by]} AS key, {trade_stats_sql()}, avg(return_pct) AS avg_return_pct
        {_f(database, 'trades')} GROUP BY key ORDER BY key""", run_id)
    for r in rows:
        r["pnl"] = r.pop("total_pnl")
    return rows


def stored_bars(client, run, database: str = DATABASE) -> int:
    """Bars stored for the run (a run id or one of its attempts), each once."""
    run_id = _data_id(client, run, database)
    return int(_one(client, f"SELECT count() AS n {_f(database, 'bars')}", run_id)["n"])


def dead_letters_by_reason(client, run, database: str = DATABASE) -> dict[str, int]:
    """The run's dead-lettered rows counted by reason."""
    run_id = _data_id(client, run, database)
    rows = _rows(client, f"SELECT reason, count() AS n {_f(database, 'dead_letters')} GROUP BY reason "
                 f"ORDER BY reason", run_id)
    return {r["reason"]: int(r["n"]) for r in rows}


def counts(client, run, database: str = DATABASE) -> dict:
    """Rows per table of a run; rejections and dead letters also by reason."""
    run_id = _data_id(client, run, database)
    def n(table: str, cond: str = "1") -> str:
        return f"(SELECT count() {_f(database, table)} AND {cond})"
    c = _one(client, f"""
        SELECT {n('bars')} AS bars, {n('signals', "filtered_reason = ''")} AS signals,
            {n('signals', "filtered_reason != ''")} AS filtered_signals, {n('orders')} AS orders,
            {n('fills')} AS fills, {n('trades')} AS trades, {n('equity')} AS equity_points,
            {n('rejections')} AS rejections, {n('dead_letters')} AS dead_letters""", run_id)
    for table in ("rejections", "dead_letters"):
        rows = _rows(client, f"SELECT reason, count() AS n {_f(database, table)} GROUP BY reason ORDER BY reason",
                     run_id)
        c[f"{table}_by_reason"] = {r["reason"]: r["n"] for r in rows}
    return c


_EXPORTS: dict[str, tuple[list[str], str]] = {
    "trades.csv": (TRADE_CSV_COLUMNS, f"""
        SELECT run_id, symbol, strategy_id, qty, formatDateTime(entry_time, {ISO}), entry_price,
            formatDateTime(exit_time, {ISO}), exit_price, exit_reason, pnl, return_pct
        {{src}} ORDER BY exit_time, entry_time, symbol, strategy_id, trade_id"""),
    "orders.csv": (["run_id", "order_id", "strategy", "symbol", "side", "qty", "decided_time",
                    "decision_price", "intent"], f"""
        SELECT run_id, order_id, strategy_id, symbol, side, qty, formatDateTime(decided_ts, {ISO}),
            decision_price, intent
        {{src}} ORDER BY decided_ts, symbol, strategy_id, order_id"""),
    "fills.csv": (["run_id", "order_id", "strategy", "symbol", "side", "qty", "time", "price",
                   "commission", "reason"], f"""
        SELECT run_id, order_id, strategy_id, symbol, side, qty, formatDateTime(ts, {ISO}), price,
            commission, reason
        {{src}} ORDER BY ts, symbol, strategy_id, order_id"""),
    "equity.csv": (["run_id", "time", "cash", "equity", "open_positions", "exposure"], f"""
        SELECT run_id, formatDateTime(ts, {ISO}), cash, equity, open_positions, exposure
        {{src}} ORDER BY ts"""),
    "rejections.csv": (["run_id", "strategy", "symbol", "time", "reason", "price", "detail"], f"""
        SELECT run_id, strategy_id, symbol, formatDateTime(ts, {ISO}), reason, price, detail
        {{src}} ORDER BY ts, symbol, strategy_id, reason"""),
    "dead_letters.csv": (["run_id", "source", "symbol", "time", "reason", "payload"], f"""
        SELECT run_id, source, symbol, formatDateTime(ts, {ISO}), reason, payload
        {{src}} ORDER BY ts, symbol, source, reason"""),
    "controls.csv": (["run_id", "control_id", "action", "flatten", "time", "who", "why",
                      "exits_queued", "entries_canceled"], f"""
        SELECT run_id, control_id, action, flatten, formatDateTime(ts, {ISO}), who, why,
            exits_queued, entries_canceled
        {{src}} ORDER BY ts, control_id"""),
}


# prices to 1e-6, money to cents, fractions to 1e-8 (0.000001 %)
MONEY = {"pnl", "total_pnl", "avg_win", "avg_loss", "expectancy", "max_loss_per_trade", "initial_cash",
         "final_equity", "gross_win", "gross_loss", "cash", "equity", "exposure", "commission",
         "live_pnl", "backtest_pnl", "pnl_diff", "total_pnl_live", "total_pnl_backtest",
         "total_pnl_diff", "matched_pnl_diff"}
PRICES = {"price", "entry_price", "exit_price", "decision_price", "stop_price", "target_price",
          "live_entry_price", "backtest_entry_price", "live_exit_price", "backtest_exit_price"}


def csv_value(column: str, v):
    """A CSV cell: floats rounded by what they are (see MONEY, PRICES)."""
    if isinstance(v, bool) or not isinstance(v, float):
        return "" if v is None else v
    if v != v:  # NaN
        return ""
    digits = 2 if column in MONEY else 6 if column in PRICES else 4 if column.endswith("_bps") else 8
    return repr(round(v, digits) + 0.0)  # + 0.0: no "-0.0"


def export_csv(client, run, out_dir: str, database: str = DATABASE) -> dict[str, int]:
    """Write trades/orders/fills/equity/rejections/dead_letters/controls CSVs of a run
    into out_dir; returns rows written per file. Floats are rounded by what
    they are (`csv_value`)."""
    os.makedirs(out_dir, exist_ok=True)
    data, public = _data_id(client, run, database), public_id(run)
    written = {}
    for name, (header, sql) in _EXPORTS.items():
        table = name[:-4]
        # the run id users know, not the attempt's data id
        sql = sql.format(src=_f(database, table)).replace("SELECT run_id,", "SELECT {public:String},", 1)
        rows = client.query(sql,
                            parameters={"run_id": data, "public": public}).result_rows
        written[name] = write_csv_file(os.path.join(out_dir, name), header, rows)
    return written


def write_csv_file(path: str, header: list, rows: list) -> int:
    """One CSV file of query rows, each value rounded by its column (`csv_value`); rows written."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(header)
        w.writerows([csv_value(c, v) for c, v in zip(header, row)] for row in rows)
    return len(rows)


def dead_letter_line(by_reason: dict) -> str | None:
    """One line on the bars set aside (None when there were none)."""
    n = sum(by_reason.values())
    if not n:
        return None
    reasons = ", ".join(f"{reason} {count:,}" for reason, count in sorted(by_reason.items()))
    return f"dead letters: {n:,} bar(s) set aside, never applied ({reasons})"


# ------------------------------------------------------------------ the text
def _fmt(v: Any, kind: str = "") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if kind == "%":
        return f"{v * 100:.2f}%"
    if kind == "$":
        return f"{v:,.2f}"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    def line(cells):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


_PERF = [("trades", "Trades", ""), ("trading_days", "Trading days", ""), ("trades_per_day", "Trades per day", ""),
         ("win_rate", "Win rate", "%"), ("avg_win", "Average win $", "$"), ("avg_win_pct", "Average win %", "%"),
         ("avg_loss", "Average loss $", "$"), ("avg_loss_pct", "Average loss %", "%"),
         ("profit_factor", "Profit factor", ""), ("expectancy", "Expectancy $", "$"),
         ("max_loss_per_trade", "Max loss per trade $", "$"), ("total_pnl", "Total P&L $", "$"),
         ("initial_cash", "Initial cash $", "$"), ("final_equity", "Final equity $", "$"),
         ("total_return", "Total return", "%"), ("max_drawdown", "Max drawdown", "%"),
         ("sharpe", "Sharpe (daily, sqrt 252)", ""), ("exposure", "Exposure (time in market)", "%"),
         ("avg_exposure_pct", "Avg exposure / equity", "%")]


def format_report(perf: dict, breakdowns: dict[str, list[dict]], counts: dict) -> str:
    """Plain-text report: performance, breakdowns (by name), row counts."""
    out = [f"Run {perf.get('run_id', '')}".rstrip(), "",
           _table(["Metric", "Value"], [[label, _fmt(perf.get(k), kind)] for k, label, kind in _PERF])]
    for name, rows in breakdowns.items():
        out += ["", f"By {name.replace('_', ' ')}",
                _table([name, "trades", "win rate", "pnl $", "avg return", "profit factor"],
                       [[str(r["key"]), str(r["trades"]), _fmt(r["win_rate"], "%"), _fmt(r["pnl"], "$"),
                         _fmt(r["avg_return_pct"], "%"), _fmt(r["profit_factor"])] for r in rows])]
    plain = [[k, str(v)] for k, v in counts.items() if not isinstance(v, dict)]
    out += ["", "Rows", _table(["table", "rows"], plain)]
    for k, v in counts.items():
        if isinstance(v, dict) and v:
            out += ["", k.replace("_", " ").capitalize(),
                    _table(["reason", "rows"], [[r, str(n)] for r, n in v.items()])]
    return "\n".join(out) + "\n"


def broker_summary(client, run) -> dict[str, list[list[str]]]:
    """The broker side of a trading run, from its order history
    (`broker_orders`): `requests`, the sink's and the relay's requests by
    intent and outcome (accepted, adopted after a restart, refused,
    skipped), with the decision's age when the sink took it (broker clock)
    and the call's duration (local clock), p50 / p99 in ms; `orders`, the
    orders by their first intent and current state (`broker_order_state`).
    Empty for a backtest."""
    run_id = _data_id(client, run)
    requests = client.query(
        "SELECT intent, event, count(), "
        "quantile(0.5)(decision_lag_ms), quantile(0.99)(decision_lag_ms), "
        "quantile(0.5)(submit_ms), quantile(0.99)(submit_ms) "
        "FROM thousandcuts.broker_orders FINAL WHERE run_id = {r:String} "
        "AND event IN ('accepted', 'adopted', 'refused', 'skipped') "
        "GROUP BY intent, event ORDER BY intent, event", parameters={"r": run_id}).result_rows
    orders = client.query(
        "SELECT intent, status, count(), sum(filled_qty) FROM thousandcuts.broker_order_state "
        "WHERE run_id = {r:String} GROUP BY intent, status ORDER BY intent, status",
        parameters={"r": run_id}).result_rows
    if not requests and not orders:
        return {}
    return {"requests": [[intent, event, str(n), *(_ms(v) for v in lat)]
                         for intent, event, n, *lat in requests],
            "orders": [[intent or "-", status or "-", str(n), str(filled)]
                       for intent, status, n, filled in orders]}


def _ms(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:,.0f}"


def format_broker_summary(summary: dict[str, list[list[str]]]) -> str:
    return "\n".join([
        "", "Broker orders: requests (ms: decision bar close -> sink by the broker's clock, "
            "sink -> Alpaca's answer)",
        _table(["intent", "outcome", "requests", "lag p50", "lag p99", "submit p50", "submit p99"],
               summary.get("requests", [])),
        "", "Broker orders: current state (order history, latest event)",
        _table(["intent", "status", "orders", "filled qty"], summary.get("orders", []))]) + "\n"
