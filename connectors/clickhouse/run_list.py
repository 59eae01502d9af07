"""`cuts runs`: every run with its status, and one run in full (`--show`).

A run's row describes its current attempt (connectors.clickhouse.runs);
when a newer attempt did not finish, the status says so beside it.
"""
from __future__ import annotations

import hashlib
import json

from connectors.clickhouse.analytics import _fmt, _table, attempt_info
from connectors.clickhouse.report import resolve
from connectors.clickhouse.runs import RunAttempt, list_runs
from connectors.clickhouse.schema import DATABASE


def config_id(config_json: str) -> str:
    return hashlib.sha256((config_json or "").encode()).hexdigest()[:8] if config_json else "-"


def _trade_totals(client, data_ids: list[str], database: str) -> dict[str, tuple[int, float]]:
    if not data_ids:
        return {}
    rows = client.query(f"SELECT run_id, count(), sum(pnl) FROM `{database}`.trades FINAL "
                        f"WHERE run_id IN {{ids:Array(String)}} GROUP BY run_id",
                        parameters={"ids": data_ids}).result_rows
    return {r[0]: (int(r[1]), float(r[2])) for r in rows}


def status_text(current: RunAttempt, latest: RunAttempt) -> str:
    text = current.status
    if current.process_gone():
        text = "running? (process gone)"
    if latest.attempt != current.attempt:
        text += f" (attempt {latest.attempt} {latest.status})"
    return text


def run_rows(client, database: str = DATABASE) -> list[dict]:
    """One dict per run, the latest started first."""
    runs = list_runs(client, database)
    totals = _trade_totals(client, [c.data_id for c, _ in runs], database)
    out = []
    for current, latest in runs:
        info = attempt_info(current)
        trades, pnl = totals.get(current.data_id, (0, 0.0))
        out.append({"run_id": current.run_id, "mode": current.mode, "status": status_text(current, latest),
                    "complete": current.complete, "attempt": current.attempt,
                    "started_at": info["started_at"], "finished_at": info["finished_at"],
                    "bars": current.bar_count, "trades": trades, "pnl": pnl if trades else None,
                    "source": current.source, "config": config_id(current.config_json)})
    return out


def format_runs(rows: list[dict]) -> str:
    if not rows:
        return "no runs yet\n"
    return _table(["run id", "mode", "status", "started (UTC)", "ended (UTC)", "bars", "trades", "P&L $",
                   "source", "config"],
                  [[r["run_id"], r["mode"], r["status"], r["started_at"] or "-", r["finished_at"] or "-",
                    f"{r['bars']:,}", str(r["trades"]), _fmt(r["pnl"], "$"), r["source"] or "-", r["config"]]
                   for r in rows]) + "\n"


def run_details(client, run_id: str, database: str = DATABASE) -> dict:
    """One run: its current attempt, every attempt, trades and configuration."""
    current, history = resolve(client, run_id, database)
    trades, pnl = _trade_totals(client, [current.data_id], database).get(current.data_id, (0, 0.0))
    try:
        config = json.loads(current.config_json) if current.config_json else {}
    except ValueError:
        config = {"unreadable": current.config_json}
    info = attempt_info(current)
    info.pop("config_json")
    return {"run": {**info, "status": status_text(current, history[-1]), "complete": current.complete,
                    "trades": trades, "pnl": pnl if trades else None, "config_id": config_id(current.config_json)},
            "attempts": [{k: v for k, v in attempt_info(a).items() if k != "config_json"} | {"data_id": a.data_id}
                         for a in history],
            "config": config}


def format_run(details: dict) -> str:
    import yaml

    run = details["run"]
    lines = [f"Run {run['run_id']}", ""]
    for key in ("mode", "status", "attempt", "started_at", "finished_at", "bar_count", "trades", "pnl", "source",
                "detail", "config_id"):
        value = run.get(key)
        shown = _fmt(value, "$") if key == "pnl" else ("-" if value in (None, "") else str(value))
        lines.append(f"{key.replace('_', ' '):<12} {shown}")
    lines += ["", "Attempts",
              _table(["attempt", "status", "started (UTC)", "ended (UTC)", "bars", "detail"],
                     [[str(a["attempt"]), a["status"], a["started_at"] or "-", a["finished_at"] or "-",
                       f"{a['bar_count']:,}", a["detail"] or ""] for a in details["attempts"]]),
              "", "Configuration", yaml.safe_dump(details["config"], sort_keys=False).rstrip()]
    return "\n".join(lines) + "\n"
