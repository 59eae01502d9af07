"""Results are never lost or misreported: every fresh start of a backtest is
an attempt under its own data id; the run's previous complete results stay
the ones reported until a rerun finishes, an unfinished run says so in every
report, and "the latest run" is the one started last
(connectors/clickhouse/runs.py)."""
from __future__ import annotations

import json
import signal

import pytest
from test_clean_stop import CONFIG, run_file, status, tables

from connectors.clickhouse import analytics, compare
from connectors.clickhouse import runs as ch_runs
from connectors.clickhouse.client import close_clients, open_client
from connectors.clickhouse.report import UnknownRun, build_report, format_text, to_json, write_csv
from connectors.clickhouse.run_list import format_run, format_runs, run_details, run_rows
from connectors.files.synthetic import generate_bars, write_bars
from dataflows.stop import RunInterrupted


@pytest.fixture(scope="module")
def markets(tmp_path_factory):
    d = tmp_path_factory.mktemp("attempt-markets")
    out = []
    for seed in (31, 32):
        path = str(d / f"bars{seed}.parquet")
        write_bars(generate_bars(5, 3, seed=seed), path)
        out.append(path)
    return out


@pytest.fixture
def dsn(tmp_path):
    yield "chdb://" + str(tmp_path / "db")
    close_clients()


def reported(dsn, run_id) -> dict:
    """What `cuts report` reads for the run: its tables through the attempt it resolves."""
    client = open_client(dsn)
    current = ch_runs.current_attempt(client, run_id)
    return tables(dsn, current.data_id)


def test_an_interrupted_rerun_leaves_the_previous_complete_results_reported(markets, dsn):
    first = run_file(markets[0], dsn, "x")
    complete = reported(dsn, "x")
    for batch, sig in ((2, signal.SIGINT), (5, signal.SIGTERM)):  # interrupted twice, early and late
        with pytest.raises(RunInterrupted) as info:
            run_file(markets[0], dsn, "x", stop_at_batch=batch, sig=sig)
        assert info.value.previous == 1 and "last complete attempt (1)" in info.value.line()
        assert reported(dsn, "x") == complete
        doc = build_report(open_client(dsn), "x")
        assert doc["run"]["complete"] and doc["run"]["attempt"] == 1
        assert doc["performance"]["trades"] == len(complete["trades"])
        assert doc["latest_attempt"]["status"] == "interrupted"
        text = format_text(doc)
        assert text.splitlines()[2].startswith("Status: finished (attempt 1")
        assert "a newer attempt" in text and "PARTIAL" not in text
    assert first.attempt.attempt == 1
    # a rerun that finishes becomes current and the older attempts' rows go
    done = run_file(markets[0], dsn, "x")
    assert done.attempt.attempt == 4 and done.attempt.data_id == "x~4"
    assert reported(dsn, "x") == complete
    client = open_client(dsn)
    stored = dict(client.query("SELECT run_id, count() FROM thousandcuts.bars GROUP BY run_id").result_rows)
    assert set(stored) == {"x~4"}
    assert [a.status for a in ch_runs.attempts(client, "x")] == ["replaced"] * 3 + ["finished"]


def test_a_run_that_never_finished_is_reported_as_partial_everywhere(markets, dsn, tmp_path):
    with pytest.raises(RunInterrupted) as info:
        run_file(markets[1], dsn, "y", stop_at_batch=3, sig=signal.SIGTERM)
    assert info.value.previous is None and "rerun to complete it" in info.value.line()
    client = open_client(dsn)
    doc = build_report(client, "y")
    text = format_text(doc)
    lines = text.splitlines()
    assert lines[0] == "Run y -- INTERRUPTED: PARTIAL RESULTS"
    assert lines[2].startswith("Status: INTERRUPTED on SIGTERM (attempt 1") and "PARTIAL RESULTS" in lines[2]
    assert lines[-1].startswith("PARTIAL RESULTS: run y is interrupted")
    data = json.loads(to_json(doc))
    assert data["run"]["complete"] is False and data["run"]["status"] == "interrupted"
    write_csv(doc, str(tmp_path / "csv"))
    run_csv = (tmp_path / "csv" / "run.csv").read_text().splitlines()
    assert "status" in run_csv[0].split(",") and ",interrupted," in run_csv[1]
    rows = run_rows(client)
    assert rows[0]["run_id"] == "y" and rows[0]["status"] == "interrupted" and not rows[0]["complete"]
    # finishing it: the same report becomes complete
    run_file(markets[1], dsn, "y")
    assert build_report(open_client(dsn), "y")["run"]["complete"]


