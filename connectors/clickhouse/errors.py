"""ClickHouse failures as one line that names the server or directory and
what to check: the one place that turns clickhouse-connect's, urllib3's and
chDB's errors into `ClickHouseUnavailable` / `ClickHouseDsnError`, by the
error's type (never its text).
"""
from __future__ import annotations

import errno
import os
import socket
import ssl
from urllib.parse import urlsplit

from clickhouse_connect.driver.exceptions import DatabaseError

DSN_FORMS = "chdb:///path/to/dir, a directory path, or http(s)://host:8123"
WHERE = "--clickhouse or CLICKHOUSE_DSN"


class ClickHouseUnavailable(Exception):
    """ClickHouse cannot be reached: server down or unreachable, or a chDB
    directory held by another process (or another directory already open in
    this one). Retry with backoff, or stop with this message."""


class ClickHouseDsnError(ValueError):
    """The DSN is not one `cuts` understands: stop with this message."""


def check_dsn(dsn: str) -> str:
    """The DSN's kind: "http", "chdb" or "path"; ClickHouseDsnError otherwise."""
    if not dsn or not dsn.strip():
        raise ClickHouseDsnError(f"empty ClickHouse DSN: use {DSN_FORMS} ({WHERE})")
    scheme = urlsplit(dsn).scheme if "://" in dsn else ""
    if scheme in ("http", "https"):
        parts = urlsplit(dsn)
        try:
            parts.port  # noqa: B018 (raises on a port that is not a number)
        except ValueError:
            raise ClickHouseDsnError(f"ClickHouse DSN {server_name(dsn)}: the port is not a number") from None
        if not parts.hostname:
            raise ClickHouseDsnError(f"ClickHouse DSN {dsn!r} names no host: use {DSN_FORMS}")
        return "http"
    if scheme == "chdb":
        return "chdb"
    if scheme:
        raise ClickHouseDsnError(f"ClickHouse DSN {dsn!r}: unknown scheme {scheme}://, use {DSN_FORMS} ({WHERE})")
    return "path"


def server_name(url: str) -> str:
    """scheme://host:port of a server URL, without user or password."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    try:
        port = parts.port or (443 if parts.scheme == "https" else 8123)
    except ValueError:
        port = "?"
    return f"{parts.scheme}://{host}:{port}"


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def server_error(exc: BaseException, url: str) -> ClickHouseUnavailable:
    """A failure to reach or use a ClickHouse server, as one line."""
    name = server_name(url)
    host = urlsplit(url).hostname
    check = f"check {WHERE}"
    for e in _chain(exc):
        if isinstance(e, socket.gaierror):
            return ClickHouseUnavailable(f"ClickHouse server {name}: cannot resolve host {host}: {check}")
        if isinstance(e, ConnectionRefusedError):
            return ClickHouseUnavailable(f"ClickHouse server {name} refused the connection: is it running and "
                                         f"listening on that port? ({check})")
        if isinstance(e, (TimeoutError, socket.timeout)):
            return ClickHouseUnavailable(f"ClickHouse server {name} did not answer in time: is the host "
                                         f"reachable from here? ({check})")
        if isinstance(e, ssl.SSLError):
            return ClickHouseUnavailable(f"ClickHouse server {name}: TLS failed ({_first_line(e)}): "
                                         f"http:// or https://? ({check})")
        if isinstance(e, OSError) and e.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return ClickHouseUnavailable(f"ClickHouse server {name}: host unreachable ({check})")
    if isinstance(exc, DatabaseError):
        return ClickHouseUnavailable(f"ClickHouse server {name} answered with an error: {_first_line(exc)[:200]} "
                                     f"(check the user, password and database in the DSN)")
    return ClickHouseUnavailable(f"ClickHouse server {name} unavailable ({type(exc).__name__}: "
                                 f"{_first_line(exc)[:200]}): {check}")


def chdb_dir_problem(path: str, create: bool) -> str | None:
    """Why the chDB directory `path` cannot be opened (None: it can be tried).
    Creates it when `create`; a reader never creates one."""
    if os.path.exists(path) and not os.path.isdir(path):
        return f"chDB directory {path} is a file, not a directory: pass a directory ({WHERE})"
    if not os.path.exists(path):
        if not create:
            return (f"no ClickHouse data at {path}: nothing was stored there yet (`cuts backtest` creates it; "
                    f"the default is ./data/clickhouse: {WHERE})")
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:
            return f"cannot create chDB directory {path}: {exc.strerror}: pass a writable directory ({WHERE})"
    elif not create and not os.path.isdir(os.path.join(path, "metadata")):
        return f"{path} is not a chDB directory (no ClickHouse data in it): check {WHERE}"
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        return f"chDB directory {path} is not readable and writable by this user ({WHERE})"
    holder = _lock_holder(path)
    if holder is not None:
        return (f"chDB directory {path} is in use by another process{holder}: an embedded chDB directory "
                f"opens in one process at a time; wait for it to end, or use a ClickHouse server "
                f"(--clickhouse http://host:8123)")
    return None


def _lock_holder(path: str) -> str | None:
    """" (pid N)" when a running chDB engine holds the directory's status
    file lock (ClickHouse flocks it), "" when the pid is unknown, None when free."""
    import fcntl

    status = os.path.join(path, "status")
    try:
        fd = os.open(status, os.O_RDONLY)
    except OSError:
        return None  # no engine has it open
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            with open(status, encoding="utf-8", errors="replace") as fh:
                first = fh.readline().strip()
            pid = first.removeprefix("PID:").strip()
            return f" (pid {pid})" if first.startswith("PID:") and pid.isdigit() else ""
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def chdb_error(exc: BaseException, path: str, engine_said: str = "") -> ClickHouseUnavailable:
    """chDB could not open `path`; `engine_said` is what the engine printed."""
    said = " ".join(line.strip() for line in engine_said.splitlines() if line.strip())[:300]
    cause = said or _first_line(exc)[:300]
    return ClickHouseUnavailable(f"cannot open chDB directory {path}: {cause}")
