"""ClickHouse storage for runs, bars, signals, orders, fills, trades, equity,
rejections and dead letters; thin over clickhouse-connect.

Always accessed through clickhouse-connect, with the same code for both
targets: `chdb:///abs/dir` (the in-process chDB engine) or
`http(s)://host:8123` (a server).

Two halves:
- pure mapping (`TABLES`, `to_columns`): domain events -> column lists, tested
  without a database;
- I/O (`open_client`, `ensure_schema`, `ClickHouseWriter`, `ClickHouseSink`,
  run bookkeeping).

Idempotence: every table is a ReplacingMergeTree whose ORDER BY is the row's
deterministic identity, with `run_id` first, so a replayed run (at-least-once
delivery after a restart) overwrites instead of duplicating; read with FINAL.

chDB facts (chdb 4.4, clickhouse-connect 0.x/1.x, measured):
- One engine directory per *process*: opening a second, different directory
  while a client of the first is open fails ("EmbeddedServer already
  initialized with path ..."); after every client of the first is closed a
  different directory opens fine. Another process on the same directory fails
  with "Cannot lock file .../status". Both surface as ProgrammingError from
  get_client; `open_client` raises `ClickHouseUnavailable` for them.
- Close clients on the main thread (closing from a Bytewax worker thread hung).
- DateTime64(3) columns accept plain ints as ticks (epoch milliseconds): about
  8x faster than datetime objects; numpy datetime64 values are rejected.
- Passing `column_type_names` saves a DESCRIBE per insert. A 100k-row bars
  insert runs at ~0.6-1.2 M rows/s in 10k-20k-row columnar batches (~0.1-0.16
  M rows/s in 1k batches).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from operator import attrgetter
from typing import Any, Iterable

import clickhouse_connect
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from clickhouse_connect.driver.exceptions import OperationalError, ProgrammingError

from operators.types import PortfolioOutput, SymbolOutput

log = logging.getLogger(__name__)

DATABASE = "thousandcuts"
TS = "DateTime64(3, 'UTC')"


class ClickHouseUnavailable(Exception):
    """ClickHouse cannot be reached: server down or unreachable, or a chDB
    directory held by another process (or another directory already open in
    this one). Retry with backoff, or stop with this message."""


# ---------------------------------------------------------------- pure mapping
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
    if table == "runs":
        cols, order, engine = RUNS_COLUMNS, ("run_id",), "ReplacingMergeTree(version)"
    else:
        cols = [("run_id", _S)] + [(n, t) for n, t, _ in TABLES[table][0]]
        order, engine = ("run_id",) + TABLES[table][1], "ReplacingMergeTree"
    body = ",\n  ".join(f"`{n}` {t}" for n, t in cols)
    return (f"CREATE TABLE IF NOT EXISTS `{database}`.`{table}` (\n  {body}\n) "
            f"ENGINE = {engine} ORDER BY ({', '.join(order)})")


def normalise_dsn(dsn: str) -> str:
    """`chdb:///abs`, `chdb://./rel`, a bare directory path -> `chdb:///abs`;
    `chdb://memory` and http(s) DSNs are returned unchanged."""
    if dsn.startswith(("http://", "https://")) or dsn in ("chdb://memory", "chdb://:memory:"):
        return dsn
    path = dsn[len("chdb://"):] if dsn.startswith("chdb://") else dsn
    path, sep, query = path.partition("?")
    if not path:
        raise ValueError(f"no directory in ClickHouse DSN {dsn!r}")
    return "chdb://" + os.path.abspath(os.path.expanduser(path)) + sep + query


# ------------------------------------------------------------------------ I/O
_clients: dict[str, Any] = {}
_client_locks: dict[int, threading.Lock] = {}
_registry_lock = threading.Lock()


def open_client(dsn: str):
    """The process's client for `dsn` (one per normalised DSN; chDB creates
    the directory). Raises ClickHouseUnavailable with a one-line message."""
    norm = normalise_dsn(dsn)
    with _registry_lock:
        if norm in _clients:
            return _clients[norm]
        if norm.startswith("chdb:///"):
            other = [d for d in _clients if d.startswith("chdb:") and d != norm]
            if other:
                raise ClickHouseUnavailable(
                    f"cannot open {norm}: chDB allows one directory per process and {other[0]} is open")
            os.makedirs(norm[len("chdb://"):].partition("?")[0], exist_ok=True)
        try:
            client = clickhouse_connect.get_client(dsn=norm)
        except (OperationalError, ProgrammingError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ClickHouseUnavailable(f"ClickHouse at {norm} unavailable: {first}") from exc
        _clients[norm] = client
        _client_locks[id(client)] = threading.Lock()
        return client


def client_lock(client) -> threading.Lock:
    """The lock that serialises writes on `client` across worker threads."""
    with _registry_lock:
        return _client_locks.setdefault(id(client), threading.Lock())


def close_clients() -> None:
    """Close every cached client. Call from the main thread."""
    with _registry_lock:
        clients, writers = list(_clients.values()), list(_writers.values())
        _clients.clear()
        _writers.clear()
    try:
        for writer in writers:  # rows a sink left behind (close() not called)
            if getattr(writer, "failed", False):
                # that error already ended the run: raising it again here would hide it
                log.error("ClickHouse: rows of run %s left unwritten after a failed insert", writer.run_id)
                continue
            writer.flush()
    finally:
        for client in clients:
            try:
                client.close()
            except Exception:  # closing is best effort
                log.debug("error closing ClickHouse client", exc_info=True)
            _client_locks.pop(id(client), None)


def ensure_schema(client, database: str = DATABASE) -> None:
    """Create what is missing; a table from an older version gets its new
    columns (with their defaults). Its sorting key stays as it was created:
    a warning says so (a fresh database, or `DROP TABLE`, takes the new one)."""
    client.command(f"CREATE DATABASE IF NOT EXISTS `{database}`")
    for table in ("runs", *TABLES):
        client.command(ddl(table, database))
    rows = client.query("SELECT table, name FROM system.columns WHERE database = {d:String}",
                        parameters={"d": database}).result_rows
    have: dict[str, set] = {}
    for table, name in rows:
        have.setdefault(table, set()).add(name)
    keys = dict(client.query("SELECT name, sorting_key FROM system.tables WHERE database = {d:String}",
                             parameters={"d": database}).result_rows)
    for table, (cols, order) in TABLES.items():
        for name, ctype, _kind in cols:
            if name not in have.get(table, {name}):
                client.command(f"ALTER TABLE `{database}`.`{table}` ADD COLUMN IF NOT EXISTS `{name}` {ctype}")
        wanted = ", ".join(("run_id",) + order)
        if keys.get(table) not in (None, wanted) and (database, table) not in _warned_keys:
            _warned_keys.add((database, table))
            log.warning("ClickHouse table %s.%s was created by an older version (ORDER BY %s, now %s): "
                        "rows that differ only in the new key columns replace each other there",
                        database, table, keys[table], wanted)


_warned_keys: set = set()


def insert_columns(client, table: str, cols: dict[str, list], database: str = DATABASE) -> None:
    """One columnar insert; server-side connection failures become
    ClickHouseUnavailable."""
    names = list(cols)
    types = column_types(table) if table in TABLES else [dict(RUNS_COLUMNS)[n] for n in names]
    try:
        with client_lock(client):
            client.insert(table, data=[cols[n] for n in names], column_names=names,
                          column_type_names=types, column_oriented=True, database=database)
    except OperationalError as exc:
        raise ClickHouseUnavailable(f"insert into {database}.{table} failed: {exc}") from exc


class ClickHouseWriter:
    """Buffers columns per table; flushes a table when it holds `batch_rows`
    rows. Thread-safe: Bytewax worker threads of a process share one."""

    def __init__(self, client, run_id: str, batch_rows: int = 20_000, database: str = DATABASE):
        self.client, self.run_id, self.batch_rows, self.database = client, run_id, batch_rows, database
        self.written: dict[str, int] = {t: 0 for t in TABLES}
        self.failed = False  # an insert failed: close_clients() leaves the rest alone
        self._buffers: dict[str, dict[str, list]] = {}
        self._lock = threading.Lock()

    def add(self, table: str, events: list) -> None:
        if not events:
            return
        self.add_columns(table, to_columns(table, self.run_id, events))

    def add_columns(self, table: str, cols: dict[str, list]) -> None:
        """Buffer ready-made columns (as `to_columns` / `bar_block_columns` make)."""
        if not cols["run_id"]:
            return
        with self._lock:
            buf = self._buffers.get(table)
            if buf is None:
                self._buffers[table] = cols
            else:
                for name, values in cols.items():
                    buf[name].extend(values)
            full = len(self._buffers[table]["run_id"]) >= self.batch_rows
            batch = self._buffers.pop(table) if full else None
        if batch is not None:
            self._write(table, batch)

    def flush(self) -> None:
        with self._lock:
            batches, self._buffers = self._buffers, {}
        for table, batch in batches.items():
            self._write(table, batch)

    def pending(self) -> int:
        with self._lock:
            return sum(len(b["run_id"]) for b in self._buffers.values())

    def _write(self, table: str, batch: dict[str, list]) -> None:
        try:
            insert_columns(self.client, table, batch, self.database)
        except Exception:
            with self._lock:  # keep the rows for a retry; order does not matter
                buf = self._buffers.setdefault(table, {n: [] for n in batch})
                for name, values in batch.items():
                    buf[name].extend(values)
                self.failed = True
            raise
        with self._lock:
            self.written[table] = self.written.get(table, 0) + len(batch["run_id"])


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _run_row(client, run_id: str, database: str) -> dict | None:
    res = client.query(
        f"SELECT config_json, toUnixTimestamp64Milli(started_at), mode, version "
        f"FROM `{database}`.runs FINAL WHERE run_id = {{run_id:String}}",
        parameters={"run_id": run_id})
    if not res.result_rows:
        return None
    config_json, started, mode, version = res.result_rows[0]
    return {"config_json": config_json, "started_at": started, "mode": mode, "version": version}


def record_run_start(client, run_id: str, config_json: str, mode: str, *,
                     now_ms: int | None = None, database: str = DATABASE) -> None:
    """Row `status='running'`; a restarted run keeps its first started_at."""
    now = _now_ms() if now_ms is None else now_ms
    prev = _run_row(client, run_id, database)
    started = prev["started_at"] if prev else now
    version = max(now, prev["version"] + 1) if prev else now
    insert_columns(client, "runs", {
        "run_id": [run_id], "config_json": [config_json], "started_at": [started],
        "finished_at": [None], "bar_count": [0], "mode": [mode], "status": ["running"],
        "version": [version]}, database)


def record_run_end(client, run_id: str, bar_count: int, status: str, *,
                   now_ms: int | None = None, database: str = DATABASE) -> None:
    """Final row of a run (higher version than its start row, so it wins)."""
    now = _now_ms() if now_ms is None else now_ms
    prev = _run_row(client, run_id, database) or {"config_json": "", "started_at": now, "mode": "", "version": 0}
    insert_columns(client, "runs", {
        "run_id": [run_id], "config_json": [prev["config_json"]], "started_at": [prev["started_at"]],
        "finished_at": [now], "bar_count": [bar_count], "mode": [prev["mode"]], "status": [status],
        "version": [max(now, prev["version"] + 1)]}, database)


RUN_TABLES = ("bars", "signals", "orders", "fills", "trades", "equity", "rejections", "dead_letters",
              "controls", "broker_orders")


def clear_run(client, run_id: str, database: str = DATABASE) -> None:
    """Delete a run's events, so a fresh backtest under an old id starts clean.
    (A resumed run must not call this: replayed rows overwrite by key.)"""
    with client_lock(client):
        for table in RUN_TABLES:
            client.command(f"DELETE FROM `{database}`.{table} WHERE run_id = {{r:String}}",
                           parameters={"r": run_id})


# ------------------------------------------------------------------ the sink
_writers: dict[tuple[str, str], ClickHouseWriter] = {}


def shared_writer(dsn: str, run_id: str, batch_rows: int = 20_000) -> ClickHouseWriter:
    """The process's writer for (dsn, run_id); creates the schema once."""
    client = open_client(dsn)
    key = (normalise_dsn(dsn), run_id)
    with _registry_lock:
        writer = _writers.get(key)
    if writer is None:
        with client_lock(client):
            ensure_schema(client)
        with _registry_lock:
            writer = _writers.setdefault(key, ClickHouseWriter(client, run_id, batch_rows))
    return writer


