"""ClickHouse through clickhouse-connect: the same code for embedded chDB
(`chdb:///dir`) and a server (`http://host:8123`).

Pure mapping (no I/O):
  `schema`           the run tables (`TABLES`, `ddl`), the views (`VIEWS`: the order
                     history's current state) and events -> columns (`to_columns`)
  `native`           columns (numpy arrays or lists) -> a block of ClickHouse's Native format
  `sweep_schema`     a sweep's tables (`SWEEP_TABLES`, `sweep_ddl`) and its rows -> columns

I/O:
  `client`           `open_client` (one per DSN and process), `ensure_schema`,
                     `insert_columns`, `ClickHouseWriter`, the process's shared writers
  `inserts`          a writer's insert thread: inserts beside the flow, nothing lost on a failure
  `migrations`       older databases brought up to date by `ensure_schema`
  `sink`             the dataflow's sink (SymbolOutput / PortfolioOutput -> tables)
  `runs`             run bookkeeping: the `runs` row, clearing a run before a fresh one
  `analytics`        reports of a run (spec section 6 metrics) in ClickHouse SQL, CSV export
  `compare`          a live run against the backtest of the same bars, in SQL
  `tearsheet`        the run page's series and extra metrics, in SQL
  `sweeps`, `sweep_report`  a sweep's records, metrics SQL, text report and CSVs
  `sweep_pages`      the sweep page's ranking, curves and walk-forward series, in SQL
  `reconciliations`  the `reconciliations` table and what a run recorded (positions, order ids)
"""
