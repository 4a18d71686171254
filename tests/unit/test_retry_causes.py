"""Retries by cause (issue 16, point 3), without a cluster: what the next attempt asks Slurm for."""

from __future__ import annotations

import types

from wove.slurm import resources
from wove.slurm.adapter import SlurmAdapter
from wove.slurm.errors import (
    SlurmBootFailError,
    SlurmJobFailedError,
    SlurmNodeFailError,
    SlurmOutOfMemoryError,
    SlurmPreemptedError,
    SlurmTimeLimitError,
)


def _adapter(env=None, time_factor=None, time_max=None):
    adapter = types.SimpleNamespace(oom_factor=None, oom_max=None, time_factor=time_factor, time_max=time_max,
                                    env_resources=resources.validate(env or {}, "environment 'e'"))
    adapter._longer = lambda exc, res: SlurmAdapter._longer(adapter, exc, res)
    return adapter


def test_a_time_limit_grows_the_time_by_the_factor_up_to_time_max():
    adapter = _adapter({"time": "3"}, time_factor=2, time_max="10")
    error = SlurmTimeLimitError("job 5 hit its time limit", requested_time="00:03:00")
    first = SlurmAdapter.adjust_for_retry(adapter, error, None, {})
    assert first["time"] == "6" and first["_time_history"] == ["3", "6"]
    second = SlurmAdapter.adjust_for_retry(adapter, error, first, {})
    assert second["time"] == "10" and second["_time_history"] == ["3", "6", "10"]   # capped at time_max
    assert SlurmAdapter.adjust_for_retry(adapter, error, second, {}) is second       # at the cap: as is
    assert resources.sbatch_options(resources.merge(adapter.env_resources, second)).count("--time=10") == 1


def test_without_a_factor_a_time_limit_is_retried_as_is():
    adapter = _adapter({"time": "3"})
    error = SlurmTimeLimitError("job 5 hit its time limit")
    assert SlurmAdapter.adjust_for_retry(adapter, error, {"mem": "1G"}, {}) == {"mem": "1G"}


def test_a_failed_node_is_excluded_from_every_later_attempt():
    adapter = _adapter({"exclude": "n9"})
    once = SlurmAdapter.adjust_for_retry(adapter, SlurmNodeFailError("node n2 failed", node="n2"), None, {})
    assert once["exclude"] == "n9,n2"
    twice = SlurmAdapter.adjust_for_retry(adapter, SlurmBootFailError("n3 did not boot", node="n3"), once, {})
    assert twice["exclude"] == "n9,n2,n3"
    assert "--exclude=n9,n2,n3" in resources.sbatch_options(resources.merge(adapter.env_resources, twice))


def test_only_the_clusters_failures_are_free():
    free = [SlurmNodeFailError("x"), SlurmBootFailError("x"), SlurmPreemptedError("x")]
    charged = [SlurmTimeLimitError("x"), SlurmOutOfMemoryError("x"), SlurmJobFailedError("x"), ValueError("x")]
    assert all(SlurmAdapter.free_retry(None, exc) for exc in free)
    assert not any(SlurmAdapter.free_retry(None, exc) for exc in charged)
