"""Bar files: Alpaca's bar columns in Parquet or CSV; naive timestamps are
UTC; volume may be fractional; trade_count and vwap are optional; a
malformed file is a one-line error; the emission plan keeps each symbol's
row order and its watermarks hold."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from connectors.files.barfile import (
    BarFileError,
    BarFileSource,
    plan_emission,
    read_bar_file,
)
from operators.ordering import END_OF_TIME, Chunk, Watermark


def frame(**over):
    df = pd.DataFrame({
        "symbol": ["AAA", "BBB", "AAA"],
        "timestamp": ["2024-01-02T14:30:00Z", "2024-01-02T14:30:00Z", "2024-01-02T14:31:00Z"],
        "open": [10.0, 20.0, 10.5], "high": [11.0, 21.0, 11.0], "low": [9.5, 19.5, 10.0],
        "close": [10.5, 20.5, 10.8], "volume": [100.5, 200.25, 3.0],
    })
    for k, v in over.items():
        df[k] = v
    return df


def test_naive_and_zoned_timestamps_mean_the_same_utc_minute(tmp_path):
    zoned = frame(timestamp=["2024-01-02T09:30:00-05:00", "2024-01-02T14:30:00+00:00", "2024-01-02T14:31:00Z"])
    naive = frame(timestamp=pd.to_datetime(["2024-01-02 14:30", "2024-01-02 14:30", "2024-01-02 14:31"]))
    zoned.to_csv(tmp_path / "z.csv", index=False)
    naive.to_parquet(tmp_path / "n.parquet")
    a, b = read_bar_file(str(tmp_path / "z.csv")), read_bar_file(str(tmp_path / "n.parquet"))
    assert a.ts.tolist() == b.ts.tolist() == [1704205800, 1704205800, 1704205860]


def test_fractional_volume_and_optional_columns(tmp_path):
    frame().to_parquet(tmp_path / "a.parquet")
    cols = read_bar_file(str(tmp_path / "a.parquet"))
    assert cols.volume.tolist() == [100.5, 200.25, 3.0]
    assert cols.trade_count is None and cols.vwap is None
    frame(trade_count=[1, 2, 3], vwap=[10.2, 20.1, 10.6]).to_csv(tmp_path / "b.csv", index=False)
    cols = read_bar_file(str(tmp_path / "b.csv"))
    assert cols.trade_count.tolist() == [1, 2, 3] and cols.vwap.tolist() == [10.2, 20.1, 10.6]


@pytest.mark.parametrize("make,message", [
    (lambda p: frame().drop(columns=["close"]).to_csv(p, index=False), "missing column(s) close"),
    (lambda p: frame(open=["x", "1", "2"]).to_csv(p, index=False), "bad.csv line 2: column open: not a number"),
    (lambda p: frame(timestamp=["yesterday", "2024-01-02T14:30:00Z", "2024-01-02T14:31:00Z"]).to_csv(p, index=False),
     "bad.csv line 2: timestamp 'yesterday' is not a time: use ISO 8601"),
    (lambda p: open(p, "w").write("\x00\x01garbage"), "cannot read"),
])
def test_malformed_file_is_a_one_line_error(tmp_path, make, message):
    path = tmp_path / ("bad.parquet" if "cannot" in message else "bad.csv")
    make(str(path))
    with pytest.raises(BarFileError) as err:
        read_bar_file(str(path))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_unsupported_extension_and_missing_file(tmp_path):
    (tmp_path / "bars.json").write_text("{}")
    with pytest.raises(BarFileError, match="unsupported"):
        read_bar_file(str(tmp_path / "bars.json"))
    with pytest.raises(BarFileError, match="not found"):
        read_bar_file(str(tmp_path / "nope.csv"))


def test_alpaca_multiindex_frame_is_accepted(tmp_path):
    df = frame()
    df["timestamp"] = pd.to_datetime(df["timestamp"], utc=True)
    df.set_index(["symbol", "timestamp"]).to_parquet(tmp_path / "mi.parquet")
    assert len(read_bar_file(str(tmp_path / "mi.parquet"))) == 3


def test_emission_keeps_each_symbols_row_order_and_watermarks_hold(tmp_path):
    rng = np.random.default_rng(4)
    rows = []
    for sym in ("AAA", "BBB", "CCC"):
        ts = 1704205800 + 60 * np.arange(40)
        ts[rng.integers(0, 40, 5)] -= 60 * rng.integers(1, 10, 5)  # some late rows
        rows += [(sym, t) for t in ts]
    df = pd.DataFrame(rows, columns=["symbol", "ts"]).sample(frac=1, random_state=1)
    df = df.sort_values("symbol", kind="stable")  # by symbol, like alpaca-py's frames
    full = pd.DataFrame({"symbol": df.symbol, "timestamp": pd.to_datetime(df.ts, unit="s", utc=True),
                         "open": 1.0, "high": 1.0, "low": 1.0, "close": 1.0, "volume": 1.0})
    full.to_parquet(tmp_path / "x.parquet")
    cols = read_bar_file(str(tmp_path / "x.parquet"))
    src = BarFileSource(cols, partitions=2, block_rows=7)
    for p in src.partition_ids():
        part = src.build_part("s", str(p), None)
        seen_rows, watermark, seqs = {}, -1, []
        try:
            while True:
                for item in part.next_batch():
                    seqs.append(item.seq)
                    if isinstance(item, Watermark):
                        assert item.ts >= watermark
                        watermark = item.ts
                    else:
                        assert isinstance(item, Chunk)
                        assert (item.bars.ts >= watermark).all(), "a row came behind its watermark"
                        seen_rows.setdefault(item.symbol, []).extend(item.origins.tolist())
        except StopIteration:
            pass
        assert watermark == END_OF_TIME and seqs == list(range(len(seqs)))
        for sym, got in seen_rows.items():
            assert got == sorted(got), f"{sym} rows out of file order"
    order, _ = plan_emission(cols)
    assert sorted(order.tolist()) == list(range(len(cols)))


def _csv(tmp_path, text, name="bars.csv"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


HEADER = "symbol,timestamp,open,high,low,close,volume\n"
ROW = "AAA,2024-01-02T14:30:00Z,10,11,9.5,10.5,100\n"


@pytest.mark.parametrize("text,message", [
    (HEADER, "bars.csv: no bars (only a header)"),
    (HEADER + "\n\n", "bars.csv: no bars (only a header)"),
    ("", "bars.csv: empty file, no bars"),
    ("\n", "bars.csv: empty file, no bars"),
])
def test_a_file_without_bars_is_refused(tmp_path, text, message):
    with pytest.raises(BarFileError) as err:
        read_bar_file(_csv(tmp_path, text))
    assert str(err.value).endswith(message)


def test_a_parquet_file_without_rows_is_refused(tmp_path):
    frame().iloc[:0].to_parquet(tmp_path / "none.parquet")
    with pytest.raises(BarFileError, match="none.parquet: no bars"):
        read_bar_file(str(tmp_path / "none.parquet"))


@pytest.mark.parametrize("header", [
    "Symbol,Timestamp,Open,High,Low,Close,Volume", "SYMBOL,TIMESTAMP,OPEN,HIGH,LOW,CLOSE,VOLUME",
    " symbol , timestamp ,open,high,low,close,volume", "Symbol,timestamp,OPEN,High,low,Close,volume,VWAP"])
def test_column_names_that_differ_only_in_case_or_spaces_are_accepted(tmp_path, header):
    extra = ",10.2" if header.endswith("VWAP") else ""
    cols = read_bar_file(_csv(tmp_path, header + "\n" + ROW.rstrip("\n") + extra + "\n"))
    assert cols.symbol.tolist() == ["AAA"] and cols.close.tolist() == [10.5]
    assert (cols.vwap is not None) == bool(extra)


def test_two_columns_that_differ_only_in_case_are_refused(tmp_path):
    with pytest.raises(BarFileError, match="columns 'close' and 'Close' differ only in case"):
        read_bar_file(_csv(tmp_path, HEADER.rstrip("\n") + ",Close\n" + ROW.rstrip("\n") + ",1\n"))


@pytest.mark.parametrize("stamp,message", [
    ("2024-13-02T14:31:00Z", "line 3: timestamp '2024-13-02T14:31:00Z' is not a time"),
    ("02/01/2024 14:31", "line 3: timestamp '02/01/2024 14:31' is not a time"),
    ("2024-01-02T25:00:00Z", "line 3: timestamp '2024-01-02T25:00:00Z' is not a time"),
    ("", "line 3: no timestamp"),
])
def test_a_bad_timestamp_names_the_line_an_editor_shows_and_the_formats(tmp_path, stamp, message):
    text = HEADER + ROW + f"AAA,{stamp},10,11,9.5,10.5,100\n" + ROW
    with pytest.raises(BarFileError) as err:
        read_bar_file(_csv(tmp_path, text))
    assert message in str(err.value) and "\n" not in str(err.value)
    if "not a time" in message:
        assert str(err.value).endswith("(no zone: UTC), or a Parquet timestamp column")


def test_epoch_numbers_are_refused_with_the_formats(tmp_path):
    with pytest.raises(BarFileError, match="line 2: timestamp '1704205800' is a number: write ISO 8601"):
        read_bar_file(_csv(tmp_path, HEADER + "AAA,1704205800,10,11,9.5,10.5,100\n"))


def test_places_in_the_file_count_as_a_person_does(tmp_path):
    """CSV: an editor's line (the header is line 1); Parquet: rows from 1."""
    cols = read_bar_file(_csv(tmp_path, HEADER + ROW + ROW))
    assert [cols.where(0), cols.where(1)] == ["bars.csv line 2", "bars.csv line 3"]
    frame().to_parquet(tmp_path / "p.parquet")
    assert read_bar_file(str(tmp_path / "p.parquet")).where(2) == "p.parquet row 3"
    bad = frame()
    bad["open"] = ["10", "11", "oops"]
    bad.to_parquet(tmp_path / "q.parquet")
    with pytest.raises(BarFileError, match="q.parquet row 3: column open: not a number: 'oops'"):
        read_bar_file(str(tmp_path / "q.parquet"))


