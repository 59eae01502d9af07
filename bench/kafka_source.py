"""The replay's Kafka source alone: what consuming and decoding the `bars`
topic costs per message, without the rest of the flow.

    .venv/bin/python bench/kafka_source.py [--symbols 31] [--days 10] [--reps 9] [--polls 10000,1000]
                                           [--records bar|bars]

Publishes the market of bench/stream.py (seed 5) into a 3-partition topic on
the embedded broker (or KAFKA_BOOTSTRAP), then, `--reps` times and
interleaved, for each poll size: builds `KafkaBarSource` partitions (replay,
batches of 10,000 messages), lets librdkafka fetch the whole topic into its
queues, and times
  - the source: every `next_batch` until the end (consume + decode + items),
  - consume alone: the raw partitions' polls (librdkafka -> Python messages),
    dropping each poll's messages before the next.
Medians over the repetitions; interleaving keeps the machine's drift out of
the comparison. The two do not add up to a split of the source's time: how
many messages are alive at once changes what both cost (CPU caches). Run
benchmarks one at a time.
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

TOPIC = "bench-source"


def cuts(*args) -> None:
    exe = os.path.join(os.path.dirname(sys.executable), "cuts")
    subprocess.run([exe, *args], capture_output=True, text=True, check=True)


def _drain(parts) -> tuple[float, int]:
    """Seconds spent in next_batch over all partitions, and what came out."""
    spent, n = 0.0, 0
    for part in parts:
        while True:
            started = time.perf_counter()
            try:
                out = part.next_batch()
            except StopIteration:
                break
            spent += time.perf_counter() - started
            n += len(out)
            del out
    return spent, n


def measure(bootstrap: str, partitions: list, poll: int, raw: bool) -> tuple[float, int]:
    from connectors.kafka.source import KafkaBarSource

    source = KafkaBarSource(bootstrap, TOPIC, tail=False, poll_size=poll, check_identity=False)
    if raw:  # the consumer alone, polls of `poll` messages
        parts = [source._raw_part("bench", TOPIC, p, None) for p in partitions]
    else:
        parts = [source.build_part("bench", f"{p}-{TOPIC}", None) for p in partitions]
    time.sleep(1.5)  # librdkafka fetches the topic into its queues meanwhile
    gc.collect()
    try:
        return _drain(parts)
    finally:
        for part in parts:
            part.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--symbols", type=int, default=31)
    ap.add_argument("--days", type=int, default=10)
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--polls", default="10000,1000", help="poll sizes to compare")
    ap.add_argument("--records", choices=("bars", "bar"), default="bar",
                    help="how the market is published (`cuts publish --records`)")
    args = ap.parse_args()
    polls = [int(x) for x in args.polls.split(",")]
    from connectors.config import kafka_bootstrap
    from connectors.kafka.admin import topic_partitions
    from connectors.kafka.embedded import kafka_bootstrap_or_embedded

    with tempfile.TemporaryDirectory() as tmp, kafka_bootstrap_or_embedded(kafka_bootstrap(None)) as bootstrap:
        bars = os.path.join(tmp, "bars.parquet")
        cuts("generate", "--symbols", str(args.symbols), "--days", str(args.days), "--seed", "5", "--out", bars)
        cuts("publish", "--bars", bars, "--kafka", bootstrap, "--topic", TOPIC, "--partitions", "3",
             "--records", args.records)
        partitions = topic_partitions(bootstrap, TOPIC)
        times: dict = {(p, raw): [] for p in polls for raw in (False, True)}
        messages = 0
        for _ in range(args.reps):
            for p in polls:
                for raw in (False, True):
                    spent, n = measure(bootstrap, partitions, p, raw)
                    times[(p, raw)].append(spent)
                    if raw:
                        messages = n
        print(f"{messages:,} messages (bars and markers) in {len(partitions)} partitions, "
              f"medians of {args.reps} interleaved repetitions")
        for p in polls:
            src, raw = statistics.median(times[(p, False)]), statistics.median(times[(p, True)])
            print(f"poll {p:>6,}: source {src * 1e3:6.1f} ms ({src / messages * 1e9:4.0f} ns/message); "
                  f"consume alone {raw * 1e3:5.1f} ms ({raw / messages * 1e9:4.0f} ns/message)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
