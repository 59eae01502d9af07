"""One run's report as data (`build_report`), and its text, JSON and CSV forms.

Every form states the run's status first: a run that has not finished
(running, interrupted, stopped, failed) says that its numbers are partial,
in the title of the text, in `run.complete` of the JSON and in `run.csv`.
The numbers are those of one attempt of the run, its current one
(connectors.clickhouse.runs): after an interrupted rerun, the previous
complete attempt, with a note about the newer one.
"""
from __future__ import annotations

import csv
import json
import os

from connectors.clickhouse import analytics
from connectors.clickhouse.analytics import ISO, NY, _f, _fmt, _rows, _table, csv_value
from connectors.clickhouse.runs import (
    FINISHED,
    STATUSES,
    RunAttempt,
    attempts,
    pick_current,
)
from connectors.clickhouse.schema import DATABASE

BREAKDOWNS = ("strategy", "exit_reason", "symbol", "day")
DAILY_HALTS = ("daily_loss_streak", "daily_drawdown", "halted")


class UnknownRun(LookupError):
    """No run of that id: the message names the nearest ones."""


def nearest_run_ids(client, run_id: str, database: str = DATABASE, n: int = 3) -> list[str]:
    import difflib

    from connectors.clickhouse.runs import run_ids

    known = run_ids(client, database)
    close = difflib.get_close_matches(run_id, known, n=n, cutoff=0.5)
    starts = sorted(k for k in known if k.startswith(run_id) or run_id.startswith(k))
    return list(dict.fromkeys(starts[:n] + close))[:n]


def unknown_run(client, run_id: str, database: str = DATABASE) -> UnknownRun:
    near = nearest_run_ids(client, run_id, database)
    hint = f"; did you mean {' or '.join(near)}?" if near else "; `cuts runs` lists the runs"
    return UnknownRun(f"unknown run id: {run_id}{hint}")


def resolve(client, run, database: str = DATABASE) -> tuple[RunAttempt, list[RunAttempt]]:
    """(the attempt a report reads, every attempt of the run); UnknownRun."""
    run_id = run.run_id if isinstance(run, RunAttempt) else run
    history = attempts(client, run_id, database)
    if not history:
        raise unknown_run(client, run_id, database)
    return (run if isinstance(run, RunAttempt) else pick_current(history)), history


def status_lines(run: dict, latest: dict | None) -> list[str]:
    """The status, as the first lines of a text report."""
    a = f"attempt {run['attempt']}"
    span = f"{run['started_at'] or '?'} -> {run['finished_at'] or 'now'}"
    if run["status"] == FINISHED:
        lines = [f"Status: finished ({a}, {span}, {run['bar_count']:,} bars)"]
    elif run["complete"]:  # a live run's normal end
        why = f" {run['detail']}" if run.get("detail") else ""
        lines = [f"Status: {run['status']}{why} ({a}, {span}, {run['bar_count']:,} bars): a live run, complete "
                 f"up to its stop"]
    else:
        why = f" {run['detail']}" if run.get("detail") else ""
        state = run["status"].upper()
        if run.get("process_gone"):
            state = "RUNNING? its process is gone (crashed or killed)"
        lines = [f"Status: {state}{why} ({a}, {span}): PARTIAL RESULTS, not a complete run",
                 f"        {run['status']}: {STATUSES.get(run['status'], '')}"]
    if latest is not None:
        lines.append(f"Note: a newer attempt ({latest['attempt']}, started {latest['started_at']}) is "
                     f"{latest['status']}{' ' + latest['detail'] if latest.get('detail') else ''}: these are the "
                     f"results of attempt {run['attempt']}, the last one that finished")
    return lines


def daily_halts(client, data_id: str, database: str = DATABASE) -> list[dict]:
    """Per New York day and halt reason: when the first entry was refused
    and how many were (a halt that refused nothing changed nothing)."""
    return _rows(client, f"""
        SELECT toString(toDate(ts, '{NY}')) AS day, reason, formatDateTime(min(ts), {ISO}) AS first_refused,
            count() AS entries_refused
        {_f(database, 'rejections')} AND reason IN {DAILY_HALTS}
        GROUP BY day, reason ORDER BY day, first_refused""", data_id)


def filtered_signals(client, data_id: str, database: str = DATABASE) -> list[dict]:
    """BUY signals the filter dropped, by strategy and reason."""
    return _rows(client, f"""
        SELECT strategy_id AS strategy, filtered_reason AS reason, count() AS signals,
            min(risk_reward) AS min_risk_reward, max(risk_reward) AS max_risk_reward,
            min(confidence) AS confidence
        {_f(database, 'signals')} AND filtered_reason != ''
        GROUP BY strategy, reason ORDER BY strategy, reason""", data_id)


def kill_switch(client, data_id: str, database: str = DATABASE) -> list[dict]:
    return _rows(client, f"""
        SELECT formatDateTime(ts, {ISO}) AS time, action, flatten, who, why
        {_f(database, 'controls')} ORDER BY ts, control_id""", data_id)


