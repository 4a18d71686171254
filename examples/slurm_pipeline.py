"""A weave that mixes local work with a fan-out to Slurm, then combines the results locally.

    make demo                      # starts the local Slurm cluster first, then runs this file

The mapped task ``score`` runs as one Slurm job array (one element per chunk); everything else runs here.
"""

import math
import os
import socket
import time

import wove
from wove import weave

wove.config(
    default_environment="default",            # tasks run locally unless they ask for Slurm
    environments={
        "slurm": {
            "executor": "slurm",
            "executor_config": {"job_name_prefix": "demo", "mem": "200M", "time": "5:00"},
        }
    },
)


def main() -> None:
    started = time.perf_counter()
    with weave(n_chunks=20, chunk_size=50_000) as w:

        @w.do
        def chunks(n_chunks, chunk_size):
            """Local: split the work."""
            return [(i * chunk_size, (i + 1) * chunk_size) for i in range(n_chunks)]

        @w.do("chunks", environment="slurm", retries=1)
        def score(chunk):
            """On Slurm, one array element per chunk: count the primes in the range."""
            low, high = chunk
            primes = sum(1 for n in range(max(low, 2), high)
                         if all(n % d for d in range(2, math.isqrt(n) + 1)))
            return {"range": chunk, "primes": primes, "node": socket.gethostname(),
                    "job": os.environ.get("SLURM_ARRAY_JOB_ID", "?") + "_" + os.environ.get("SLURM_ARRAY_TASK_ID", "?")}

        @w.do
        def report(score):
            """Local again: combine."""
            return sum(part["primes"] for part in score)

    elapsed = time.perf_counter() - started
    runs = w.result.jobs["score"]
    arrays = sorted({run.array_job_id or run.job_id for run in runs})
    print(f"primes below {20 * 50_000:,}: {w.result.report:,}")
    print(f"{len(runs)} Slurm tasks in job array(s) {', '.join(arrays)}; elements: "
          + ", ".join(part["job"] for part in w.result.score[:5]) + ", ...")
    waits = [run.queue_wait for run in runs if run.queue_wait is not None]
    if waits:
        print(f"queue wait per task: median {sorted(waits)[len(waits) // 2]:.2f}s")
    print(f"total time: {elapsed:.2f}s")


if __name__ == "__main__":
    main()
