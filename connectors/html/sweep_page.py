"""A sweep's page (`cuts report --sweep ID --html`, `cuts sweep --html`):
the objective over any two axes (pickers; the other axes at the best
configuration's values), the ranking of every configuration, the equity of
the top configurations and, with walk-forward, the out-of-sample equity
beside the in-sample best's and the configuration chosen in each fold. Pure:
a `sheet` dict (what `dataflows.reports.sweep_sheet` read from ClickHouse)
in, HTML text out. A sweep that is not finished gets the same banner as a
run.
"""
from __future__ import annotations

import html

from connectors.html.page import document, typed
from connectors.html.tearsheet import FINISHED, fmt, status_banner

OBJECTIVE_LABELS = {"sharpe": ("Sharpe", "n"), "total_return": ("Total return", "%"),
                    "profit_factor": ("Profit factor", "n")}
METRIC_LABELS = {"total_return": ("total return", "%"), "sharpe": ("Sharpe", "n"),
                 "max_drawdown": ("max drawdown", "%"), "profit_factor": ("profit factor", "n"),
                 "win_rate": ("win rate", "%"), "trades": ("trades", "i"), "expectancy": ("expectancy $", "$"),
                 "exposure": ("exposure", "%")}


def _e(text) -> str:
    return html.escape(str(text))


def _header(info: dict, best: dict | None, objective: str) -> str:
    status = info.get("status") or "unknown"
    label, kind = OBJECTIVE_LABELS[objective]
    facts = [("configurations", f"{info.get('configs') or 0:,}"), ("bars", f"{info.get('bar_count') or 0:,}"),
             ("objective", label), ("source", info.get("source") or "-"), ("started", info.get("started_at")),
             ("finished", info.get("finished_at") or "-")]
    items = "".join(f"<span><b>{_e(k)}</b> {_e(v)}</span>" for k, v in facts)
    best_line = ""
    if best is not None and best["objective"] is None:  # metrics are computed when a sweep finishes
        why = "" if status == FINISHED else ": its metrics are computed when the sweep finishes"
        best_line = f'<p id="best-config">No configuration has a defined {_e(label)}{_e(why)}.</p>'
    elif best is not None:
        values = ", ".join(f"{a} = {v}" for a, v in best["values"].items())
        best_line = (f'<p id="best-config">Best over the whole period: <b>{_e(best["config_id"])}</b> '
                     f"({_e(values)}), {_e(label)} {_e(fmt(best['objective'], kind))}.</p>")
    return (f'<header><h1>Sweep {_e(info["sweep_id"])} <span id="status-badge" class="badge badge-{_e(status)}">'
            f"{_e(status)}</span></h1><div class=\"facts\">{items}</div>{best_line}</header>")


def _fold_table(folds: list[dict], objective: str) -> str:
    label, kind = OBJECTIVE_LABELS[objective]
    head = "".join(f"<th>{_e(h)}</th>" for h in ("fold", "train", "test", "chosen", f"train {label}",
                                                  "test return", "test Sharpe", "test trades", "test win rate"))
    body = "".join(
        f"<tr><td>{f['fold']}</td><td>{_e(f['train_start'])} to {_e(f['train_end'])}</td>"
        f"<td>{_e(f['test_start'])} to {_e(f['test_end'])}</td><td>{_e(f['config_id'])}</td>"
        f"<td>{_e(fmt(f['train_objective'], kind))}</td><td>{_e(fmt(f['test_return'], '%'))}</td>"
        f"<td>{_e(fmt(f['test_sharpe'], 'n'))}</td><td>{f['test_trades']:,}</td>"
        f"<td>{_e(fmt(f['test_win_rate'], '%'))}</td></tr>" for f in folds)
    return f'<table class="grid" id="folds"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _walk_forward(sheet: dict) -> str:
    folds = sheet["folds"]
    if not folds:
        return ('<section id="walk-forward"><h2>Walk-forward</h2><p class="note">No walk-forward in this '
                "sweep's grid, or its days hold no complete fold.</p></section>")
    return ('<section id="walk-forward"><h2>Walk-forward: out of sample against the in-sample best</h2>'
            f'<p class="note">The configuration chosen on each fold\'s train days, on its test days, chained '
            f"(blue); the configuration best over the whole period, {_e(sheet['best'] or '-')}, on the same days "
            "(grey): the gap is what choosing in hindsight is worth.</p>"
            '<div id="fig-oos" class="fig"></div><div id="fig-chosen" class="fig"></div>'
            f"{_fold_table(folds, sheet['objective'])}</section>")


def render_sweep_page(sheet: dict) -> str:
    """The page of one sweep. `sheet` keys: info, objective, axes, ranking
    (best first), curves ({config_id: {day, equity}}), folds, oos, best."""
    info, objective = sheet["info"], sheet["objective"]
    ranking = sheet["ranking"]
    status = info.get("status") or "unknown"
    best = ranking[0] if ranking else None
    axes = sheet["axes"]
    body = "".join([
        status_banner("Sweep", info["sweep_id"], info.get("status")), _header(info, best, objective),
        '<section id="heatmap"><h2>The objective over two axes</h2><div class="pickers">',
        '<label>x <select id="axis-x"></select></label> <label>y <select id="axis-y"></select></label> ',
        '<label>value <select id="metric"></select></label></div>',
        '<p class="note" id="heatmap-note"></p><div id="fig-heatmap" class="fig tall"></div></section>',
        f'<section id="curves"><h2>Equity of the top {min(len(ranking), len(sheet["curves"]))} configurations'
        '</h2><p class="note">Day-end equity of each configuration over the whole period.</p>'
        '<div id="fig-curves" class="fig tall"></div></section>',
        _walk_forward(sheet),
        '<section id="ranking-list"><h2>Ranking</h2><p class="note">Every configuration, best first by the '
        "objective (undefined last, ties to the lowest config id); click a column to sort.</p>"
        '<div class="scroll"><table class="grid" id="ranking"><thead></thead><tbody></tbody></table></div></section>',
    ])
    label, kind = OBJECTIVE_LABELS[objective]
    data = {
        "status": status, "objective": {"key": objective, "label": label, "kind": kind},
        "metrics": [{"key": k, "label": lbl, "kind": kd} for k, (lbl, kd) in METRIC_LABELS.items()],
        "axes": axes,
        "configs": {
            "config_id": [r["config_id"] for r in ranking], "rank": [r["rank"] for r in ranking],
            "values": {a: [r["values"].get(a, "null") for r in ranking] for a in axes},
            "objective": [r["objective"] for r in ranking],
            **{k: [r[k] for r in ranking] for k in METRIC_LABELS},
        },
        "curves": {cid: {"day": c["day"], "equity": typed(c["equity"], "f8")} for cid, c in sheet["curves"].items()},
        "folds": [{k: f[k] for k in ("fold", "test_start", "test_end", "config_id", "test_return")}
                  for f in sheet["folds"]],
        "oos": sheet["oos"], "best": sheet["best"],
    }
    title = f"Sweep {info['sweep_id']}" if status == FINISHED else f"[{status.upper()}] Sweep {info['sweep_id']}"
    return document(title, body, data, "sweep.js", body_class=f"run-{status}")
