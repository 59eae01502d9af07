"""The run tearsheet's numbers and series, in ClickHouse SQL (FINAL on every
read, so replayed rows count once). The page (`connectors.html`) only draws
what these queries return.

Definitions beyond `analytics` (fractions, not percent):
- daily equity E_d: the last equity point of America/New_York day d; E_0 is
  the initial cash. Daily return `E_d / E_{d-1} - 1`, daily P&L `E_d - E_{d-1}`
  (as analytics' Sharpe).
- monthly return: `M_m / M_{m-1} - 1`, M_m the last daily equity of month m
  (M_0 the initial cash).
- CAGR: `(final / initial) ** (252 / trading days) - 1` (None when the final
  equity is not above 0).
- Sortino: mean daily return / downside deviation * sqrt(252); downside
  deviation = sqrt(mean over all days of min(r, 0)^2); None with fewer than
  two days or no losing day.
- Calmar: CAGR / max drawdown (None without a drawdown).
- drawdown of a minute: `equity / peak - 1` with peak the running maximum of
  the equity curve, starting at the initial cash (so the underwater curve's
  lowest point is `-max_drawdown`).
- longest drawdown: the longest stretch of minutes under the peak, in
  calendar days from the last minute at the peak before it (or the first
  minute) to the first minute back at the peak (or the last minute when the
  equity never recovered).
- consecutive wins / losses: runs of trades with pnl > 0 / pnl <= 0 in the
  order they closed (exit time, then entry time, symbol, strategy).
- times of the series (`t`, `entry_t`, `exit_t`) are New York wall-clock
  readings as epoch seconds (`_wall`): read as UTC they show New York's
  time, which is what a chart of US sessions should show.
- a trade's stop and target: its entry price times (1 - stop_loss_pct) and
  (1 + take_profit_pct) of the BUY signal its entry order was decided on
  (section 4: set at the entry fill; a trailing stop may raise the stop
  later), or of the run's `exit` configuration when that signal is not found.
"""
from __future__ import annotations

import math

import numpy as np

from connectors.clickhouse.analytics import NY, _f, _one, _rows, initial_cash
from connectors.clickhouse.schema import DATABASE

# Display budgets: the page shows at most this many equity points (the
# metrics use every minute) and this many candles over all symbols.
EQUITY_DISPLAY_POINTS = 20_000
CANDLE_BUDGET = 250_000
CANDLES_PER_SYMBOL = 30_000
CANDLE_MINUTES = (1, 5, 15, 30, 60, 390)  # 390: one candle per New York day


def _wall(ts: str) -> str:
    """Epoch seconds of the New York wall-clock time of DateTime64 `ts`."""
    return f"(toUnixTimestamp({ts}) + timeZoneOffset(toTimeZone({ts}, '{NY}')))"


def _columns(client, sql: str, run_id: str, **params) -> dict[str, np.ndarray]:
    """Query result as named numpy columns (through Arrow: the fastest way
    out of clickhouse-connect for 100 k+ rows, ~1.5x the row decoder)."""
    table = client.query_arrow(sql, parameters={"run_id": run_id, **params})
    return {name: table.column(name).to_numpy() for name in table.column_names}


def _equity_with_drawdown(db: str) -> str:
    """Every minute of the run: epoch seconds, row number, equity, drawdown."""
    return f"""(SELECT {_wall('ts')} AS t, row_number() OVER (ORDER BY ts) - 1 AS rn, equity,
               equity / greatest(max(equity) OVER (ORDER BY ts ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW),
                                 {{cash:Float64}}) - 1 AS drawdown
            {_f(db, 'equity')})"""


