"""Recovery directories: Bytewax's snapshot store plus what it was made for.

A recovery directory belongs to one run against one source. Resuming it
against anything else (a re-created topic, another run id or configuration)
would silently skip or double data, so it is refused with a clear message.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import timedelta

from bytewax.recovery import RecoveryConfig, init_db_dir

MANIFEST = "thousandcuts-recovery.json"
ATTEMPT = "attempt"  # the run's attempt the directory belongs to (connectors.clickhouse.runs); not identity


class RecoveryMismatch(Exception):
    """The recovery directory was made for another run or source: stop."""


@dataclass
class Recovery:
    config: RecoveryConfig
    resuming: bool
    directory: str
    attempt: int | None = None


def has_state(directory: str | None) -> bool:
    """A run was started in `directory`: a restart resumes from it."""
    return bool(directory) and os.path.exists(os.path.join(directory, MANIFEST))


def check(directory: str, identity: dict) -> int | None:
    """Before a run starts: a directory with state must have been made for
    `identity`; returns the attempt it belongs to (None: none recorded, or no
    state yet). A directory without state must be empty or absent."""
    path = os.path.join(directory, MANIFEST)
    if not has_state(directory):
        if os.path.isdir(directory) and os.listdir(directory):
            raise RecoveryMismatch(f"recovery directory {directory} is not empty and has no {MANIFEST}")
        if os.path.exists(directory) and not os.path.isdir(directory):
            raise RecoveryMismatch(f"recovery directory {directory} is a file")
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            stored = json.load(fh)
    except (OSError, ValueError) as exc:
        raise RecoveryMismatch(f"recovery directory {directory}: cannot read {MANIFEST} "
                               f"({type(exc).__name__}): use a new directory") from None
    for key in sorted((set(stored) | set(identity)) - {ATTEMPT}):
        if stored.get(key) != identity.get(key):
            raise RecoveryMismatch(
                f"recovery directory {directory} was made for {key}={stored.get(key)!r}, "
                f"not {identity.get(key)!r}: refusing to resume (use a new directory)"
            )
    return stored.get(ATTEMPT)


def prepare(directory: str, identity: dict, partitions: int, backup_s: int = 0,
            attempt: int | None = None) -> Recovery:
    """Create (first run, recording `attempt`) or check (restart) a recovery directory."""
    path = os.path.join(directory, MANIFEST)
    stored_attempt = check(directory, identity)
    resuming = has_state(directory)
    if not resuming:
        os.makedirs(directory, exist_ok=True)
        init_db_dir(directory, max(1, partitions))
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump({**identity, **({ATTEMPT: attempt} if attempt is not None else {})}, fh,
                      sort_keys=True, indent=1)
        os.replace(tmp, path)
        stored_attempt = attempt
    return Recovery(RecoveryConfig(directory, backup_interval=timedelta(seconds=backup_s)),
                    resuming, directory, stored_attempt)
