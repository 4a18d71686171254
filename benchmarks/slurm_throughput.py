"""End-to-end throughput of trivial mapped tasks on the local Slurm cluster: wove vs raw sbatch floors.

    make slurm && PATH=$PWD/.venv/bin:$PATH python benchmarks/slurm_throughput.py [--sizes 1,50,200,1000,5000]

For each N, in the same run and on the same cluster (scripts/local-slurm.sh advertises 64 CPUs on this
2-core machine, so Slurm runs up to 64 jobs at once), it measures wall time until every job is done for:

- wove: a weave mapping a trivial function over N items on Slurm (job arrays, one item per element), with
  the function importable by the job (``bench_tasks.trivial``, pickled by reference) and defined in
  ``__main__`` (pickled by value; the job loads it without importing cloudpickle, see wove.dispatch.unpickle);
- wove packed: the same with ``items_per_job=50`` (one Python process runs 50 items), for N >= 1000;
- floor, array: one ``sbatch --array`` (split at MaxArraySize) of ``python -c pass``, waited on until done;
- floor, plain: N separate ``sbatch --wrap 'python -c pass'`` calls, waited on until done (N <= 1000).

Ratios are wove / floor (lower is better). The floors start one bare Python per job, so they include the
per-job Python start that any Python task pays; wove additionally imports its worker, unpickles the task,
and posts signed events back.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_tasks import trivial as trivial_by_reference

import wove
from wove import weave

PYTHON = sys.executable


def trivial(x):
    return x


def _active(prefix: str) -> int:
    out = subprocess.run(["squeue", "-h", "--array", "-o", "%j"], capture_output=True, text=True, check=True).stdout
    return sum(1 for line in out.splitlines() if line.startswith(prefix))


def _wait_done(prefix: str) -> None:
    while _active(prefix):
        time.sleep(0.1)


def _settle(timeout: float = 120.0) -> None:
    """Start each measurement from a quiet cluster: no job left and the accounting backlog flushed.

    After a thousand jobs, slurmctld keeps writing their records to slurmdbd (MariaDB) for a while; on a
    2-core machine that would slow whichever measurement comes next.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split()
        diag = subprocess.run(["sdiag"], capture_output=True, text=True).stdout
        match = re.search(r"DBD Agent queue size:\s*(\d+)", diag)
        if not jobs and (match is None or match.group(1) == "0"):
            time.sleep(1.0)   # and let the daemons' last writes finish
            return
        time.sleep(0.5)


def _max_array_size() -> int:
    out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"^MaxArraySize\s*=\s*(\d+)", out, re.MULTILINE)
    return int(match.group(1)) if match else 1001


def floor_array(n: int) -> float:
    prefix = f"floorA{uuid.uuid4().hex[:6]}"
    start = time.perf_counter()
    size = _max_array_size()
    for first in range(0, n, size):
        count = min(size, n - first)
        subprocess.run(["sbatch", "--parsable", f"--job-name={prefix}", f"--array=0-{count - 1}", "--mem=100M",
                        "--output=/dev/null", "--wrap", f"{PYTHON} -c pass"], check=True, capture_output=True)
    _wait_done(prefix)
    return time.perf_counter() - start


def floor_plain(n: int) -> float:
    prefix = f"floorP{uuid.uuid4().hex[:6]}"
    start = time.perf_counter()
    for _ in range(n):
        subprocess.run(["sbatch", "--parsable", f"--job-name={prefix}", "--mem=100M", "--output=/dev/null",
                        "--wrap", f"{PYTHON} -c pass"], check=True, capture_output=True)
    _wait_done(prefix)
    return time.perf_counter() - start


def run_wove(n: int, items_per_job: int = 1, func=trivial_by_reference) -> tuple[float, float, int]:
    """Returns (wall seconds, submit-phase seconds, number of sbatch calls)."""
    prefix = f"wove{uuid.uuid4().hex[:6]}"
    wove._config.reset()
    wove.config(environments={"slurm": {"executor": "slurm", "executor_config": {
        "job_name_prefix": prefix, "mem": "100M", "items_per_job": items_per_job}}})
    start = time.perf_counter()
    with weave() as w:
        w.do(range(n), environment="slurm")(func)
    elapsed = time.perf_counter() - start
    assert w.result.trivial == list(range(n))
    records = w.result.jobs["trivial"]
    submitted = [r.details.get("submit_done") for r in records if r.details.get("submit_done")]
    submit_phase = (max(submitted) - start) if submitted else float("nan")
    calls = len({r.array_job_id or r.job_id for r in records})
    _wait_done(prefix)
    return elapsed, submit_phase, calls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,50,200,1000,5000")
    parser.add_argument("--plain-max", type=int, default=1000, help="largest N for the one-sbatch-per-job floor")
    parser.add_argument("--value-max", type=int, default=5000, help="largest N for the by-value function")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if subprocess.run(["sinfo", "-h"], capture_output=True).returncode != 0:
        print("no Slurm cluster: run scripts/local-slurm.sh start", file=sys.stderr)
        return 2
    # (one line per partition: the first)
    cpus = (subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True).stdout.split() or ["?"])[0]
    print(f"local Slurm, {cpus} CPUs advertised on {os.cpu_count()} real cores; python {sys.version.split()[0]}")
    asyncio.run(asyncio.sleep(0))
    run_wove(1)  # warm caches (imports, page cache of the venv)
    header = (f"{'N':>6} {'wove ref s':>10} {'wove value s':>12} {'submit s':>9} {'floor array s':>14} "
              f"{'floor plain s':>14} {'ref/array':>10} {'value/array':>12} {'ref/plain':>10} "
              f"{'packed50 s':>11} {'packed/array':>13} {'packed/plain':>13}")
    print(header)
    nan = float("nan")
    for n in sizes:
        _settle()
        ref_s, submit_s, _ = run_wove(n)
        _settle()
        value_s = run_wove(n, func=trivial)[0] if n <= args.value_max else nan
        _settle()
        array_s = floor_array(n)
        _settle()
        plain_s = floor_plain(n) if n <= args.plain_max else nan
        _settle()
        packed_s = run_wove(n, items_per_job=50)[0] if n >= 1000 else nan
        print(f"{n:>6} {ref_s:>10.2f} {value_s:>12.2f} {submit_s:>9.3f} {array_s:>14.2f} {plain_s:>14.2f} "
              f"{ref_s / array_s:>9.2f}x {value_s / array_s:>11.2f}x {ref_s / plain_s:>9.2f}x "
              f"{packed_s:>11.2f} {packed_s / array_s:>12.2f}x {packed_s / plain_s:>12.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
