"""ClickHouse tables of a run, the pure mapping half: which tables exist,
their columns and sorting keys (`TABLES`, `ddl`), and domain events -> column
lists (`to_columns`, `bar_block_columns`). No I/O: tested without a database.

Idempotence: every table is a ReplacingMergeTree whose ORDER BY is the row's
deterministic identity, with `run_id` first, so a replayed run (at-least-once
delivery after a restart) overwrites instead of duplicating; read with FINAL.
"""
from __future__ import annotations

from operator import attrgetter

DATABASE = "thousandcuts"
TS = "DateTime64(3, 'UTC')"

# table -> (columns [(name, type, kind)], ORDER BY key). kind: "s" plain
# attribute, "t" epoch seconds -> ms ticks, "r" filtered_reason ('' if None).
_F, _S, _I = "Float64", "String", "Int64"
TABLES: dict[str, tuple[list[tuple[str, str, str]], tuple[str, ...]]] = {
    "bars": ([("symbol", _S, "s"), ("ts", TS, "t"), ("open", _F, "s"), ("high", _F, "s"),
              ("low", _F, "s"), ("close", _F, "s"), ("volume", _F, "s"),
              ("trade_count", "Nullable(Float64)", "s"), ("vwap", "Nullable(Float64)", "s")],
             ("symbol", "ts")),
    "signals": ([("strategy_id", _S, "s"), ("symbol", _S, "s"), ("side", _S, "s"), ("ts", TS, "t"),
                 ("price", _F, "s"), ("confidence", _F, "s"), ("take_profit_pct", _F, "s"),
                 ("stop_loss_pct", _F, "s"), ("risk_reward", _F, "s"), ("filtered_reason", _S, "r")],
                ("symbol", "ts", "strategy_id", "side")),
    "orders": ([("order_id", _S, "s"), ("strategy_id", _S, "s"), ("symbol", _S, "s"), ("side", _S, "s"),
                ("qty", _I, "s"), ("decided_ts", TS, "t"), ("decision_price", _F, "s"), ("intent", _S, "s"),
                ("stop_price", _F, "s"), ("target_price", _F, "s"), ("parent_id", _S, "s"),
                ("oco_id", _S, "s")],
               # live: an entry's cancel, its OCO's protect and trail requests share ids
               ("order_id", "intent", "decided_ts")),
    "fills": ([("order_id", _S, "s"), ("strategy_id", _S, "s"), ("symbol", _S, "s"), ("side", _S, "s"),
               ("qty", _I, "s"), ("ts", TS, "t"), ("price", _F, "s"), ("commission", _F, "s"),
               ("reason", _S, "s")],
              ("order_id", "ts", "qty", "price")),  # live: an order may fill in parts
    "trades": ([("trade_id", _S, "s"), ("symbol", _S, "s"), ("strategy_id", _S, "s"), ("qty", _I, "s"),
                ("entry_time", TS, "t"), ("entry_price", _F, "s"), ("exit_time", TS, "t"),
                ("exit_price", _F, "s"), ("exit_reason", _S, "s"), ("pnl", _F, "s"),
                ("return_pct", _F, "s"), ("commission", _F, "s")],
               ("trade_id",)),
    "equity": ([("ts", TS, "t"), ("cash", _F, "s"), ("equity", _F, "s"), ("open_positions", _I, "s"),
                ("exposure", _F, "s")],
               ("ts",)),
    "rejections": ([("strategy_id", _S, "s"), ("symbol", _S, "s"), ("ts", TS, "t"), ("reason", _S, "s"),
                    ("price", _F, "s"), ("detail", _S, "s")],
                   ("strategy_id", "symbol", "ts")),
    "dead_letters": ([("source", _S, "s"), ("symbol", _S, "s"), ("ts", TS, "t"), ("reason", _S, "s"),
                      ("payload", _S, "s")],
                     ("source", "symbol", "ts", "reason")),
    # kill switch: halts and resumes the portfolio obeyed, with who and why
    "controls": ([("control_id", _S, "s"), ("action", _S, "s"), ("flatten", "Bool", "s"), ("ts", TS, "t"),
                  ("who", _S, "s"), ("why", _S, "s"), ("exits_queued", _I, "s"),
                  ("entries_canceled", _I, "s")],
                 ("control_id",)),
    # live / paper: what was sent to the broker, its answer and how long it took
    "broker_orders": ([("order_id", _S, "s"), ("client_order_id", _S, "s"), ("intent", _S, "s"),
                       ("symbol", _S, "s"), ("side", _S, "s"), ("qty", _I, "s"), ("decided_ts", TS, "t"),
                       ("decision_price", _F, "s"), ("broker_order_id", _S, "s"), ("status", _S, "s"),
                       ("adopted", "Bool", "s"), ("detail", _S, "s"), ("acked_at_ms", _I, "s"),
                       ("decision_lag_ms", _F, "s"), ("submit_ms", _F, "s")],
                      ("client_order_id", "intent", "decided_ts")),
}
RUNS_COLUMNS: list[tuple[str, str]] = [
    ("run_id", _S), ("config_json", _S), ("started_at", TS), ("finished_at", f"Nullable({TS})"),
    ("bar_count", "UInt64"), ("mode", _S), ("status", _S), ("version", "UInt64")]
