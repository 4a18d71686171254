"""Slurm ``time``, ``mem`` and per-task submit keys without a cluster (issue 12, points 5 and 6).

What Slurm itself does with these values (the rounding of seconds, ``--mem=0``, an invalid partition) is
checked on the local cluster in tests/slurm/test_time_mem_partition.py.
"""

from __future__ import annotations

import asyncio
import types
import warnings

import pytest

import wove
from wove import weave
from wove.errors import InvalidValueError, SlurmOutOfMemoryError, WoveError
from wove.slurm import resources
from wove.slurm.adapter import SlurmAdapter
from wove.slurm.cli import parse_partitions
from wove.slurm.executor import SlurmExecutor
from wove.slurm.pacing import Pacer


# ------------------------------------------------------------------ time
@pytest.mark.parametrize("value, seconds", [
    ("30", 30 * 60),                 # minutes
    ("10:00", 10 * 60),              # minutes:seconds
    ("2:00:00", 2 * 3600),           # hours:minutes:seconds
    ("1-12", 36 * 3600),             # days-hours
    ("1-12:30", 36 * 3600 + 1800),   # days-hours:minutes
    ("1-12:00:05", 36 * 3600 + 5),   # days-hours:minutes:seconds
    ("0", 0),
])
def test_time_seconds_reads_every_sbatch_form(value, seconds):
    assert resources.time_seconds(value) == seconds


@pytest.mark.parametrize("value", ["30", "10:00", "2:00:00", "1-12", "1-12:30", "1-12:00:00", "0", " 5:00 "])
def test_whole_minute_times_pass_unchanged_and_silently(value):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resources.validate({"time": value}, "task 't'") == {"time": value.strip()}
    assert resources.validate({"time": 45}, "task 't'") == {"time": "45"}


@pytest.mark.parametrize("value, seconds", [("0:10", 10), ("0:0:30", 30), ("0-0:0:59", 59), ("0:59", 59)])
def test_sub_minute_time_is_refused_with_slurms_rounding_explained(value, seconds):
    with pytest.raises(InvalidValueError) as caught:
        resources.validate({"time": value}, "task 't'")
    message = str(caught.value)
    assert f"resources['time']={value!r} is {seconds} s, under a minute" in message
    assert "rounds seconds up" in message and "1-minute limit" in message
    assert "'1:00'" in message and f"timeout={seconds}" in message
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, WoveError)


@pytest.mark.parametrize("value, minutes, clock", [("1:30", 2, "0:02:00"), ("1:59:01", 120, "2:00:00"),
                                                   ("1-0:0:1", 1441, "1-0:01:00")])
def test_leftover_seconds_warn_with_the_minutes_slurm_uses(value, minutes, clock):
    with pytest.warns(UserWarning) as caught:
        assert resources.validate({"time": value}, "task 't'") == {"time": value}
    message = str(caught[0].message)
    assert f"resources['time']={value!r}" in message
    assert f"the job gets {minutes} minutes ({clock})" in message


@pytest.mark.parametrize("value", ["1 hour", "1:2:3:4", "-5", "1-", 0, -1, 2.5, True, ""])
def test_other_times_are_refused_with_the_valid_forms(value):
    with pytest.raises(InvalidValueError, match=r"resources\['time'\] must be minutes \(int\) or a Slurm time "
                                                r"string: 'M' \('30'\), 'M:SS'.*'D-H:MM:SS'"):
        resources.validate({"time": value}, "task 't'")


def test_sub_minute_time_fails_at_decoration(tmp_path):
    wove.config(environments={"slurm": {"executor": SlurmExecutor(), "executor_config": {
        "job_name_prefix": "unit", "spool_dir": str(tmp_path / "spool")}}})
    with pytest.raises(ValueError, match=r"task 'quick'.*'0:10' is 10 s, under a minute"):
        with weave() as w:
            @w.do(environment="slurm", resources={"time": "0:10"})
            def quick():
                return 1


# ------------------------------------------------------------------ mem
@pytest.mark.parametrize("value", [0, "0", "0M", "0G", " 0 "])
def test_mem_zero_means_the_whole_node_and_is_passed_as_zero(value):
    clean = resources.validate({"mem": value}, "task 't'")
    assert clean == {"mem": "0"}
    assert resources.sbatch_options(clean) == ["--mem=0"]


@pytest.mark.parametrize("value", [-1, "-1G", "lots", 1.5])
def test_bad_mem_still_refused(value):
    with pytest.raises(InvalidValueError, match=r"resources\['mem'\] must be megabytes .*0: all of the node's memory"):
        resources.validate({"mem": value}, "task 't'")


def test_scaling_zero_memory_stays_zero():
    assert resources.scale_mem("0", 2.0) == "0"
    assert resources.scale_mem("100M", 2.0) == "200M"


