"""Rows of a bar file in emission order, the unit a file partition emits
from: what the in-memory plan (`barfile.PlannedRows`) and the spilled one
(`spill.MergedRuns`) both hand out (pure)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(slots=True)
class RowBlock:
    rank: np.ndarray  # the symbol's rank among the file's symbols (sorted by name)
    names: list  # symbol by rank
    row: np.ndarray  # the row's number in the file
    ts: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    trade_count: np.ndarray | None
    vwap: np.ndarray | None

    def __len__(self) -> int:
        return len(self.ts)
