"""The `bars` topic's producer (`BarProducer`, kafka-python): bars, bars
records, markers and kill-switch controls. The record format is in
`connectors.kafka` (the package docstring)."""
from __future__ import annotations

import json
import threading
from typing import Iterable

import numpy as np
from kafka import KafkaProducer

from connectors.kafka.admin import _typed, topic_partitions
from connectors.kafka.codec import (
    _bar_json,
    encode_bar,
    encode_bars,
    encode_control,
    encode_watermark,
    iso_times,
)
from operators.types import Bar


# ---------------------------------------------------------------- producing
class BarProducer:
    """Publishes bars and markers to the bars topic (kafka-python).

    acks=all, idempotent (no duplicates or reordering on internal retries),
    retries until `delivery_timeout_ms`, batched with `linger_ms`, lz4-compressed
    batches. Retriable
    failures are retried inside the client; what is left when its time is up
    is raised as `KafkaUnavailable` (or `KafkaRejected`) from the next send
    or `flush`. `send_*` only queue: call `flush()` for delivery.
    """

    def __init__(self, bootstrap: str, topic: str, *, linger_ms: int = 10,
                 batch_size: int = 512 * 1024, delivery_timeout_ms: int = 60_000,
                 request_timeout_ms: int = 15_000, max_block_ms: int = 15_000,
                 client_id: str = "thousandcuts-bars", **producer_config):
        self.bootstrap = bootstrap
        self.topic = topic
        # Checked with admin first: the producer's own metadata request would
        # auto-create a missing topic (see module notes).
        self.partitions = topic_partitions(bootstrap, topic, timeout_ms=max_block_ms)
        config = dict(
            bootstrap_servers=bootstrap, client_id=client_id, acks="all", enable_idempotence=True,
            max_in_flight_requests_per_connection=5, linger_ms=linger_ms, batch_size=batch_size,
            delivery_timeout_ms=delivery_timeout_ms, request_timeout_ms=request_timeout_ms,
            max_block_ms=max_block_ms, bootstrap_timeout_ms=max_block_ms,
            allow_auto_create_topics=False,
            # JSON numbers compress well: less for the broker to store and
            # send, publishing ~40 % faster; a replay is as fast as without
            # (librdkafka decompresses in C; bench/README.md)
            compression_type="lz4",
        )
        config.update(producer_config)
        try:
            self._producer = KafkaProducer(**config)
        except Exception as exc:
            raise _typed(exc, bootstrap, "starting the producer") from None
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._keys: dict = {}
        self._symbol_json: dict = {}
        self.bars_sent = 0
        self.records_sent = 0  # bars records (several bars each)
        self.markers_sent = 0

    # errors of queued records arrive on the client's I/O thread
    def _on_error(self, exc: BaseException) -> None:
        with self._lock:
            if self._error is None:
                self._error = exc

    def _check(self) -> None:
        if self._error is not None:
            raise _typed(self._error, self.bootstrap, f"delivering to topic {self.topic}")

    def _send(self, key, value, partition=None) -> None:
        try:
            future = self._producer.send(self.topic, key=key, value=value, partition=partition)
        except Exception as exc:
            raise _typed(exc, self.bootstrap, f"sending to topic {self.topic}") from None
        future.add_errback(self._on_error)

    def send_bars(self, bars: Iterable[Bar]) -> int:
        """Queue bars (partition by key = symbol). Returns how many."""
        self._check()
        n = 0
        for bar in bars:
            key, value = encode_bar(bar)
            self._send(key, value)
            n += 1
        self.bars_sent += n
        return n

    def send_rows(self, cols, rows: np.ndarray, iso: np.ndarray | None = None) -> int:
        """Queue rows `rows` of `BarColumns` in that order (the fast path for
        files). `iso`: optional precomputed time text of every row of `cols`."""
        self._check()
        if not len(rows):
            return 0
        rows = np.asarray(rows)
        times = iso[rows] if iso is not None else iso_times(cols.ts[rows])
        syms = cols.symbol[rows].tolist()
        nan = np.full(len(rows), np.nan)
        n_col = cols.trade_count[rows] if cols.trade_count is not None else nan
        vw_col = cols.vwap[rows] if cols.vwap is not None else nan
        keys, sj = self._keys, self._symbol_json
        send = self._send
        for sym, t, o, h, lo, c, v, n, vw in zip(
                syms, times.tolist(), cols.open[rows].tolist(), cols.high[rows].tolist(),
                cols.low[rows].tolist(), cols.close[rows].tolist(), cols.volume[rows].tolist(),
                n_col.tolist(), vw_col.tolist()):
            key = keys.get(sym)
            if key is None:
                key = keys[sym] = sym.encode()
                sj[sym] = json.dumps(sym)
            send(key, _bar_json(sj[sym], t, o, h, lo, c, v, n, vw).encode())
        self.bars_sent += len(rows)
        return len(rows)

    def send_bars_records(self, cols, rows: np.ndarray, iso: np.ndarray | None = None,
                          max_bars: int = 1_000) -> int:
        """Queue rows `rows` of `BarColumns` as bars records: per symbol, its
        rows in the given order, up to `max_bars` per record (~100 KB).
        Symbols' records may interleave in any order: only a symbol's own
        order matters between two markers. Returns the bars queued."""
        self._check()
        rows = np.asarray(rows)
        if not len(rows):
            return 0
        symbols, code = np.unique(cols.symbol[rows], return_inverse=True)
        order = np.argsort(code, kind="stable")  # by symbol, each symbol's rows in their order
        bounds = np.flatnonzero(np.diff(code[order])) + 1
        times = iso if iso is not None else iso_times(cols.ts)
        for sym, part in zip(symbols.tolist(), np.split(rows[order], bounds)):
            for start in range(0, len(part), max_bars):
                r = part[start:start + max_bars]
                key, value = encode_bars(
                    sym, times[r].tolist(), cols.open[r].tolist(), cols.high[r].tolist(),
                    cols.low[r].tolist(), cols.close[r].tolist(), cols.volume[r].tolist(),
                    cols.trade_count[r].tolist() if cols.trade_count is not None else None,
                    cols.vwap[r].tolist() if cols.vwap is not None else None)
                self._send(key, value)
                self.records_sent += 1
        self.bars_sent += len(rows)
        return len(rows)

    def send_watermark(self, ts: int) -> None:
        """Queue the marker for watermark `ts` to every partition (explicit
        partition, key None), after everything queued before it."""
        self._check()
        value = encode_watermark(ts)
        for p in self.partitions:
            self._send(None, value, partition=p)
        self.markers_sent += len(self.partitions)

    def send_control(self, rec) -> None:
        """Queue a kill-switch record (`ControlRecord`) to every partition."""
        self._check()
        value = encode_control(rec)
        for p in self.partitions:
            self._send(None, value, partition=p)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until everything queued is acknowledged; raise if any failed."""
        try:
            self._producer.flush(timeout=timeout)
        except Exception as exc:
            raise _typed(exc, self.bootstrap, f"flushing to topic {self.topic}") from None
        self._check()

    def close(self, timeout: float = 10.0, check: bool = True) -> None:
        """Send what is queued (within `timeout`) and close; then, with
        `check`, raise if any record failed."""
        producer, self._producer = getattr(self, "_producer", None), None
        if producer is not None:
            producer.close(timeout=timeout)
        if check:
            self._check()

    def __enter__(self) -> "BarProducer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(check=exc_type is None)  # never mask the error in flight
