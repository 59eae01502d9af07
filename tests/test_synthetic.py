"""Rules pinned for the synthetic minute-bar generator (connectors/files/synthetic.py)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from connectors.files.synthetic import COLUMNS, generate_bars, write_bars

NY = "America/New_York"


@pytest.fixture(scope="module")
def bars() -> pd.DataFrame:
    return generate_bars(6, 8, seed=11, start="2024-01-04")  # Thu: spans weekends


@pytest.fixture(scope="module")
def long_bars() -> pd.DataFrame:
    return generate_bars(10, 30, seed=3)


def _local(df: pd.DataFrame) -> pd.Series:
    return df["timestamp"].dt.tz_convert(NY)


def test_same_seed_gives_identical_frame():
    pd.testing.assert_frame_equal(generate_bars(4, 3, seed=42), generate_bars(4, 3, seed=42), check_exact=True)


def test_different_seed_gives_different_prices():
    a, b = generate_bars(4, 3, seed=1), generate_bars(4, 3, seed=2)
    assert a["symbol"].equals(b["symbol"]) and a["timestamp"].equals(b["timestamp"])
    assert not np.array_equal(a["close"].to_numpy(), b["close"].to_numpy())


def test_columns_and_dtypes_are_alpaca_bars(bars):
    assert tuple(bars.columns) == COLUMNS
    assert str(bars["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert bars["volume"].dtype == np.float64
    assert pd.api.types.is_integer_dtype(bars["trade_count"])
    for c in ("open", "high", "low", "close", "vwap"):
        assert bars[c].dtype == np.float64


def test_rows_sorted_by_timestamp_then_symbol(bars):
    key = bars[["timestamp", "symbol"]]
    assert key.equals(key.sort_values(["timestamp", "symbol"], kind="stable").reset_index(drop=True))
    assert not key.duplicated().any()


def test_symbols_unique_upper_case_1_to_6_letters():
    names = generate_bars(40, 1, seed=0)["symbol"].unique()
    assert len(names) == 40
    assert all(s.isalpha() and s.isupper() and s.isascii() and 1 <= len(s) <= 6 for s in names)


def test_390_bars_per_symbol_per_weekday_and_none_on_weekends(bars):
    local = _local(bars)
    assert (local.dt.day_of_week < 5).all()
    days = local.dt.date
    assert days.nunique() == 8
    counts = bars.groupby([bars["symbol"], days]).size()
    assert (counts == 390).all() and len(counts) == 6 * 8


def test_weekend_start_rolls_to_monday():
    first = _local(generate_bars(1, 1, seed=0, start="2024-01-06"))  # Saturday
    assert first.iloc[0] == pd.Timestamp("2024-01-08 09:30", tz=NY)


def test_timestamps_are_minute_starts_inside_new_york_session_across_dst():
    df = generate_bars(2, 5, seed=5, start="2024-03-06")  # DST starts Sun 2024-03-10
    ts, local = df["timestamp"], _local(df)
    assert (ts.dt.second == 0).all() and (ts.dt.microsecond == 0).all() and (ts.dt.nanosecond == 0).all()
    minute = local.dt.hour * 60 + local.dt.minute
    assert minute.min() == 9 * 60 + 30 and minute.max() == 15 * 60 + 59
    assert ((minute >= 570) & (minute < 960)).all()
    opens = ts.groupby(local.dt.date).min()
    assert [t.strftime("%H:%M") for t in opens] == ["14:30", "14:30", "14:30", "13:30", "13:30"]


def test_ohlc_containment_positive_finite_cent_prices(long_bars):
    o, h, l, c, v = (long_bars[k].to_numpy() for k in ("open", "high", "low", "close", "vwap"))
    for a in (o, h, l, c, v):
        assert np.isfinite(a).all() and (a > 0).all()
    for a in (o, h, l, c):
        assert np.allclose(a, np.round(a, 2), rtol=0, atol=1e-9)
    assert (h >= np.maximum(o, c)).all() and (l <= np.minimum(o, c)).all()
    assert ((v >= l) & (v <= h)).all()
    assert (long_bars["volume"] >= 1).all()
    assert ((long_bars["trade_count"] >= 1) & (long_bars["trade_count"] <= long_bars["volume"])).all()


def test_start_prices_between_20_and_500():
    first = generate_bars(50, 1, seed=9).groupby("symbol")["open"].first()
    assert first.between(20, 500).all()


def test_overnight_gap_makes_session_open_differ_from_previous_close(long_bars):
    local = _local(long_bars)
    g = long_bars.assign(day=local.dt.date).groupby(["symbol", "day"])
    per_day = pd.DataFrame({"open": g["open"].first(), "close": g["close"].last()})
    prev_close = per_day.groupby(level="symbol")["close"].shift()
    has_prev = prev_close.notna()
    assert has_prev.sum() == 10 * 29
    assert (per_day["open"][has_prev] != prev_close[has_prev]).all()


def test_one_minute_volatility_suits_tight_stops(long_bars):
    same_day = _local(long_bars).dt.date
    lr = np.log(long_bars["close"]).groupby([long_bars["symbol"], same_day]).diff()
    std = lr.groupby(long_bars["symbol"]).std()
    assert std.between(0.0004, 0.002).all(), std


def test_intraday_volatility_is_u_shaped(long_bars):
    local = _local(long_bars)
    minute = (local.dt.hour * 60 + local.dt.minute - 570).to_numpy()
    r = np.abs(long_bars["close"] / long_bars["open"] - 1).to_numpy()
    first, mid, last = r[minute < 30].mean(), r[(minute >= 180) & (minute < 210)].mean(), r[minute >= 360].mean()
    assert first > 1.2 * mid and last > 1.05 * mid


def test_panic_drops_exist_with_volume_spike(long_bars):
    df = long_bars.assign(day=_local(long_bars).dt.date)
    g = df.groupby(["symbol", "day"])
    ret5 = df["close"] / g["close"].shift(5) - 1
    peak_vol5 = g["volume"].transform(lambda s: s.rolling(5, min_periods=1).max())
    median_vol = df.groupby("symbol")["volume"].transform("median")
    panic = (ret5 < -0.02) & (peak_vol5 > 3 * median_vol)
    assert panic.sum() >= 3
    assert df.loc[panic, "symbol"].nunique() >= 2


def test_parquet_round_trip_is_identical(tmp_path, bars):
    path = tmp_path / "nested" / "dir" / "bars.parquet"
    write_bars(bars, str(path))
    pd.testing.assert_frame_equal(pd.read_parquet(path), bars, check_exact=True)


def test_csv_round_trip_is_identical_with_iso_utc_timestamps(tmp_path, bars):
    path = tmp_path / "out" / "bars.csv"
    write_bars(bars, str(path))
    first_row = path.read_text().splitlines()[1]
    assert first_row.split(",")[1] == "2024-01-04T14:30:00Z"
    back = pd.read_csv(path)
    back["timestamp"] = pd.to_datetime(back["timestamp"], utc=True, format="ISO8601").dt.as_unit("ns")
    pd.testing.assert_frame_equal(back, bars, check_exact=True, check_dtype=False)
    assert str(back["timestamp"].dtype) == "datetime64[ns, UTC]"


@pytest.mark.parametrize("name", ["bars.json", "bars.txt", "bars"])
def test_unsupported_extension_raises(tmp_path, bars, name):
    with pytest.raises(ValueError, match="unsupported bar file extension"):
        write_bars(bars, str(tmp_path / name))
