"""Portfolio shards of a sweep, spread evenly over Bytewax workers.

A stateful step routes a key to worker `siphash13(key) % worker_count`
(Rust's DefaultHasher with zero keys over the key's bytes and a 0xff
terminator, which is how Bytewax 0.21's `StateKey(String)` hashes; workers of
process p are p * workers_per_process ...). Shard keys are chosen so that
shard i lands on worker i % worker_count: every worker evaluates its share of
the configurations. tests/test_shards.py checks the prediction against a real
flow; were it ever wrong (another Bytewax), only the balance would suffer,
never a result (every shard sees every bar whichever worker holds it).
"""
from __future__ import annotations

import struct

_M = (1 << 64) - 1


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _M


def _round(v0, v1, v2, v3):
    v0 = (v0 + v1) & _M
    v1 = _rotl(v1, 13) ^ v0
    v0 = _rotl(v0, 32)
    v2 = (v2 + v3) & _M
    v3 = _rotl(v3, 16) ^ v2
    v0 = (v0 + v3) & _M
    v3 = _rotl(v3, 21) ^ v0
    v2 = (v2 + v1) & _M
    v1 = _rotl(v1, 17) ^ v2
    v2 = _rotl(v2, 32)
    return v0, v1, v2, v3


def siphash13(data: bytes, k0: int = 0, k1: int = 0) -> int:
    """SipHash-1-3 (Rust's std DefaultHasher)."""
    v0, v1 = k0 ^ 0x736F6D6570736575, k1 ^ 0x646F72616E646F6D
    v2, v3 = k0 ^ 0x6C7967656E657261, k1 ^ 0x7465646279746573
    n = len(data)
    end = n - n % 8
    for i in range(0, end, 8):
        m = struct.unpack_from("<Q", data, i)[0]
        v3 ^= m
        v0, v1, v2, v3 = _round(v0, v1, v2, v3)
        v0 ^= m
    b = (n & 0xFF) << 56
    for i, c in enumerate(data[end:]):
        b |= c << (8 * i)
    v3 ^= b
    v0, v1, v2, v3 = _round(v0, v1, v2, v3)
    v0 ^= b
    v2 ^= 0xFF
    for _ in range(3):
        v0, v1, v2, v3 = _round(v0, v1, v2, v3)
    return v0 ^ v1 ^ v2 ^ v3


def worker_of(key: str, worker_count: int) -> int:
    """The worker Bytewax routes a stateful step's `key` to."""
    return siphash13(key.encode() + b"\xff") % worker_count


def shard_keys(shards: int, worker_count: int) -> list[str]:
    """One key per shard, shard i's on worker i % worker_count."""
    keys = []
    for i in range(shards):
        want, j = i % worker_count, 0
        while worker_of(f"shard-{i}.{j}", worker_count) != want:
            j += 1
        keys.append(f"shard-{i}.{j}")
    return keys


def assign(config_ids: list, shards: int) -> list[list]:
    """Configurations dealt round-robin to shards (neighbours in a grid often
    differ only in their last axis: dealing spreads costly ones)."""
    return [config_ids[s::shards] for s in range(shards)]
