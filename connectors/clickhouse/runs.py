"""Run bookkeeping in ClickHouse (I/O): runs, their attempts and statuses.

A run id names one result: the default backtest id is derived from the bar
file and the configuration, so the same backtest has the same id. Each fresh
start of a bounded run (a backtest of a file, a replay of a topic) is a new
*attempt*, whose rows are stored under its own *data id*: the run id for
attempt 1, `{run_id}~{n}` for attempt n >= 2 (`~` is not allowed in a run
id, so a data id never names another run). An attempt resumed from its
recovery directory keeps its number and data id. A live run (`cuts run`) has
one attempt; a restart continues it.

Readers see exactly one attempt of a run, its *current* one
(`current_attempt`): the newest finished attempt, or, while none has
finished, the newest attempt with its status. An attempt becomes current by
one insert, its `finished` row (the switch is atomic); the other attempts
are then marked `replaced` and their rows deleted. So a rerun never destroys
the previous complete results before it has finished, an interrupted or
failed rerun leaves them current, and a replaced attempt's recovery
directory is refused (its rows are gone).

Statuses: running, finished, interrupted (a signal stopped a bounded run),
stopped (a live run's end), failed (an error), replaced.
`runs` keeps one row per run id (the latest start, for "the latest run");
`run_attempts` one row per attempt.
"""
from __future__ import annotations

import os
import re
import socket
import time
from dataclasses import dataclass, replace

from connectors.clickhouse.client import client_lock, insert_columns
from connectors.clickhouse.schema import DATABASE

FINISHED, RUNNING, REPLACED, STOPPED = "finished", "running", "replaced", "stopped"
STATUSES = {
    RUNNING: "being written now, or its process died without a word (crash, kill -9)",
    FINISHED: "complete: every bar of its source was applied",
    "interrupted": "stopped by Ctrl-C / SIGTERM before the end of its bars: partial",
    "stopped": "a live run that was stopped: complete up to its stop",
    "failed": "stopped by an error: partial",
    REPLACED: "an older attempt whose rows were deleted when a newer one finished",
}
RUN_TABLES = ("bars", "signals", "orders", "fills", "trades", "equity", "rejections", "dead_letters",
              "controls", "broker_orders")
ATTEMPT_MARK = "~"


class RunIdError(ValueError):
    """The run id is malformed, belongs to a run of another kind, or its
    attempt is gone: stop with this one-line message."""


RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}")


def check_run_id(run_id: str) -> str:
    if not RUN_ID_RE.fullmatch(run_id or ""):
        raise RunIdError(f"run id {run_id!r}: use 1-100 letters, digits, '_', '-', '.' or ':', "
                         f"starting with a letter or digit")
    return run_id


@dataclass(frozen=True)
class RunAttempt:
    run_id: str
    attempt: int
    data_id: str  # the run_id column of its rows in every run table
    mode: str  # backtest | replay | live
    status: str
    started_at: int | None = None  # epoch ms
    finished_at: int | None = None
    bar_count: int = 0
    config_json: str = ""
    source: str = ""  # the bar file or the topic
    detail: str = ""  # how it ended (the error or the signal)
    host: str = ""
    pid: int = 0
    version: int = 0

    @property
    def complete(self) -> bool:
        """Nothing is missing from its results: a finished run, or a live
        run that was stopped (a stop is how a live run ends)."""
        return self.status == FINISHED or (self.mode == "live" and self.status == STOPPED)

    def process_gone(self) -> bool:
        """Status `running`, but its process is not alive on this host (it
        crashed or was killed without a word). False when it cannot be told."""
        if self.status != RUNNING or not self.pid or self.host != socket.gethostname():
            return False
        if self.pid == os.getpid():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except OSError:  # alive, someone else's
            return False
        return False


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _runs_row(client, run_id: str, database: str) -> dict | None:
    res = client.query(
        f"SELECT config_json, toUnixTimestamp64Milli(started_at), mode, version, status, bar_count, "
        f"toUnixTimestamp64Milli(finished_at) FROM `{database}`.runs FINAL WHERE run_id = {{run_id:String}}",
        parameters={"run_id": run_id})
    if not res.result_rows:
        return None
    config_json, started, mode, version, status, bars, finished = res.result_rows[0]
    return {"config_json": config_json, "started_at": started, "mode": mode, "version": version,
            "status": status, "bar_count": bars, "finished_at": finished}


