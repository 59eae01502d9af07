"""A run's tearsheet page (`cuts report --html`): headline metrics, equity
and drawdown, daily P&L, monthly returns, trade returns, breakdowns, a price
chart per symbol with every trade, the trade list and, against a backtest,
the live-versus-backtest comparison. Pure: a `sheet` dict (what
`dataflows.reports.run_sheet` read from ClickHouse) in, HTML text out.

A run that is not finished (running, failed, ...) gets a banner that stays
on screen and its status in the title, so partial numbers cannot pass for a
finished run's.
"""
from __future__ import annotations

import html
import math
from typing import Any

from connectors.html.page import document, typed

FINISHED = "finished"
# what the banner says of a run or sweep in another status (any other: "is X, not finished")
UNFINISHED = {
    "running": "is still running: these are partial results as of the last rows written",
    "failed": "failed: these are the partial results it wrote before it stopped",
    "interrupted": "was interrupted before the end of its bars: these are partial results",
    "stopped": "was stopped: these are its results up to the last minute it applied",
}

# (key, label, kind): kind % fraction, $ money, d days, n number, i integer
HEADLINE: list[tuple[str, list[tuple[str, str, str]]]] = [
    ("Return", [("total_return", "Total return", "%"), ("cagr", "CAGR", "%"),
                ("total_pnl", "Total P&L $", "$"), ("final_equity", "Final equity $", "$"),
                ("initial_cash", "Initial cash $", "$")]),
    ("Risk", [("max_drawdown", "Max drawdown", "%"), ("longest_drawdown_days", "Longest drawdown (days)", "d"),
              ("sharpe", "Sharpe (daily, sqrt 252)", "n"), ("sortino", "Sortino (daily, sqrt 252)", "n"),
              ("calmar", "Calmar", "n")]),
    ("Trades", [("trades", "Trades", "i"), ("trades_per_day", "Trades per day", "n"),
                ("win_rate", "Win rate", "%"), ("profit_factor", "Profit factor", "n"),
                ("expectancy", "Expectancy $", "$"), ("max_consecutive_wins", "Most wins in a row", "i"),
                ("max_consecutive_losses", "Most losses in a row", "i")]),
    ("Wins and losses", [("avg_win", "Average win $", "$"), ("avg_win_pct", "Average win %", "%"),
                         ("avg_loss", "Average loss $", "$"), ("avg_loss_pct", "Average loss %", "%"),
                         ("max_loss_per_trade", "Max loss per trade $", "$")]),
    ("Days", [("trading_days", "Trading days", "i"), ("best_day", "Best day", "%"),
              ("worst_day", "Worst day", "%"), ("exposure", "Exposure (time in market)", "%"),
              ("avg_exposure_pct", "Avg exposure / equity", "%")]),
]
BREAKDOWNS = (("strategy", "Strategy"), ("exit_reason", "Exit reason"), ("symbol", "Symbol"))


