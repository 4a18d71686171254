"""How fast a silently dying Slurm job fails its task, and how many Slurm queries the monitor makes.

    make slurm && PATH=$PWD/.venv/bin:$PATH python benchmarks/slurm_failure_detection.py [--runs 5]

1. Detection latency: a task writes the time just before it dies (``os.kill(getpid(), 9)``, or allocating
   far beyond ``--mem``); the benchmark takes the moment the weave's task fails and prints the median of
   ``--runs`` (target: <= 3 s).
2. Query load: 1,000 long items in flight for ``--window`` seconds; prints the ``squeue``/``sacct`` calls the
   job monitor made per minute and per polling interval (target: at most one of each per interval,
   whatever the number of jobs).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import wove
from wove import weave
from wove.errors import SlurmJobError
from wove.slurm.executor import SlurmExecutor


def sigkill(stamp):
    with open(stamp, "w") as handle:
        handle.write(repr(time.time()))
    os.kill(os.getpid(), 9)


def oom(stamp):
    with open(stamp, "w") as handle:
        handle.write(repr(time.time()))
    block = bytearray(800 * 1024 * 1024)
    for index in range(0, len(block), 4096):
        block[index] = 1


def detection_latency(kind, runs: int) -> list[float]:
    latencies = []
    for _ in range(runs):
        wove._config.reset()
        wove.config(environments={"slurm": {"executor": "slurm", "executor_config": {
            "job_name_prefix": f"det{uuid.uuid4().hex[:6]}", "mem": "100M"}}})
        with tempfile.TemporaryDirectory() as tmp:
            stamp = os.path.join(tmp, "died-at")
            failed_at = None
            with weave(error_mode="return", stamp=stamp) as w:
                @w.do(environment="slurm")
                def victim(stamp):
                    return kind(stamp)

                @w.do(environment="default")
                async def watcher():
                    return None

            error = w.result.victim
            failed_at = time.time()
            if not isinstance(error, SlurmJobError):
                raise SystemExit(f"expected a SlurmJobError, got {error!r}")
            died_at = float(Path(stamp).read_text())
            # The weave returns right after the task fails (plus cleanup, which we do not count):
            # use the record's finish time, stamped when the failure reached the weave.
            record = w.result.jobs["victim"][0]
            latencies.append((record.finished_at or failed_at) - died_at)
    return latencies


def query_load(items: int, window: float, poll_interval: float) -> tuple[dict[str, int], float]:
    wove._config.reset()
    instance = SlurmExecutor()
    wove.config(environments={"slurm": {"executor": instance, "executor_config": {
        "job_name_prefix": f"load{uuid.uuid4().hex[:6]}", "mem": "50M", "poll_interval": poll_interval}}})
    with weave(error_mode="return") as w:
        @w.do(range(items), environment="slurm", timeout=window)
        def long_item(x):
            time.sleep(3600)
    records = w.result.jobs["long_item"]
    # The monitored window: first submission until the timeout stopped the jobs (teardown not counted).
    elapsed = max(r.finished_at for r in records) - min(r.submitted_at for r in records)
    return dict(instance.adapter.monitor.calls), elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--poll-interval", type=float, default=1.0)
    args = parser.parse_args()
    print("failure detection (seconds from the job's death to the task's error in the weave)")
    for label, kind in (("SIGKILL", sigkill), ("out of memory", oom)):
        values = detection_latency(kind, args.runs)
        print(f"  {label:<14} median {statistics.median(values):.2f}s  "
              f"min {min(values):.2f}s  max {max(values):.2f}s  (target median <= 3s)", flush=True)
    calls, elapsed = query_load(args.items, args.window, args.poll_interval)
    minutes = elapsed / 60
    intervals = elapsed / args.poll_interval
    print(f"query load with {args.items} jobs in flight for {elapsed:.0f}s (poll floor {args.poll_interval}s)")
    for name in ("squeue", "sacct"):
        print(f"  {name:<7} {calls.get(name, 0):>4} calls = {calls.get(name, 0) / minutes:.1f}/min, "
              f"{calls.get(name, 0) / intervals:.2f} per polling interval (target <= 1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