def equity_curve(client, run_id: str, max_points: int = EQUITY_DISPLAY_POINTS,
                 database: str = DATABASE) -> dict:
    """Equity and drawdown for display: every minute when the run has at most
    `max_points` of them; otherwise the minutes are cut into buckets of
    `bucket_minutes` consecutive points and each bucket keeps its first and
    last point and those of its lowest and highest equity and deepest
    drawdown (at most 6 per bucket), so the curve keeps every peak, trough and
    the deepest drawdown. `minutes` is the run's count."""
    cash = initial_cash(client, run_id, database)
    minutes = _one(client, f"SELECT count() AS n {_f(database, 'equity')}", run_id)["n"]
    per_bucket = 6
    bucket = 1 if minutes <= max_points else math.ceil(minutes * per_bucket / max_points)
    src = _equity_with_drawdown(database)
    if bucket == 1:
        sql = f"SELECT t, equity, drawdown FROM {src} ORDER BY t"
    else:
        sql = f"""
            WITH src AS {src}
            SELECT t, equity, drawdown FROM src WHERE t IN (
                SELECT arrayJoin([min(t), max(t), argMin(t, (equity, t)), argMax(t, (equity, -t)),
                                  argMin(t, (drawdown, t)), argMax(t, (drawdown, -t))])  -- ties: the first
                FROM src GROUP BY intDiv(rn, {{bucket:UInt64}}))
            ORDER BY t"""
    cols = _columns(client, sql, run_id, cash=cash, bucket=bucket)
    return {"t": cols["t"], "equity": cols["equity"], "drawdown": cols["drawdown"],
            "minutes": int(minutes), "bucket_minutes": bucket}


def _daily_sql(db: str) -> str:
    return f"""(SELECT day, eq, eq / prev - 1 AS r, eq - prev AS pnl FROM (
                  SELECT day, eq, lagInFrame(eq, 1, {{cash:Float64}}) OVER
                      (ORDER BY day ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING) AS prev
                  FROM (SELECT toDate(ts, '{NY}') AS day, argMax(equity, ts) AS eq
                        {_f(db, 'equity')} GROUP BY day)))"""


def daily(client, run_id: str, database: str = DATABASE) -> list[dict]:
    """Per New York trading day: date (YYYY-MM-DD), equity, ret, pnl."""
    cash = initial_cash(client, run_id, database)
    return _rows(client, f"SELECT toString(day) AS date, eq AS equity, r AS ret, pnl "
                         f"FROM {_daily_sql(database)} ORDER BY date", run_id, cash=cash)


def monthly(client, run_id: str, database: str = DATABASE) -> list[dict]:
    """Per calendar month (New York): year, month (1-12), return."""
    cash = initial_cash(client, run_id, database)
    return _rows(client, f"""
        SELECT toYear(m) AS year, toMonth(m) AS month, eq / lagInFrame(eq, 1, {{cash:Float64}}) OVER
                   (ORDER BY m ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING) - 1 AS ret
        FROM (SELECT toStartOfMonth(day) AS m, argMax(eq, day) AS eq FROM {_daily_sql(database)} GROUP BY m)
        ORDER BY m""", run_id, cash=cash)


