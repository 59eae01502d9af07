"""The sweep page in a real browser (tests/browser.py): a real sweep through
`cuts sweep --html`, the page opened offline from file://, every chart
checked against the sweep's rows in ClickHouse SQL, no console error, a
screenshot in tests/artifacts/."""
from __future__ import annotations

import math
import subprocess

import pytest
import yaml
from browser import OpenPage, browser  # noqa: F401 (fixture)

from connectors.clickhouse import client as ch
from connectors.html.sweep_page import render_sweep_page
from dataflows.reports import sweep_sheet, write_page
from cuts_cli import CUTS, ROOT, cuts

SWEEP = "sw-page"
GRID = {"axes": {"exit.take_profit_pct": [0.01, 0.02, 0.03], "exit.stop_loss_pct": [0.005, 0.01],
                 "exit.trailing_stop": [False, True]},
        "walk_forward": {"train_days": 2, "test_days": 1, "objective": "sharpe"}}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    d = tmp_path_factory.mktemp("sweep-page")
    bars, grid = d / "bars.parquet", d / "grid.yaml"
    grid.write_text(yaml.safe_dump(GRID, sort_keys=False))
    cuts("generate", "--symbols", "6", "--days", "5", "--seed", "7", "--out", str(bars))
    page = d / "sweep.html"
    proc = cuts("sweep", "--bars", str(bars), "--grid", str(grid), "--run-id", SWEEP, "--clickhouse",
                f"chdb://{d / 'ch'}", "--quiet", "--html", str(page))
    assert f"report of sweep {SWEEP}: {page}" in proc.stdout
    again, latest = d / "again.html", d / "latest.html"
    cuts("report", "--sweep", SWEEP, "--clickhouse", f"chdb://{d / 'ch'}", "--html", str(again))
    cuts("report", "--clickhouse", f"chdb://{d / 'ch'}", "--html", str(latest))  # the latest run is the sweep
    client = ch.open_client(f"chdb://{d / 'ch'}")
    yield {"dir": d, "page": page, "again": again, "latest": latest, "client": client}
    ch.close_clients()


def q(client, sql: str):
    return client.query(sql, parameters={"s": SWEEP}).result_rows


@pytest.fixture(scope="module")
def opened(swept, browser):  # noqa: F811
    page = OpenPage(browser, swept["page"])
    yield page
    page.close()


def _ranked(client) -> list[tuple]:
    """(config_id, axis values json, sharpe) best first: the ranking rule in plain Python."""
    rows = q(client, "SELECT c.config_id, c.axis_values_json, m.sharpe FROM thousandcuts.sweep_configs AS c FINAL "
                     "JOIN thousandcuts.sweep_metrics AS m FINAL "
                     "ON m.config_id = c.config_id AND m.sweep_id = c.sweep_id "
                     "WHERE c.sweep_id = {s:String}")
    return sorted(rows, key=lambda r: (r[2] is None, -(r[2] or 0), len(r[0]), r[0]))


def test_sweep_page_opens_offline_and_both_commands_write_it(swept, opened):
    # cuts sweep --html = cuts report --sweep ID --html = cuts report --html when the latest run is the sweep
    assert swept["again"].read_text() == swept["page"].read_text() == swept["latest"].read_text()
    opened.screenshot("sweep")
    assert opened.problems == []


