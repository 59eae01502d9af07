"""ClickHouse tables of a sweep, the pure mapping half (docs/sweeps.md).

Same rules as the run tables (`schema`): ReplacingMergeTree whose ORDER BY is
the row's deterministic identity, `sweep_id` first, so replayed rows replace
their twins and a rerun of a sweep id replaces it; read with FINAL.

- `sweeps`: one row per sweep (grid, base configuration, source, times,
  bars, status), versioned like `runs`;
- `sweep_configs`: per configuration its axis values and resolved configuration;
- `sweep_trades` (+ `sweep_orders`, `sweep_fills`, `sweep_rejections` with
  --detail): config_id + the run table's columns;
- `sweep_daily`: per configuration and trading day, what spec 8 and the
  section-6 metrics need of the equity curve;
- `sweep_metrics`: per configuration the section-6 metrics, computed by SQL
  from `sweep_trades` and `sweep_daily` when the sweep ends;
- `walk_forward`: per fold the days, the selected configuration, its train
  objective and test metrics.
"""
from __future__ import annotations

from datetime import date

from connectors.clickhouse.schema import DATABASE, MERGE_SETTINGS, TABLES, TS, to_columns

_F, _S, _I, _U = "Float64", "String", "Int64", "UInt64"
_NF = "Nullable(Float64)"
_KEY = [("sweep_id", _S), ("config_id", _S)]
EPOCH_ORDINAL = date(1970, 1, 1).toordinal()  # a Date's value + this = its proleptic ordinal

# per-configuration copies of run tables: table -> run table
PER_CONFIG = {"sweep_trades": "trades", "sweep_orders": "orders", "sweep_fills": "fills",
              "sweep_rejections": "rejections"}

SWEEP_TABLES: dict[str, tuple[list[tuple[str, str]], tuple[str, ...], str]] = {
    "sweeps": ([("sweep_id", _S), ("grid_json", _S), ("base_config_json", _S), ("source", _S),
                ("configs", _U), ("shards", _U), ("objective", _S), ("detail", "Bool"),
                ("started_at", TS), ("finished_at", f"Nullable({TS})"), ("bar_count", _U),
                ("status", _S), ("version", _U)],
               ("sweep_id",), "ReplacingMergeTree(version)"),
    "sweep_configs": (_KEY + [("axis_values_json", _S), ("config_json", _S), ("initial_cash", _F)],
                      ("sweep_id", "config_id"), "ReplacingMergeTree"),
    "sweep_daily": (_KEY + [("day", "Date"), ("equity", _F), ("daily_return", _F), ("minutes", _U),
                            ("minutes_in_market", _U), ("max_drawdown", _F), ("exposure_sum", _F),
                            ("exposure_minutes", _U)],
                    ("sweep_id", "config_id", "day"), "ReplacingMergeTree"),
    "sweep_metrics": (_KEY + [("trades", _U), ("trading_days", _U), ("trades_per_day", _NF),
                              ("wins", _U), ("losses", _U), ("win_rate", _NF), ("avg_win", _NF),
                              ("avg_win_pct", _NF), ("avg_loss", _NF), ("avg_loss_pct", _NF),
                              ("profit_factor", _NF), ("expectancy", _NF), ("max_loss_per_trade", _NF),
                              ("total_pnl", _F), ("initial_cash", _F), ("final_equity", _NF),
                              ("total_return", _NF), ("max_drawdown", _NF), ("sharpe", _NF),
                              ("mean_daily_return", _NF), ("std_daily_return", _NF),
                              ("exposure", _NF), ("avg_exposure_pct", _NF)],
                      ("sweep_id", "config_id"), "ReplacingMergeTree"),
    "walk_forward": ([("sweep_id", _S), ("fold", _U), ("train_start", "Date"), ("train_end", "Date"),
                      ("test_start", "Date"), ("test_end", "Date"), ("train_days", _U),
                      ("test_days", _U), ("config_id", _S), ("objective", _S),
                      ("train_objective", _NF), ("test_return", _NF), ("test_sharpe", _NF),
                      ("test_trades", _U), ("test_win_rate", _NF), ("test_profit_factor", _NF),
                      ("test_max_drawdown", _NF)],
                     ("sweep_id", "fold"), "ReplacingMergeTree"),
}
for _table, _run_table in PER_CONFIG.items():
    SWEEP_TABLES[_table] = (_KEY + [(n, t) for n, t, _ in TABLES[_run_table][0]],
                            ("sweep_id", "config_id") + TABLES[_run_table][1], "ReplacingMergeTree")

METRIC_COLUMNS = [n for n, _ in SWEEP_TABLES["sweep_metrics"][0][2:]]


def sweep_column_types(table: str, names: list[str]) -> list[str]:
    types = dict(SWEEP_TABLES[table][0])
    return [types[n] for n in names]


def sweep_ddl(table: str, database: str = DATABASE) -> str:
    cols, order, engine = SWEEP_TABLES[table]
    body = ",\n  ".join(f"`{n}` {t}" for n, t in cols)
    return (f"CREATE TABLE IF NOT EXISTS `{database}`.`{table}` (\n  {body}\n) "
            f"ENGINE = {engine} ORDER BY ({', '.join(order)}) SETTINGS {MERGE_SETTINGS}")


def config_event_columns(table: str, sweep_id: str, config_id: str, events: list) -> dict[str, list]:
    """Columns of one configuration's events for a per-configuration table."""
    cols = to_columns(PER_CONFIG[table], sweep_id, events)
    n = len(events)
    return {"sweep_id": cols.pop("run_id"), "config_id": [config_id] * n, **cols}


def day_columns(sweep_id: str, rows: list) -> dict[str, list]:
    """`sweep_daily` columns of DayRows (operators.types)."""
    return {
        "sweep_id": [sweep_id] * len(rows), "config_id": [r.config_id for r in rows],
        "day": [date.fromordinal(r.day) for r in rows], "equity": [r.equity for r in rows],
        "daily_return": [r.ret for r in rows], "minutes": [r.minutes for r in rows],
        "minutes_in_market": [r.minutes_in_market for r in rows],
        "max_drawdown": [r.max_drawdown for r in rows], "exposure_sum": [r.exposure_sum for r in rows],
        "exposure_minutes": [r.exposure_minutes for r in rows],
    }
