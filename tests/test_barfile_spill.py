"""A bar file larger than memory is put in event-time order on disk
(connectors/files/spill.py) and emits exactly what the same file emits from
memory: the same chunks (symbol, every column, file row numbers) and the same
watermarks in every partition, whatever the file's order (by time, by
symbol as vendors write it, shuffled), with late, duplicate and invalid rows
mixed in, for Parquet and CSV; a restart from a snapshot continues where it
left off; an error in a later chunk names the file's row."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.files.barfile import BarFileError, BarFileSource
from operators.ordering import Chunk

T0 = 1704205800  # 2024-01-02 14:30 UTC
SYMBOLS = ["AAA", "BRK.B", "Z9", "MSFT", "bad sym"]


def make_file(path: str, rng: np.random.Generator, n_symbols: int, minutes: int, order: str,
              optional: bool) -> None:
    rows = []
    for sym in SYMBOLS[:n_symbols]:
        ts = T0 + 60 * np.arange(minutes)
        late = rng.random(minutes) < 0.08  # some rows much earlier: late, or a symbol's first
        ts = np.where(late, ts - 60 * rng.integers(1, 3 * minutes, minutes), ts)
        dup = rng.random(minutes) < 0.04
        ts = np.where(dup, np.roll(ts, 1), ts)
        px = rng.uniform(10, 20, minutes).round(2)
        for t, p in zip(ts.tolist(), px.tolist()):
            rows.append((sym, t, p, p + 0.5, p - 0.5 if rng.random() > 0.02 else p + 1, p, 100.0))
    df = pd.DataFrame(rows, columns=["symbol", "ts", "open", "high", "low", "close", "volume"])
    if order == "time":
        df = df.sort_values(["ts", "symbol"], kind="stable")
    elif order == "shuffled":
        df = df.sample(frac=1, random_state=int(rng.integers(1 << 30)))
    # "symbol": as made, each symbol's rows together
    df.insert(1, "timestamp", pd.to_datetime(df.pop("ts"), unit="s", utc=True))
    if optional:
        df["trade_count"] = rng.integers(1, 50, len(df)).astype(float)
        df.loc[df.sample(frac=0.1, random_state=1).index, "trade_count"] = np.nan
        df["vwap"] = df["close"]
    if path.endswith(".csv"):
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path, index=False, row_group_size=int(rng.integers(7, 200)))


def emitted(source: BarFileSource, partition: int, resume=None, stop_after=None):
    part = source.build_part("s", str(partition), resume)
    items, states = [], []
    try:
        while stop_after is None or len(states) < stop_after:
            batch = part.next_batch()
            items.extend(batch)
            states.append(part.snapshot())
    except StopIteration:
        pass
    part.close()
    return items, states


def as_tuples(items) -> list:
    out = []
    for it in items:
        if isinstance(it, Chunk):
            b = it.bars
            out.append(("chunk", it.partition, it.seq, it.symbol, np.asarray(it.origins).tolist(),
                        b.ts.tolist(), b.open.tolist(), b.high.tolist(), b.low.tolist(),
                        b.close.tolist(), b.volume.tolist(),
                        None if b.trade_count is None else np.nan_to_num(b.trade_count, nan=-1).tolist(),
                        None if b.vwap is None else b.vwap.tolist()))
        else:
            out.append(("watermark", it.partition, it.seq, it.ts))
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), n_symbols=st.integers(1, 5), minutes=st.integers(1, 120),
       order=st.sampled_from(["time", "symbol", "shuffled"]), ext=st.sampled_from([".parquet", ".csv"]),
       partitions=st.integers(1, 3), optional=st.booleans(), block_rows=st.integers(1, 64))
def test_a_spilled_file_emits_exactly_what_it_emits_from_memory(tmp_path_factory, seed, n_symbols,
                                                                minutes, order, ext, partitions,
                                                                optional, block_rows):
    rng = np.random.default_rng(seed)
    path = str(tmp_path_factory.mktemp("bars") / f"bars{ext}")
    make_file(path, rng, n_symbols, minutes, order, optional)
    in_memory = BarFileSource.from_file(path, partitions, block_rows=block_rows)
    small = dict(memory_rows=int(rng.integers(0, in_memory.rows)), chunk_rows=int(rng.integers(1, 50)),
                 merge_rows=int(rng.integers(1, 100)))
    on_disk = BarFileSource.from_file(path, partitions, block_rows=block_rows,
                                      workdir=str(tmp_path_factory.mktemp("work")), **small)
    assert in_memory.spilled is None and on_disk.spilled is not None
    assert on_disk.rows == in_memory.rows
    for p in range(partitions):
        want, _ = emitted(in_memory, p)
        got, states = emitted(on_disk, p)
        assert as_tuples(got) == as_tuples(want)
        # a restart from any snapshot but the last (the partition ended) emits the rest
        if len(states) > 1:
            k = int(rng.integers(0, len(states) - 1))
            rest, _ = emitted(on_disk, p, resume=states[k])
            start = next(i for i, it in enumerate(got) if it.seq == states[k][1])
            assert as_tuples(rest) == as_tuples(got[start:])


def test_the_temporary_files_go_with_the_source(tmp_path):
    make_file(str(tmp_path / "b.parquet"), np.random.default_rng(1), 3, 50, "symbol", False)
    source = BarFileSource.from_file(str(tmp_path / "b.parquet"), memory_rows=10, chunk_rows=20,
                                     workdir=str(tmp_path))
    work = source.spilled.dir
    assert os.listdir(work)
    emitted(source, 0)
    del source
    import gc
    gc.collect()
    assert not os.path.exists(work)


def test_an_error_in_a_later_chunk_names_the_files_row(tmp_path):
    df = pd.DataFrame({"symbol": ["AAA"] * 50, "timestamp": pd.date_range("2024-01-02 14:30", periods=50,
                                                                          freq="min", tz="UTC"),
                       "open": ["1.0"] * 50, "high": 2.0, "low": 0.5, "close": 1.0, "volume": 1.0})
    df.loc[37, "open"] = "x"
    df.to_csv(tmp_path / "b.csv", index=False)
    with pytest.raises(BarFileError, match="column open row 37: not a number"):
        BarFileSource.from_file(str(tmp_path / "b.csv"), memory_rows=5, chunk_rows=10,
                                workdir=str(tmp_path))


@pytest.mark.parametrize("unit,tz", [("ns", "UTC"), ("us", None), ("ms", "America/New_York"), ("s", None)])
@pytest.mark.parametrize("optional", [False, True])
def test_arrow_columns_equal_the_pandas_reading_of_the_same_batch(unit, tz, optional):
    import pyarrow as pa

    from connectors.files.barfile import arrow_to_columns, frame_to_columns
    rng = np.random.default_rng(3)
    n = 200
    ts = (T0 + 60 * rng.integers(-10_000, 10_000, n)) * {"s": 1, "ms": 1000, "us": 10**6, "ns": 10**9}[unit]
    cols = {
        "symbol": pa.array([None if i % 17 == 0 else SYMBOLS[i % 4] for i in range(n)]).dictionary_encode(),
        "timestamp": pa.array(ts.astype(np.int64)).cast(pa.timestamp(unit, tz=tz)),
        "open": pa.array(rng.uniform(1, 9, n)), "high": pa.array(rng.integers(5, 10, n)),
        "low": pa.array([None if i % 13 == 0 else 1.0 for i in range(n)]), "close": pa.array(rng.uniform(1, 9, n)),
        "volume": pa.array([None if i % 11 == 0 else i for i in range(n)], pa.int64()),
    }
    if optional:
        cols["trade_count"] = pa.array([None if i % 7 == 0 else i for i in range(n)], pa.int64())
        cols["vwap"] = pa.array(rng.uniform(1, 9, n))
    batch = pa.RecordBatch.from_pydict(cols)
    fast, slow = arrow_to_columns(batch, "f", 40), frame_to_columns(batch.to_pandas(), "f", 40)
    for f in ("symbol", "ts", "open", "high", "low", "close", "volume", "trade_count", "vwap"):
        a, b = getattr(fast, f), getattr(slow, f)
        assert (a is None) == (b is None), f
        if a is not None:
            assert a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), f
    nulls = batch.set_column(1, "timestamp", pa.array([None] + ts[1:].tolist(), pa.int64()).cast(
        pa.timestamp(unit, tz=tz)))
    with pytest.raises(BarFileError, match="column timestamp row 40: missing time"):
        arrow_to_columns(nulls, "f", 40)
    assert arrow_to_columns(batch.drop_columns(["close"]), "f") is None  # pandas names what is missing
