"""Long jobs (issue 16): checkpoint and requeue, on the real local cluster.

``wove.slurm.checkpoint(state)`` ends a job's attempt and wove submits the same call again, whose
``restored_state()`` is that state; ``checkpoint(state, stop=False)`` saves it for a job Slurm requeues.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time

import pytest
from slurm_helpers import squeue_jobs, wait_until

from wove import weave
from wove.errors import RequeueLimitError


def test_a_task_that_checkpoints_goes_on_in_a_new_job_from_its_state(executor, prefix):
    executor()
    with weave() as w:
        @w.do(environment="slurm", retries=0)
        def count():
            from wove.slurm import checkpoint, restored_state

            state = restored_state()
            if state is None or state < 3:
                checkpoint((state or 0) + 1)   # ends this job: the next one starts from the state
            return state, os.environ["SLURM_JOB_ID"]

    state, last_job = w.result.count
    assert state == 3
    records = w.result.jobs["count"]
    assert [r.state for r in records] == ["CHECKPOINTED"] * 3 + ["COMPLETED"]
    assert len({r.job_id for r in records}) == 4 and records[-1].job_id == last_job
    assert squeue_jobs(prefix) == []


def test_more_checkpoints_than_max_requeues_fail_with_the_limit(executor, prefix):
    executor()
    with pytest.raises(RequeueLimitError, match=r"checkpointed 2 times, more than max_requeues=1"):
        with weave() as w:
            @w.do(environment="slurm", resources={"max_requeues": 1})
            def forever():
                from wove.slurm import checkpoint, restored_state

                checkpoint((restored_state() or 0) + 1)

    assert len(w.result.jobs["forever"]) == 2


def test_a_large_state_travels_through_the_spool(executor, prefix):
    executor(mem="500M")
    with weave() as w:
        @w.do(environment="slurm")
        def big():
            from wove.slurm import checkpoint, restored_state

            state = restored_state()
            if state is None:
                checkpoint(bytes(range(256)) * 80_000)   # 20 MB: more than any event carries inline
            return len(state), state[:3]

    assert w.result.big == (20_480_000, bytes([0, 1, 2]))


def test_a_time_limit_warning_checkpoints_and_the_second_job_finishes(executor, prefix):
    """``time="1"`` and ``signal_before_timeout=30``: the first job is warned 30 s before its minute is up
    (Slurm checks every ~30 s), checkpoints its counter, and the second job counts on to 65."""
    executor(signal_before_timeout=30, time="1")
    started = time.monotonic()
    with weave() as w:
        @w.do(environment="slurm")
        def counter():
            import time as clock

            from wove.slurm import checkpoint, restored_state, time_limit_near

            first = restored_state()
            count = first or 0
            while count < 65:
                if first is None and time_limit_near():
                    checkpoint(count)
                clock.sleep(1)
                count += 1
            return first, count

    resumed_from, total = w.result.counter
    assert total == 65 and 25 <= resumed_from < 65   # the second job went on from the first one's count
    records = w.result.jobs["counter"]
    assert [r.state for r in records] == ["CHECKPOINTED", "COMPLETED"]
    assert time.monotonic() - started < 180


def test_scontrol_requeue_resumes_from_the_last_saved_state(executor, prefix, tmp_path):
    """Slurm requeues the running job (as for a preemption); the requeued job starts from what the task last
    saved with ``checkpoint(state, stop=False)``, in the same weave, as the same job id."""
    executor()
    flag = tmp_path / "job"

    def requeue_when_saved():
        wait_until(lambda: flag.exists() and flag.read_text().count(",") >= 4, timeout=60)
        job_id = flag.read_text().split(",")[0]
        subprocess.run(["scontrol", "requeue", job_id], check=True)

    thread = threading.Thread(target=requeue_when_saved)
    thread.start()
    try:
        with weave() as w:
            @w.do(environment="slurm")
            def steps():
                import time as clock

                from wove.slurm import checkpoint, restored_state

                start = restored_state() or 0
                for i in range(start, 12):
                    checkpoint(i + 1, stop=False)   # saved for a requeue; the task goes on
                    with open(flag, "a") as out:
                        out.write(f"{os.environ['SLURM_JOB_ID']}," if i == 0 else ",")
                    clock.sleep(1)
                return start, int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    finally:
        thread.join()

    start, restarts = w.result.steps
    assert restarts == 1 and start >= 4   # resumed, not started over
    assert len(w.result.jobs["steps"]) == 1   # one job, requeued by Slurm
