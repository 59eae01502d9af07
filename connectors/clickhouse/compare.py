"""A live (or paper) run versus the backtest of the same bars, computed in
ClickHouse SQL over the tables of `connectors.clickhouse` (FINAL on every
read, so replayed rows count once).

Definitions:
- trades match by (symbol, strategy_id, entry_time); missed trades are in
  the backtest and not in the live run, extra trades in the live run and not
  in the backtest.
- slippage in basis points, positive = worse for us:
  entry `(live / backtest - 1) * 10_000` (paid more),
  exit `(1 - live / backtest) * 10_000` (received less).
  Worst = the largest value; mean = the plain mean over matched trades.
- pnl difference = live pnl - backtest pnl.
- fill slippage of the live run: each fill against its order's
  `decision_price` (the close of the signal bar), joined on order_id; buys
  `(fill / decision - 1) * 10_000`, sells `(1 - fill / decision) * 10_000`,
  mean (per fill) and max by side. Protective OCO fills (order ids
  `<entry>.oco.stop` / `.oco.target`) rest at their own prices: they have no
  decision bar and are left out.
"""
from __future__ import annotations

import csv
import math
from typing import Any

from connectors.clickhouse.analytics import ISO, _rows, _table, csv_value
from connectors.clickhouse.runs import RunAttempt, current_attempt
from connectors.clickhouse.schema import DATABASE

BPS = 10_000
KEY = ("symbol", "strategy_id", "entry_time")
COMPARISON_CSV_COLUMNS = [
    "status", "symbol", "strategy", "entry_time", "live_qty", "backtest_qty", "live_entry_price",
    "backtest_entry_price", "entry_slippage_bps", "live_exit_time", "backtest_exit_time",
    "live_exit_price", "backtest_exit_price", "exit_slippage_bps", "live_exit_reason",
    "backtest_exit_reason", "live_pnl", "backtest_pnl", "pnl_diff"]


def latest_other_run(client, exclude: str, database: str = DATABASE) -> str | None:
    """The most recently started run other than `exclude` (the live run a
    backtest of its bars is compared with), or None."""
    rows = _rows(client, f"""
        SELECT run_id FROM `{database}`.runs FINAL WHERE run_id != {{exclude:String}}
        ORDER BY started_at DESC, run_id DESC LIMIT 1""", exclude=exclude)
    return rows[0]["run_id"] if rows else None


def _trades(db: str, param: str) -> str:
    return (f"(SELECT symbol, strategy_id, entry_time, qty, entry_price, exit_time, exit_price, "
            f"exit_reason, pnl FROM `{db}`.trades FINAL WHERE run_id = {{{param}:String}})")


_ON = "l.symbol = b.symbol AND l.strategy_id = b.strategy_id AND l.entry_time = b.entry_time"
_ENTRY_BPS = f"(l.entry_price / b.entry_price - 1) * {BPS}"
_EXIT_BPS = f"(1 - l.exit_price / b.exit_price) * {BPS}"


def matched_trades(client, live_run: str, backtest_run: str, database: str = DATABASE) -> list[dict]:
    """Trades in both runs (by entry time, symbol, strategy) with their
    slippage, pnl difference and exit reasons."""
    return _rows(client, f"""
        SELECT l.symbol AS symbol, l.strategy_id AS strategy_id,
            formatDateTime(l.entry_time, {ISO}) AS entry_time,
            l.qty AS live_qty, b.qty AS backtest_qty,
            l.entry_price AS live_entry_price, b.entry_price AS backtest_entry_price,
            {_ENTRY_BPS} AS entry_slippage_bps,
            formatDateTime(l.exit_time, {ISO}) AS live_exit_time,
            formatDateTime(b.exit_time, {ISO}) AS backtest_exit_time,
            l.exit_price AS live_exit_price, b.exit_price AS backtest_exit_price,
            {_EXIT_BPS} AS exit_slippage_bps,
            l.exit_reason AS live_exit_reason, b.exit_reason AS backtest_exit_reason,
            l.exit_reason = b.exit_reason AS same_exit_reason,
            l.pnl AS live_pnl, b.pnl AS backtest_pnl, l.pnl - b.pnl AS pnl_diff
        FROM {_trades(database, 'live')} AS l INNER JOIN {_trades(database, 'bt')} AS b ON {_ON}
        ORDER BY l.entry_time, l.symbol, l.strategy_id""", live=live_run, bt=backtest_run)


