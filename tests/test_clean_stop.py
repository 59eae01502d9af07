"""A stopped run (SIGINT / SIGTERM) ends cleanly and loses nothing: the
runner's stop (dataflows/stop.py) ends every source at its next batch, the
flow drains, every row is written, and a resume from the recovery directory
makes exactly the tables of an uninterrupted run.

In-process, so the stop lands at an exact batch: the bar file's progress
callback (called in the worker after each batch) sends the signal to this
process, as a user's Ctrl-C would, and the runner's handler only sets a flag.
"""
from __future__ import annotations

import os
import signal

import pytest

from connectors.clickhouse.client import close_clients, open_client
from connectors.clickhouse.runs import RUN_TABLES
from connectors.clickhouse.schema import DATABASE
from connectors.files.barfile import BarFileSource, read_bar_file
from connectors.files.synthetic import generate_bars, write_bars
from dataflows.backtest import default_run_id
from dataflows.runner import RunSpec, StoppableSource, execute
from dataflows.stop import RunInterrupted
from operators.config import TradingConfig

CONFIG = TradingConfig()


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    d = tmp_path_factory.mktemp("stop-market")
    path = str(d / "bars.parquet")
    write_bars(generate_bars(6, 3, seed=17), path)
    return path


@pytest.fixture(scope="module")
def dsn(tmp_path_factory):
    yield "chdb://" + str(tmp_path_factory.mktemp("stop-ch") / "db")
    close_clients()


def run_file(path, dsn, run_id, recovery_dir=None, stop_at_batch=None, sig=signal.SIGINT, workers=1):
    """A file backtest of `run_id`; the signal goes out after batch `stop_at_batch`."""
    batches = [0]

    def progress(_partition, _rows):
        batches[0] += 1
        if batches[0] == stop_at_batch:
            os.kill(os.getpid(), sig)

    source = BarFileSource(read_bar_file(path), partitions=workers, block_rows=500, progress=progress)
    spec = RunSpec(CONFIG, dsn, run_id, "backtest", workers=workers, recovery_dir=recovery_dir, snapshot_s=1,
                   source_identity={"bars_file": default_run_id(path, CONFIG)})
    return execute(spec, source, source.partition_ids())


def tables(dsn, run_id) -> dict:
    client = open_client(dsn)
    out = {}
    for table in RUN_TABLES:
        cols = [r[0] for r in client.query(
            "SELECT name FROM system.columns WHERE database = {d:String} AND table = {t:String} "
            "AND name != 'run_id' ORDER BY position", parameters={"d": DATABASE, "t": table}).result_rows]
        rows = client.query(f"SELECT {', '.join(cols)} FROM {DATABASE}.{table} FINAL "
                            f"WHERE run_id = {{r:String}}", parameters={"r": run_id}).result_rows
        out[table] = sorted(map(repr, rows))
    return out


def status(dsn, run_id) -> str:
    return open_client(dsn).command(f"SELECT status FROM {DATABASE}.runs FINAL WHERE run_id = {{r:String}}",
                                    parameters={"r": run_id})


@pytest.fixture(scope="module")
def uninterrupted(market, dsn):
    result = run_file(market, dsn, "whole")
    assert status(dsn, "whole") == "finished"
    return result.bars, tables(dsn, "whole")


@pytest.mark.parametrize("stops", [
    [(1, signal.SIGINT)],  # the first batch: before the first snapshot interval
    [(4, signal.SIGTERM)],
    [(2, signal.SIGINT), (3, signal.SIGTERM), (1, signal.SIGINT)],  # stopped three times in a row
])
def test_a_stopped_run_resumed_from_its_recovery_directory_equals_an_uninterrupted_run(
        market, dsn, uninterrupted, tmp_path, stops):
    run_id = f"stopped-{len(stops)}-{stops[0][0]}"
    rec = str(tmp_path / "rec")
    bars_total, whole = uninterrupted
    for batch, sig in stops:
        with pytest.raises(RunInterrupted) as info:
            run_file(market, dsn, run_id, rec, stop_at_batch=batch, sig=sig)
        stopped = info.value
        assert (stopped.signum, stopped.status, stopped.exit_code) == (sig, "interrupted", 128 + sig)
        assert 0 < stopped.bars < bars_total and rec in stopped.line()
        assert status(dsn, run_id) == "interrupted"
    result = run_file(market, dsn, run_id, rec)
    assert result.resumed and result.bars == bars_total
    assert status(dsn, run_id) == "finished"
    assert tables(dsn, run_id) == whole