def extra_metrics(client, run_id: str, max_drawdown: float | None, database: str = DATABASE) -> dict:
    """CAGR, Sortino, Calmar, best and worst day, longest drawdown, longest
    runs of wins and losses (see the module docstring)."""
    cash = initial_cash(client, run_id, database)
    d = _one(client, f"""
        SELECT count() AS days, argMax(eq, day) AS final, avg(r) AS mean_r,
            sqrt(avg(pow(least(r, 0), 2))) AS downside,
            if(days > 0 AND final > 0, pow(final / {{cash:Float64}}, 252 / days) - 1, NULL) AS cagr,
            if(days > 1 AND downside > 0, mean_r / downside * sqrt(252), NULL) AS sortino,
            if(days > 0, max(r), NULL) AS best_day, toString(argMax(day, (r, -toUInt32(day)))) AS best_day_date,
            if(days > 0, min(r), NULL) AS worst_day, toString(argMin(day, (r, toUInt32(day)))) AS worst_day_date
        FROM {_daily_sql(database)}""", run_id, cash=cash)
    dd = _one(client, f"""
        SELECT maxOrNull(b - a) / 86400 AS days, argMax(a, (b - a, -a)) AS start_t, argMax(b, (b - a, -a)) AS end_t,
            argMax(back, (b - a, -a)) AS recovered,
            formatDateTime(toDateTime(start_t, 'UTC'), '%F %R', 'UTC') AS start_text,
            formatDateTime(toDateTime(end_t, 'UTC'), '%F %R', 'UTC') AS end_text
        FROM (SELECT min(prev_t) AS a, max(next_t) AS b, argMax(next_under, t) = 0 AS back
              FROM (SELECT t, under, rn - row_number() OVER (PARTITION BY under ORDER BY t) AS island,
                        lagInFrame(t, 1, t) OVER w AS prev_t, leadInFrame(t, 1, t) OVER w AS next_t,
                        leadInFrame(under, 1, 1) OVER w AS next_under
                    FROM (SELECT t, rn, drawdown < 0 AS under FROM {_equity_with_drawdown(database)})
                    WINDOW w AS (ORDER BY t ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING))
              WHERE under GROUP BY island)""", run_id, cash=cash)
    streak = _one(client, f"""
        SELECT maxIf(n, win) AS wins, maxIf(n, NOT win) AS losses
        FROM (SELECT win, count() AS n FROM (
                SELECT pnl > 0 AS win,
                    row_number() OVER (ORDER BY exit_time, entry_time, symbol, strategy_id, trade_id)
                    - row_number() OVER (PARTITION BY win ORDER BY exit_time, entry_time, symbol, strategy_id,
                                         trade_id) AS island
                {_f(database, 'trades')}) GROUP BY win, island)""", run_id)
    cagr = d.get("cagr")
    has_days = bool(d.get("days"))
    has_dd = dd.get("days") is not None
    return {
        "cagr": cagr, "sortino": d.get("sortino"),
        "calmar": cagr / max_drawdown if cagr is not None and max_drawdown else None,
        "best_day": d.get("best_day"), "best_day_date": d.get("best_day_date") if has_days else None,
        "worst_day": d.get("worst_day"), "worst_day_date": d.get("worst_day_date") if has_days else None,
        "longest_drawdown_days": dd.get("days"),
        "longest_drawdown_start": dd["start_text"] if has_dd else None,
        "longest_drawdown_end": dd["end_text"] if has_dd else None,
        "longest_drawdown_recovered": bool(dd["recovered"]) if has_dd else None,
        "max_consecutive_wins": streak.get("wins") or 0, "max_consecutive_losses": streak.get("losses") or 0,
    }


def return_histogram(client, run_id: str, bins: int = 40, database: str = DATABASE) -> dict:
    """Trade returns counted in equal bins aligned on 0: `width`, `lo` (the
    first bin's lower edge), `counts` (every bin, empty ones too)."""
    r = _one(client, f"SELECT count() AS n, min(return_pct) AS lo, max(return_pct) AS hi "
                     f"{_f(database, 'trades')}", run_id)
    if not r["n"]:
        return {"width": 0.0, "lo": 0.0, "counts": []}
    width = _nice_step((r["hi"] - r["lo"]) / bins) if r["hi"] > r["lo"] else 0.0001
    rows = _rows(client, f"SELECT toInt64(floor(return_pct / {{w:Float64}})) AS b, count() AS n "
                         f"{_f(database, 'trades')} GROUP BY b ORDER BY b", run_id, w=width)
    first, last = rows[0]["b"], rows[-1]["b"]
    counts = [0] * (last - first + 1)
    for row in rows:
        counts[row["b"] - first] = row["n"]
    return {"width": width, "lo": first * width, "counts": counts}


