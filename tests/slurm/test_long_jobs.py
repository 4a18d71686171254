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
    """``time="1"`` and ``signal_before_timeout=30``: the first job is warned about 30 s before its minute is
    up (Slurm checks limits every ~30 s, so the warning came 19 to 60 s in), checkpoints its counter, and the
    second job counts on to 65."""
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
    assert total == 65 and 0 < resumed_from < 65   # the second job went on from the first one's count
    records = w.result.jobs["counter"]
    assert [r.state for r in records] == ["CHECKPOINTED", "COMPLETED"]
    assert time.monotonic() - started < 180


@pytest.mark.parametrize("how", ["scontrol", "preemption"])
def test_a_requeued_job_resumes_from_the_last_saved_state(executor, prefix, tmp_path, how):
    """Slurm requeues the running job (``scontrol requeue``, or preempted by a job of the ``urgent``
    partition); the requeued job starts from what the task last saved with ``checkpoint(state, stop=False)``,
    in the same weave, as the same job id."""
    if how == "preemption" and not _has_partition("urgent"):
        pytest.skip("the running cluster predates its 'urgent' partition: scripts/local-slurm.sh restart")
    executor()
    flag = tmp_path / "job"

    def requeue_when_saved():
        wait_until(lambda: flag.exists() and flag.read_text().count(",") >= 4, timeout=60)
        job_id = flag.read_text().split(",")[0]
        if how == "scontrol":
            subprocess.run(["scontrol", "requeue", job_id], check=True)
        else:
            node = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%N"], capture_output=True, text=True,
                                  check=True).stdout.strip()
            _preempt(node, prefix, 2)

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
        subprocess.run(["scancel", f"--name={prefix}u"], capture_output=True)

    start, restarts = w.result.steps
    assert restarts == 1 and start >= 4   # resumed, not started over
    assert len(w.result.jobs["steps"]) == 1   # one job, requeued by Slurm


SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "local-slurm.sh")


def _nodes() -> list[str]:
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], capture_output=True, text=True, check=True).stdout
    return sorted(set(out.split()))


def test_a_two_node_task_runs_once_and_reaches_every_node_with_srun(executor, prefix):
    """``nodes=2``: the function runs once, on the batch host, inside the allocation; ``srun`` launches a
    step on both nodes (the documented way to use all of them)."""
    assert len(_nodes()) >= 2, "the local cluster has one node: scripts/local-slurm.sh starts 3 by default"
    executor()
    with weave() as w:
        @w.do(environment="slurm", resources={"nodes": 2, "ntasks": 2})
        def spread():
            step = subprocess.run(["srun", "printenv", "SLURMD_NODENAME"], capture_output=True, text=True,
                                  check=True)
            return os.environ["SLURMD_NODENAME"], sorted(step.stdout.split()), os.environ["SLURM_JOB_NUM_NODES"]

    batch_host, step_hosts, count = w.result.spread
    assert count == "2" and len(set(step_hosts)) == 2 and batch_host in step_hosts
    assert len(w.result.jobs["spread"]) == 1


def test_a_lost_node_moves_the_task_to_another_node_without_using_a_retry(executor, prefix, tmp_path):
    """The slurmd of the node running the task is killed; Slurm gives the node up (NODE_FAIL, the job may
    not be requeued by Slurm here) and wove submits the task again, excluding that node, with retries=0."""
    assert len(_nodes()) >= 2, "the local cluster has one node: scripts/local-slurm.sh starts 3 by default"
    executor(sbatch_args=["--no-requeue"])
    flag = tmp_path / "first"
    killed: dict[str, str] = {}

    def kill_its_node():
        wait_until(lambda: flag.exists() and flag.read_text(), timeout=60)
        killed["node"] = flag.read_text()
        subprocess.run([SCRIPT, "stop-node", killed["node"]], check=True, capture_output=True)

    thread = threading.Thread(target=kill_its_node)
    thread.start()
    try:
        with weave() as w:
            @w.do(environment="slurm", retries=0)
            def where():
                import time as clock

                node = os.environ["SLURMD_NODENAME"]
                if not flag.exists():
                    flag.write_text(node)
                    clock.sleep(120)   # lost with its node
                return node
    finally:
        thread.join()
        if killed.get("node"):
            subprocess.run([SCRIPT, "start-node", killed["node"]], capture_output=True)
            back = wait_until(lambda: subprocess.run(  # (one line per partition the node is in)
                ["sinfo", "-h", "-n", killed["node"], "-o", "%T"], capture_output=True,
                text=True).stdout.split()[:1] in (["idle"], ["mixed"], ["allocated"]), 60)
            assert back, f"node {killed['node']} did not come back after start-node"

    assert w.result.where != killed["node"]
    first, second = w.result.jobs["where"]
    assert first.node == killed["node"] and first.state == "NODE_FAIL"
    assert second.state == "COMPLETED" and second.node == w.result.where


