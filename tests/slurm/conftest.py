"""Fixtures for tests against the real local Slurm cluster started by scripts/local-slurm.sh.

Outside CI a machine without the cluster skips these tests; with ``CI`` set they fail instead, so CI can
never pass without having run them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

import wove
from wove.slurm.executor import SlurmExecutor

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "local-slurm.sh"

pytestmark = pytest.mark.slurm


def _ensure_cluster() -> str:
    if subprocess.run(["sinfo", "-h"], capture_output=True).returncode == 0:
        return ""
    result = subprocess.run([str(SCRIPT), "start"], capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        return f"local Slurm cluster could not start:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    return ""


@pytest.fixture(scope="session", autouse=True)
def slurm_cluster():
    # Jobs run `python -m wove.backend_worker`: put this interpreter (the venv) first on PATH.
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    problem = _ensure_cluster()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(problem)
    yield


@pytest.fixture
def prefix() -> str:
    """A job-name prefix unique to the test, to find exactly its jobs in squeue."""
    return f"t{uuid.uuid4().hex[:8]}"


@pytest.fixture
def slurm_env(tmp_path, prefix):
    """Configure an environment named 'slurm'; returns a function to add executor_config keys."""

    def configure(**executor_config):
        config = {"job_name_prefix": prefix, "spool_dir": str(tmp_path / "spool"), "mem": "200M",
                  **executor_config}
        wove.config(environments={"slurm": {"executor": "slurm", "executor_config": config}})
        return config

    configure()
    return configure


@pytest.fixture
def executor(tmp_path, prefix):
    """A Slurm environment backed by an executor instance the test can inspect afterwards."""
    instance = SlurmExecutor()

    def configure(**executor_config):
        config = {"job_name_prefix": prefix, "spool_dir": str(tmp_path / "spool"), "mem": "100M",
                  **executor_config}
        wove.config(environments={"slurm": {"executor": instance, "executor_config": config}})
        return instance

    configure()
    return configure