def test_heatmap_holds_every_configuration_at_the_best_values_of_the_other_axes(swept, opened):
    import json

    ranked = _ranked(swept["client"])
    best = json.loads(ranked[0][1])
    page = opened.page
    for x, y in (("exit.take_profit_pct", "exit.stop_loss_pct"), ("exit.trailing_stop", ""),
                 ("exit.stop_loss_pct", "exit.trailing_stop")):
        page.select_option("#axis-x", x)
        page.select_option("#axis-y", y)
        page.wait_for_function("v => document.getElementById('fig-heatmap').dataset.view === v",
                               arg=f"{x}|{y}|objective")
        fixed = [a for a in GRID["axes"] if a not in (x, y)]
        expected = {(json.dumps(v[x]), json.dumps(v[y]) if y else None): sharpe
                    for cid, vj, sharpe in ranked for v in [json.loads(vj)] if all(v[a] == best[a] for a in fixed)}
        assert int(page.locator("#fig-heatmap").get_attribute("data-cells")) == len(expected)
        xs = page.evaluate("document.getElementById('fig-heatmap')._fullData[0].x")
        ys = page.evaluate("document.getElementById('fig-heatmap')._fullData[0].y")
        z = page.evaluate("document.getElementById('fig-heatmap')._fullData[0].z")
        def key(text):  # an axis label back to the value's JSON
            return json.dumps(json.loads(text))
        shown = {(key(xv), key(yv) if y else None): z[r][c]
                 for r, yv in enumerate(ys) for c, xv in enumerate(xs) if z[r][c] is not None}
        assert shown == pytest.approx({k: v for k, v in expected.items() if v is not None}), (x, y)
    assert opened.problems == []


def test_ranking_lists_every_configuration_best_first(swept, opened):
    ranked = _ranked(swept["client"])
    ids = opened.page.evaluate("Array.from(document.querySelectorAll('#ranking tbody tr'))"
                               ".map(tr => tr.children[1].textContent)")
    assert ids == [r[0] for r in ranked]
    assert f"<b>{ranked[0][0]}</b>" in opened.page.inner_html("#best-config")


def test_ranking_agrees_with_the_text_report_of_the_sweep(swept, opened):
    from connectors.clickhouse.sweep_report import format_sweep_report

    lines = format_sweep_report(swept["client"], SWEEP).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Top "))
    top = []
    for line in lines[start + 1:]:
        if not line.strip():
            break
        cells = line.split()
        if cells[0].isdigit():
            top.append(cells[1])
    ids = opened.page.evaluate("Array.from(document.querySelectorAll('#ranking tbody tr'))"
                               ".map(tr => tr.children[1].textContent)")
    assert len(top) == 10 and ids[:10] == top


def test_a_long_ranking_lays_out_its_first_thousand_rows_and_shows_all_on_request(swept, browser):  # noqa: F811
    sheet = sweep_sheet(swept["client"], SWEEP)
    many = [dict(r, config_id=f"c{i + 1:04d}", rank=i + 1) for i, r in enumerate(sheet["ranking"] * 125)]
    sheet["ranking"] = many  # 1,500 rows, real ones repeated under new ids
    path = swept["dir"] / "long.html"
    write_page(str(path), render_sweep_page(sheet))
    opened = OpenPage(browser, path)
    try:
        page = opened.page
        assert page.locator("#ranking tbody tr").count() == 1000
        page.locator("#ranking thead th", has_text="trades").first.click()  # sorts all rows, lays out 1,000
        first = page.evaluate("Array.from(document.querySelectorAll('#ranking tbody tr'))"
                              ".map(tr => tr.children[1].textContent)")
        ascending = sorted(many, key=lambda r: r["trades"])  # a stable sort, as the page's
        assert first == [r["config_id"] for r in ascending[:1000]]
        page.locator("p.note[data-table=ranking] button").click()
        assert page.locator("#ranking tbody tr").count() == 1500
        assert page.locator("p.note[data-table=ranking]").count() == 0 and opened.problems == []
    finally:
        opened.close()


def test_top_configurations_equity_has_every_trading_day(swept, opened):
    (days,), = q(swept["client"],
                 "SELECT uniqExact(day) FROM thousandcuts.sweep_daily FINAL WHERE sweep_id = {s:String}")
    top = [r[0] for r in _ranked(swept["client"])[:10]]
    assert opened.lengths("fig-curves") == [days] * len(top)
    names = opened.page.evaluate("document.getElementById('fig-curves')._fullData.map(t => t.name.split(' ')[0])")
    assert names == top


