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
- Inserts go as Native blocks built from numpy (`connectors.clickhouse.native`,
  `raw_insert`): `client.insert` serialised value by value in Python. With
  `optimize_on_insert=0` the 725,400 bars of the bench take ~0.2 s in
  100,000-row blocks (bench/README.md).
- An insert does not hold the GIL: a flow's writer (`shared_writer`) inserts
  on its own thread (`connectors.clickhouse.inserts`) while the flow goes on.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.exceptions import OperationalError

from connectors.clickhouse.errors import (
    DSN_FORMS,
    ClickHouseDsnError,
    ClickHouseUnavailable,
    check_dsn,
    chdb_dir_problem,
    chdb_error,
    server_error,
)
from connectors.clickhouse.inserts import InsertThread
from connectors.clickhouse.migrations import migrate_request_log, set_aside_request_log
from connectors.clickhouse.native import Parts, encode_block
from connectors.clickhouse.schema import (
    DATABASE,
    BOOKKEEPING,
    MERGE_SETTING,
    MERGE_SETTINGS,
    TABLES,
    VIEWS,
    column_names,
    column_types,
    ddl,
    to_columns,
    view_ddl,
)
from connectors.clickhouse.sweep_schema import SWEEP_TABLES, sweep_column_types, sweep_ddl

log = logging.getLogger(__name__)


# clickhouse-connect logs a warning for every failed HTTP request before it
# raises; the raised error becomes one line here (errors.server_error)
logging.getLogger("clickhouse_connect.driver._backend.http_sync").setLevel(logging.ERROR)


def normalise_dsn(dsn: str) -> str:
    """`chdb:///abs`, `chdb://./rel`, a bare directory path -> `chdb:///abs`;
    `chdb://memory` and http(s) DSNs are returned unchanged; anything else
    (`foo://bar`) is a ClickHouseDsnError."""
    kind = check_dsn(dsn)
    if kind == "http" or dsn in ("chdb://memory", "chdb://:memory:"):
        return dsn
    path = dsn[len("chdb://"):] if dsn.startswith("chdb://") else dsn
    path, sep, query = path.partition("?")
    if not path:
        raise ClickHouseDsnError(f"no directory in ClickHouse DSN {dsn!r}: use {DSN_FORMS}")
    return "chdb://" + os.path.abspath(os.path.expanduser(path)) + sep + query


# ------------------------------------------------------------------------ I/O
_clients: dict[str, Any] = {}
_client_locks: dict[int, threading.Lock] = {}
_registry_lock = threading.Lock()


def open_client(dsn: str, create: bool = True):
    """The process's client for `dsn` (one per normalised DSN). A chDB
    directory is created when missing unless `create` is False (readers:
    `open_reader`). Every failure is ClickHouseUnavailable (or
    ClickHouseDsnError) with one line naming the server or directory and
    what to check."""
    norm = normalise_dsn(dsn)
    with _registry_lock:
        if norm in _clients:
            return _clients[norm]
        if norm.startswith("chdb:///"):
            other = [d for d in _clients if d.startswith("chdb:") and d != norm]
            if other:
                raise ClickHouseUnavailable(
                    f"cannot open {norm}: chDB allows one directory per process and {other[0]} is open")
            path = norm[len("chdb://"):].partition("?")[0]
            problem = chdb_dir_problem(path, create)
            if problem is not None:
                raise ClickHouseUnavailable(problem)
            try:
                with _engine_output() as said:
                    client = clickhouse_connect.get_client(dsn=norm)
            except Exception as exc:
                raise chdb_error(exc, path, said.text) from exc
        else:
            try:
                client = clickhouse_connect.get_client(dsn=norm)
            except Exception as exc:  # urllib3, sockets, TLS, the server's own errors
                raise server_error(exc, norm) from exc
        _clients[norm] = client
        _client_locks[id(client)] = threading.Lock()
        return client


def open_reader(dsn: str):
    """A client for reading a run's results: never creates a chDB directory,
    and says so when there is no thousandcuts database (yet)."""
    client = open_client(dsn, create=False)
    try:
        exists = client.command(f"EXISTS DATABASE `{DATABASE}`")
    except Exception as exc:
        raise server_error(exc, normalise_dsn(dsn)) from exc
    if not int(exists):
        where = normalise_dsn(dsn)
        raise ClickHouseUnavailable(f"no thousandcuts data at {where} yet: run `cuts backtest` first "
                                    f"(or check --clickhouse / CLICKHOUSE_DSN)")
    return client


class _Captured:
    text = ""


