"""A clean stop of a running flow on SIGINT / SIGTERM: every source ends its
batches, the flow drains, every row is written, and the recovery directory
(if any) resumes exactly where the run stopped.

Why a flag and not Python's default handler: Bytewax 0.21 runs Python signal
handlers from inside its run loop (`run_main` calls `check_signals` between
steps; `cluster_main` polls them on the main thread every millisecond). A
handler that raises (the default KeyboardInterrupt) panics the worker in
whatever Python call it interrupts (`next_batch`, a sink's `write_batch`):
~100 lines of Rust and Python traceback, exit 1, sinks not flushed. So while
a flow runs, `stop_on_signals` installs a handler that only sets a flag, and
`dataflows.runner.StoppableSource` makes every source partition check it
before each batch:

- A stopped partition raises StopIteration (EOF). Bytewax snapshots a
  partition at EOF "as if it had lived to the next epoch", so its position
  (file row, Kafka offset, seq, watermark) is in the recovery store.
- Once every partition ended, the stateful steps get `on_eof` and Bytewax
  commits their state after it, as at any epoch end. So `on_eof` must leave
  the state as the stream left it: the portfolio stage does not apply its
  buffered bars then (`PortfolioLogic.on_eof` asks `StopRequest.cut_short`);
  applying them "to the end of time" would record a watermark that makes a
  resumed run drop every later bar as late.
- The sinks write what they hold and close; the run's status says it stopped.

A second signal stops at once (`os._exit`), as `kill -9` would: nothing more
is written, and a recovery directory resumes from its last snapshot.
Outside a flow, `raise_on_signals` turns SIGTERM into the same exception as
SIGINT (`StopSignal`), so every command ends with one line and 128 + signal.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def exit_code(signum: int) -> int:
    """The shell's convention: 128 + the signal (SIGINT 130, SIGTERM 143)."""
    return 128 + int(signum)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class StopSignal(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived outside a running flow: stop the command."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class RunInterrupted(Exception):
    """A run stopped on a signal before its sources ended. Its rows up to the
    stop are written and its status says so (`interrupted`, or `stopped` for
    a live run); `recovery_dir` resumes it when given."""

    def __init__(self, run_id: str, signum: int, status: str, bars: int, recovery_dir: str | None):
        self.run_id, self.signum, self.status = run_id, signum, status
        self.bars, self.recovery_dir = bars, recovery_dir
        super().__init__(self.line())

    @property
    def exit_code(self) -> int:
        return exit_code(self.signum)

    def line(self) -> str:
        what = f"run {self.run_id} {self.status} on {signal_name(self.signum)} after {self.bars:,} bars"
        if self.recovery_dir:
            return f"{what}; the same command resumes it from {self.recovery_dir}"
        if self.status == "stopped":
            return f"{what}; its rows up to the stop are stored"
        return f"{what}; its rows so far are stored as an incomplete run, rerun to complete it"


class StopRequest:
    """Set by the first SIGINT / SIGTERM while a flow runs (thread-safe)."""

    def __init__(self):
        self._event = threading.Event()
        self.signum: int | None = None
        self.cut_short = False  # a source partition ended early because of the stop

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def is_set(self) -> bool:
        """`threading.Event`'s question, for loops that stop on one (`cuts stream`)."""
        return self._event.is_set()

    def request(self, signum: int = signal.SIGINT) -> None:
        if self.signum is None:
            self.signum = signum
        self._event.set()

    def _on_signal(self, signum, _frame) -> None:
        if self.requested:  # the second one: stop at once, as kill -9 would
            os.write(2, f"cuts: stopped at once on a second {signal_name(signum)}: rows since the last "
                        f"batch are not written\n".encode())
            os._exit(exit_code(signum))
        self.request(signum)


@contextlib.contextmanager
def stop_on_signals(stop: StopRequest):
    """While inside: SIGINT / SIGTERM request `stop` instead of raising.
    Signal handlers belong to the main thread; elsewhere this changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {sig: signal.signal(sig, stop._on_signal) for sig in SIGNALS}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _raise_stop_signal(signum, _frame):
    raise StopSignal(signum)


def raise_on_signals() -> None:
    """Outside a flow: SIGINT and SIGTERM raise `StopSignal` (main thread only)."""
    if threading.current_thread() is threading.main_thread():
        for sig in SIGNALS:
            signal.signal(sig, _raise_stop_signal)
