"""A bar file larger than memory, in emission order (I/O): the order of
`barfile.plan_emission` - (suffix-minimum time of the row's symbol, symbol,
row) - with memory bounded by constants, through temporary files.

1. read: the file in chunks (`barfile.read_chunks`, each parsed and checked
   like a whole file); chunks are written to disk as records once the file
   turns out larger than `memory_rows`;
2. sort: the chunks last to first, carrying each symbol's minimum time of
   its later rows backwards (the suffix minimum), each chunk sorted by
   (suffix minimum, symbol, row) and split by partition into a sorted run;
3. merge: each partition streams the k-way merge of its runs, a buffer of
   `merge_rows / runs` rows per run.

Memory: a chunk while reading and sorting, the merge buffers while the flow
runs, and per symbol a few integers. Disk: about 90 bytes a bar, in a
temporary directory removed when the source is garbage collected or the
process ends.
"""
from __future__ import annotations

import os
import tempfile

import numpy as np

from connectors.files.rows import RowBlock

ROW_BITS = 40  # a key is (symbol rank << 40) | row: files up to ~10^12 rows
_CHUNK = np.dtype([("code", "<i4"), ("ts", "<i8"), ("open", "<f8"), ("high", "<f8"), ("low", "<f8"),
                   ("close", "<f8"), ("volume", "<f8"), ("trade_count", "<f8"), ("vwap", "<f8")])
_RUN = np.dtype([("sufmin", "<i8"), ("key", "<i8"), ("ts", "<i8"), ("open", "<f8"), ("high", "<f8"),
                 ("low", "<f8"), ("close", "<f8"), ("volume", "<f8"), ("trade_count", "<f8"),
                 ("vwap", "<f8")])
_PRICES = ("open", "high", "low", "close", "volume")
NO_LATER_ROW = np.iinfo(np.int64).max


class SpilledFile:
    """Chunks of a bar file on disk (pass 1), then sorted runs per partition
    (pass 2); `rows(partition)` merges them (pass 3)."""

    def __init__(self, workdir: str | None = None):
        self._tmp = tempfile.TemporaryDirectory(prefix="cuts-bars-", dir=workdir)
        self.dir = self._tmp.name
        self.codes: dict[str, int] = {}  # symbol -> code, first seen first
        self.chunks: list[tuple[str, int, int]] = []  # (path, first row, rows)
        self.rows = 0
        self.has_trade_count = self.has_vwap = False
        self.runs: dict[int, list[str]] = {}
        self.names: list[str] = []  # symbols by rank (sorted)

    # -- pass 1 -------------------------------------------------------------
    def add(self, cols) -> None:
        """Write one chunk (BarColumns of the file's next rows)."""
        import pandas as pd

        n = len(cols)
        local, uniques = pd.factorize(cols.symbol)
        codes = np.array([self.codes.setdefault(s, len(self.codes)) for s in uniques], dtype=np.int32)
        rec = np.empty(n, dtype=_CHUNK)
        rec["code"] = codes[local] if n else 0
        rec["ts"] = cols.ts
        for f in _PRICES:
            rec[f] = getattr(cols, f)
        for f in ("trade_count", "vwap"):
            values = getattr(cols, f)
            rec[f] = np.nan if values is None else values
        self.has_trade_count |= cols.trade_count is not None
        self.has_vwap |= cols.vwap is not None
        path = os.path.join(self.dir, f"chunk-{len(self.chunks)}.bin")
        rec.tofile(path)
        self.chunks.append((path, self.rows, n))
        self.rows += n

    # -- pass 2 -------------------------------------------------------------
    def sort(self, partitions: int, partition_of) -> None:
        """Sorted runs per partition; `partition_of(symbol)` -> partition."""
        import pandas as pd

        self.names = sorted(self.codes, key=str)
        n_codes = len(self.codes)
        by_code = list(self.codes)
        rank = np.empty(n_codes, dtype=np.int64)
        rank[[self.codes[s] for s in self.names]] = np.arange(n_codes)
        part = np.array([partition_of(s) for s in by_code], dtype=np.int64)
        carry = np.full(n_codes, NO_LATER_ROW, dtype=np.int64)  # earliest time of later rows
        self.runs = {p: [] for p in range(partitions)}
        for k in range(len(self.chunks) - 1, -1, -1):
            path, first, n = self.chunks[k]
            rec = np.fromfile(path, dtype=_CHUNK)
            os.unlink(path)
            codes = rec["code"].astype(np.int64)
            ts = rec["ts"]
            suffix = pd.Series(ts[::-1]).groupby(codes[::-1]).cummin().to_numpy()[::-1]
            suffix = np.minimum(suffix, carry[codes])
            lows = pd.Series(ts).groupby(codes).min()
            where = lows.index.to_numpy()
            carry[where] = np.minimum(carry[where], lows.to_numpy())
            key = (rank[codes] << ROW_BITS) | (first + np.arange(n, dtype=np.int64))
            order = np.lexsort((key, suffix))
            run = np.empty(n, dtype=_RUN)
            run["sufmin"] = suffix[order]
            run["key"] = key[order]
            for f in ("ts",) + _PRICES + ("trade_count", "vwap"):
                run[f] = rec[f][order]
            run_part = part[codes[order]]
            for p in range(partitions):
                mine = run[run_part == p] if partitions > 1 else run
                if len(mine):
                    out = os.path.join(self.dir, f"run-{p}-{k}.bin")
                    mine.tofile(out)
                    self.runs[p].append(out)
        self.chunks = []

    # -- pass 3 -------------------------------------------------------------
    def rows_of(self, partition: int, merge_rows: int) -> "MergedRuns":
        return MergedRuns(self.runs.get(partition, []), self.names, merge_rows,
                          self.has_trade_count, self.has_vwap)

    def cleanup(self) -> None:
        self._tmp.cleanup()