def build_report(client, run, database: str = DATABASE) -> dict:
    """Everything `cuts report` shows, as plain values (JSON-ready)."""
    current, history = resolve(client, run, database)
    info = analytics.attempt_info(current)
    info["complete"] = current.complete
    info["attempts"] = len(history)
    latest = analytics.attempt_info(history[-1]) if history[-1].attempt != current.attempt else None
    data = current.data_id
    return {
        "run": info,
        "latest_attempt": latest,
        "performance": analytics.performance(client, current, database),
        "breakdowns": {by: analytics.breakdown(client, current, by, database) for by in BREAKDOWNS},
        "counts": analytics.counts(client, current, database),
        "filtered_signals": filtered_signals(client, data, database),
        "daily_halts": daily_halts(client, data, database),
        "kill_switch": kill_switch(client, data, database),
        "broker_orders": analytics.broker_summary(client, current),
    }


def format_text(doc: dict) -> str:
    run = doc["run"]
    head = f"Run {run['run_id']}" + ("" if run["complete"] else f" -- {run['status'].upper()}: PARTIAL RESULTS")
    source = f"{run['mode']} of {run['source']}" if run.get("source") else run["mode"]
    out = [head, f"Source: {source}", *status_lines(run, doc["latest_attempt"]), ""]
    body = analytics.format_report(doc["performance"], doc["breakdowns"], doc["counts"])
    out.append(body.split("\n", 2)[2].rstrip("\n"))  # without its own title
    if doc["filtered_signals"]:
        out += ["", "Filtered signals (BUYs the signal filter dropped)",
                _table(["strategy", "reason", "signals", "risk/reward", "confidence"],
                       [[r["strategy"], r["reason"], str(r["signals"]), _range(r["min_risk_reward"],
                                                                             r["max_risk_reward"]),
                         _fmt(r["confidence"])] for r in doc["filtered_signals"]])]
    if doc["daily_halts"]:
        days = len({r["day"] for r in doc["daily_halts"]})
        out += ["", f"Daily halts: entries refused on {days} day(s) (first refused entry, New York day)",
                _table(["day", "reason", "first refused (UTC)", "entries refused"],
                       [[r["day"], r["reason"], r["first_refused"], str(r["entries_refused"])]
                        for r in doc["daily_halts"]])]
    if doc["kill_switch"]:
        out += ["", "Kill switch",
                _table(["time", "action", "flatten", "who", "why"],
                       [[r["time"], r["action"], str(r["flatten"]), r["who"], r["why"]]
                        for r in doc["kill_switch"]])]
    if doc["broker_orders"]:
        out.append(analytics.format_broker_summary(doc["broker_orders"]).rstrip("\n"))
    if not run["complete"]:
        out += ["", f"PARTIAL RESULTS: run {run['run_id']} is {run['status']} (attempt {run['attempt']})."]
    return "\n".join(out) + "\n"


def _range(lo, hi) -> str:
    return _fmt(lo) if lo == hi else f"{_fmt(lo)}-{_fmt(hi)}"


def to_json(doc: dict) -> str:
    return json.dumps(doc, indent=1, default=str, allow_nan=False)


def write_rows(path: str, header: list[str], rows) -> int:
    n = 0
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(header)
        for row in rows:
            w.writerow([csv_value(c, v) for c, v in zip(header, row)])
            n += 1
    return n


def write_csv(doc: dict, out_dir: str) -> dict[str, int]:
    """The report's tables as CSV files in `out_dir`; rows written per file."""
    os.makedirs(out_dir, exist_ok=True)
    run = doc["run"]
    keep = [k for k in run if k != "config_json"]
    files = {"run.csv": (keep + ["config_json"], [[run[k] for k in keep] + [run["config_json"]]]),
             "summary.csv": (["metric", "value"], [[k, v] for k, v in doc["performance"].items()])}
    for by, rows in doc["breakdowns"].items():
        header = ["key", "trades", "wins", "losses", "win_rate", "pnl", "gross_win", "gross_loss",
                  "profit_factor", "avg_return_pct"]
        files[f"by_{by}.csv"] = ([by] + header[1:], [[r.get(k) for k in header] for r in rows])
    for name in ("filtered_signals", "daily_halts", "kill_switch"):
        rows = doc[name]
        header = list(rows[0]) if rows else {
            "filtered_signals": ["strategy", "reason", "signals", "min_risk_reward", "max_risk_reward",
                                 "confidence"],
            "daily_halts": ["day", "reason", "first_refused", "entries_refused"],
            "kill_switch": ["time", "action", "flatten", "who", "why"]}[name]
        files[f"{name}.csv"] = (header, [[r[k] for k in header] for r in rows])
    counts = doc["counts"]
    files["counts.csv"] = (["table", "reason", "rows"],
                           [[k, "", v] for k, v in counts.items() if not isinstance(v, dict)]
                           + [[k.removesuffix("_by_reason"), r, n] for k, v in counts.items()
                              if isinstance(v, dict) for r, n in v.items()])
    written = {}
    for name, (header, rows) in files.items():
        if name == "summary.csv":  # one metric a row: round each by its name
            with open(os.path.join(out_dir, name), "w", newline="", encoding="utf-8") as fh:
                w = csv.writer(fh, lineterminator="\n")
                w.writerow(header)
                money = {k for k, _label, kind in analytics._PERF if kind == "$"}
                w.writerows([k, csv_value("pnl" if k in money else "ratio", v)] for k, v in rows)
            written[name] = len(rows)
        else:
            written[name] = write_rows(os.path.join(out_dir, name), header, rows)
    return written