def _has_partition(name: str) -> bool:
    out = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True).stdout
    return name in out.split()


def _preempt(node: str, prefix: str, seconds: int) -> str:
    """Submit a job of the ``urgent`` partition that needs all of ``node``: it preempts what runs there."""
    return subprocess.run(["sbatch", "--parsable", "-p", "urgent", "--exclusive", "-N1", f"--nodelist={node}",
                           "--mem=100M", f"--job-name={prefix}u", "--output=/dev/null", "--wrap", f"sleep {seconds}"],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_a_preempted_task_is_submitted_again_without_using_a_retry(executor, prefix, tmp_path):
    """A job of the higher-priority ``urgent`` partition takes the task's node; the task's job (``--no-requeue``, so
    Slurm cancels it: ``PREEMPTED``) is submitted again by wove with ``retries=0`` and finishes afterwards."""
    if not _has_partition("urgent"):
        pytest.skip("the running cluster predates its 'urgent' partition: scripts/local-slurm.sh restart")
    executor(sbatch_args=["--no-requeue"])
    flag = tmp_path / "first"
    urgent: dict[str, str] = {}

    def preempt():
        if wait_until(lambda: flag.exists() and flag.read_text(), timeout=60):
            urgent["job"] = _preempt(flag.read_text(), prefix, 3)

    thread = threading.Thread(target=preempt)
    thread.start()
    try:
        with weave() as w:
            @w.do(environment="slurm", retries=0)
            def work():
                import time as clock

                if not flag.exists():
                    flag.write_text(os.environ["SLURMD_NODENAME"])
                    clock.sleep(120)   # cut short by the urgent job
                return "done"
    finally:
        thread.join()
        subprocess.run(["scancel", f"--name={prefix}u"], capture_output=True)

    assert w.result.work == "done"
    first, second = w.result.jobs["work"]
    assert first.state == "PREEMPTED", first
    assert second.state == "COMPLETED" and second.job_id != first.job_id
    assert urgent.get("job") and first.node == flag.read_text()


def test_a_time_limit_is_retried_with_time_retry_factor_and_succeeds_on_the_second_size(executor, prefix):
    """95 s of work under ``time="1"``: the first job hits its limit (TIMEOUT), the retry asks for 2 minutes
    (``time_retry_factor=2``) and completes."""
    executor(time="1", time_retry_factor=2, time_max="3")
    with weave() as w:
        @w.do(environment="slurm", retries=1)
        def slow():
            import time as clock

            clock.sleep(95)
            return os.environ["SLURM_JOB_ID"]

    first, second = w.result.jobs["slow"]
    assert first.state == "TIMEOUT" and second.state == "COMPLETED" and w.result.slow == second.job_id
    limits = [subprocess.run(["sacct", "-n", "-X", "-P", "-j", r.job_id, "-o", "TimelimitRaw"], capture_output=True,
                             text=True).stdout.split()[0] for r in (first, second)]
    assert limits == ["1", "2"]


def test_the_final_error_lists_every_attempt(executor, prefix):
    executor()
    with pytest.raises(ValueError, match="always") as caught:
        with weave() as w:
            @w.do(environment="slurm", retries=2)
            def flaky():
                raise ValueError("always")

    attempts = caught.value.wove_attempts
    assert [line.split(":")[0] for line in attempts] == ["attempt 1", "attempt 2", "attempt 3"]
    assert all("ValueError" in line and "always" in line for line in attempts)
    assert "wove: attempts of this call" in "\n".join(getattr(caught.value, "__notes__", []))
    assert len(w.result.jobs["flaky"]) == 3