def record_run_start(client, run_id: str, config_json: str, mode: str, *,
                     now_ms: int | None = None, database: str = DATABASE) -> None:
    """The run's `runs` row: `status='running'`, started now (the latest
    start of the run, fresh or resumed: "the latest run" is the one started last)."""
    now = _now_ms() if now_ms is None else now_ms
    prev = _runs_row(client, run_id, database)
    version = max(now, prev["version"] + 1) if prev else now
    insert_columns(client, "runs", {
        "run_id": [run_id], "config_json": [config_json], "started_at": [now],
        "finished_at": [None], "bar_count": [0], "mode": [mode], "status": [RUNNING],
        "version": [version]}, database)


def record_run_end(client, run_id: str, bar_count: int, status: str, *,
                   now_ms: int | None = None, database: str = DATABASE) -> None:
    """Final `runs` row of a run (higher version than its start row, so it wins)."""
    now = _now_ms() if now_ms is None else now_ms
    prev = _runs_row(client, run_id, database) or {"config_json": "", "started_at": now, "mode": "", "version": 0}
    insert_columns(client, "runs", {
        "run_id": [run_id], "config_json": [prev["config_json"]], "started_at": [prev["started_at"]],
        "finished_at": [now], "bar_count": [bar_count], "mode": [prev["mode"]], "status": [status],
        "version": [max(now, prev["version"] + 1)]}, database)


def clear_data(client, data_id: str, database: str = DATABASE) -> None:
    """Delete the rows stored under `data_id` in every run table."""
    with client_lock(client):
        for table in RUN_TABLES:
            client.command(f"DELETE FROM `{database}`.{table} WHERE run_id = {{r:String}}",
                           parameters={"r": data_id})


clear_run = clear_data  # a run's rows, where it has one attempt (its data id is its run id)


_ATTEMPT_SELECT = """SELECT run_id, attempt, data_id, mode, status, toUnixTimestamp64Milli(started_at),
    toUnixTimestamp64Milli(finished_at), bar_count, config_json, source, detail, host, pid, version
    FROM `{db}`.run_attempts FINAL"""


def _attempt(row) -> RunAttempt:
    return RunAttempt(*row)


def attempts(client, run_id: str, database: str = DATABASE) -> list[RunAttempt]:
    """Every attempt of a run, oldest first. A run recorded before attempts
    existed is one attempt stored under its run id."""
    rows = client.query(_ATTEMPT_SELECT.format(db=database) + " WHERE run_id = {r:String} ORDER BY attempt",
                        parameters={"r": run_id}).result_rows
    if rows:
        return [_attempt(r) for r in rows]
    legacy = _runs_row(client, run_id, database)
    if legacy is None:
        return []
    return [RunAttempt(run_id, 1, run_id, legacy["mode"], legacy["status"], legacy["started_at"],
                       legacy["finished_at"], legacy["bar_count"], legacy["config_json"])]


def pick_current(history: list[RunAttempt]) -> RunAttempt | None:
    """The attempt readers see: the newest finished one, else the newest one."""
    finished = [a for a in history if a.status == FINISHED]
    if finished:
        return finished[-1]
    alive = [a for a in history if a.status != REPLACED]
    return (alive or history or [None])[-1]


def current_attempt(client, run_id: str, database: str = DATABASE) -> RunAttempt | None:
    return pick_current(attempts(client, run_id, database))


def data_id(client, run, database: str = DATABASE) -> str:
    """Where a run's rows are: a RunAttempt's data id, or the current attempt's
    of a run id (the run id itself when unknown: no rows)."""
    if isinstance(run, RunAttempt):
        return run.data_id
    current = current_attempt(client, run, database)
    return current.data_id if current is not None else run


def public_id(run) -> str:
    return run.run_id if isinstance(run, RunAttempt) else run


def _write_attempt(client, a: RunAttempt, database: str) -> None:
    insert_columns(client, "run_attempts", {
        "run_id": [a.run_id], "attempt": [a.attempt], "data_id": [a.data_id], "mode": [a.mode],
        "source": [a.source], "config_json": [a.config_json], "started_at": [a.started_at],
        "finished_at": [a.finished_at], "status": [a.status], "bar_count": [a.bar_count],
        "detail": [a.detail], "host": [a.host], "pid": [a.pid], "version": [a.version]}, database)


def _bounded(mode: str) -> bool:
    return mode != "live"


def _kind(mode: str) -> str:
    return {"live": "live", "sweep": "sweep"}.get(mode, "backtest")


def _one_attempt(mode: str) -> bool:
    """Live runs and sweeps keep one attempt under the run id: a live
    restart continues it; a sweep's rows are keyed by its id (a fresh
    sweep replaces its rows at its start: docs/sweeps.md)."""
    return mode in ("live", "sweep")


