"""The insert thread of a ClickHouse writer (I/O): inserts run beside the flow.

ClickHouse (chDB in-process as much as a server over HTTP) does an insert
without holding Python's GIL, so on a second core the flow goes on while a
full batch is stored (bench/README.md). One thread per writer keeps the
inserts in the order they were handed over; at most `max_pending` batches
wait, so memory stays bounded however fast the flow is.

Nothing is lost when an insert fails: the writer puts the rows back
(`keep`), the batches queued behind it are put back unattempted, and the
error is raised once, by the writer's next `submit` or `wait` (on the
worker's thread, where the sink reports it as it would a synchronous
insert's)."""
from __future__ import annotations

import queue
import threading
from typing import Callable

_STOP = object()


class InsertThread:
    def __init__(self, insert: Callable, keep: Callable, name: str, max_pending: int = 2):
        self._insert, self._keep, self._name = insert, keep, name
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._handed = 0  # inserts handed over so far
        self._put_back_through = 0  # those handed over before a failure are put back unattempted

    def submit(self, *args) -> None:
        """Hand over one insert (`insert(*args)` on the thread); raises the
        error of an earlier one that failed, instead of queueing behind it."""
        self.raise_error()
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._handed += 1
            number = self._handed
        self._queue.put((number, args))  # blocks while max_pending batches wait

    def wait(self) -> None:
        """Return once every insert handed over is done; raises a failure's error."""
        if self._thread is not None:
            self._queue.join()
        self.raise_error()

    def raise_error(self) -> None:
        with self._lock:
            error, self._error = self._error, None
        if error is not None:
            raise error

    def stop(self) -> None:
        """Finish what was handed over and end the thread (it can start again)."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(_STOP)
            thread.join()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    return
                number, args = item
                with self._lock:
                    put_back = number <= self._put_back_through
                if put_back:  # queued behind a failed insert: the writer keeps it for a retry
                    self._keep(*args)
                    continue
                try:
                    self._insert(*args)
                except BaseException as exc:  # the writer kept the rows; the worker raises it
                    with self._lock:
                        self._error = self._error or exc
                        self._put_back_through = self._handed
            finally:
                self._queue.task_done()
