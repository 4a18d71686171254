"""Jobs that die without reporting fail their task within seconds, with the real cause (issue 5)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from slurm_helpers import all_jobs, squeue_jobs, wait_until

import wove
from wove import weave
from wove.errors import (
    SlurmCancelledError,
    SlurmJobFailedError,
    SlurmNodeFailError,
    SlurmOutOfMemoryError,
    SlurmQueueTimeoutError,
    SlurmTimeLimitError,
)

ROOT = Path(__file__).resolve().parents[2]
STATE = os.environ.get("WOVE_SLURM_STATE", "/var/tmp/wove-slurm")
# Every job name of this module starts with MODULE_PREFIX (each test still has a prefix of its own), so its
# last test can find the jobs that all the tests before it submitted.
MODULE_PREFIX = f"f{uuid.uuid4().hex[:6]}"
ENDED = {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL",
         "DEADLINE", "REVOKED"}


@pytest.fixture
def prefix() -> str:
    """This test's job-name prefix (used by slurm_env too): the module's prefix and an id of its own."""
    return f"{MODULE_PREFIX}{uuid.uuid4().hex[:6]}"


@pytest.fixture(params=["http", "filesystem"])
def channel(request, slurm_env):
    slurm_env(result_channel=request.param)
    return request.param


def _run_one(func, **options):
    with weave(error_mode="return") as w:
        w.do(environment="slurm", **options)(func)
    return w, w.result[func.__name__]


def _allocate_too_much():
    block = bytearray(600 * 1024 * 1024)
    for index in range(0, len(block), 4096):
        block[index] = 1
    return len(block)


def _kill_self():
    os.kill(os.getpid(), 9)


def test_results_and_exceptions_on_both_channels(channel, prefix):
    with weave(error_mode="return") as w:
        @w.do([1, 2, 3], environment="slurm")
        def triple(x):
            return 3 * x

        @w.do(environment="slurm")
        def broken():
            raise KeyError("remote key")

    assert w.result.triple == [3, 6, 9]
    assert isinstance(w.result.broken, KeyError)
    assert squeue_jobs(prefix) == []


def test_out_of_memory(channel, slurm_env, prefix):
    slurm_env(mem="100M", result_channel=channel)
    started = time.monotonic()
    w, error = _run_one(_allocate_too_much)
    assert type(error) is SlurmOutOfMemoryError
    assert "--mem=100M" in str(error) and "raise mem" in str(error)
    assert error.state == "OUT_OF_MEMORY"
    assert error.job_id and error.node and error.requested_memory == "100M"
    assert time.monotonic() - started < 30
    record = w.result.jobs["_allocate_too_much"][0]
    assert record.state == "OUT_OF_MEMORY" and record.job_id == error.job_id


def test_killed_by_sigkill(channel, prefix):
    started = time.monotonic()
    _, error = _run_one(_kill_self)
    assert type(error) is SlurmJobFailedError
    assert "signal 9" in str(error) and "SIGKILL" in str(error)
    assert error.stderr_tail is not None
    assert time.monotonic() - started < 30


def test_scancel_from_outside(slurm_env, prefix, tmp_path):
    started_flag = tmp_path / "started"

    def wait_forever():
        Path(started_flag).touch()
        time.sleep(600)

    def cancel_it():
        wait_until(started_flag.exists, timeout=60)
        jobs = squeue_jobs(prefix)
        subprocess.run(["scancel", jobs[0].split()[0]], check=True)

    canceller = threading.Thread(target=cancel_it)
    canceller.start()
    _, error = _run_one(wait_forever)
    canceller.join()
    assert type(error) is SlurmCancelledError
    assert "cancelled" in str(error) and "outside this weave" in str(error)
    assert error.state == "CANCELLED"


def test_bad_environment_command_not_found(slurm_env, prefix):
    slurm_env(command="no-such-python -m wove.backend_worker")
    _, error = _run_one(lambda: 1)
    assert type(error) is SlurmJobFailedError
    assert "bad environment" in str(error)
    assert "no-such-python" in error.stderr_tail


def test_retries_apply_to_job_failures(slurm_env, prefix, tmp_path):
    marker = tmp_path / "first-attempt-done"

    def dies_once():
        if not marker.exists():
            marker.touch()
            os.kill(os.getpid(), 9)
        return "second attempt"

    w, value = _run_one(dies_once, retries=1)
    assert value == "second attempt"
    records = w.result.jobs["dies_once"]
    assert [r.attempt for r in records] == [0, 1]
    assert records[0].job_id != records[1].job_id


def test_pending_with_queue_timeout_names_the_reason(slurm_env, prefix):
    slurm_env(queue_timeout=3, sbatch_args=["--begin=now+3600"])
    started = time.monotonic()
    w, error = _run_one(lambda: 1)
    assert type(error) is SlurmQueueTimeoutError
    assert "BeginTime" in str(error) and "queue_timeout=3" in str(error)
    assert time.monotonic() - started < 30
    assert w.result.jobs["<lambda>"][0].reason == "BeginTime"
    assert squeue_jobs(prefix) == []


def test_pending_for_resources_is_visible_while_waiting(slurm_env, prefix, tmp_path):
    # (a node is listed once per partition it is in: count names, not lines)
    nodes = len(set(subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], capture_output=True, text=True).stdout.split()))
    # Every node, exclusively: nothing else can start until it ends.
    blocker = subprocess.run(["sbatch", "--parsable", f"--job-name={prefix}-blocker", "--mem=50M", "--exclusive",
                              f"--nodes={nodes}", "--output=/dev/null", "--wrap", "sleep 120"],
                             capture_output=True, text=True, check=True).stdout.strip()
    try:
        wait_until(lambda: any("RUNNING" in line for line in squeue_jobs(prefix)), timeout=30)
        slurm_env(queue_timeout=4, mem="50M")
        _, error = _run_one(lambda: 1)
    finally:
        subprocess.run(["scancel", blocker], check=False)
    assert type(error) is SlurmQueueTimeoutError
    assert "Resources" in str(error) or "Priority" in str(error)


def test_requeued_job_still_succeeds_once(slurm_env, prefix, tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()

    def slow_counted():
        (runs / f"{os.environ.get('SLURM_RESTART_COUNT', '0')}-{os.getpid()}").touch()
        time.sleep(8)
        return os.environ.get("SLURM_RESTART_COUNT", "0")

    def requeue_it():
        wait_until(lambda: list(runs.iterdir()), timeout=60)
        job = squeue_jobs(prefix)[0].split()[0]
        subprocess.run(["scontrol", "requeue", job], check=True)

    thread = threading.Thread(target=requeue_it)
    thread.start()
    w, value = _run_one(slow_counted, timeout=120)
    thread.join()
    assert value == "1", value  # the second run (restart count 1) delivered the result
    assert len(list(runs.iterdir())) == 2
    assert len(w.result.jobs["slow_counted"]) == 1  # one task attempt, kept alive across the requeue


def test_node_down_without_requeue_is_a_node_failure(slurm_env, prefix, tmp_path):
    started_flag = tmp_path / "started"
    # max_requeues=0: no resubmission on another node (tests/slurm/test_long_jobs.py covers that), the error
    slurm_env(sbatch_args=["--no-requeue"], max_requeues=0)
    seen = {}

    def wait_long():
        Path(started_flag).write_text(os.environ["SLURMD_NODENAME"])   # the node it runs on
        time.sleep(300)

    def down_node():
        wait_until(lambda: started_flag.exists() and started_flag.read_text(), timeout=60)
        seen["node"] = started_flag.read_text()
        subprocess.run(["scontrol", "update", f"nodename={seen['node']}", "state=down", "reason=wove-test"],
                       check=True)

    thread = threading.Thread(target=down_node)
    thread.start()
    try:
        _, error = _run_one(wait_long)
    finally:
        thread.join()
        node = seen.get("node", "")
        subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], capture_output=True)
        wait_until(lambda: "idle" in subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True,
                                                    text=True).stdout or "mix" in subprocess.run(
            ["sinfo", "-h", "-o", "%T"], capture_output=True, text=True).stdout, timeout=30)
    assert type(error) is SlurmNodeFailError
    assert node in str(error) and "failed or was set down" in str(error)


def test_controller_outage_is_not_a_task_failure(slurm_env, prefix):
    def restart_controller():
        time.sleep(2)
        pid = Path(STATE, "run", "slurmctld.pid").read_text().strip()
        os.kill(int(pid), 15)
        time.sleep(5)
        subprocess.run([str(ROOT / "scripts" / "local-slurm.sh"), "start"], check=True, capture_output=True)

    thread = threading.Thread(target=restart_controller)
    thread.start()
    with weave() as w:
        @w.do(range(4), environment="slurm")
        def outlasts(x):
            time.sleep(12)
            return x

    thread.join()
    assert w.result.outlasts == [0, 1, 2, 3]


def test_doctor_passes_on_a_healthy_cluster(tmp_path):
    result = subprocess.run([sys.executable, "-m", "wove.slurm", "doctor", "--timeout", "60"], capture_output=True,
                            text=True, cwd=tmp_path, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[PASS] probe task round trip" in result.stdout
    assert "[PASS] submit limits: none that wove can read" in result.stdout
    assert "a task can make the round trip" in result.stdout


def test_doctor_reports_a_broken_command_with_its_fix(tmp_path):
    result = subprocess.run([sys.executable, "-m", "wove.slurm", "doctor", "--command",
                             "no-such-python -m wove.backend_worker", "--timeout", "60"], capture_output=True,
                            text=True, cwd=tmp_path, timeout=180)
    assert result.returncode == 1
    assert "[FAIL] probe task round trip" in result.stdout
    assert "fix: make `python -m wove.backend_worker` work on compute nodes" in result.stdout


@pytest.mark.slow
def test_time_limit(slurm_env, prefix):
    slurm_env(time=1)
    started = time.monotonic()
    _, error = _run_one(lambda: time.sleep(600))
    assert type(error) is SlurmTimeLimitError, repr(error)
    assert "time limit" in str(error) and "raise time" in str(error)
    assert time.monotonic() - started < 150


def _checkpointing_task():
    import wove.slurm

    started = time.monotonic()
    while not wove.slurm.time_limit_near():
        time.sleep(0.2)
    return f"warned after {time.monotonic() - started:.0f}s, checkpointed"


@pytest.mark.slow
def test_early_warning_signal_lets_the_task_checkpoint(slurm_env, prefix):
    slurm_env(time=2, signal_before_timeout=100)
    _, value = _run_one(_checkpointing_task)
    assert isinstance(value, str) and value.endswith("checkpointed"), repr(value)


def test_introspection_and_debug_report(slurm_env, prefix, capsys):
    with weave(debug=True) as w:
        @w.do([1, 2], environment="slurm")
        def looked_at(x):
            time.sleep(0.2)
            return x

    records = w.result.jobs["looked_at"]
    assert len(records) == 2
    for record in records:
        assert record.job_id and record.array_job_id and record.array_index in (0, 1)
        assert record.state == "COMPLETED" and record.node
        assert record.queue_wait is not None and record.queue_wait >= 0
        # run_time is measured on the driver, between the receipt of the job's "running" and "result"
        # events, so delivery jitter can shave a few ms off the task's 0.2 s sleep
        assert record.run_time is not None and record.run_time >= 0.1
    out = capsys.readouterr().out
    assert "--- wove remote runs ---" in out and records[0].job_id in out


def test_nothing_left_queued_after_failures():
    """Last in this module: none of the jobs the tests above submitted is still pending or running."""
    earlier = all_jobs(MODULE_PREFIX)   # every state: MinJobAge keeps ended jobs in squeue for an hour
    if not earlier:
        pytest.skip("no earlier test of this module submitted a job: run the whole module")

    def left() -> list[dict[str, str]]:
        return [row for row in all_jobs(MODULE_PREFIX) if row["state"] not in ENDED]

    # A job cancelled a moment ago may still be COMPLETING; one that wove forgot stays pending or running.
    wait_until(lambda: not left(), timeout=10)
    assert left() == [], f"jobs left behind by this module's tests (of {len(earlier)} they submitted)"


_ = wove  # the module is configured through the slurm_env fixture