def _backtest_reader(path: str, **small):
    """What `cuts backtest` reads a file with: in chunks, in memory or spilled."""
    return BarFileSource.from_file(path, **small)


SMALL = [dict(), dict(chunk_rows=2), dict(chunk_rows=2, memory_rows=1)]  # whole, chunks, spilled


@pytest.mark.parametrize("small", SMALL)
@pytest.mark.parametrize("ext", [".csv", ".parquet"])
def test_the_backtests_chunked_reader_accepts_column_names_in_any_case(tmp_path, ext, small):
    df = frame().rename(columns=str.title)  # Symbol,Timestamp,Open,...
    df["Timestamp"] = pd.to_datetime(df["Timestamp"], utc=True)
    path = str(tmp_path / f"t{ext}")
    df.to_csv(path, index=False) if ext == ".csv" else df.to_parquet(path)
    source = _backtest_reader(path, workdir=str(tmp_path), **small)
    assert source.rows == 3


@pytest.mark.parametrize("small", SMALL)
def test_the_backtests_chunked_reader_refuses_files_without_bars(tmp_path, small):
    with pytest.raises(BarFileError, match="no bars \\(only a header\\)"):
        _backtest_reader(_csv(tmp_path, HEADER), **small)
    frame().iloc[:0].to_parquet(tmp_path / "none.parquet")
    with pytest.raises(BarFileError, match="none.parquet: no bars"):
        _backtest_reader(str(tmp_path / "none.parquet"), **small)
    with pytest.raises(BarFileError, match="is a directory"):
        _backtest_reader(str(tmp_path), **small)


