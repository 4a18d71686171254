"""Large data through Slurm jobs: a 200 MB array in and out, and a 1,000-item map over a shared 100 MB input.

    make slurm && PATH=$PWD/.venv/bin:$PATH python benchmarks/large_data.py [--mb 200] [--items 1000] [--rounds 3]

In one run, on the local cluster (each measurement repeated ``--rounds`` times, alternating, median shown):

(a) one Slurm task taking a ``--mb`` MB numpy array and returning one as large, end to end, against its
    floor measured in the same run: a trivial Slurm task's round trip through wove (the same task given a
    1-byte array, so the job's start and its import of numpy are in the floor too), plus, both ways, what
    moving the data costs by hand (pickle protocol 5 ``dumps`` + write to a file in the spool + read +
    ``loads``, in-band, as a hand-written job would);
(b) the driver's peak RSS while doing (a), in a fresh process (``VmHWM``), against the data moved (in + out)
    plus 150 MB;
(c) a ``--items``-item map whose every item takes the same 100 MB array (an init value), against the same map
    with a 1 KB array instead.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

import wove
from wove import weave

MB = 1024 * 1024


def flip(array):
    return np.flip(array).copy()


def configure(mem: str = "2G", **extra) -> str:
    prefix = f"bld{uuid.uuid4().hex[:6]}"
    wove._config.reset()
    wove.config(environments={"slurm": {"executor": "slurm", "executor_config": {
        "job_name_prefix": prefix, "mem": mem, **extra}}})
    return prefix


def high_water_mark() -> int:
    """This process's peak RSS in bytes (``VmHWM``: of this program only; ``ru_maxrss`` would include the
    parent's RSS at the fork that started us, which Linux carries across ``execve``)."""
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) * 1024 for line in handle if line.startswith("VmHWM:"))


def one_task(mb: int) -> dict:
    """(a) and (b): one task with ``mb`` MB in and out; wall seconds and this process's peak RSS."""
    configure()
    array = np.random.default_rng(1).integers(0, 256, size=mb * MB, dtype=np.uint8)
    base_rss = high_water_mark()
    started = time.perf_counter()
    with weave(array=array) as w:
        @w.do(environment="slurm")
        def remote(array):
            return flip(array)

    elapsed = time.perf_counter() - started
    peak = high_water_mark()   # before the check's own temporaries
    assert np.array_equal(w.result.remote, array[::-1])
    return {"seconds": elapsed, "peak_rss": peak, "rss_before": base_rss}


def trivial_round_trip() -> float:
    """The same task with a 1-byte array: job start, numpy's import in the job, the round trip."""
    configure(mem="2G")
    tiny = np.zeros(1, dtype=np.uint8)
    started = time.perf_counter()
    with weave(array=tiny) as w:
        @w.do(environment="slurm")
        def remote(array):
            return flip(array)
    assert np.array_equal(w.result.remote, tiny)
    return time.perf_counter() - started


def by_hand(mb: int, directory: str) -> float:
    """Moving ``mb`` MB one way as a hand-written job would: dumps, write, read, loads."""
    array = np.random.default_rng(2).integers(0, 256, size=mb * MB, dtype=np.uint8)
    path = os.path.join(directory, f"by-hand-{uuid.uuid4().hex}.pkl")
    started = time.perf_counter()
    data = pickle.dumps(array, protocol=5)
    with open(path, "wb") as handle:
        handle.write(data)
    del data
    with open(path, "rb") as handle:
        loaded = pickle.loads(handle.read())
    elapsed = time.perf_counter() - started
    os.unlink(path)
    assert loaded.nbytes == array.nbytes
    return elapsed


def shared_map(items: int, input_bytes: int) -> float:
    configure(mem="500M")
    shared = np.ones(input_bytes, dtype=np.uint8)
    started = time.perf_counter()
    with weave(shared=shared) as w:
        @w.do(range(items), environment="slurm")
        def pick(item, shared):
            return int(shared[item % len(shared)])
    assert w.result.pick == [1] * items
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--map-rounds", type=int, default=1, help="rounds of (c), the slow part")
    parser.add_argument("--one-task", type=int, help=argparse.SUPPRESS)   # the child process of (a)/(b)
    args = parser.parse_args()
    if args.one_task:
        print(json.dumps(one_task(args.one_task)))
        return 0
    if subprocess.run(["sinfo", "-h"], capture_output=True).returncode != 0:
        print("no Slurm cluster: run scripts/local-slurm.sh start", file=sys.stderr)
        return 2
    spool_root = os.environ.get("WOVE_SPOOL_DIR") or os.path.expanduser("~/.cache/wove/spool")
    os.makedirs(spool_root, mode=0o700, exist_ok=True)
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, {os.cpu_count()} cores; spool {spool_root}")
    trivial_round_trip()   # warm up: imports, page cache
    tasks, trivials, hands, shared, small = [], [], [], [], []
    for _ in range(args.rounds):
        child = subprocess.run([sys.executable, __file__, "--one-task", str(args.mb)], capture_output=True,
                               text=True, check=True)
        tasks.append(json.loads(child.stdout.strip().splitlines()[-1]))
        trivials.append(trivial_round_trip())
        with tempfile.TemporaryDirectory(dir=spool_root) as directory:
            hands.append(by_hand(args.mb, directory) + by_hand(args.mb, directory))
    for _ in range(args.map_rounds):
        shared.append(shared_map(args.items, 100 * MB))
        small.append(shared_map(args.items, 1024))

    task = statistics.median(t["seconds"] for t in tasks)
    floor = statistics.median(trivials) + statistics.median(hands)
    peak = max(t["peak_rss"] for t in tasks)
    moved = 2 * args.mb * MB
    print(f"(a) {args.mb} MB in and out of one Slurm task: {task:.2f} s; floor {floor:.2f} s "
          f"(trivial task {statistics.median(trivials):.2f} s + by hand both ways {statistics.median(hands):.2f} s)"
          f" -> {task / floor:.2f}x (target 1.5x); rounds {[round(t['seconds'], 2) for t in tasks]}")
    print(f"(b) driver peak RSS {peak / MB:.0f} MB (before the weave {tasks[0]['rss_before'] / MB:.0f} MB) for "
          f"{moved / MB:.0f} MB moved: target under {moved / MB + 150:.0f} MB; rounds "
          f"{[round(t['peak_rss'] / MB) for t in tasks]}")
    print(f"(c) {args.items} items sharing a 100 MB input: {statistics.median(shared):.2f} s; with a 1 KB input "
          f"{statistics.median(small):.2f} s -> {statistics.median(shared) / statistics.median(small):.2f}x "
          f"(target 1.3x); rounds {[round(s, 2) for s in shared]} / {[round(s, 2) for s in small]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