def test_a_stopped_run_without_recovery_keeps_its_rows_and_says_it_is_incomplete(market, dsn, uninterrupted):
    with pytest.raises(RunInterrupted) as info:
        run_file(market, dsn, "no-rec", stop_at_batch=3, sig=signal.SIGTERM)
    assert info.value.status == "interrupted" and info.value.exit_code == 143
    assert "rerun" in info.value.line()
    assert status(dsn, "no-rec") == "interrupted"
    stored = tables(dsn, "no-rec")
    assert 0 < len(stored["bars"]) < len(uninterrupted[1]["bars"])
    # every bar the symbol stage passed on is stored; none beyond the stop point was applied
    assert set(stored["bars"]) <= set(uninterrupted[1]["bars"])
    assert set(stored["trades"]) <= set(uninterrupted[1]["trades"])


def test_two_workers_stop_cleanly_and_resume_to_the_same_tables(market, dsn, uninterrupted, tmp_path):
    rec = str(tmp_path / "rec2")
    with pytest.raises(RunInterrupted):
        run_file(market, dsn, "two-workers", rec, stop_at_batch=3, workers=2)
    result = run_file(market, dsn, "two-workers", rec, workers=2)
    assert result.resumed
    assert tables(dsn, "two-workers") == uninterrupted[1]


def test_the_signal_handlers_of_the_process_are_restored_after_a_run(market, dsn):
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    run_file(market, dsn, "handlers")
    with pytest.raises(RunInterrupted):
        run_file(market, dsn, "handlers", stop_at_batch=2)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


# -- a Kafka replay, stopped at exact batches -----------------------------------
class SignalAtBatch(StoppableSource):
    """The source unchanged, plus: the signal goes out after batch `at` of
    any partition (counted over all partitions)."""

    def __init__(self, inner, at: int, sig):
        super().__init__(inner, _NeverStop())
        self.prefetch, self.close_prefetched = inner.prefetch, inner.close_prefetched
        self.batches, self.at, self.sig = 0, at, sig

    def build_part(self, step_id, for_part, resume_state):
        part = super().build_part(step_id, for_part, resume_state)
        inner_next = part.next_batch

        def next_batch():
            items = inner_next()
            self.batches += 1
            if self.batches == self.at:
                os.kill(os.getpid(), self.sig)
            return items
        part.next_batch = next_batch
        return part


class _NeverStop:
    requested = False


@pytest.fixture(scope="module")
def topic(market, tmp_path_factory):
    from connectors.kafka.admin import ensure_topic
    from connectors.kafka.embedded import EmbeddedKafka
    from connectors.kafka.producer import BarProducer
    from connectors.kafka.publish import publish_columns

    with EmbeddedKafka(log_path=str(tmp_path_factory.mktemp("tansu") / "tansu.log")) as kafka:
        ensure_topic(kafka.bootstrap, "stop-bars", 2)
        with BarProducer(kafka.bootstrap, "stop-bars") as producer:
            publish_columns(producer, read_bar_file(market), records="bar")  # a marker per minute
        yield kafka.bootstrap, "stop-bars"


def run_topic(topic, dsn, run_id, recovery_dir=None, stop_at_batch=None, sig=signal.SIGINT):
    from connectors.kafka.admin import topic_identity
    from connectors.kafka.source import KafkaBarSource

    bootstrap, name = topic
    identity = topic_identity(bootstrap, name)
    source = KafkaBarSource(bootstrap, name, tail=False, identity=identity, batch_size=300, poll_size=100)
    if stop_at_batch is not None:
        source = SignalAtBatch(source, stop_at_batch, sig)
    spec = RunSpec(CONFIG, dsn, run_id, "replay", recovery_dir=recovery_dir, snapshot_s=1,
                   source_identity={"topic": name, "topic_identity": identity})
    return execute(spec, source, [0, 1])


@pytest.mark.parametrize("stops", [[(2, signal.SIGTERM)], [(5, signal.SIGINT), (9, signal.SIGTERM)]])
def test_a_stopped_replay_resumed_from_its_recovery_directory_equals_an_uninterrupted_run(
        topic, dsn, uninterrupted, tmp_path, stops):
    run_id = f"replay-{len(stops)}"
    rec = str(tmp_path / "rec")
    for batch, sig in stops:
        with pytest.raises(RunInterrupted) as info:
            run_topic(topic, dsn, run_id, rec, stop_at_batch=batch, sig=sig)
        assert info.value.signum == sig and 0 < info.value.bars < uninterrupted[0]
        assert status(dsn, run_id) == "interrupted"
    result = run_topic(topic, dsn, run_id, rec)
    assert result.resumed and result.bars == uninterrupted[0]
    assert tables(dsn, run_id) == uninterrupted[1]  # the file's run: a replay makes the same tables
