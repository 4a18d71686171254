"""Large packed sweeps on the local Slurm cluster: wove's driver cost per item, against the raw array floor.

    make slurm && PATH=$PWD/.venv/bin:$PATH python benchmarks/scale.py [--cases 20000:500,100000:500,1000000:5000]

For each case ``N:K`` (N items, ``items_per_job=K``, so N/K array elements), in the same run and on the same
cluster, it measures:

- wove: a weave mapping ``bench_tasks.double`` (``item * 2``) over ``range(N)`` on Slurm, in a child process
  of its own, which reports its wall time, its CPU time (user + system, all its threads; not its children,
  the ``sbatch``/``squeue`` calls) per item, and its peak resident memory (``VmHWM``);
- floor: one ``sbatch --array`` of the same N/K elements, each running a plain Python loop over its K items
  (``item * 2``, no wove), waited on until done.

The ratio is wove / floor (lower is better). ``results MB`` is the size of the returned list itself
(``sys.getsizeof`` of the list and its ints), which the memory target excludes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from slurm_throughput import _max_array_size, _settle, _wait_done

PYTHON = sys.executable

CHILD = r"""
import json, os, resource, sys, time
sys.path.insert(0, {bench!r})
from bench_tasks import double
import wove
from wove import weave

n, per_job, prefix = {n}, {per_job}, {prefix!r}
wove.config(environments={{"slurm": {{"executor": "slurm", "executor_config": {{
    "job_name_prefix": prefix, "mem": "100M", "items_per_job": per_job}}}}}})
start, cpu0 = time.perf_counter(), time.process_time()
with weave() as w:
    w.do(range(n), environment="slurm")(double)
wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
values = w.result.double
assert len(values) == n and values[-1] == 2 * (n - 1) and values[:3] == [0, 2, 4], values[:3]
hwm = 0
with open("/proc/self/status") as status:
    for line in status:
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) * 1024
size = sys.getsizeof(values) + sum(sys.getsizeof(v) for v in values)
print(json.dumps({{"wall": wall, "cpu": cpu, "hwm": hwm, "results": size,
                   "jobs": len({{r.job_id for r in w.result.jobs["double"]}})}}))
"""


def run_wove(n: int, per_job: int) -> dict:
    prefix = f"scale{uuid.uuid4().hex[:6]}"
    code = CHILD.format(bench=str(HERE), n=n, per_job=per_job, prefix=prefix)
    out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"wove run failed ({out.returncode}):\n{out.stderr[-3000:]}")
    _wait_done(prefix)
    return json.loads(out.stdout.strip().splitlines()[-1])


def floor_array(n: int, per_job: int) -> float:
    """The same elements as plain Python loops over their items: ``sbatch --array`` split at MaxArraySize."""
    prefix = f"floorS{uuid.uuid4().hex[:6]}"
    elements = -(-n // per_job)
    size = _max_array_size()
    loop = (f"import os; k={per_job}; first=int(os.environ['SLURM_ARRAY_TASK_ID'])*k+{{offset}}; "
            f"out=[i*2 for i in range(first, min(first+k, {n}))]")
    start = time.perf_counter()
    for first in range(0, elements, size):
        count = min(size, elements - first)
        command = f"{PYTHON} -c \"{loop.format(offset=first * per_job)}\""
        subprocess.run(["sbatch", "--parsable", f"--job-name={prefix}", f"--array=0-{count - 1}", "--mem=100M",
                        "--output=/dev/null", "--wrap", command], check=True, capture_output=True)
    _wait_done(prefix)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="20000:500,100000:500,1000000:5000",
                        help="comma-separated N:items_per_job")
    parser.add_argument("--no-floor", action="store_true", help="skip the raw array floor")
    args = parser.parse_args()
    cases = [tuple(int(part) for part in case.split(":")) for case in args.cases.split(",")]
    if subprocess.run(["sinfo", "-h"], capture_output=True).returncode != 0:
        print("no Slurm cluster: run scripts/local-slurm.sh start", file=sys.stderr)
        return 2
    # (one line per partition: the first)
    cpus = (subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True).stdout.split() or ["?"])[0]
    print(f"local Slurm, {cpus} CPUs advertised on {os.cpu_count()} real cores; python {sys.version.split()[0]}")
    print(f"{'items':>9} {'per job':>8} {'jobs':>6} {'wall s':>8} {'floor s':>8} {'wall/floor':>10} "
          f"{'CPU us/item':>12} {'peak RSS MB':>12} {'results MB':>11}")
    for n, per_job in cases:
        _settle()
        wove_run = run_wove(n, per_job)
        _settle()
        floor = float("nan") if args.no_floor else floor_array(n, per_job)
        print(f"{n:>9} {per_job:>8} {wove_run['jobs']:>6} {wove_run['wall']:>8.2f} {floor:>8.2f} "
              f"{wove_run['wall'] / floor:>9.2f}x {wove_run['cpu'] / n * 1e6:>12.1f} "
              f"{wove_run['hwm'] / 1e6:>12.1f} {wove_run['results'] / 1e6:>11.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
