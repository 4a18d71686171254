"""What Slurm does with time, mem=0 and a bad partition, and what wove says about it (issue 12, point 6).

The validation itself (every time form, sub-minute refusals, mem sizes) is in tests/unit/test_time_mem.py.
"""

from __future__ import annotations

import subprocess

import pytest
from slurm_helpers import all_jobs

from wove import weave
from wove.errors import SlurmCommandError
from wove.slurm import submit_job


def _scontrol(job: str) -> str:
    return subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, check=True).stdout


def test_leftover_seconds_warning_says_what_slurm_really_uses(executor, prefix):
    executor()
    with pytest.warns(UserWarning, match=r"resources\['time'\]='1:30'.*the job gets 2 minutes \(0:02:00\)"):
        with weave() as w:
            @w.do(environment="slurm", resources={"time": "1:30"})
            def rounded():
                return 1

    assert w.result.rounded == 1
    assert "TimeLimit=00:02:00" in _scontrol(w.result.jobs["rounded"][0].job_id)   # as the warning said


def test_sub_minute_time_is_refused_before_anything_is_submitted(executor, prefix):
    executor()
    with pytest.raises(ValueError, match=r"'0:10' is 10 s, under a minute.*timeout=10"):
        with weave() as w:
            @w.do(environment="slurm", resources={"time": "0:10"})
            def too_short():
                return 1
    assert all_jobs(prefix) == []


def test_mem_zero_asks_for_the_whole_node(executor, prefix):
    instance = executor()
    with weave() as w:
        @w.do(environment="slurm", resources={"mem": 0})
        def whole_node():
            return "ran"

    assert w.result.whole_node == "ran"
    assert "--mem=0" in instance.adapter.submissions[0]["argv"]
    assert "MinMemoryNode=0 " in _scontrol(w.result.jobs["whole_node"][0].job_id)


def _valid_partitions() -> str:
    out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, check=True).stdout
    names = [word.rstrip("*") for word in out.split()]
    default = next(word.rstrip("*") for word in out.split() if word.endswith("*"))
    return ", ".join(f"{name} (the default)" if name == default else name for name in dict.fromkeys(names))


def test_invalid_partition_lists_the_valid_ones(executor, prefix):
    executor()
    with pytest.raises(SlurmCommandError) as caught:
        with weave() as w:
            @w.do(environment="slurm", resources={"partition": "nope"})
            def misplaced():
                return 1
    message = str(caught.value)
    assert "invalid partition specified: nope" in message                     # sbatch's own words, kept
    assert message.endswith(f"Valid partitions: {_valid_partitions()}"), message
    assert "debug (the default)" in message
    assert all_jobs(prefix) == []


def test_invalid_partition_keeps_sbatchs_message_when_sinfo_fails(executor, prefix):
    executor(sinfo=["false"])
    with pytest.raises(SlurmCommandError) as caught:
        with weave() as w:
            @w.do(environment="slurm", resources={"partition": "nope"})
            def misplaced():
                return 1
    message = str(caught.value)
    assert "Invalid partition name specified" in message and "Valid partitions" not in message


def test_custom_submit_job_lists_the_valid_partitions_too(executor, prefix):
    async def submit(payload, frame, config):
        return await submit_job(payload, "--partition=nope", "--mem=50M", config=config)

    executor(submit=submit)
    with pytest.raises(SlurmCommandError, match=r"Valid partitions: .*debug \(the default\)"):
        with weave() as w:
            @w.do(environment="slurm")
            def custom():
                return 1