def test_the_latest_run_is_the_one_started_last_also_after_a_rerun(markets, dsn):
    run_file(markets[0], dsn, "a")
    run_file(markets[1], dsn, "b")
    client = open_client(dsn)
    assert analytics.latest_run_id(client) == "b"
    run_file(markets[0], dsn, "a")  # a rerun of the older run
    assert analytics.latest_run_id(client) == "a"
    assert [r["run_id"] for r in run_rows(client)] == ["a", "b"]
    with pytest.raises(RunInterrupted):
        run_file(markets[1], dsn, "b", stop_at_batch=1)
    assert analytics.latest_run_id(client) == "b"  # started last, though interrupted
    assert compare.latest_other_run(client, "a") == "b"


def test_a_replaced_attempts_recovery_directory_is_refused_with_one_line(markets, dsn, tmp_path):
    rec = str(tmp_path / "rec")
    with pytest.raises(RunInterrupted):
        run_file(markets[0], dsn, "z", recovery_dir=rec, stop_at_batch=2)
    run_file(markets[0], dsn, "z")  # a fresh attempt, no recovery: finishes and replaces attempt 1
    with pytest.raises(ch_runs.RunIdError) as info:
        run_file(markets[0], dsn, "z", recovery_dir=rec)
    assert "attempt 1 of run z" in str(info.value) and "new recovery directory" in str(info.value)
    assert status(dsn, "z") == "finished"


@pytest.mark.parametrize("bad", ["x~2", "", "has space", "-lead", "a/b", "é"])
def test_a_run_id_that_could_name_an_attempt_or_a_path_is_refused(markets, dsn, bad):
    with pytest.raises(ch_runs.RunIdError):
        run_file(markets[0], dsn, bad)


def test_a_live_run_id_is_not_reused_by_a_backtest(markets, dsn):
    client = open_client(dsn)
    from connectors.clickhouse.client import ensure_schema
    ensure_schema(client)
    ch_runs.begin_attempt(client, "paper-1", "live", "{}")
    with pytest.raises(ch_runs.RunIdError) as info:
        run_file(markets[0], dsn, "paper-1")
    assert "is a live run already" in str(info.value)


def test_a_failed_run_is_recorded_failed_with_its_error_and_reported_as_partial(markets, dsn, monkeypatch):
    from connectors.files import barfile

    calls = [0]
    real = barfile._FilePartition.next_batch

    def breaks(self):
        calls[0] += 1
        if calls[0] == 3:
            raise OSError("disk gone")
        return real(self)
    monkeypatch.setattr(barfile._FilePartition, "next_batch", breaks)
    with pytest.raises(Exception):
        run_file(markets[0], dsn, "f")
    client = open_client(dsn)
    current = ch_runs.current_attempt(client, "f")
    assert current.status == "failed" and "disk gone" in current.detail
    assert "Status: FAILED OSError: disk gone" in format_text(build_report(client, "f"))


def test_runs_list_and_show_and_unknown_ids_suggest_the_nearest(markets, dsn):
    run_file(markets[0], dsn, "bt-alpha")
    run_file(markets[1], dsn, "bt-beta")
    client = open_client(dsn)
    text = format_runs(run_rows(client))
    header = text.splitlines()[0].split()
    assert header[:3] == ["run", "id", "mode"] and "P&L" in header and "source" in header
    assert "bt-alpha" in text and markets[0] in text
    details = run_details(client, "bt-alpha")
    assert details["config"] == json.loads(CONFIG.model_dump_json())
    shown = format_run(details)
    assert "Configuration" in shown and "take_profit_pct: 0.02" in shown
    for wrong, near in (("bt-alpah", "bt-alpha"), ("bt-bet", "bt-beta"), ("BT-ALPHA", None)):
        with pytest.raises(UnknownRun) as info:
            build_report(client, wrong)
        assert f"unknown run id: {wrong}" in str(info.value)
        if near:
            assert near in str(info.value)