class MergedRuns:
    """A partition's rows in emission order: the k-way merge of its sorted
    runs, read a buffer at a time (the `barfile` row-source interface)."""

    def __init__(self, paths: list, names: list, merge_rows: int, has_trade_count: bool,
                 has_vwap: bool):
        self.paths = list(paths)
        self.names = names
        self.has_trade_count, self.has_vwap = has_trade_count, has_vwap
        self.buffer_rows = max(1, merge_rows // max(1, len(self.paths)))
        self.files = [open(p, "rb") for p in self.paths]
        self.bufs = [np.empty(0, dtype=_RUN) for _ in self.paths]
        self.ended = [False] * len(self.paths)  # nothing left on disk
        self.ready = np.empty(0, dtype=_RUN)  # merged rows not taken yet

    def _round(self) -> bool:
        """Merge what is certainly next into `ready`; False at the end."""
        for i, buf in enumerate(self.bufs):
            if not len(buf) and not self.ended[i]:
                self.bufs[i] = np.fromfile(self.files[i], dtype=_RUN, count=self.buffer_rows)
                if len(self.bufs[i]) < self.buffer_rows:
                    self.ended[i] = True
                    self.files[i].close()
        live = [i for i, buf in enumerate(self.bufs) if len(buf)]
        if not live:
            return False
        # a run still on disk continues after its buffer's last row: rows up
        # to the smallest such last row are certainly next
        bounds = [(int(self.bufs[i]["sufmin"][-1]), int(self.bufs[i]["key"][-1]))
                  for i in live if not self.ended[i]]
        parts = []
        for i in live:
            buf = self.bufs[i]
            upto = len(buf) if not bounds else _count_upto(buf, min(bounds))
            parts.append(buf[:upto])
            self.bufs[i] = buf[upto:]
        # everything still buffered or on disk comes after all of `ready`
        merged = np.concatenate(parts)
        self.ready = np.concatenate((self.ready, merged[np.lexsort((merged["key"], merged["sufmin"]))]))
        return True

    def take(self, n: int) -> RowBlock:
        while len(self.ready) < n and self._round():
            pass
        rows, self.ready = self.ready[:n], self.ready[n:]
        key = rows["key"]
        return RowBlock(
            (key >> ROW_BITS).astype(np.int64), self.names, key & ((1 << ROW_BITS) - 1),
            np.ascontiguousarray(rows["ts"]),
            *(np.ascontiguousarray(rows[f]) for f in _PRICES),
            np.ascontiguousarray(rows["trade_count"]) if self.has_trade_count else None,
            np.ascontiguousarray(rows["vwap"]) if self.has_vwap else None)

    def next_sufmin(self) -> int | None:
        """The emission key of the next row, None at the end."""
        while not len(self.ready) and self._round():
            pass
        return int(self.ready["sufmin"][0]) if len(self.ready) else None

    def close(self) -> None:
        for f in self.files:
            f.close()


def _count_upto(buf: np.ndarray, bound: tuple) -> int:
    """Rows of the sorted `buf` with (sufmin, key) <= bound."""
    hi, lo = bound
    sufmin = buf["sufmin"]
    start = int(np.searchsorted(sufmin, hi, side="left"))
    end = int(np.searchsorted(sufmin, hi, side="right"))
    return start + int(np.searchsorted(buf["key"][start:end], lo, side="right"))