@contextlib.contextmanager
def _engine_output():
    """What the chDB engine prints on the process's stdout while it starts
    (it prints the true cause of a failure there): captured, passed on when
    the start succeeds, part of the one-line error when it fails."""
    captured = _Captured()
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError):  # no real stdout: nothing to capture
        yield captured
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 1)
        failed = True
        try:
            yield captured
            failed = False
        finally:
            os.dup2(saved, 1)
            os.close(saved)
            tmp.seek(0)
            captured.text = tmp.read().decode("utf-8", "replace")
            if captured.text and not failed:
                sys.stdout.write(captured.text)


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
    first_error = None
    try:
        for writer in writers:  # rows a sink left behind (close() not called)
            try:
                if writer.failed:
                    # that error already ended the run: raising it again here would hide it
                    log.error("ClickHouse: rows of run %s left unwritten after a failed insert", writer.run_id)
                else:
                    writer.flush()
            except Exception as exc:  # the other writers are still flushed and stopped
                first_error = first_error or exc
            finally:
                writer.close()
        if first_error is not None:
            raise first_error
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
    set_aside_request_log(client, database)
    for table in (*BOOKKEEPING, *TABLES):
        client.command(ddl(table, database))
    for table in SWEEP_TABLES:
        client.command(sweep_ddl(table, database))
    migrate_request_log(client, database)
    for view in VIEWS:
        client.command(view_ddl(view, database))
    rows = client.query("SELECT table, name FROM system.columns WHERE database = {d:String}",
                        parameters={"d": database}).result_rows
    have: dict[str, set] = {}
    for table, name in rows:
        have.setdefault(table, set()).add(name)
    tables = client.query("SELECT name, sorting_key, engine_full FROM system.tables WHERE database = {d:String}",
                          parameters={"d": database}).result_rows
    keys = {name: key for name, key, _ in tables}
    for name, _, engine in tables:  # a table from before the merge cap gets it (schema.MERGE_SETTINGS)
        if "MergeTree" in engine and MERGE_SETTING not in engine:
            client.command(f"ALTER TABLE `{database}`.`{name}` MODIFY SETTING {MERGE_SETTINGS}")
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


# Inserts skip ReplacingMergeTree's merge of the inserted block with itself:
# rows of one run never repeat inside a block (a replay's copies arrive in
# later inserts), every read uses FINAL, and the insert takes half the time.
INSERT_SETTINGS = {"optimize_on_insert": 0}


def insert_columns(client, table: str, cols: dict, database: str = DATABASE) -> None:
    """One columnar insert (lists or numpy arrays, encoded as a Native block);
    server-side connection failures become ClickHouseUnavailable."""
    names = list(cols)
    if table in TABLES:
        types = dict(zip(column_names(table), column_types(table)))
        types = [types[n] for n in names]
    elif table in SWEEP_TABLES:
        types = sweep_column_types(table, names)
    else:
        types = [dict(BOOKKEEPING[table][0])[n] for n in names]
    block = encode_block(names, types, [cols[n] for n in names])
    try:
        with client_lock(client):
            client.raw_insert(f"`{database}`.`{table}`", names, block, fmt="Native",
                              settings=INSERT_SETTINGS)
    except OperationalError as exc:
        raise ClickHouseUnavailable(f"insert into {database}.{table} failed: "
                                    f"{server_error(exc, getattr(client, 'url', '') or '?')}") from exc


