"""Fixtures for tests against the real local Slurm cluster started by scripts/local-slurm.sh.

Every test here carries the ``slurm`` marker (tests/conftest.py adds it) and so gets ``slurm_cluster``;
tests that need no cluster belong in tests/unit or tests/core.
"""

from __future__ import annotations

import uuid

import pytest

import wove
from wove.slurm.executor import SlurmExecutor


@pytest.fixture(scope="session", autouse=True)
def _cluster_first(slurm_cluster):
    """Session-wide here, so the cluster is up before module fixtures (test_reconfigured_cluster) run."""
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
