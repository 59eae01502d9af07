"""The run tearsheet in a real browser (tests/browser.py): a real backtest
through `cuts backtest --html`, the page opened offline from file://, every
chart checked against the run's rows counted in ClickHouse SQL, no console
error, no network request, a screenshot in tests/artifacts/."""
from __future__ import annotations

import re

import pytest
from browser import OpenPage, browser  # noqa: F401 (fixture)

from connectors.clickhouse import analytics, tearsheet
from connectors.clickhouse import client as ch
from connectors.clickhouse import runs as ch_runs
from connectors.clickhouse.schema import column_names
from connectors.html.tearsheet import HEADLINE, fmt, render_tearsheet
from dataflows.reports import run_sheet, write_page
from cuts_cli import cuts

RUN = "page"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A backtest of 6 symbols x 3 days; the page `cuts backtest --html` wrote;
    the run's chDB open in this process afterwards."""
    d = tmp_path_factory.mktemp("page")
    bars = d / "bars.parquet"
    cuts("generate", "--symbols", "6", "--days", "3", "--seed", "5", "--out", str(bars))
    page = d / "report.html"
    proc = cuts("backtest", "--bars", str(bars), "--clickhouse", f"chdb://{d / 'ch'}", "--run-id", RUN,
                "--quiet", "--html", str(page))
    assert f"report of run {RUN}: {page}" in proc.stdout
    client = ch.open_client(f"chdb://{d / 'ch'}")
    yield {"dir": d, "page": page, "client": client}
    ch.close_clients()


def q(client, sql: str, **params):
    return client.query(sql, parameters={"run_id": RUN, **params}).result_rows


@pytest.fixture(scope="module")
def opened(run, browser):  # noqa: F811
    page = OpenPage(browser, run["page"])
    yield page
    page.close()


def test_tearsheet_opens_offline_and_every_chart_holds_the_runs_rows(run, opened):
    c = run["client"]
    (minutes,), = q(c, "SELECT count() FROM thousandcuts.equity FINAL WHERE run_id = {run_id:String}")
    (days,), = q(c, "SELECT uniqExact(toDate(ts, 'America/New_York')) FROM thousandcuts.equity FINAL "
                    "WHERE run_id = {run_id:String}")
    (trades,), = q(c, "SELECT count() FROM thousandcuts.trades FINAL WHERE run_id = {run_id:String}")
    assert minutes == 3 * 390 and trades > 5, "the generated market should trade"
    assert opened.lengths("fig-equity") == [minutes, minutes]  # equity and drawdown: every minute
    assert opened.lengths("fig-daily") == [days]
    assert opened.page.evaluate("document.getElementById('fig-monthly')._fullData[0].z.flat()"
                                ".filter(v => v !== null).length") == 1  # one month of bars
    assert sum(opened.page.evaluate("Array.from(document.getElementById('fig-returns')._fullData[0].y)")) == trades
    for name, key in (("strategy", "strategy_id"), ("exit_reason", "exit_reason"), ("symbol", "symbol")):
        (groups,), = q(c, f"SELECT uniqExact({key}) FROM thousandcuts.trades FINAL WHERE run_id = {{run_id:String}}")
        assert opened.lengths(f"fig-by-{name}") == [groups], name
    assert opened.page.locator("#trades tbody tr").count() == trades
    opened.screenshot("tearsheet")
    assert opened.problems == []


def test_price_chart_has_every_candle_and_every_trade_of_each_symbol(run, opened):
    c = run["client"]
    per_symbol = dict(q(c, "SELECT symbol, count() FROM thousandcuts.trades FINAL WHERE run_id = {run_id:String} "
                           "GROUP BY symbol"))
    bars = dict(q(c, "SELECT symbol, count() FROM thousandcuts.bars FINAL WHERE run_id = {run_id:String} "
                     "GROUP BY symbol"))
    assert opened.page.locator("#candle-note").get_attribute("data-minutes") == "1"
    page = opened.page
    for symbol in sorted(bars):
        page.select_option("#symbol", symbol)
        page.wait_for_function("s => document.getElementById('fig-candles').dataset.symbol === s", arg=symbol)
        n = per_symbol.get(symbol, 0)
        # candles, entries, exits, stop and target segments (entry, exit, gap per trade)
        assert opened.lengths("fig-candles") == [bars[symbol], n, n, 3 * n, 3 * n], symbol
    assert sum(per_symbol.values()) > 0 and opened.problems == []


