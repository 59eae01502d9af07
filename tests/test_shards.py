"""A sweep's portfolio shards land one per worker: the shard keys are chosen
from Bytewax's own key routing (SipHash-1-3 of the key), checked here
against a real flow."""
from __future__ import annotations

import threading

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, cluster_main

from dataflows.shards import assign, shard_keys, siphash13, worker_of


def test_siphash13_matches_rusts_default_hasher_reference_values():
    # Rust: DefaultHasher::new() (SipHash-1-3, zero keys), `finish()` with nothing written
    assert siphash13(b"") == 0xD1FBA762150C532C


@pytest.mark.parametrize("workers", [2, 3, 4])
def test_keys_are_routed_to_the_predicted_worker(workers):
    keys = [f"k{i}" for i in range(24)] + shard_keys(workers, workers)
    thread_of: dict = {}

    def remember(state, key):
        thread_of.setdefault(key, threading.get_ident())
        return state, None

    flow = Dataflow("routing")
    keyed = op.key_on("key", op.input("in", flow, TestingSource(keys)), lambda k: k)
    op.inspect("seen", op.stateful_map("remember", keyed, remember), lambda *_: None)
    cluster_main(flow, [], 0, worker_count_per_proc=workers)
    # keys predicted on one worker ran on one thread, on different workers different threads
    threads_by_worker: dict = {}
    for key, thread in thread_of.items():
        threads_by_worker.setdefault(worker_of(key, workers), set()).add(thread)
    assert all(len(t) == 1 for t in threads_by_worker.values())
    assert len({next(iter(t)) for t in threads_by_worker.values()}) == len(threads_by_worker)
    # the shard keys: one per worker
    assert sorted(worker_of(k, workers) for k in shard_keys(workers, workers)) == list(range(workers))


def test_configurations_are_dealt_round_robin():
    ids = [f"c{i:03d}" for i in range(1, 8)]
    assert assign(ids, 3) == [["c001", "c004", "c007"], ["c002", "c005"], ["c003", "c006"]]
    assert assign(ids, 1) == [ids]