def fmt(v: Any, kind: str) -> str:
    """A metric as the page shows it ("-" when undefined)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if kind == "%":
        return f"{v * 100:,.2f}%"
    if kind == "$":
        return f"{v:,.2f}"
    if kind == "d":
        return f"{v:,.1f}"
    if kind == "i":
        return f"{int(v):,}"
    return f"{v:,.3f}"


def _e(text: Any) -> str:
    return html.escape(str(text))


def status_banner(kind: str, ident: str, status: str | None) -> str:
    """The banner of a run's or a sweep's page (`kind`: "Run" or "Sweep")
    that did not finish; nothing for a finished one."""
    status = status or "unknown"
    if status == FINISHED:
        return ""
    what = UNFINISHED.get(status, f"is {status}, not finished: these results may be incomplete")
    return (f'<div id="run-status" class="status-banner" role="alert" data-status="{_e(status)}">'
            f"<strong>{_e(status.upper())}</strong> {kind} {_e(ident)} {_e(what)}.</div>")


def _header(run: dict) -> str:
    status = run.get("status") or "unknown"
    facts = [("mode", run.get("mode")), ("started", run.get("started_at")),
             ("finished", run.get("finished_at") or "-"), ("bars", f"{run.get('bar_count') or 0:,}")]
    items = "".join(f"<span><b>{_e(k)}</b> {_e(v)}</span>" for k, v in facts)
    return (f'<header><h1>Run {_e(run["run_id"])} <span id="status-badge" class="badge badge-{_e(status)}">'
            f"{_e(status)}</span></h1><div class=\"facts\">{items}</div></header>")


def _metrics(values: dict) -> str:
    groups = []
    for title, items in HEADLINE:
        tiles = "".join(
            f'<div class="tile" data-key="{k}"><div class="label">{_e(label)}</div>'
            f'<div class="value">{_e(fmt(values.get(k), kind))}</div></div>' for k, label, kind in items)
        groups.append(f"<div class=\"group\"><h3>{_e(title)}</h3><div class=\"tiles\">{tiles}</div></div>")
    notes = []
    if values.get("best_day_date"):
        notes.append(f"best day {values['best_day_date']}, worst day {values['worst_day_date']}")
    if values.get("longest_drawdown_start"):
        end = values["longest_drawdown_end"] + ("" if values.get("longest_drawdown_recovered")
                                                 else " (not recovered)")
        notes.append(f"longest drawdown {values['longest_drawdown_start']} to {end}")
    note = f'<p class="note">{_e("; ".join(notes))} (New York time).</p>' if notes else ""
    return f'<section id="metrics"><h2>Headline</h2>{"".join(groups)}{note}</section>'


def _breakdown_table(name: str, rows: list[dict]) -> str:
    head = "".join(f"<th>{h}</th>" for h in (_e(name.replace("_", " ")), "trades", "win rate", "P&amp;L $",
                                              "avg return", "profit factor"))
    body = "".join(
        f"<tr><td>{_e(r['key'])}</td><td>{r['trades']:,}</td><td>{fmt(r['win_rate'], '%')}</td>"
        f"<td>{fmt(r['pnl'], '$')}</td><td>{fmt(r['avg_return_pct'], '%')}</td>"
        f"<td>{fmt(r['profit_factor'], 'n')}</td></tr>" for r in rows)
    return f'<table class="grid" id="table-by-{name}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _counts_table(counts: dict) -> str:
    rows = [(k.replace("_", " "), f"{v:,}") for k, v in counts.items() if not isinstance(v, dict)]
    for table in ("rejections", "dead_letters"):
        rows += [(f"{table.replace('_', ' ')}: {reason}", f"{n:,}")
                 for reason, n in (counts.get(f"{table}_by_reason") or {}).items()]
    body = "".join(f"<tr><td>{_e(k)}</td><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="grid" id="table-rows"><thead><tr><th>rows</th><th>count</th></tr></thead>' \
           f"<tbody>{body}</tbody></table>"


def _equity_note(equity: dict) -> str:
    if equity["bucket_minutes"] == 1:
        return f"All {equity['minutes']:,} minutes of the equity curve."
    return (f"{len(equity['t']):,} of the {equity['minutes']:,} equity minutes drawn: per "
            f"{equity['bucket_minutes']:,} consecutive minutes, the first, last, highest, lowest and deepest "
            "drawdown points. Every metric uses all minutes.")


def _candle_payload(candles: dict) -> dict:
    out: dict[str, dict] = {}
    symbols = candles["symbol"]
    if len(symbols) == 0:
        return out
    starts = [0] + [i for i in range(1, len(symbols)) if symbols[i] != symbols[i - 1]] + [len(symbols)]
    for a, b in zip(starts, starts[1:]):
        out[str(symbols[a])] = {"t": typed(candles["t"][a:b], "u4"),
                                **{k: typed(candles[k][a:b], "f4") for k in ("open", "high", "low", "close")}}
    return out


def _trades_payload(trades: dict) -> dict:
    cols = {k: trades[k] for k in ("symbol", "strategy", "exit_reason")}
    cols.update({k: typed(trades[k], "u4") for k in ("entry_t", "exit_t")})
    cols.update({k: typed(trades[k], "f8") for k in ("qty", "entry_price", "exit_price", "pnl", "return_pct",
                                                     "stop", "target")})
    return cols


def _comparison_body(result: dict) -> str:
    s = result["summary"]
    facts = [("Matched trades", s["matched"], "i"), ("Missed (backtest only)", s["missed"], "i"),
             ("Extra (live only)", s["extra"], "i"), ("Mean entry slippage bps", s["mean_entry_slippage_bps"], "n"),
             ("Mean exit slippage bps", s["mean_exit_slippage_bps"], "n"),
             ("P&L difference $", s["total_pnl_diff"], "$")]
    tiles = "".join(f'<div class="tile"><div class="label">{_e(label)}</div><div class="value">'
                    f"{_e(fmt(v, kind))}</div></div>" for label, v, kind in facts)
    warn = "" if s["same_config"] else '<p class="warn">The two runs have different trading configurations.</p>'
    return (f'<section id="comparison"><h2>Live versus backtest {_e(result["backtest_run"])}</h2>{warn}'
            f'<div class="tiles">{tiles}</div><p class="note">Slippage in basis points, positive = worse for us; '
            "trades matched by symbol, strategy and entry time.</p>"
            '<div id="fig-compare-slippage" class="fig"></div><div id="fig-compare-trades" class="fig"></div>'
            "</section>")


def _comparison_payload(result: dict) -> dict:
    keep = ("symbol", "strategy_id", "entry_time", "entry_slippage_bps", "exit_slippage_bps", "pnl_diff")
    return {"matched": [{k: r[k] for k in keep} for r in result["matched"]],
            "missed": [{k: r[k] for k in ("symbol", "strategy_id", "entry_time", "pnl")} for r in result["missed"]],
            "extra": [{k: r[k] for k in ("symbol", "strategy_id", "entry_time", "pnl")} for r in result["extra"]]}


def render_tearsheet(sheet: dict) -> str:
    """The page of one run. `sheet` keys: run, metrics (performance and the
    tearsheet's extras in one dict), equity, daily, monthly, histogram,
    breakdowns, counts, candle_minutes, candles, trades, comparison (or None)."""
    run, equity = sheet["run"], sheet["equity"]
    status = run.get("status") or "unknown"
    minutes = sheet["candle_minutes"]
    candle_text = "one candle per minute" if minutes == 1 else (
        "one candle per New York session" if minutes == 390 else f"{minutes}-minute candles")
    breakdowns = "".join(
        f'<div class="pair"><div>{_breakdown_table(name, sheet["breakdowns"][name])}</div>'
        f'<div id="fig-by-{name}" class="fig"></div></div>' for name, _ in BREAKDOWNS)
    body = "".join([
        status_banner("Run", run['run_id'], run.get("status")), _header(run), _metrics(sheet["metrics"]),
        '<section id="equity"><h2>Equity and drawdown</h2><div id="fig-equity" class="fig tall"></div>',
        f'<p class="note" id="equity-note">{_e(_equity_note(equity))} Times are New York.</p></section>',
        '<section class="cols"><div><h2>Daily P&amp;L</h2><div id="fig-daily" class="fig"></div></div>',
        '<div><h2>Monthly returns</h2><div id="fig-monthly" class="fig"></div></div>',
        '<div><h2>Trade returns</h2><div id="fig-returns" class="fig"></div></div></section>',
        f'<section id="breakdowns"><h2>By strategy, exit reason and symbol</h2>{breakdowns}</section>',
        '<section id="price"><h2>Price and trades</h2><label>Symbol <select id="symbol"></select></label> ',
        f'<span class="note" id="candle-note" data-minutes="{minutes}">{_e(candle_text)}; triangles are entries, '
        "crosses exits, dotted lines each trade's stop (red) and target (green) from entry to exit; "
        "click a trade below to zoom on it. Times are New York.</span>",
        '<div id="fig-candles" class="fig tall"></div></section>',
        '<section id="trade-list"><h2>Trades</h2><p class="note">Click a column to sort.</p>',
        '<div class="scroll"><table class="grid" id="trades"><thead></thead><tbody></tbody></table></div></section>',
        _comparison_body(sheet["comparison"]) if sheet.get("comparison") else "",
        f'<section id="rows"><h2>Rows written</h2>{_counts_table(sheet["counts"])}</section>',
    ])
    data = {
        "run": run, "status": status,
        "equity": {"t": typed(equity["t"], "u4"), "equity": typed(equity["equity"], "f8"),
                   "drawdown": typed(equity["drawdown"], "f8")},
        "daily": {k: [d[k] for d in sheet["daily"]] for k in ("date", "ret", "pnl")},
        "monthly": {k: [m[k] for m in sheet["monthly"]] for k in ("year", "month", "ret")},
        "histogram": sheet["histogram"],
        "breakdowns": {name: {"key": [str(r["key"]) for r in sheet["breakdowns"][name]],
                              "pnl": [r["pnl"] for r in sheet["breakdowns"][name]],
                              "trades": [r["trades"] for r in sheet["breakdowns"][name]]}
                       for name, _ in BREAKDOWNS},
        "candles": _candle_payload(sheet["candles"]),
        "trades": _trades_payload(sheet["trades"]),
        "comparison": _comparison_payload(sheet["comparison"]) if sheet.get("comparison") else None,
    }
    title = f"Run {run['run_id']}" if status == FINISHED else f"[{status.upper()}] Run {run['run_id']}"
    return document(title, body, data, "tearsheet.js", body_class=f"run-{status}")
