"""Streaming benchmarks on the embedded broker (or KAFKA_BOOTSTRAP):

1. replay throughput: a generated market published into two 3-partition
   topics (bars records, `cuts publish`'s default, and one bar per record, as
   `cuts stream` writes), then `cuts backtest --kafka` on each (Kafka -> flow
   -> ClickHouse), bars/s, beside the file backtest of the same bars;
2. live latency: the flow tails a topic while a producer writes one minute
   at a time (31 bars, then the minute's marker to every partition). For each
   minute: from the moment its last bar and marker are acknowledged by the
   broker to the moment the portfolio stage emits that minute's output
   (its equity point: the minute's orders are in the same output).

    .venv/bin/python bench/stream.py [--symbols 31] [--days 10] [--minutes 1000] [--rounds 1]

Single runs of either backtest vary by 10-20 % on this machine (other load,
noisy neighbours): compare rates with `--rounds 9` or more, which alternates
the three backtests and prints the medians.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bytewax.outputs import DynamicSink, StatelessSinkPartition  # noqa: E402


def cuts(*args) -> str:
    exe = os.path.join(os.path.dirname(sys.executable), "cuts")
    proc = subprocess.run([exe, *args], capture_output=True, text=True, check=True)
    return proc.stdout


class _Stamp(StatelessSinkPartition):
    def __init__(self, seen):
        self.seen = seen

    def write_batch(self, items):
        now = time.perf_counter()
        for item in items:
            for point in getattr(item, "equity", ()):
                self.seen.setdefault(point.ts, now)


class StampSink(DynamicSink):
    """Records when each minute's portfolio output leaves the portfolio stage."""

    def __init__(self):
        self.seen: dict = {}

    def build(self, step_id, worker_index, worker_count):
        return _Stamp(self.seen)


def measure_live_latency(bootstrap: str, symbols: int, minutes: int, pace_s: float) -> list:
    """Seconds from "minute complete in Kafka" to "minute out of the portfolio", per minute."""
    from bytewax.testing import run_main

    from connectors.files.barfile import frame_to_columns
    from connectors.files.synthetic import generate_bars
    from connectors.kafka.admin import ensure_topic
    from connectors.kafka.producer import BarProducer
    from connectors.kafka.source import KafkaBarSource
    from dataflows.flow import FlowSettings, build_flow
    from operators.config import TradingConfig
    from operators.types import Bar

    days = minutes // 390 + 1
    cols = frame_to_columns(generate_bars(symbols, days, seed=9))
    by_minute: dict = {}
    for i in range(len(cols)):
        by_minute.setdefault(int(cols.ts[i]), []).append(Bar(
            str(cols.symbol[i]), int(cols.ts[i]), float(cols.open[i]), float(cols.high[i]),
            float(cols.low[i]), float(cols.close[i]), float(cols.volume[i])))
    stamps = sorted(by_minute)[:minutes]
    topic = f"latency-{os.getpid()}-{int(time.time())}"
    ensure_topic(bootstrap, topic, 3)
    sink = StampSink()
    source = KafkaBarSource(bootstrap, topic, tail=True)
    flow = build_flow(FlowSettings(TradingConfig(), "latency"), source, sink, source.partition_ids())
    threading.Thread(target=run_main, args=(flow,), daemon=True).start()  # tails forever
    complete: dict = {}
    with BarProducer(bootstrap, topic) as producer:
        time.sleep(2.0)  # let the consumers start
        for ts in stamps:
            producer.send_bars(by_minute[ts])
            producer.send_watermark(ts + 60)
            producer.flush()
            complete[ts] = time.perf_counter()
            time.sleep(pace_s)
        deadline = time.monotonic() + 30
        while len(sink.seen) < len(stamps) and time.monotonic() < deadline:
            time.sleep(0.05)
    missing = [ts for ts in stamps if ts not in sink.seen]
    if missing:
        print(f"warning: {len(missing)} minutes never came out", file=sys.stderr)
    return [sink.seen[ts] - complete[ts] for ts in stamps if ts in sink.seen]


def _rate(out: str) -> float:
    return float(re.search(r"\(([\d,]+) bars/s\)", out).group(1).replace(",", ""))


def replay(bootstrap: str, tmp: str, symbols: int, days: int, rounds: int = 1) -> None:
    """The file backtest and replays of the same market published as bars
    records (`cuts publish`'s default) and one bar per record (as `cuts
    stream` writes), alternating `rounds` times."""
    bars = os.path.join(tmp, "bars.parquet")
    cuts("generate", "--symbols", str(symbols), "--days", str(days), "--seed", "5", "--out", bars)
    topics = {"bars": "bench", "bar": "bench-one"}
    for records, topic in topics.items():
        started = time.perf_counter()
        out = cuts("publish", "--bars", bars, "--kafka", bootstrap, "--topic", topic, "--partitions", "3",
                   "--records", records)
        print(f"publish --records {records}: {time.perf_counter() - started:.1f} s ({out.strip()})")
    rates: dict = {"file": [], **{r: [] for r in topics}}
    for r in range(rounds):  # alternating, each run into a fresh ClickHouse directory
        out = cuts("backtest", "--bars", bars, "--clickhouse", f"chdb://{tmp}/ch-file-{r}", "--quiet")
        print("file backtest        :", out.strip())
        rates["file"].append(_rate(out))
        for records, topic in topics.items():
            out = cuts("backtest", "--kafka", bootstrap, "--topic", topic, "--clickhouse",
                       f"chdb://{tmp}/ch-{records}-{r}", "--quiet")
            print(f"kafka replay ({records:4}) :", out.strip())
            rates[records].append(_rate(out))
    f = statistics.median(rates["file"])
    print(f"medians of {rounds} round(s): file {f:,.0f} bars/s; " + "; ".join(
        f"replay of {'bars records' if r == 'bars' else 'one bar per record'} "
        f"{statistics.median(rates[r]):,.0f} bars/s ({statistics.median(rates[r]) / f:.0%} of the file rate)"
        for r in topics))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--symbols", type=int, default=31)
    ap.add_argument("--days", type=int, default=10)
    ap.add_argument("--minutes", type=int, default=1000)
    ap.add_argument("--pace-ms", type=float, default=20.0, help="wall time between minutes")
    ap.add_argument("--skip-replay", action="store_true")
    ap.add_argument("--rounds", type=int, default=1,
                    help="file and replay backtests, alternating, this many times (medians when > 1)")
    args = ap.parse_args()
    from connectors.config import kafka_bootstrap
    from connectors.kafka.embedded import kafka_bootstrap_or_embedded

    with tempfile.TemporaryDirectory() as tmp, kafka_bootstrap_or_embedded(kafka_bootstrap(None)) as bootstrap:
        if not args.skip_replay:
            replay(bootstrap, tmp, args.symbols, args.days, args.rounds)
        lat = measure_live_latency(bootstrap, args.symbols, args.minutes, args.pace_ms / 1000)
        lat.sort()
        ms = [x * 1000 for x in lat]
        p = lambda q: ms[min(len(ms) - 1, int(q * len(ms)))]  # noqa: E731
        print(f"live latency over {len(ms)} minutes x {args.symbols} symbols: "
              f"p50 {p(0.50):.1f} ms, p99 {p(0.99):.1f} ms, max {ms[-1]:.1f} ms")
    sys.stdout.flush()
    # The tailing flow never ends on its own: leave without joining its thread.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
