"""Slurm configuration mistakes and error objects that need no cluster (moved from tests/slurm)."""

from __future__ import annotations

import pickle

import pytest

import wove
from wove import weave
from wove.errors import SlurmJobError, SlurmOutOfMemoryError
from wove.slurm.executor import SlurmExecutor


def test_invalid_environment_resources_fail_at_config_time():
    with pytest.raises(ValueError, match=r"'partiton'\. Did you mean 'partition'"):
        wove.config(environments={"slurm": {"executor": "slurm", "executor_config": {"partiton": "x"}}})


def test_resources_on_a_local_task_are_refused(tmp_path):
    wove.config(environments={"slurm": {"executor": SlurmExecutor(), "executor_config": {
        "job_name_prefix": "unit", "spool_dir": str(tmp_path / "spool")}}})
    with pytest.raises(ValueError, match="only apply to environments whose executor schedules resources"):
        with weave() as w:
            @w.do(resources={"mem": "1G"})
            def local():
                return 1


def test_failure_errors_pickle_with_their_fields():
    error = SlurmOutOfMemoryError("job 1 died", job_id="1", state="OUT_OF_MEMORY", requested_memory="1G")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is SlurmOutOfMemoryError and copy.requested_memory == "1G" and str(copy) == "job 1 died"
    assert isinstance(copy, SlurmJobError)
