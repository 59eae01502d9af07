"""The insert thread of a ClickHouse writer (I/O): inserts run beside the flow.

ClickHouse (chDB in-process as much as a server over HTTP) does an insert
without holding Python's GIL, so on a second core the flow goes on while a
full batch is stored (bench/README.md). One thread per writer keeps the
inserts in the order they were handed over; at most `max_pending` batches
wait, so memory stays bounded however fast the flow is.

A failed insert is the writer's business (`ClickHouseWriter._write` puts its
rows back and remembers the error, which its next write or flush raises);
the batches queued behind a failure are handed back to the writer
unattempted (`keep`), to be retried with the rest by its next flush.
"""
from __future__ import annotations

import queue
import threading
from typing import Callable

_STOP = object()


class InsertThread:
    def __init__(self, insert: Callable, keep: Callable, name: str, max_pending: int = 2):
        self._insert, self._keep, self._name, self._max_pending = insert, keep, name, max_pending
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue | None = None  # the running thread's own queue
        self._handed = 0  # inserts handed over so far
        self._put_back_through = 0  # those handed over before a failure are put back unattempted

    def submit(self, *args) -> None:
        """Hand over one insert: `insert(*args)` on the thread."""
        with self._lock:
            if self._thread is None:
                self._queue = queue.Queue(maxsize=self._max_pending)
                self._thread = threading.Thread(target=self._run, args=(self._queue,), name=self._name,
                                                daemon=True)
                self._thread.start()
            self._handed += 1
            number, inbox = self._handed, self._queue
        inbox.put((number, args))  # blocks while max_pending batches wait

    def wait(self) -> None:
        """Return once every insert handed over so far is done (stored, or put back)."""
        with self._lock:
            inbox = self._queue
        if inbox is not None:
            inbox.join()

    def stop(self) -> None:
        """Finish what was handed over and end the thread (a later submit starts another)."""
        with self._lock:
            thread, inbox = self._thread, self._queue
            self._thread = self._queue = None
        if thread is not None:
            inbox.put(_STOP)
            thread.join()

    def _run(self, inbox: queue.Queue) -> None:
        while True:
            item = inbox.get()
            try:
                if item is _STOP:
                    return
                number, args = item
                with self._lock:
                    put_back = number <= self._put_back_through
                if put_back:  # queued behind a failed insert: back to the writer for a retry
                    self._keep(*args)
                    continue
                try:
                    self._insert(*args)
                except BaseException:  # the writer kept the rows and the error
                    with self._lock:
                        self._put_back_through = self._handed
            finally:
                inbox.task_done()
