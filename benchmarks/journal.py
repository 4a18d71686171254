"""What a journal costs: a packed Slurm map with and without ``journal=``, and rerunning a finished sweep.

    make slurm && PATH=$PWD/.venv/bin:$PATH python benchmarks/journal.py [--items 5000] [--per-job 50] [--rounds 2]

In one run, on the local cluster, alternating so that drift on the shared machine hits both alike:

- without a journal: ``@w.do(range(N), environment="slurm")`` of a trivial importable function, packed
  ``items_per_job`` per array element;
- with a fresh journal: the same weave, every call keyed and recorded (each round a new journal directory);
- rerun: the same weave again on the journal of the last round, where every call is done (nothing submitted).

It prints the wall times, the journal's overhead in percent of the plain run, the rerun's wall time, and the
journal's size on disk per item.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_tasks import trivial

import wove
from wove import weave


def sweep(items: int, journal: str | None) -> tuple[float, list[int]]:
    started = time.perf_counter()
    with weave(journal=journal) as w:
        w.do(range(items), environment="slurm")(trivial)
    return time.perf_counter() - started, w.result.trivial


def disk_bytes(path: str) -> int:
    total = 0
    for folder, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(folder, name)) for name in files)
    return total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--per-job", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    scratch = tempfile.mkdtemp(prefix="wove-journal-bench-")
    os.chmod(scratch, 0o700)
    wove.config(environments={"slurm": {"executor": "slurm", "executor_config": {
        "spool_dir": os.path.join(scratch, "spool"), "mem": "100M", "items_per_job": args.per_job,
        "job_name_prefix": "wbench"}}})
    expected = list(range(args.items))
    plain, journaled = [], []
    journal = ""
    try:
        sweep(min(args.items, 200), None)   # warm up: first start of the receiver, imports on the node
        for round_ in range(args.rounds):
            seconds, values = sweep(args.items, None)
            assert values == expected
            plain.append(seconds)
            journal = os.path.join(scratch, f"journal-{round_}")
            seconds, values = sweep(args.items, journal)
            assert values == expected
            journaled.append(seconds)
        rerun, values = sweep(args.items, journal)
        assert values == expected
        size = disk_bytes(journal)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    p, j = statistics.median(plain), statistics.median(journaled)
    print(f"{args.items} items, items_per_job={args.per_job}, {args.rounds} round(s), median wall time:")
    print(f"  without journal   {p:7.2f} s   (runs: {', '.join(f'{s:.2f}' for s in plain)})")
    print(f"  with journal      {j:7.2f} s   (runs: {', '.join(f'{s:.2f}' for s in journaled)})")
    print(f"  journal overhead  {100 * (j - p) / p:+6.1f} %")
    print(f"  rerun, all done   {rerun:7.2f} s   (nothing submitted)")
    print(f"  journal on disk   {size / 1e6:7.2f} MB, {size / args.items:.0f} bytes per item")


if __name__ == "__main__":
    main()