# One row per attempt of a run (connectors.clickhouse.runs): which data id
# its rows are stored under, where its bars came from, how it ended.
ATTEMPT_COLUMNS: list[tuple[str, str]] = [
    ("run_id", _S), ("attempt", "UInt32"), ("data_id", _S), ("mode", _S), ("source", _S),
    ("config_json", _S), ("started_at", TS), ("finished_at", f"Nullable({TS})"), ("status", _S),
    ("bar_count", "UInt64"), ("detail", _S), ("host", _S), ("pid", "UInt32"), ("version", "UInt64")]
# bookkeeping tables: columns and ORDER BY (ReplacingMergeTree(version): the newest row wins)
BOOKKEEPING: dict[str, tuple[list[tuple[str, str]], tuple[str, ...]]] = {
    "runs": (RUNS_COLUMNS, ("run_id",)),
    "run_attempts": (ATTEMPT_COLUMNS, ("run_id", "attempt")),
}


# For SQL by hand: each run's current attempt (connectors.clickhouse.runs.pick_current):
#   SELECT ... FROM thousandcuts.trades FINAL
#   WHERE run_id = (SELECT data_id FROM thousandcuts.current_runs WHERE run_id = 'bt-...')
VIEWS = {"current_runs": """
    SELECT run_id, argMax(a.data_id, (a.status = 'finished', a.attempt)) AS data_id,
        argMax(a.attempt, (a.status = 'finished', a.attempt)) AS attempt,
        argMax(a.status, (a.status = 'finished', a.attempt)) AS status
    FROM (SELECT run_id, data_id, attempt, status FROM `{db}`.run_attempts FINAL
          WHERE status != 'replaced') AS a
    GROUP BY run_id"""}


def view_ddl(name: str, database: str = DATABASE) -> str:
    return f"CREATE VIEW IF NOT EXISTS `{database}`.`{name}` AS {VIEWS[name].format(db=database)}"


def column_names(table: str) -> list[str]:
    return ["run_id"] + [c[0] for c in TABLES[table][0]]


def column_types(table: str) -> list[str]:
    return ["String"] + [c[1] for c in TABLES[table][0]]


def to_columns(table: str, run_id: str, events: list) -> dict[str, list]:
    """Column name -> values for `events` (all of `table`'s type) of a run.
    Timestamps become epoch-millisecond ints (DateTime64(3) ticks)."""
    cols: dict[str, list] = {"run_id": [run_id] * len(events)}
    for name, _type, kind in TABLES[table][0]:
        values = list(map(attrgetter(name), events))
        if kind == "t":
            values = [v * 1000 for v in values]
        elif kind == "r":
            values = [v or "" for v in values]
        cols[name] = values
    return cols


def bar_block_columns(run_id: str, block) -> dict[str, list]:
    """The `bars` table's columns from an `operators.columnar.BarBlock`."""
    n = len(block)
    return {
        "run_id": [run_id] * n, "symbol": [block.symbol] * n, "ts": (block.ts * 1000).tolist(),
        "open": block.open.tolist(), "high": block.high.tolist(), "low": block.low.tolist(),
        "close": block.close.tolist(), "volume": block.volume.tolist(),
        "trade_count": _nullable(block.trade_count, n), "vwap": _nullable(block.vwap, n),
    }


def _nullable(values, n: int) -> list:
    if values is None:
        return [None] * n
    out = values.tolist()
    if any(v != v for v in out):  # NaN means absent
        out = [None if v != v else v for v in out]
    return out


def ddl(table: str, database: str = DATABASE) -> str:
    """CREATE TABLE IF NOT EXISTS statement of one table."""
    if table in BOOKKEEPING:
        (cols, order), engine = BOOKKEEPING[table], "ReplacingMergeTree(version)"
    else:
        cols = [("run_id", _S)] + [(n, t) for n, t, _ in TABLES[table][0]]
        order, engine = ("run_id",) + TABLES[table][1], "ReplacingMergeTree"
    body = ",\n  ".join(f"`{n}` {t}" for n, t in cols)
    return (f"CREATE TABLE IF NOT EXISTS `{database}`.`{table}` (\n  {body}\n) "
            f"ENGINE = {engine} ORDER BY ({', '.join(order)})")