def _oom_adapter(env_mem, factor=2.0, oom_max=None):
    return types.SimpleNamespace(oom_factor=factor, oom_max=oom_max,
                                 env_resources=resources.validate({"mem": env_mem}, "environment 'e'"))


def test_oom_escalation_keeps_mem_zero_instead_of_shrinking_it():
    error = SlurmOutOfMemoryError("job 1 ran out of memory", requested_memory="0")
    adapter = _oom_adapter(0, oom_max="8G")
    task_resources = {"cpus_per_task": 2}
    assert SlurmAdapter.adjust_for_retry(adapter, error, task_resources, {}) is task_resources   # retried as is
    grown = SlurmAdapter.adjust_for_retry(_oom_adapter("100M"), error, None, {})
    assert grown is not None and grown["mem"] == "200M"   # and a real size still grows


def test_oom_max_mem_zero_is_refused():
    with pytest.raises(ValueError, match=r"oom_max_mem must be a size above 0 .*got '0'"):
        wove.config(environments={"slurm": {"executor": "slurm", "executor_config": {
            "mem": "1G", "oom_retry_factor": 2, "oom_max_mem": "0"}}})


# ------------------------------------------------------------------ per-task submit keys
def test_submit_keys_are_accepted_per_task_and_never_become_sbatch_flags():
    clean = resources.validate({"items_per_job": 10, "arrays": False, "max_queued_jobs": 3, "mem": "1G"},
                               "task 't'")
    assert clean == {"items_per_job": 10, "arrays": False, "max_queued_jobs": 3, "mem": "1G"}
    merged = resources.merge(resources.validate({"mem": "2G"}, "environment 'e'"), clean)
    assert merged["items_per_job"] == 10 and merged["mem"] == "1G"
    assert resources.sbatch_options(merged) == ["--mem=1G"]
    assert resources.merge(merged, None) == merged   # merging again keeps them


@pytest.mark.parametrize("resource, message", [
    ({"items_per_job": 0}, "resources['items_per_job'] must be a positive integer, got 0"),
    ({"items_per_job": "10"}, "resources['items_per_job'] must be a positive integer, got '10'"),
    ({"max_queued_jobs": True}, "resources['max_queued_jobs'] must be a positive integer, got True"),
    ({"arrays": "no"}, "resources['arrays'] must be True or False, got 'no'"),
    ({"item_per_job": 2}, "unknown Slurm resource 'item_per_job'. Did you mean 'items_per_job'?"),
])
def test_bad_submit_keys_are_refused_at_decoration(tmp_path, resource, message):
    wove.config(environments={"slurm": {"executor": SlurmExecutor(), "executor_config": {
        "job_name_prefix": "unit", "spool_dir": str(tmp_path / "spool")}}})
    with pytest.raises(InvalidValueError) as caught:
        with weave() as w:
            @w.do(range(3), environment="slurm", resources=resource)
            def mapped(x):
                return x
    assert message in str(caught.value) and "task 'mapped'" in str(caught.value)


class _Monitor:
    def __init__(self):
        self.jobs = {}


class _Cli:
    async def submit_limit(self, qos="", account=""):
        return None


def test_task_cap_and_environment_cap_are_counted_live_across_rooms():
    async def scenario():
        monitor = _Monitor()
        pacer = Pacer(_Cli(), monitor, [], patience=5.0, cap=5, items_per_job=1)
        capped = pacer.room_for({"max_queued_jobs": 2}, "capped")
        other = pacer.room_for({}, "other")
        assert capped is not other and pacer.room_for({}, "third") is other
        assert capped.bound == 2 and other.bound == 5
        assert await capped.take(10) == 2              # the task's own cap
        assert await other.take(10) == 3               # the environment's cap counts the other room's 2
        capped.confirm(2)
        other.confirm(3)
        monitor.jobs.update({"1_0": types.SimpleNamespace(task="capped"), "1_1": types.SimpleNamespace(task="capped"),
                             **{f"2_{i}": types.SimpleNamespace(task="other") for i in range(3)}})
        waiter = asyncio.ensure_future(capped.take(1))
        await asyncio.sleep(0.3)
        assert not waiter.done()
        del monitor.jobs["2_0"]                        # room under the environment's cap, not the task's
        pacer.job_released()
        await asyncio.sleep(0.3)
        assert not waiter.done()
        del monitor.jobs["1_0"]                        # one of the task's own ended
        pacer.job_released()
        assert await asyncio.wait_for(waiter, 5) == 1

    asyncio.run(scenario())


# ------------------------------------------------------------------ partitions
def test_parse_partitions_strips_the_default_marker():
    assert parse_partitions("debug*\nlong\ngpu\nlong\n") == (["debug", "long", "gpu"], "debug")
    assert parse_partitions("a\nb\n") == (["a", "b"], None)
    assert parse_partitions("") == ([], None)
