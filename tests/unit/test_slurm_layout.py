"""The shape of ``wove/slurm`` (issue 11, point 2): small parts, a light job side, and a core that knows no Slurm.

- ``from wove.slurm import time_limit_near`` (called inside tasks, in every job) loads none of the submit side.
- The Slurm errors live in ``wove.slurm.errors`` and are still ``wove.errors.*``, without ``wove.errors``
  importing Slurm code.
- The progress line and the configuration learn Slurm's vocabulary from the Slurm package, not by name.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

import wove
import wove.errors
from wove import _config, _progress
from wove.slurm import errors as slurm_errors
from wove.slurm.states import JobState, record_state

WOVE = Path(wove.__file__).resolve().parent
SUBMIT_SIDE = ("wove.slurm.adapter", "wove.slurm.monitor", "wove.slurm.submit", "wove.slurm.cli", "wove._scheduler",
               "asyncio")


def _modules_after(statement: str) -> list[str]:
    code = f"import sys, json\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def test_time_limit_near_imports_nothing_of_the_submit_side():
    loaded = _modules_after("from wove.slurm import time_limit_near\nassert time_limit_near() is False")
    assert [name for name in SUBMIT_SIDE if name in loaded] == []
    assert [name for name in loaded if name.startswith("wove.slurm")] == ["wove.slurm", "wove.slurm.tasks"]


def test_wove_errors_imports_no_slurm_code_until_a_slurm_error_is_used():
    assert [m for m in _modules_after("import wove.errors") if m.startswith("wove.slurm")] == []
    loaded = _modules_after("from wove.errors import SlurmJobError")
    assert "wove.slurm.errors" in loaded and "wove.slurm.adapter" not in loaded


@pytest.mark.parametrize("name", slurm_errors.__all__)
def test_slurm_errors_are_the_same_class_everywhere(name):
    cls = getattr(slurm_errors, name)
    assert getattr(wove.errors, name) is cls
    assert getattr(wove.slurm, name) is cls
    assert name in wove.errors.__all__
    assert issubclass(cls, wove.errors.EnvironmentExecutionError) and issubclass(cls, wove.errors.WoveError)


def test_slurm_error_hierarchy_and_pickles():
    assert issubclass(slurm_errors.SlurmOutOfMemoryError, slurm_errors.SlurmJobError)
    assert issubclass(slurm_errors.SlurmJobError, slurm_errors.SlurmError)
    assert issubclass(slurm_errors.SlurmSubmitLimitError, slurm_errors.SlurmError)
    namespace: dict = {}
    exec("from wove.errors import *", namespace)
    assert namespace["SlurmQueueTimeoutError"] is slurm_errors.SlurmQueueTimeoutError
    error = slurm_errors.SlurmOutOfMemoryError("killed", job_id="12", array_index=3, requested_memory="1G")
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is type(error) and (again.job_id, again.array_index, again.requested_memory) == ("12", 3, "1G")
    limit = pickle.loads(pickle.dumps(slurm_errors.SlurmSubmitLimitError("full", limit=4, used=4, source="x")))
    assert (limit.limit, limit.used, limit.source) == (4, 4, "x")
    # Pickles made before the move name wove.errors' helpers; they still load.
    assert wove.errors._rebuild_job_error is slurm_errors._rebuild_job_error
    with pytest.raises(AttributeError):
        _ = wove.errors.NoSuchError


class _Record:
    def __init__(self, state, outcome=""):
        self.state, self.outcome = state, outcome
        self.job_id = self.array_job_id = None
        self.map_index = None


def test_progress_counts_slurm_states_by_their_phase():
    records = [_Record(record_state(JobState.COMPLETING)), _Record(record_state(JobState.RUNNING)),
               _Record(record_state(JobState.PENDING)), _Record(record_state(JobState.SUSPENDED)),
               _Record("RUNNING"), _Record("SUBMITTED"), _Record(record_state(JobState.FAILED), "error"),
               _Record("COMPLETED", "result")]
    assert _progress.status_line(records) == "wove: 8 remote tasks: pending 3 | running 3 | done 1 | failed 1"


def test_record_states_read_and_pickle_as_plain_strings():
    state = record_state(JobState.COMPLETING)
    assert state == "COMPLETING" and f"{state}" == "COMPLETING" and repr(state) == "'COMPLETING'"
    assert json.dumps({"state": state}) == '{"state": "COMPLETING"}'
    again = pickle.loads(pickle.dumps(state))
    assert again == "COMPLETING" and again.phase == "running"


def test_the_core_names_no_slurm_module_or_state():
    assert "slurm" not in (WOVE / "_config.py").read_text().lower()   # the executor registry has the names
    progress = (WOVE / "_progress.py").read_text()
    assert not [name for name in JobState.__members__ if name != "RUNNING" and f'"{name}"' in progress]
    from wove.slurm.executor import SlurmExecutor
    assert _config.executor_class("slurm") is SlurmExecutor
    assert _config.normalize_environment("hpc", {"executor": "slurm"})["executor"] == "slurm"


def test_no_slurm_module_is_over_400_lines():
    sizes = {path.name: len(path.read_text().splitlines()) for path in (WOVE / "slurm").glob("*.py")}
    assert {name: lines for name, lines in sizes.items() if lines > 400} == {}
