"""Run several `cuts` commands in one process (one interpreter start-up):

    python tests/cuts_batch.py JOBS.json

JOBS.json: a list of {"argv": [...], "perf": {"dsn": ..., "run_id": ..., "path": ...}?};
each command must exit 0; with "perf", the run's analytics.performance() is
written to that path as JSON. Used by the sweep tests to run a backtest per
configuration next to the sweep.
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> int:
    from connectors.clickhouse import analytics
    from connectors.clickhouse.client import close_clients, open_client
    from dataflows.cli.main import main as cuts

    with open(sys.argv[1], encoding="utf-8") as fh:
        jobs = json.load(fh)
    for job in jobs:
        code = cuts(job["argv"])
        if code != 0:
            print(f"cuts {' '.join(job['argv'])} exited {code}", file=sys.stderr)
            return code
        perf = job.get("perf")
        if perf:
            try:
                result = analytics.performance(open_client(perf["dsn"]), perf["run_id"])
            finally:
                close_clients()
            with open(perf["path"], "w", encoding="utf-8") as fh:
                json.dump(result, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