class ClickHouseWriter:
    """Buffers columns per table; flushes a table when it holds `batch_rows`
    rows. Thread-safe: Bytewax worker threads of a process share one.
    `background`: full batches are inserted on the writer's insert thread
    (`connectors.clickhouse.inserts`) while the caller goes on.

    Nothing is lost and no failure is hidden: a failed insert puts its rows
    back (so do the batches queued behind it) and they stay counted as
    unstored until an insert stores them. Until then the next write raises
    the failure (the rows wait in the buffer), and `flush`, which always
    tries them again, raises it whenever any row is left unstored, in every
    thread that flushes: a flush that returns stored everything before it."""

    def __init__(self, client, run_id: str, batch_rows: int = 100_000, database: str = DATABASE,
                 background: bool = False):
        self.client, self.run_id, self.batch_rows, self.database = client, run_id, batch_rows, database
        self.written: dict[str, int] = {t: 0 for t in TABLES}
        self.shard_bars: dict[int, int] = {}  # a sweep: bars each portfolio shard applied so far
        self._buffers: dict[str, dict[str, list]] = {}  # table -> column -> its chunks
        self._rows: dict[str, int] = {}
        self._kept: dict[str, int] = {}  # table -> rows in its buffer that an insert put back
        self._unstored = 0  # rows put back, not stored since
        self._failure: BaseException | None = None  # the last failure while rows are unstored
        self._lock = threading.Lock()
        # inline inserts one at a time: a flush sees the outcome of one running in another thread
        self._storing = threading.RLock()
        self._inserts = (InsertThread(self._write, self._keep, f"clickhouse-insert {run_id}")
                         if background else None)

    @property
    def failed(self) -> bool:
        """Rows an insert put back are not stored yet (close_clients() leaves them)."""
        with self._lock:
            return self._unstored > 0

    def add(self, table: str, events: list) -> None:
        if not events:
            return
        self.add_columns(table, to_columns(table, self.run_id, events))

    def add_columns(self, table: str, cols: dict) -> None:
        """Buffer ready-made columns (lists or arrays, as `to_columns` /
        `bar_block_columns` make)."""
        n = len(next(iter(cols.values()))) if cols else 0
        if not n:
            return
        with self._lock:
            buf = self._buffers.setdefault(table, {name: [] for name in cols})
            for name, values in cols.items():
                buf[name].append(values)
            self._rows[table] = self._rows.get(table, 0) + n
            failure = self._failure
            batch = self._take(table) if self._rows[table] >= self.batch_rows and failure is None else None
        if failure is not None:
            raise failure  # these rows wait in the buffer for a flush
        if batch is not None:
            self._store({table: batch})

    def _take(self, table: str) -> tuple:
        """The table's buffered rows as one column each, and how many of them
        an insert put back (lock held)."""
        chunks = self._buffers.pop(table)
        self._rows.pop(table, None)
        order = _sorted_parts(table, chunks)
        batch = {name: Parts([parts[i] for i in order] if order else parts) for name, parts in chunks.items()}
        return batch, self._kept.pop(table, 0)

    def flush(self) -> None:
        """Store every buffered row, those put back by a failure too (in the
        background: and wait for it); raises the failure if any row is left
        unstored."""
        with contextlib.nullcontext() if self._inserts is not None else self._storing:
            with self._lock:
                batches = {table: self._take(table) for table in list(self._buffers)}
            self._store(batches)
            if self._inserts is not None:
                self._inserts.wait()
            with self._lock:
                failure = self._failure if self._unstored else None
        if failure is not None:
            raise failure

    def close(self) -> None:
        """End the insert thread (after `flush`; a later write starts it again)."""
        if self._inserts is not None:
            self._inserts.stop()

    def _store(self, batches: dict) -> None:
        tables = list(batches)
        for i, table in enumerate(tables):
            batch, kept = batches[table]
            try:
                if self._inserts is None:
                    with self._storing:
                        self._write(table, batch, kept)
                else:
                    self._inserts.submit(table, batch, kept)
            except BaseException:
                for rest in tables[i + 1:] if self._inserts is None else tables[i:]:
                    self._keep(rest, *batches[rest])  # (_write kept its own batch)
                raise

    def pending(self) -> int:
        with self._lock:
            return sum(self._rows.values())

    def _write(self, table: str, batch: dict, kept: int = 0) -> None:
        try:
            insert_columns(self.client, table, batch, self.database)
        except BaseException as exc:
            self._keep(table, batch, kept, exc)
            raise
        with self._lock:
            self.written[table] = self.written.get(table, 0) + _rows(batch)
            self._unstored -= kept
            if not self._unstored:
                self._failure = None

    def _keep(self, table: str, batch: dict, kept: int = 0, failure: BaseException | None = None) -> None:
        """Rows whose insert failed (`failure`), or was not tried after a
        failure, back in the buffer for a retry (order does not matter);
        `kept` of them were put back before and are counted already."""
        n = _rows(batch)
        with self._lock:
            buf = self._buffers.setdefault(table, {name: [] for name in batch})
            for name, parts in batch.items():
                buf[name].extend(parts)
            self._rows[table] = self._rows.get(table, 0) + n
            self._kept[table] = self._kept.get(table, 0) + n
            self._unstored += n - kept
            if failure is not None:
                self._failure = failure


def _sorted_parts(table: str, chunks: dict) -> list | None:
    """An order of the buffered parts by the table's first sort-key column,
    when each part holds one value of it (bars and signals come a symbol at
    a time): ClickHouse sorts every inserted block by its key, and a block
    already in order inserts ~30 % faster (bench/README.md). Parts of one
    value keep their order (a symbol's blocks arrive in time order)."""
    key = TABLES[table][1][0] if table in TABLES else None
    parts = chunks.get(key)
    if not parts or len(parts) < 2 or not all(
            isinstance(p, list) and p and p.count(p[0]) == len(p) for p in parts):
        return None
    return sorted(range(len(parts)), key=lambda i: parts[i][0])


def _rows(batch: dict) -> int:
    """Rows of buffered columns (a run's tables lead with run_id, a sweep's with sweep_id)."""
    return sum(map(len, next(iter(batch.values())))) if batch else 0


# ------------------------------------------------- the process's shared writers
_writers: dict[tuple[str, str], ClickHouseWriter] = {}


def shared_writer(dsn: str, run_id: str, batch_rows: int = 100_000,
                  schema_ready: bool = False) -> ClickHouseWriter:
    """The process's writer for (dsn, run_id); creates the schema once
    (`schema_ready`: the caller just did)."""
    client = open_client(dsn)
    key = (normalise_dsn(dsn), run_id)
    with _registry_lock:
        writer = _writers.get(key)
    if writer is None:
        if not schema_ready:
            with client_lock(client):
                ensure_schema(client)
        with _registry_lock:
            writer = _writers.get(key)
            if writer is None:  # a flow's writer inserts beside it
                writer = _writers[key] = ClickHouseWriter(client, run_id, batch_rows, background=True)
    return writer