def test_every_trade_has_its_stop_below_and_target_above_the_entry(opened):
    stops = opened.page.evaluate("""() => Array.from(document.querySelectorAll('#trades tbody tr'))
        .map(tr => [...tr.children].map(td => td.textContent))""")
    header = opened.page.evaluate("Array.from(document.querySelectorAll('#trades thead th')).map(th => th.textContent)")
    i_entry, i_stop, i_target = (header.index(h) for h in ("entry price", "stop", "target"))
    for row in stops:
        assert float(row[i_stop]) < float(row[i_entry]) < float(row[i_target]), row


def test_headline_tiles_show_the_sql_metrics(run, opened):
    c = run["client"]
    perf = analytics.performance(c, RUN)
    values = {**perf, **tearsheet.extra_metrics(c, RUN, perf["max_drawdown"])}
    shown = dict(opened.page.evaluate("""() => Array.from(document.querySelectorAll('#metrics .tile'))
        .map(t => [t.dataset.key, t.querySelector('.value').textContent])"""))
    expected = {k: fmt(values[k], kind) for _, items in HEADLINE for k, _, kind in items}
    assert shown == expected
    assert shown["trades"] == f"{perf['trades']:,}" and shown["win_rate"] == f"{perf['win_rate'] * 100:,.2f}%"


def test_trade_list_sorts_by_the_clicked_column(opened):
    page = opened.page
    header = page.locator("#trades thead th", has_text="P&L $")
    header.click()
    header.click()  # second click: descending
    col = page.evaluate("Array.from(document.querySelectorAll('#trades thead th'))"
                        ".findIndex(th => th.textContent === 'P&L $')")
    pnl = page.evaluate(f"""() => Array.from(document.querySelectorAll('#trades tbody tr'))
        .map(tr => parseFloat(tr.children[{col}].textContent.replace(/,/g, '')))""")
    assert pnl == sorted(pnl, reverse=True) and pnl[0] > pnl[-1]


def test_clicking_a_trade_shows_its_symbol_zoomed_on_it(opened):
    page = opened.page
    row = page.locator("#trades tbody tr").last
    symbol = row.locator("td").first.text_content()
    row.click()
    page.wait_for_function("s => document.getElementById('fig-candles').dataset.symbol === s", arg=symbol)
    assert page.locator("#symbol").input_value() == symbol
    cells = row.locator("td").all_text_contents()
    header = page.evaluate("Array.from(document.querySelectorAll('#trades thead th')).map(th => th.textContent)")
    entry, exit_ = cells[header.index("entry")], cells[header.index("exit")]
    lo, hi = page.evaluate("document.getElementById('fig-candles')._fullLayout.xaxis.range")
    assert lo[:16] <= entry and exit_ <= hi[:16], (lo, hi, entry, exit_)


def _copy_run(client, new_id: str, status: str | None, cut_trades: int = 0) -> None:
    """`new_id` = the backtest's rows (minus its last `cut_trades` trades)
    under another run id and status (None: still running)."""
    for table in ("bars", "signals", "orders", "fills", "equity", "rejections"):
        cols = ", ".join(c for c in column_names(table) if c != "run_id")
        client.command(f"INSERT INTO thousandcuts.{table} (run_id, {cols}) SELECT {{n:String}}, {cols} "
                       f"FROM thousandcuts.{table} FINAL WHERE run_id = {{r:String}}",
                       parameters={"n": new_id, "r": RUN})
    cols = ", ".join(c for c in column_names("trades") if c != "run_id")
    client.command(f"""INSERT INTO thousandcuts.trades (run_id, {cols}) SELECT {{n:String}}, {cols}
        FROM thousandcuts.trades FINAL WHERE run_id = {{r:String}}
        ORDER BY exit_time LIMIT {{keep:UInt64}}""",
                   parameters={"n": new_id, "r": RUN,
                               "keep": max(0, q(client, "SELECT count() FROM thousandcuts.trades FINAL "
                                                        "WHERE run_id = {run_id:String}")[0][0] - cut_trades)})
    ch_runs.record_run_start(client, new_id, '{"risk": {"initial_cash": 100000}}', "replay")
    if status is not None:
        ch_runs.record_run_end(client, new_id, 0, status)


