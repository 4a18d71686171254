"""Logs stay findable (issue 12, point 3): a raising Slurm task keeps its logs and its exception names them."""

from __future__ import annotations

import os
import sys

import pytest

from wove import weave


class MyError(Exception):
    """A user's own exception type: it must carry the job's details too."""


def test_raising_task_keeps_its_logs_and_its_exception_names_them(executor, prefix):
    executor()
    with pytest.raises(MyError) as caught:
        with weave() as w:
            @w.do(environment="slurm")
            def boom():
                print("some output on stdout", flush=True)
                for i in range(30):
                    print(f"progress line {i}", file=sys.stderr, flush=True)
                raise MyError("the simulation diverged")

    exc = caught.value
    (record,) = w.result.jobs["boom"]
    logs = exc.wove_job
    assert logs.job_id == record.job_id and record.job_id
    assert logs.node == record.node and logs.node
    assert logs.stderr == record.stderr_path and logs.stdout == record.stdout_path
    assert os.path.exists(logs.stderr) and os.path.exists(logs.stdout)    # kept after the weave
    with open(logs.stdout) as handle:
        assert "some output on stdout" in handle.read()
    tail = logs.stderr_tail.splitlines()
    assert len(tail) == 20 and "progress line 29" in logs.stderr_tail and "progress line 5" not in logs.stderr_tail
    note = "\n".join(getattr(exc, "__notes__", []))
    assert f"Slurm job {record.job_id} on node {record.node}" in note
    assert logs.stderr in note and logs.stdout in note and "progress line 29" in note


def test_mapped_item_errors_carry_their_own_job(executor, prefix):
    executor()
    with weave() as w:
        @w.do(range(6), environment="slurm", item_errors="return")
        def work(x):
            if x == 4:
                print(f"failing item {x}", file=sys.stderr, flush=True)
                raise ValueError(x)
            return x

    (failure,) = w.result.errors["work"]
    assert failure.exception.wove_job.job_id == failure.job_id
    assert "failing item 4" in failure.exception.wove_job.stderr_tail
    assert os.path.exists(failure.exception.wove_job.stderr)


def test_cancelled_items_records_say_cancelled(executor, prefix):
    executor()
    with pytest.raises(ValueError):
        with weave() as w:
            @w.do(range(10), environment="slurm")
            def work(x):
                import time
                if x == 0:
                    time.sleep(3)
                    raise ValueError(x)
                time.sleep(120)

    others = [r for r in w.result.jobs["work"] if r.map_index != 0]
    assert others and {r.state for r in others} == {"CANCELLED"}
