"""ClickHouse tables of a run, the pure mapping half: which tables exist,
their columns and sorting keys (`TABLES`, `ddl`), and domain events -> column
lists (`to_columns`, `bar_block_columns`). No I/O: tested without a database.

Idempotence: every table is a ReplacingMergeTree whose ORDER BY is the row's
deterministic identity, with `run_id` first, so a replayed run (at-least-once
delivery after a restart) overwrites instead of duplicating; read with FINAL.
"""
from __future__ import annotations

from operator import attrgetter

import numpy as np

from connectors.alpaca.order_history import RANK

DATABASE = "thousandcuts"
TS = "DateTime64(3, 'UTC')"

# table -> (columns [(name, type, kind)], ORDER BY key). kind: "s" plain
# attribute, "t" epoch seconds -> ms ticks, "m" epoch milliseconds as they are,
# "r" filtered_reason ('' if None).
_F, _S, _I = "Float64", "String", "Int64"
TABLES: dict[str, tuple[list[tuple[str, str, str]], tuple[str, ...]]] = {
    "bars": ([("symbol", _S, "s"), ("ts", TS, "t"), ("open", _F, "s"), ("high", _F, "s"),
              ("low", _F, "s"), ("close", _F, "s"), ("volume", _F, "s"),
              ("trade_count", "Nullable(Float64)", "s"), ("vwap", "Nullable(Float64)", "s")],
             ("symbol", "ts")),
    "signals": ([("strategy_id", _S, "s"), ("symbol", _S, "s"), ("side", _S, "s"), ("ts", TS, "t"),
                 ("price", _F, "s"), ("confidence", _F, "s"), ("take_profit_pct", _F, "s"),
                 ("stop_loss_pct", _F, "s"), ("risk_reward", _F, "s"), ("filtered_reason", _S, "r"),
                 ("strategy_type", _S, "s")],
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
    # live / paper: the history of every order at the broker, append-only, one
    # row per state change (connectors.alpaca.order_history): a row replaces
    # only its identical twin (a replayed decision, a fill seen twice)
    "broker_orders": ([("client_order_id", _S, "s"), ("at", TS, "m"), ("event", _S, "s"),
                       ("leg", _S, "s"), ("broker_order_id", _S, "s"), ("filled_qty", _I, "s"),
                       ("intent", _S, "s"), ("decided_ts", TS, "t"), ("order_id", _S, "s"),
                       ("symbol", _S, "s"), ("side", _S, "s"), ("qty", _I, "s"),
                       ("decision_price", _F, "s"), ("clock", _S, "s"), ("source", _S, "s"),
                       ("status", _S, "s"), ("fill_price", _F, "s"), ("detail", _S, "s"),
                       ("decision_lag_ms", "Nullable(Float64)", "s"), ("submit_ms", "Nullable(Float64)", "s")],
                      ("client_order_id", "at", "event", "leg", "broker_order_id", "filled_qty", "intent",
                       "decided_ts")),
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


def bar_block_columns(run_id: str, block) -> dict:
    """The `bars` table's columns from an `operators.columnar.BarBlock`
    (numpy arrays where the block has them; NaN or a missing column: null)."""
    n = len(block)
    absent = np.full(n, np.nan)
    return {
        "run_id": [run_id] * n, "symbol": [block.symbol] * n, "ts": block.ts * 1000,
        "open": block.open, "high": block.high, "low": block.low, "close": block.close,
        "volume": block.volume,
        "trade_count": absent if block.trade_count is None else block.trade_count,
        "vwap": absent if block.vwap is None else block.vwap,
    }


def current_state_sql(database: str = DATABASE) -> str:
    """The view `broker_order_state`: one row per (run, client order id), the
    order's current state from its history in `broker_orders` (the most
    advanced event by `order_history.RANK`, the latest of those)."""
    names = list(RANK)
    rank = (f"transform(event, [{', '.join(repr(n) for n in names)}], "
            f"[{', '.join(str(RANK[n]) for n in names)}], -1)")
    return f"""SELECT run_id, client_order_id,
       argMinIf(order_id, at, order_id != '') AS order_id,
       argMinIf(intent, at, intent != '') AS intent,
       any(symbol) AS symbol, any(side) AS side,
       argMinIf(broker_order_id, at, broker_order_id != '' AND leg != 'stop') AS broker_order_id,
       argMax(event, ({rank}, at)) AS last_event,
       argMax(status, ({rank}, at)) AS status,
       maxIf(filled_qty, leg = '') + maxIf(filled_qty, leg = 'target')
           + maxIf(filled_qty, leg = 'stop') AS filled_qty,
       countIf(event = 'sent') AS sends,
       countIf(event = 'adopted') AS adoptions,
       min(at) AS first_at, max(at) AS last_at
FROM `{database}`.broker_orders FINAL
GROUP BY run_id, client_order_id"""


def current_runs_sql(database: str = DATABASE) -> str:
    """The view `current_runs`: each run id's current attempt
    (connectors.clickhouse.runs.pick_current), for SQL by hand:
      SELECT ... FROM thousandcuts.trades FINAL
      WHERE run_id = (SELECT data_id FROM thousandcuts.current_runs WHERE run_id = 'bt-...')"""
    return f"""SELECT run_id, argMax(a.data_id, (a.status = 'finished', a.attempt)) AS data_id,
       argMax(a.attempt, (a.status = 'finished', a.attempt)) AS attempt,
       argMax(a.status, (a.status = 'finished', a.attempt)) AS status
FROM (SELECT run_id, data_id, attempt, status FROM `{database}`.run_attempts FINAL
      WHERE status != 'replaced') AS a
GROUP BY run_id"""


VIEWS = {"broker_order_state": current_state_sql, "current_runs": current_runs_sql}


def view_ddl(view: str, database: str = DATABASE) -> str:
    return f"CREATE OR REPLACE VIEW `{database}`.`{view}` AS {VIEWS[view](database)}"


# Parts stop growing at 256 MiB: merging larger ones cost the process
# (chDB runs inside it) ~150 MB more at its peak over 30 M bars, so memory
# grew with the bars (bench/README.md, "Memory"). Unmerged duplicates never
# show: every read uses FINAL. A server with years of rows keeps more parts;
# raise it there with ALTER TABLE ... MODIFY SETTING (docs/scaling.md).
MERGE_SETTING, MERGE_MAX_BYTES = "max_bytes_to_merge_at_max_space_in_pool", 256 * 1024 * 1024
MERGE_SETTINGS = f"{MERGE_SETTING} = {MERGE_MAX_BYTES}"


def ddl(table: str, database: str = DATABASE) -> str:
    """CREATE TABLE IF NOT EXISTS statement of one table."""
    if table in BOOKKEEPING:
        (cols, order), engine = BOOKKEEPING[table], "ReplacingMergeTree(version)"
    else:
        cols = [("run_id", _S)] + [(n, t) for n, t, _ in TABLES[table][0]]
        order, engine = ("run_id",) + TABLES[table][1], "ReplacingMergeTree"
    body = ",\n  ".join(f"`{n}` {t}" for n, t in cols)
    return (f"CREATE TABLE IF NOT EXISTS `{database}`.`{table}` (\n  {body}\n) "
            f"ENGINE = {engine} ORDER BY ({', '.join(order)}) SETTINGS {MERGE_SETTINGS}")