@pytest.mark.parametrize("status", ["failed", None])
def test_an_unfinished_run_is_marked_on_every_screen_of_its_page(run, browser, status):  # noqa: F811
    run_id = f"half-{status or 'running'}</script><b>x"  # markup in a run id stays text
    _copy_run(run["client"], run_id, status)
    path = run["dir"] / f"{status or 'running'}.html"
    write_page(str(path), render_tearsheet(run_sheet(run["client"], run_id)))
    opened = OpenPage(browser, path)
    try:
        page, word = opened.page, (status or "running")
        banner = page.locator("#run-status")
        assert banner.is_visible() and banner.get_attribute("data-status") == word
        assert word.upper() in banner.text_content() and run_id in banner.text_content()
        assert page.title().startswith(f"[{word.upper()}]")
        page.locator("#trade-list").scroll_into_view_if_needed()
        box = banner.bounding_box()
        assert box is not None and box["y"] == 0, "the banner stays on screen while scrolling"
        opened.screenshot(f"tearsheet-{word}")
        assert opened.problems == []
    finally:
        opened.close()


@pytest.mark.parametrize("status", ["interrupted", "stopped", "paused-by-someone"])
def test_every_status_but_finished_gets_the_banner_and_the_title(run, status):
    sheet = run_sheet(run["client"], RUN)
    sheet["run"]["status"] = status
    page = render_tearsheet(sheet)
    assert f'<div id="run-status" class="status-banner" role="alert" data-status="{status}">' in page
    assert f"<title>[{status.upper()}] Run {RUN}</title>" in page


def test_finished_run_has_no_warning_banner(opened):
    assert opened.page.locator("#run-status").count() == 0
    assert opened.page.locator("#status-badge").text_content() == "finished"


def test_live_run_against_its_backtest_charts_slippage_missed_and_extra(run, browser):  # noqa: F811
    from connectors.clickhouse import compare

    c = run["client"]
    _copy_run(c, "live", "finished", cut_trades=2)
    c.command("ALTER TABLE thousandcuts.trades UPDATE entry_price = entry_price * 1.0005 "
              "WHERE run_id = 'live' SETTINGS mutations_sync = 1")
    result = compare.compare_runs(c, "live", RUN)
    path = run["dir"] / "live.html"
    write_page(str(path), render_tearsheet(run_sheet(c, "live", RUN)))
    opened = OpenPage(browser, path)
    try:
        s = result["summary"]
        assert (s["missed"], s["extra"]) == (2, 0) and s["matched"] > 0
        assert opened.lengths("fig-compare-slippage") == [s["matched"], s["matched"]]
        bars = opened.page.evaluate("Array.from(document.getElementById('fig-compare-trades')._fullData[0].y)")
        assert bars == [s["matched"], 2, 0]
        entry_bps = opened.page.evaluate("Array.from(document.getElementById('fig-compare-slippage')._fullData[0].y)")
        assert entry_bps == pytest.approx([r["entry_slippage_bps"] for r in result["matched"]])
        assert all(b == pytest.approx(5.0) for b in entry_bps)  # 0.05 % worse at every entry
        opened.screenshot("tearsheet-against")
        assert opened.problems == []
    finally:
        opened.close()


def test_downsampled_equity_is_drawn_with_the_points_sql_kept(run, browser):  # noqa: F811
    c = run["client"]
    sheet = run_sheet(c, RUN, equity_points=300)
    kept = len(sheet["equity"]["t"])
    assert sheet["equity"]["bucket_minutes"] > 1 and kept < 3 * 390
    path = run["dir"] / "downsampled.html"
    write_page(str(path), render_tearsheet(sheet))
    opened = OpenPage(browser, path)
    try:
        assert opened.lengths("fig-equity") == [kept, kept]
        note = opened.page.locator("#equity-note").text_content()
        assert re.search(rf"{kept:,} of the {3 * 390:,} equity minutes drawn", note)
        deepest = opened.page.evaluate("Math.min(...document.getElementById('fig-equity')._fullData[1].y)")
        assert deepest == pytest.approx(-analytics.performance(c, RUN)["max_drawdown"])
        assert opened.problems == []
    finally:
        opened.close()


def test_demo_writes_its_report_page_and_prints_where(tmp_path, browser):  # noqa: F811
    proc = cuts("demo", "--dir", str(tmp_path / "demo"), "--symbols", "3", "--days", "1")
    page = tmp_path / "demo" / "report.html"
    assert f"report of run demo: {page} (" in proc.stdout.splitlines()[-1]
    opened = OpenPage(browser, page)
    try:
        assert opened.lengths("fig-equity") == [390, 390] and opened.problems == []
    finally:
        opened.close()


def test_html_path_that_is_a_directory_or_unwritable_is_one_line(tmp_path, run):
    from dataflows.cli.html_output import HtmlPathError, write_html_page

    with pytest.raises(HtmlPathError, match="is a directory"):
        write_html_page(str(tmp_path), "run", RUN, run["client"])
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(HtmlPathError, match="cannot write"):
        write_html_page(str(blocker / "report.html"), "run", RUN, run["client"])  # a file as the folder
