"""ClickHouse connections and writes (I/O), thin over clickhouse-connect:
`open_client` (one client per DSN and process), `ensure_schema`,
`insert_columns`, `ClickHouseWriter` (buffered columnar inserts) and the
process's shared writers. The tables are `connectors.clickhouse.schema`.

Always accessed through clickhouse-connect, with the same code for both
targets: `chdb:///abs/dir` (the in-process chDB engine) or
`http(s)://host:8123` (a server).

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
from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.exceptions import OperationalError, ProgrammingError

from connectors.clickhouse.schema import (
    DATABASE,
    RUNS_COLUMNS,
    TABLES,
    VIEWS,
    column_types,
    ddl,
    to_columns,
    view_ddl,
)
from connectors.clickhouse.sweep_schema import SWEEP_TABLES, sweep_column_types, sweep_ddl

log = logging.getLogger(__name__)


class ClickHouseUnavailable(Exception):
    """ClickHouse cannot be reached: server down or unreachable, or a chDB
    directory held by another process (or another directory already open in
    this one). Retry with backoff, or stop with this message."""


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
    _set_aside_request_log(client, database)
    for table in ("runs", *TABLES):
        client.command(ddl(table, database))
    for table in SWEEP_TABLES:
        client.command(sweep_ddl(table, database))
    _migrate_request_log(client, database)
    for view in VIEWS:
        client.command(view_ddl(view, database))
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


REQUEST_LOG_BEFORE_HISTORY = "broker_orders_before_history"


def _columns_of(client, database: str, table: str) -> set:
    return {name for (name,) in client.query(
        "SELECT name FROM system.columns WHERE database = {d:String} AND table = {t:String}",
        parameters={"d": database, "t": table}).result_rows}


def _set_aside_request_log(client, database: str) -> None:
    """`broker_orders` from before the order history (one row per request,
    overwritten by a replay; no `event` column) is renamed out of the way,
    to be copied into the history once that exists."""
    columns = _columns_of(client, database, "broker_orders")
    if not columns or "event" in columns:
        return
    aside = REQUEST_LOG_BEFORE_HISTORY
    client.command(f"RENAME TABLE `{database}`.broker_orders TO `{database}`.`{aside}`")
    log.warning("ClickHouse: %s.broker_orders was one row per request; renamed to %s and copied into "
                "the order history (events accepted, adopted, refused, skipped; clock local)", database, aside)


def _migrate_request_log(client, database: str) -> None:
    """The set-aside rows as history rows (once): each request's last
    outcome, at the time it was acknowledged (this machine's wall clock)."""
    aside = REQUEST_LOG_BEFORE_HISTORY
    if not _columns_of(client, database, aside) or client.command(
            f"SELECT count() FROM `{database}`.broker_orders WHERE source = 'v1'"):
        return
    client.command(f"""
        INSERT INTO `{database}`.broker_orders
            (run_id, client_order_id, at, event, leg, broker_order_id, filled_qty, intent, decided_ts,
             order_id, symbol, side, qty, decision_price, clock, source, status, fill_price, detail,
             decision_lag_ms, submit_ms)
        SELECT run_id, client_order_id, fromUnixTimestamp64Milli(acked_at_ms, 'UTC'),
               multiIf(status = 'failed', 'refused', status = 'skipped', 'skipped',
                       adopted, 'adopted', 'accepted'),
               '', broker_order_id, 0, intent, decided_ts, order_id, symbol, side, qty, decision_price,
               'local', 'v1', if(status IN ('failed', 'skipped'), '', status), 0, detail,
               decision_lag_ms, submit_ms
        FROM `{database}`.`{aside}` FINAL""")


def insert_columns(client, table: str, cols: dict[str, list], database: str = DATABASE) -> None:
    """One columnar insert; server-side connection failures become
    ClickHouseUnavailable."""
    names = list(cols)
    if table in TABLES:
        types = column_types(table)
    elif table in SWEEP_TABLES:
        types = sweep_column_types(table, names)
    else:
        types = [dict(RUNS_COLUMNS)[n] for n in names]
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
        self.shard_bars: dict[int, int] = {}  # a sweep: bars each portfolio shard applied so far
        self.failed = False  # an insert failed: close_clients() leaves the rest alone
        self._buffers: dict[str, dict[str, list]] = {}
        self._lock = threading.Lock()

    def add(self, table: str, events: list) -> None:
        if not events:
            return
        self.add_columns(table, to_columns(table, self.run_id, events))

    def add_columns(self, table: str, cols: dict[str, list]) -> None:
        """Buffer ready-made columns (as `to_columns` / `bar_block_columns` make)."""
        if not _rows(cols):
            return
        with self._lock:
            buf = self._buffers.get(table)
            if buf is None:
                self._buffers[table] = cols
            else:
                for name, values in cols.items():
                    buf[name].extend(values)
            full = _rows(self._buffers[table]) >= self.batch_rows
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
            return sum(_rows(b) for b in self._buffers.values())

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
            self.written[table] = self.written.get(table, 0) + _rows(batch)


def _rows(cols: dict[str, list]) -> int:
    return len(next(iter(cols.values()))) if cols else 0


# ------------------------------------------------- the process's shared writers
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