def begin_attempt(client, run_id: str, mode: str, config_json: str, source: str = "", *,
                  resume: int | None = None, resuming: bool = False, now_ms: int | None = None,
                  database: str = DATABASE) -> RunAttempt:
    """Record the start of a run and return the attempt it writes.

    Live: the run's one attempt (a restart continues it). Bounded and
    `resuming` (a recovery directory): attempt `resume` (None: a directory
    written before attempts existed, stored under the run id). Bounded and
    fresh: a new attempt under a new data id; nothing of the older attempts
    is touched until it finishes."""
    check_run_id(run_id)
    now = _now_ms() if now_ms is None else now_ms
    history = attempts(client, run_id, database)
    if history and _kind(history[-1].mode) != _kind(mode):
        kind = _kind(history[-1].mode)
        raise RunIdError(f"run id {run_id} is a {kind} run already (`cuts runs --show {run_id}`): "
                         f"pick another --run-id")
    for legacy in history:  # recorded before attempts existed: give it its row, so it can be replaced
        if legacy.version == 0:
            _write_attempt(client, replace(legacy, version=1), database)
    mine = dict(status=RUNNING, finished_at=None, bar_count=0, detail="", host=socket.gethostname(),
                pid=os.getpid(), config_json=config_json, mode=mode, source=source or "")
    if _one_attempt(mode) or resuming:
        number = resume if resume is not None else next(
            (a.attempt for a in reversed(history) if a.data_id == run_id), 1)
        known = next((a for a in history if a.attempt == number), None)
        if known is not None and known.status == REPLACED:
            raise RunIdError(f"the recovery directory belongs to attempt {number} of run {run_id}, which a "
                             f"newer attempt replaced (its rows are gone): start with a new recovery "
                             f"directory")
        if known is None:
            a = RunAttempt(run_id, number, run_id if number == 1 else f"{run_id}{ATTEMPT_MARK}{number}",
                           started_at=now, version=now, **mine)
        else:
            fresh = {"started_at": now} if _bounded(mode) and not resuming else {}  # a sweep run again
            a = replace(known, **mine, **fresh, version=max(now, known.version + 1))
    else:
        number = max((a.attempt for a in history), default=0) + 1
        a = RunAttempt(run_id, number, run_id if number == 1 else f"{run_id}{ATTEMPT_MARK}{number}",
                       started_at=now, version=now, **mine)
        clear_data(client, a.data_id, database)  # rows a crashed clean-up may have left
    _write_attempt(client, a, database)
    record_run_start(client, run_id, config_json, mode, now_ms=now, database=database)
    return a


def end_attempt(client, a: RunAttempt, status: str, bar_count: int, detail: str = "", *,
                now_ms: int | None = None, database: str = DATABASE) -> RunAttempt:
    """Record how an attempt ended. A finished bounded attempt becomes the
    run's current one by this insert; then the older attempts are replaced."""
    now = _now_ms() if now_ms is None else now_ms
    ended = replace(a, status=status, finished_at=now, bar_count=bar_count, detail=detail,
                    version=max(now, a.version + 1))
    _write_attempt(client, ended, database)
    record_run_end(client, a.run_id, bar_count, status, now_ms=now, database=database)
    if status == FINISHED and _bounded(a.mode):
        for old in attempts(client, a.run_id, database):
            if old.attempt == a.attempt or old.status == REPLACED:
                continue
            _write_attempt(client, replace(old, status=REPLACED, detail=f"replaced by attempt {a.attempt}",
                                           version=max(now, old.version + 1)), database)
            if old.data_id != a.data_id:
                clear_data(client, old.data_id, database)
    return ended


def list_runs(client, database: str = DATABASE) -> list[tuple[RunAttempt, RunAttempt]]:
    """Every run as (current attempt, latest attempt), the latest started first."""
    order = [r[0] for r in client.query(
        f"SELECT run_id FROM `{database}`.runs FINAL ORDER BY started_at DESC, run_id DESC").result_rows]
    by_run: dict[str, list[RunAttempt]] = {}
    for row in client.query(_ATTEMPT_SELECT.format(db=database) + " ORDER BY run_id, attempt").result_rows:
        by_run.setdefault(row[0], []).append(_attempt(row))
    out = []
    for run_id in order:
        history = by_run.get(run_id) or attempts(client, run_id, database)
        if history:
            out.append((pick_current(history), history[-1]))
    return out


def run_ids(client, database: str = DATABASE) -> list[str]:
    return [r[0] for r in client.query(f"SELECT DISTINCT run_id FROM `{database}`.runs").result_rows]