def test_a_run_recorded_before_attempts_existed_is_replaced_by_its_rerun(markets, dsn):
    from connectors.clickhouse.client import ClickHouseWriter, ensure_schema
    from operators.types import EquityPoint

    client = open_client(dsn)
    ensure_schema(client)
    ch_runs.record_run_start(client, "old", "{}", "backtest")
    writer = ClickHouseWriter(client, "old")
    writer.add("equity", [EquityPoint(1704205800, 1.0, 1.0, 0, 0.0)])
    writer.flush()
    ch_runs.record_run_end(client, "old", 1, "finished")
    assert [(a.attempt, a.data_id, a.status) for a in ch_runs.attempts(client, "old")] == [(1, "old", "finished")]
    done = run_file(markets[0], dsn, "old")
    assert done.attempt.data_id == "old~2"
    assert [(a.attempt, a.status) for a in ch_runs.attempts(client, "old")] == [(1, "replaced"), (2, "finished")]
    left = client.command("SELECT count() FROM thousandcuts.equity WHERE run_id = 'old'")
    assert left == 0


def test_a_stopped_live_run_is_complete_up_to_its_stop_and_a_running_one_is_partial(dsn):
    from connectors.clickhouse.client import ensure_schema

    client = open_client(dsn)
    ensure_schema(client)
    live = ch_runs.begin_attempt(client, "paper-9", "live", "{}")
    running = format_text(build_report(client, "paper-9"))
    assert running.splitlines()[0] == "Run paper-9 -- RUNNING: PARTIAL RESULTS"
    ch_runs.end_attempt(client, live, "stopped", 0, "on SIGTERM")
    doc = build_report(client, "paper-9")
    text = format_text(doc)
    assert doc["run"]["complete"] and text.splitlines()[0] == "Run paper-9" and "PARTIAL" not in text
    assert "Status: stopped on SIGTERM (attempt 1" in text and "a live run, complete up to its stop" in text
    ch_runs.begin_attempt(client, "paper-9", "live", "{}")  # restarted: the same attempt, running again
    assert [(a.attempt, a.status) for a in ch_runs.attempts(client, "paper-9")] == [(1, "running")]


def test_a_sweep_keeps_one_attempt_under_its_id_and_its_id_is_not_a_backtests(markets, dsn):
    # A sweep's rows are keyed by its id (sweep_trades, sweep_daily, ...): a
    # rerun continues attempt 1 under that id, and no backtest may take the id.
    client = open_client(dsn)
    from connectors.clickhouse.client import ensure_schema
    ensure_schema(client)
    first = ch_runs.begin_attempt(client, "grid-1", "sweep", "{}", now_ms=1_000)
    ch_runs.end_attempt(client, first, "finished", 10, now_ms=2_000)
    again = ch_runs.begin_attempt(client, "grid-1", "sweep", "{}", now_ms=3_000)
    assert (first.attempt, first.data_id) == (again.attempt, again.data_id) == (1, "grid-1")
    assert again.started_at == 3_000  # run again, it is the latest started
    with pytest.raises(ch_runs.RunIdError) as info:
        run_file(markets[0], dsn, "grid-1")
    assert "is a sweep run already" in str(info.value)


def test_an_unfinished_sweep_report_says_partial_first(dsn):
    from connectors.clickhouse import sweeps
    from connectors.clickhouse.client import ensure_schema
    from connectors.clickhouse.sweep_report import format_sweep_report

    client = open_client(dsn)
    ensure_schema(client)
    grid = json.dumps({"axes": {"exit.take_profit_pct": [0.01, 0.02]}})
    for status in ("interrupted", "finished"):
        sweeps.record_sweep(client, "grid-2", grid_json=grid, base_config_json="{}", source="x", configs=0, shards=1,
                            objective="sharpe", detail=False, status=status, bar_count=0)
        text = format_sweep_report(client, "grid-2")
        assert text.startswith("PARTIAL") == (status != "finished"), text
