"""Mapped tasks as job arrays, per-task resources, OOM escalation, progress (issue 6)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

import pytest
from slurm_helpers import all_jobs, squeue_jobs

from wove import weave
from wove.errors import SlurmOutOfMemoryError


def _scontrol(job: str) -> str:
    return subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, check=True).stdout


def test_five_hundred_items_run_as_one_array_in_order(executor, prefix):
    instance = executor()
    with weave() as w:
        @w.do(range(500), environment="slurm")
        def square(x):
            return x * x

    assert w.result.square == [x * x for x in range(500)]
    assert len(instance.adapter.submissions) == 1
    call = instance.adapter.submissions[0]
    assert call["items"] == 500 and "--array=0-499" in call["argv"]
    records = w.result.jobs["square"]
    assert {r.array_job_id for r in records} == {call["job_id"]}
    assert sorted(r.array_index for r in records) == list(range(500))
    assert all(r.job_id == f"{r.array_job_id}_{r.array_index}" for r in records)
    assert squeue_jobs(prefix) == []


def test_map_larger_than_max_array_size_is_chunked(executor, prefix):
    instance = executor(max_array_size=40)
    with weave() as w:
        @w.do(range(100), environment="slurm")
        def plus(x):
            return x + 1

    assert w.result.plus == list(range(1, 101))
    sizes = sorted(call["items"] for call in instance.adapter.submissions)
    assert sizes == [20, 40, 40]
    assert len({r.array_job_id for r in w.result.jobs["plus"]}) == 3
    assert max(r.array_index for r in w.result.jobs["plus"]) == 39


def test_failed_item_is_retried_alone(executor, prefix, tmp_path):
    instance = executor()
    marker = tmp_path / "item-3-failed-once"

    with weave() as w:
        @w.do(range(8), environment="slurm", retries=1)
        def flaky(x):
            if x == 3 and not marker.exists():
                marker.touch()
                raise RuntimeError("first attempt of item 3 fails")
            return x

    assert w.result.flaky == list(range(8))
    calls = instance.adapter.submissions
    assert [c["items"] for c in calls] == [8, 1]
    retried = [r for r in w.result.jobs["flaky"] if r.map_index == 3]
    assert [r.attempt for r in retried] == [0, 1]
    assert retried[1].array_job_id is None and retried[1].job_id == calls[1]["job_id"]


def test_sibling_failure_cancels_the_whole_array(executor, prefix):
    executor()
    with pytest.raises(ValueError, match="stop everything"):
        with weave() as w:
            @w.do(range(30), environment="slurm")
            def slow_items(x):
                time.sleep(300)

            @w.do
            def local_failure():
                time.sleep(3)
                raise ValueError("stop everything")

    assert squeue_jobs(prefix) == []
    states = [row["state"] for row in all_jobs(prefix) if row["name"] == f"{prefix}-slow_items"]
    assert len(states) == 30 and set(states) == {"CANCELLED"}, states


def test_workers_become_the_array_throttle(executor, prefix):
    instance = executor()
    with weave() as w:
        @w.do(range(6), environment="slurm", workers=2)
        def throttled(x):
            return x

    assert w.result.throttled == list(range(6))
    call = instance.adapter.submissions[0]
    assert "--array=0-5%2" in call["argv"]
    assert "ArrayTaskThrottle=2" in _scontrol(call["job_id"])


def test_items_per_job_packs_items_into_elements(executor, prefix):
    instance = executor(items_per_job=10)
    with weave() as w:
        @w.do(range(95), environment="slurm")
        def packed(x):
            return x, os.environ.get("SLURM_ARRAY_TASK_ID"), os.getpid()

    values = w.result.packed
    assert [v[0] for v in values] == list(range(95))
    assert [int(v[1]) for v in values] == [x // 10 for x in range(95)]
    assert len({v[2] for v in values}) == 10  # one Python process per element
    assert "--array=0-9" in instance.adapter.submissions[0]["argv"]
    assert len(w.result.jobs["packed"]) == 95


def test_arrays_can_be_turned_off(executor, prefix):
    instance = executor(arrays=False)
    with weave() as w:
        @w.do(range(4), environment="slurm")
        def single_jobs(x):
            return x

    assert w.result.single_jobs == [0, 1, 2, 3]
    assert len(instance.adapter.submissions) == 4
    assert all(r.array_job_id is None for r in w.result.jobs["single_jobs"])


def test_per_task_resources_reach_the_job_and_do_not_leak(executor, prefix, tmp_path):
    executor(time="20:00", sbatch_args=["--comment=from-environment"])
    setup_marker = tmp_path / "setup-ran"

    with weave() as w:
        @w.do(environment="slurm", resources={"cpus_per_task": 2, "mem": "300M", "time": "7:00",
                                               "setup": [f"touch {setup_marker}", "export WOVE_TEST_SETUP=yes"],
                                               "sbatch_args": ["--nice=5"]})
        def big():
            return os.environ.get("WOVE_TEST_SETUP"), os.environ.get("SLURM_CPUS_PER_TASK")

        @w.do(environment="slurm")
        def small():
            return os.environ.get("WOVE_TEST_SETUP"), os.environ.get("SLURM_CPUS_PER_TASK")

    assert w.result.big == ("yes", "2")
    assert w.result.small == (None, None)
    assert setup_marker.exists()
    big_job = _scontrol(w.result.jobs["big"][0].job_id)
    small_job = _scontrol(w.result.jobs["small"][0].job_id)
    assert "NumCPUs=2" in big_job and "mem=300M" in big_job and "TimeLimit=00:07:00" in big_job
    assert "Nice=5" in big_job and "Comment=from-environment" in big_job
    assert "TimeLimit=00:20:00" in small_job and "mem=100M" in small_job and "Nice=0" in small_job
    assert "Comment=from-environment" in small_job


@pytest.mark.parametrize("resources, message", [
    ({"memory": "1G"}, "unknown Slurm resource 'memory'. Did you mean 'mem'?"),
    ({"mem": "lots"}, "resources['mem'] must be megabytes (int) or a size such as '500M'"),
    ({"time": "1 hour"}, "resources['time'] must be minutes (int) or a Slurm time string"),
    ({"cpus_per_task": 0}, "resources['cpus_per_task'] must be a positive integer"),
    ({"sbatch_args": ["--array=0-3"]}, "sbatch_args may not contain --array"),
    ({"sbatch_args": ["--export=NONE"]}, "would keep WOVE_BACKEND_PAYLOAD from reaching the job"),
])
def test_invalid_resources_fail_before_anything_is_submitted(executor, prefix, resources, message):
    executor()
    with pytest.raises(ValueError) as caught:
        with weave() as w:
            @w.do(environment="slurm", resources=resources)
            def never():
                return 1
    assert message in str(caught.value)
    assert "task 'never'" in str(caught.value)
    assert all_jobs(prefix) == []


def _hungry():
    block = bytearray(160 * 1024 * 1024)
    for index in range(0, len(block), 4096):
        block[index] = 1
    return len(block)


def test_oom_escalation_succeeds_on_the_second_size(executor, prefix):
    executor(mem="100M", oom_retry_factor=2)
    with weave() as w:
        w.do(environment="slurm", retries=2)(_hungry)

    assert w.result._hungry == 160 * 1024 * 1024
    records = w.result.jobs["_hungry"]
    assert len(records) == 2
    assert "mem=100M" in _scontrol(records[0].job_id) and "mem=200M" in _scontrol(records[1].job_id)


def _very_hungry():
    block = bytearray(900 * 1024 * 1024)
    for index in range(0, len(block), 4096):
        block[index] = 1


def test_oom_escalation_reports_every_size_tried(executor, prefix):
    executor(mem="100M", oom_retry_factor=2, oom_max_mem="300M")
    with weave(error_mode="return") as w:
        w.do(environment="slurm", retries=3)(_very_hungry)

    error = w.result._very_hungry
    assert type(error) is SlurmOutOfMemoryError
    assert "sizes tried: 100M, 200M, 300M" in str(error)


def test_progress_lines_when_not_on_a_terminal(executor, prefix, capsys):
    executor()
    with weave(progress=True) as w:
        @w.do(range(12), environment="slurm")
        def shown(x):
            return x

    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("wove: 12 remote tasks")]
    assert lines, err
    assert "done 12" in lines[-1] and "failed 0" in lines[-1]
    assert w.result.jobs["shown"][0].array_job_id in lines[-1]


_ = Path


def test_throttled_array_elements_do_not_count_against_queue_timeout(executor, prefix):
    executor(queue_timeout=3)
    with weave() as w:
        @w.do(range(4), environment="slurm", workers=1)
        def one_at_a_time(x):
            time.sleep(2)
            return x

    # 4 elements x 2 s, one at a time: the later ones wait (JobArrayTaskLimit) far longer than 3 s
    assert w.result.one_at_a_time == [0, 1, 2, 3]


def test_require_ack_cancel_of_a_pending_job_is_quick(executor, prefix):
    executor(sbatch_args=["--begin=now+3600"])
    started = time.monotonic()
    with pytest.raises(ValueError, match="give up"):
        with weave(delivery_cancel_mode="require_ack") as w:
            @w.do(environment="slurm")
            def never_starts():
                return 1

            @w.do
            def give_up():
                time.sleep(2)
                raise ValueError("give up")

    assert time.monotonic() - started < 20   # no 30 s wait for an acknowledgement a pending job cannot send
    assert squeue_jobs(prefix) == []


def test_sync_custom_submit_does_not_block_the_event_loop(executor, prefix):
    import wove.slurm

    def slow_submit(payload, frame, config):
        time.sleep(0.5)   # a slow, blocking sbatch wrapper
        env = {**os.environ, **wove.slurm.job_environment(payload)}
        out = subprocess.run(["sbatch", "--parsable", f"--job-name={wove.slurm.job_name(payload, config)}",
                              f"--output={payload['log_dir']}/%j.out",
                              "--mem=100M", "--wrap", wove.slurm.worker_command(config)],
                             env=env, capture_output=True, text=True, check=True).stdout
        return out

    executor(submit=slow_submit)
    ticks = []

    async def main():
        async with weave() as w:
            @w.do(range(4), environment="slurm")
            def remote(x):
                return x

            @w.do
            async def ticker():
                for _ in range(20):
                    ticks.append(time.monotonic())
                    await asyncio.sleep(0.05)
        return w.result

    result = asyncio.run(main())
    assert result.remote == [0, 1, 2, 3]
    assert max(b - a for a, b in zip(ticks, ticks[1:])) < 0.4