def write_output(writer: ClickHouseWriter, item) -> None:
    """Route one SymbolOutput / PortfolioOutput to its tables."""
    if isinstance(item, SymbolOutput):
        writer.add("bars", item.bars)
        for block in item.blocks:
            writer.add_columns("bars", bar_block_columns(writer.run_id, block))
        if item.signals:
            writer.add("signals", [s for sigs in item.signals.values() for s in sigs])
        writer.add("signals", item.filtered)
        writer.add("dead_letters", item.dead_letters)
    elif isinstance(item, PortfolioOutput):
        writer.add("orders", item.orders)
        writer.add("fills", item.fills)
        writer.add("trades", item.trades)
        writer.add("rejections", item.rejections)
        writer.add("equity", item.equity)
        writer.add("dead_letters", item.dead_letters)
        writer.add("controls", item.controls)
    else:
        raise TypeError(f"ClickHouseSink cannot write {type(item).__name__}")


class _SinkPartition(StatelessSinkPartition):
    def __init__(self, writer: ClickHouseWriter, flush_each_batch: bool):
        self.writer = writer
        self.flush_each_batch = flush_each_batch
        self.failed = False

    def write_batch(self, items: Iterable) -> None:
        try:
            for item in items:
                write_output(self.writer, item)
            if self.flush_each_batch:
                # Durable before Bytewax can commit this epoch's snapshot: after a
                # crash, everything older than the snapshot is already stored.
                self.writer.flush()
        except BaseException:
            self.failed = True
            raise

    def close(self) -> None:
        if self.failed:
            # Bytewax closes the partition while the write's error unwinds: failing
            # again there aborts the process (a Rust panic) and hides that error.
            log.error("ClickHouse sink closed after a failed write: buffered rows not written")
            return
        self.writer.flush()  # the client stays open: close_clients() on the main thread


class ClickHouseSink(DynamicSink):
    """Bytewax sink of SymbolOutput / PortfolioOutput items; every worker of a
    process buffers through one shared ClickHouseWriter."""

    def __init__(self, dsn: str, run_id: str, batch_rows: int = 20_000,
                 flush_each_batch: bool = False):
        self.dsn, self.run_id, self.batch_rows = dsn, run_id, batch_rows
        self.flush_each_batch = flush_each_batch  # recovery and live runs

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _SinkPartition:
        return _SinkPartition(shared_writer(self.dsn, self.run_id, self.batch_rows),
                              self.flush_each_batch)