def _nice_step(raw: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k at or above `raw`."""
    exp = math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if m * 10 ** exp >= raw * (1 - 1e-12):
            return m * 10 ** exp
    return 10 ** (exp + 1)


def trade_list(client, run_id: str, database: str = DATABASE) -> dict[str, np.ndarray]:
    """Every trade (in closing order) with its stop and target (see the module
    docstring); times New York wall-clock epoch seconds."""
    db = database
    return _columns(client, f"""
        SELECT t.symbol AS symbol, t.strategy_id AS strategy, t.qty AS qty,
            {_wall('t.entry_time')} AS entry_t, t.entry_price AS entry_price,
            {_wall('t.exit_time')} AS exit_t, t.exit_price AS exit_price, t.exit_reason AS exit_reason,
            t.pnl AS pnl, t.return_pct AS return_pct,
            t.entry_price * (1 - coalesce(s.stop_loss_pct, cfg.sl)) AS stop,
            t.entry_price * (1 + coalesce(s.take_profit_pct, cfg.tp)) AS target
        FROM (SELECT * {_f(db, 'trades')}) AS t
        ASOF LEFT JOIN (SELECT symbol, strategy_id, decided_ts {_f(db, 'orders')} AND intent = 'entry') AS o
            ON t.symbol = o.symbol AND t.strategy_id = o.strategy_id AND t.entry_time > o.decided_ts
        LEFT JOIN (SELECT symbol, strategy_id, ts, stop_loss_pct, take_profit_pct {_f(db, 'signals')}
                   AND side = 'buy' AND filtered_reason = '') AS s
            ON s.symbol = o.symbol AND s.strategy_id = o.strategy_id AND s.ts = o.decided_ts
        CROSS JOIN (SELECT JSONExtractFloat(config_json, 'exit', 'stop_loss_pct') AS sl,
                        JSONExtractFloat(config_json, 'exit', 'take_profit_pct') AS tp {_f(db, 'runs')}) AS cfg
        ORDER BY t.exit_time, t.entry_time, t.symbol, t.strategy_id, t.trade_id
        SETTINGS join_use_nulls = 1""", run_id)


def candle_minutes(client, run_id: str, budget: int = CANDLE_BUDGET, per_symbol: int = CANDLES_PER_SYMBOL,
                   database: str = DATABASE) -> int:
    """The finest of CANDLE_MINUTES whose candles fit the page's budgets.
    (Counting distinct buckets needs no FINAL: a replayed bar falls in its
    twin's bucket. Without it this is ~10x faster on a year of bars.)"""
    per = ", ".join(f"uniqExact({_bucket(m)}) AS n{m}" for m in CANDLE_MINUTES)
    n = _one(client, f"""SELECT {', '.join(f'sum(n{m}) AS all_{m}, max(n{m}) AS sym_{m}' for m in CANDLE_MINUTES)}
        FROM (SELECT {per} FROM (SELECT symbol, toUnixTimestamp(ts) AS sec, ts FROM `{database}`.bars
                                 WHERE run_id = {{run_id:String}}) GROUP BY symbol)""", run_id)
    for m in CANDLE_MINUTES:
        if n[f"all_{m}"] <= budget and n[f"sym_{m}"] <= per_symbol:
            return m
    return CANDLE_MINUTES[-1]


def _bucket(minutes: int) -> str:
    """Bucket of a bar (columns `sec`, epoch seconds, and `ts`)."""
    if minutes == 390:  # a New York session, stamped with its first bar
        return f"toDate(ts, '{NY}')"
    return f"intDiv(sec, {minutes * 60})"


def candles(client, run_id: str, minutes: int, database: str = DATABASE) -> dict[str, np.ndarray]:
    """OHLC per symbol and `minutes`-minute bucket (stamped with its first
    bar's time, New York wall clock), ordered by symbol and time; 1 = the
    bars themselves."""
    if minutes == 1:
        sql = f"SELECT symbol, toUInt32({_wall('ts')}) AS t, open, high, low, close {_f(database, 'bars')}"
    else:
        sql = f"""SELECT symbol, toUInt32({_wall('min(ts)')}) AS t, argMin(open, sec) AS open, max(high) AS high,
                      min(low) AS low, argMax(close, sec) AS close
                  FROM (SELECT symbol, ts, toUnixTimestamp(ts) AS sec, open, high, low, close
                        {_f(database, 'bars')}) GROUP BY symbol, {_bucket(minutes)}"""
    return _columns(client, sql + " ORDER BY symbol, t", run_id)