def _only_in(client, first: str, second: str, database: str) -> list[dict]:
    """Trades of run `first` with no trade of the same key in run `second`."""
    return _rows(client, f"""
        SELECT l.symbol AS symbol, l.strategy_id AS strategy_id,
            formatDateTime(l.entry_time, {ISO}) AS entry_time, l.qty AS qty,
            l.entry_price AS entry_price, formatDateTime(l.exit_time, {ISO}) AS exit_time,
            l.exit_price AS exit_price, l.exit_reason AS exit_reason, l.pnl AS pnl
        FROM {_trades(database, 'live')} AS l LEFT ANTI JOIN {_trades(database, 'bt')} AS b ON {_ON}
        ORDER BY l.entry_time, l.symbol, l.strategy_id""", live=first, bt=second)


def fill_slippage(client, run_id: str, database: str = DATABASE) -> list[dict]:
    """Per side of a run's fills (joined with their orders): fills, mean and
    max slippage against the decision price in bps (positive = worse)."""
    return _rows(client, f"""
        SELECT side, count() AS fills, avg(bps) AS mean_bps, max(bps) AS max_bps
        FROM (SELECT f.side AS side,
                  if(f.side = 'buy', f.price / o.decision_price - 1, 1 - f.price / o.decision_price)
                      * {BPS} AS bps
              FROM (SELECT order_id, side, price FROM `{database}`.fills FINAL
                    WHERE run_id = {{run_id:String}}) AS f
              INNER JOIN (SELECT order_id, decision_price FROM `{database}`.orders FINAL
                          WHERE run_id = {{run_id:String}} AND intent NOT IN ('protect', 'trail')
                              AND decision_price > 0) AS o
              ON f.order_id = o.order_id)
        GROUP BY side ORDER BY side""", run_id=run_id)


def _summary(client, live_run: str, backtest_run: str, database: str) -> dict:
    m = _rows(client, f"""
        SELECT count() AS matched,
            avgOrNull({_ENTRY_BPS}) AS mean_entry_slippage_bps,
            maxOrNull({_ENTRY_BPS}) AS worst_entry_slippage_bps,
            avgOrNull({_EXIT_BPS}) AS mean_exit_slippage_bps,
            maxOrNull({_EXIT_BPS}) AS worst_exit_slippage_bps,
            countIf(l.exit_reason != b.exit_reason) AS exit_reason_differences,
            sum(l.pnl - b.pnl) AS matched_pnl_diff
        FROM {_trades(database, 'live')} AS l INNER JOIN {_trades(database, 'bt')} AS b ON {_ON}""",
              live=live_run, bt=backtest_run)[0]
    t = _rows(client, f"""
        SELECT (SELECT count() FROM {_trades(database, 'live')}) AS live_trades,
            (SELECT count() FROM {_trades(database, 'bt')}) AS backtest_trades,
            (SELECT sum(pnl) FROM {_trades(database, 'live')}) AS total_pnl_live,
            (SELECT sum(pnl) FROM {_trades(database, 'bt')}) AS total_pnl_backtest""",
              live=live_run, bt=backtest_run)[0]
    return {**m, **t, "missed": t["backtest_trades"] - m["matched"], "extra": t["live_trades"] - m["matched"],
            "total_pnl_diff": t["total_pnl_live"] - t["total_pnl_backtest"]}


def _attempt(client, run, database: str) -> RunAttempt:
    """The attempt a comparison reads (the run's current one)."""
    if isinstance(run, RunAttempt):
        return run
    found = current_attempt(client, run, database)
    return found if found is not None else RunAttempt(run, 1, run, "", "unknown")


def compare_runs(client, live_run, backtest_run, database: str = DATABASE) -> dict:
    """Live run versus backtest (run ids or RunAttempts: each run's current
    attempt): `summary`, `matched`, `missed`, `extra`, the live run's
    `fill_slippage` (see the module docstring) and both runs' statuses."""
    live, bt = _attempt(client, live_run, database), _attempt(client, backtest_run, database)
    live_data, bt_data = live.data_id, bt.data_id
    summary = _summary(client, live_data, bt_data, database)
    summary["same_config"] = live.config_json == bt.config_json
    return {
        "live_run": live.run_id, "backtest_run": bt.run_id, "summary": summary,
        "live_status": live.status, "backtest_status": bt.status,
        "matched": matched_trades(client, live_data, bt_data, database),
        "missed": _only_in(client, bt_data, live_data, database),
        "extra": _only_in(client, live_data, bt_data, database),
        "fill_slippage": fill_slippage(client, live_data, database),
    }


