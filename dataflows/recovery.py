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


class RecoveryMismatch(Exception):
    """The recovery directory was made for another run or source: stop."""


@dataclass
class Recovery:
    config: RecoveryConfig
    resuming: bool
    directory: str


def has_state(directory: str | None) -> bool:
    """A run was started in `directory`: a restart resumes from it."""
    return bool(directory) and os.path.exists(os.path.join(directory, MANIFEST))


def prepare(directory: str, identity: dict, partitions: int, backup_s: int = 0) -> Recovery:
    """Create (first run) or check (restart) a recovery directory."""
    path = os.path.join(directory, MANIFEST)
    if has_state(directory):
        with open(path, encoding="utf-8") as fh:
            stored = json.load(fh)
        for key in sorted(set(stored) | set(identity)):
            if stored.get(key) != identity.get(key):
                raise RecoveryMismatch(
                    f"recovery directory {directory} was made for {key}={stored.get(key)!r}, "
                    f"not {identity.get(key)!r}: refusing to resume (use a new directory)"
                )
        resuming = True
    else:
        if os.path.isdir(directory) and os.listdir(directory):
            raise RecoveryMismatch(f"recovery directory {directory} is not empty and has no {MANIFEST}")
        os.makedirs(directory, exist_ok=True)
        init_db_dir(directory, max(1, partitions))
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(identity, fh, sort_keys=True, indent=1)
        os.replace(tmp, path)
        resuming = False
    return Recovery(RecoveryConfig(directory, backup_interval=timedelta(seconds=backup_s)),
                    resuming, directory)