def test_walk_forward_charts_out_of_sample_beside_the_in_sample_best_and_each_choice(swept, opened):
    c = swept["client"]
    folds = q(c, "SELECT fold, config_id, test_days, test_return FROM thousandcuts.walk_forward FINAL "
                 "WHERE sweep_id = {s:String} ORDER BY fold")
    assert len(folds) == 3  # 5 days, train 2, test 1
    test_days = sum(f[2] for f in folds)
    assert opened.lengths("fig-oos") == [test_days, test_days]
    assert opened.lengths("fig-chosen") == [len(folds)]
    chosen = opened.page.evaluate("Array.from(document.getElementById('fig-chosen')._fullData[0].y)")
    assert chosen == [f[1] for f in folds]
    assert opened.page.locator("#folds tbody tr").count() == len(folds)
    # the chained out-of-sample equity ends where the folds' test returns compound to
    oos = opened.page.evaluate("Array.from(document.getElementById('fig-oos')._fullData[0].y)")
    (cash,), = q(c, "SELECT any(initial_cash) FROM thousandcuts.sweep_configs FINAL WHERE sweep_id = {s:String}")
    assert oos[-1] == pytest.approx(cash * math.prod(1 + f[3] for f in folds))
    best = _ranked(c)[0][0]
    name = opened.page.evaluate("document.getElementById('fig-oos')._fullData[1].name")
    assert name.endswith(best)


def test_an_html_path_no_page_can_go_to_stops_the_sweep_before_it_starts(swept):
    d = swept["dir"]
    ch_dir = d / "ch-refused"
    proc = subprocess.run([*CUTS, "sweep", "--bars", str(d / "bars.parquet"), "--grid", str(d / "grid.yaml"),
                           "--clickhouse", f"chdb://{ch_dir}", "--quiet", "--html", str(d)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"cuts: error: --html {d}: is a directory; give a file name such as {d}/report.html"]
    assert not ch_dir.exists()  # refused before any work
    both = subprocess.run([*CUTS, "report", "--sweep", SWEEP, "--against", "x", "--html", str(d / "x.html"),
                           "--clickhouse", f"chdb://{d / 'ch-other'}"], capture_output=True, text=True, cwd=ROOT)
    assert both.returncode == 2 and not (d / "x.html").exists()  # (this process holds the sweep's chDB)
    assert both.stderr.strip().splitlines() == [
        "cuts: error: --against and --csv compare runs; a sweep's report takes neither"]


def test_an_unfinished_sweep_is_marked_on_its_page(swept, browser):  # noqa: F811
    c = swept["client"]
    c.command("INSERT INTO thousandcuts.sweeps SELECT * REPLACE ('failed' AS status, version + 1 AS version) "
              "FROM thousandcuts.sweeps FINAL WHERE sweep_id = {s:String}", parameters={"s": SWEEP})
    path = swept["dir"] / "failed.html"
    write_page(str(path), render_sweep_page(sweep_sheet(c, SWEEP)))
    opened = OpenPage(browser, path)
    try:
        banner = opened.page.locator("#run-status")
        assert banner.is_visible() and banner.get_attribute("data-status") == "failed"
        assert opened.page.title().startswith("[FAILED]")
        opened.page.locator("#ranking-list").scroll_into_view_if_needed()
        assert banner.bounding_box()["y"] == 0
        assert opened.problems == []
    finally:
        opened.close()


@pytest.mark.parametrize("status", ["interrupted", "running"])
def test_a_sweep_stopped_before_its_metrics_names_no_best_configuration(swept, status):
    sheet = sweep_sheet(swept["client"], SWEEP)
    sheet["info"]["status"] = status
    for r in sheet["ranking"]:  # sweep_metrics is written when a sweep finishes
        r["objective"] = None
    page = render_sweep_page(sheet)
    assert f'<div id="run-status" class="status-banner" role="alert" data-status="{status}">' in page
    assert f"<title>[{status.upper()}] Sweep {SWEEP}</title>" in page
    assert ('<p id="best-config">No configuration has a defined Sharpe: its metrics are computed when the '
            "sweep finishes.</p>") in page