def comparison_rows(result: dict) -> list[dict]:
    """One row per trade (matched, missed, extra) with COMPARISON_CSV_COLUMNS
    keys; '' where a run has no trade."""
    rows = []
    for r in result["matched"]:
        row = {k: r.get(k, "") for k in COMPARISON_CSV_COLUMNS}
        rows.append({**row, "status": "matched", "strategy": r["strategy_id"]})
    for status, side in (("missed", "backtest"), ("extra", "live")):
        for r in result[status]:
            row = dict.fromkeys(COMPARISON_CSV_COLUMNS, "")
            row.update(status=status, symbol=r["symbol"], strategy=r["strategy_id"], entry_time=r["entry_time"])
            row.update({f"{side}_qty": r["qty"], f"{side}_entry_price": r["entry_price"],
                        f"{side}_exit_time": r["exit_time"], f"{side}_exit_price": r["exit_price"],
                        f"{side}_exit_reason": r["exit_reason"], f"{side}_pnl": r["pnl"]})
            rows.append(row)
    rows.sort(key=lambda r: (r["entry_time"], r["symbol"], r["strategy"], r["status"]))
    return rows


def write_comparison_csv(result: dict, path: str) -> int:
    """The per-trade comparison as CSV (floats rounded: `analytics.csv_value`); rows written."""
    rows = comparison_rows(result)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(COMPARISON_CSV_COLUMNS)
        w.writerows([csv_value(c, r[c]) for c in COMPARISON_CSV_COLUMNS] for r in rows)
    return len(rows)


# ------------------------------------------------------------------ the text
def _n(v: Any, kind: str = "") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if kind == "bps":
        return f"{v:+.2f}"
    if kind == "$":
        return f"{v:,.2f}"
    if isinstance(v, float):
        return f"{v:.4f}".rstrip("0").rstrip(".")
    return str(v)


def _pair(live: Any, backtest: Any) -> str:
    """One value when both runs agree, else "live / backtest"."""
    return str(live) if live == backtest else f"{live} / {backtest}"


def format_comparison(result: dict) -> str:
    """Plain-text comparison: summary, matched / missed / extra trades and the
    live run's fill slippage."""
    s = result["summary"]
    summary = [("Matched trades", s["matched"], ""), ("Missed trades (backtest only)", s["missed"], ""),
               ("Extra trades (live only)", s["extra"], ""),
               ("Mean entry slippage bps", s["mean_entry_slippage_bps"], "bps"),
               ("Worst entry slippage bps", s["worst_entry_slippage_bps"], "bps"),
               ("Mean exit slippage bps", s["mean_exit_slippage_bps"], "bps"),
               ("Worst exit slippage bps", s["worst_exit_slippage_bps"], "bps"),
               ("Exit reason differences", s["exit_reason_differences"], ""),
               ("Total P&L live $", s["total_pnl_live"], "$"),
               ("Total P&L backtest $", s["total_pnl_backtest"], "$"),
               ("P&L difference $", s["total_pnl_diff"], "$"),
               ("P&L difference, matched $", s["matched_pnl_diff"], "$")]
    out = [f"Live run {result['live_run']} versus backtest {result['backtest_run']}",
           "(slippage in basis points, positive = worse for us)"]
    bt_status = result.get("backtest_status", "finished")
    if bt_status != "finished":
        out.append(f"warning: the backtest {result['backtest_run']} is {bt_status.upper()}, not finished: "
                   f"its trades are partial and the comparison is incomplete")
    if not s["same_config"]:
        out.append("warning: the two runs have different trading configurations")
    out += ["", _table(["Metric", "Value"], [[label, _n(v, kind)] for label, v, kind in summary])]
    out += ["", "Matched trades",
            _table(["symbol", "strategy", "entry time", "qty", "entry bps", "exit bps", "pnl live $",
                    "pnl backtest $", "pnl diff $", "exit reason live / backtest"],
                   [[r["symbol"], r["strategy_id"], r["entry_time"],
                     _pair(r["live_qty"], r["backtest_qty"]), _n(r["entry_slippage_bps"], "bps"),
                     _n(r["exit_slippage_bps"], "bps"), _n(r["live_pnl"], "$"), _n(r["backtest_pnl"], "$"),
                     _n(r["pnl_diff"], "$"),
                     _pair(r["live_exit_reason"], r["backtest_exit_reason"])]
                    for r in result["matched"]])]
    for key, title in (("missed", "Missed trades (in the backtest, not live)"),
                       ("extra", "Extra trades (live, not in the backtest)")):
        out += ["", title,
                _table(["symbol", "strategy", "entry time", "qty", "entry", "exit", "exit reason", "pnl $"],
                       [[r["symbol"], r["strategy_id"], r["entry_time"], str(r["qty"]), _n(r["entry_price"]),
                         _n(r["exit_price"]), r["exit_reason"], _n(r["pnl"], "$")] for r in result[key]])]
    out += ["", "Fill slippage vs decision price (live run)",
            _table(["side", "fills", "mean bps", "max bps"],
                   [[r["side"], str(r["fills"]), _n(r["mean_bps"], "bps"), _n(r["max_bps"], "bps")]
                    for r in result["fill_slippage"]])]
    return "\n".join(out) + "\n"