@pytest.mark.parametrize("small", SMALL)
def test_the_backtests_chunked_reader_names_the_place_a_person_finds(tmp_path, small):
    """Errors in a later chunk count from the file's start: an editor's line
    for a CSV, rows from 1 for Parquet (not the chunk's own row, not from 0)."""
    with pytest.raises(BarFileError, match="bars.csv line 5: timestamp 'soon' is not a time"):
        _backtest_reader(_csv(tmp_path, HEADER + ROW * 3 + "AAA,soon,10,11,9.5,10.5,100\n"),
                         workdir=str(tmp_path), **small)
    bad = pd.concat([frame(), frame()], ignore_index=True)
    bad["open"] = ["10", "11", "12", "13", "oops", "14"]
    bad.to_parquet(tmp_path / "q.parquet")
    with pytest.raises(BarFileError, match="q.parquet row 5: column open: not a number: 'oops'"):
        _backtest_reader(str(tmp_path / "q.parquet"), workdir=str(tmp_path), **small)


def test_dead_letter_places_are_the_same_in_memory_and_spilled(tmp_path):
    """An invalid bar's origin is its line in the file, whether the file was
    held in memory or put in order on disk."""
    text = HEADER + ROW + "AAA,2024-01-02T14:31:00Z,10,9,9.5,10.5,100\n" + ROW.replace("AAA", "BBB")
    path = _csv(tmp_path, text)

    def places(source):
        part, out = source.build_part("s", "0", None), []
        try:
            while True:
                out += [(c.symbol, c.origin_prefix, np.asarray(c.origins).tolist())
                        for c in part.next_batch() if isinstance(c, Chunk)]
        except StopIteration:
            return sorted(out)

    in_memory = places(_backtest_reader(path))
    assert in_memory == [("AAA", "bars.csv line ", [2, 3]), ("BBB", "bars.csv line ", [4])]
    assert places(_backtest_reader(path, memory_rows=1, chunk_rows=1, workdir=str(tmp_path))) == in_memory
