"""Slurm support: ``executor: "slurm"`` environments, helpers for custom ``submit`` callables, the doctor.

Helpers for a custom ``submit(payload, frame, config)`` (see the README for a full example):

- ``job_environment(payload)``: the environment variables the job needs (``WOVE_BACKEND_PAYLOAD``; large
  payloads are written to a private spool file and passed by reference).
- ``worker_command(config)``: the command the job runs (``python -m wove.backend_worker`` by default).
- ``job_name(payload, config)``: ``<job_name_prefix>-<task>``.
- ``parse_job_id(output)``: the job id in sbatch's output (``N``, ``N;cluster`` or ``Submitted batch job N``).
- ``payload["log_dir"]``: the run's log directory, where job output belongs (``--output=<log_dir>/%j.out``).
- ``await submit_job(payload, *sbatch_args, config=config)``: the whole default submission with extra
  sbatch options; returns the job id.

Inside a task running on Slurm, ``time_limit_near()`` turns true once the job received the warning signal
requested with ``executor_config["signal_before_timeout"]`` (a good moment to checkpoint and return).

The package, module by module (each name below is loaded on first use, PEP 562, so a job that only asks
``time_limit_near()`` imports none of the submit side):

- ``tasks``: job-side helpers (``time_limit_near``). ``custom``: helpers for custom submit callables.
- ``executor``: ``SlurmExecutor`` and its option checks. ``adapter``: composes the parts below.
- ``cli``: every Slurm command line and the configured tools; ``commands`` runs them; ``parse`` reads them.
- ``submit``: batching and arrays. ``pacing``: submit limits and sbatch retries (``limits``: the rooms).
- ``cancel``: scancel and drain. ``monitor``: jobs that end without reporting. ``states``: the state-to-error
  table. ``resources``: resource keys as sbatch options. ``errors``: the Slurm exceptions. ``doctor``.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # `typing` is not needed at run time here; jobs import this file

_EXPORTS = {
    "time_limit_near": "wove.slurm.tasks",
    "checkpoint": "wove.slurm.tasks",
    "restored_state": "wove.slurm.tasks",
    "job_environment": "wove.slurm.custom",
    "job_name": "wove.slurm.custom",
    "submit_job": "wove.slurm.custom",
    "worker_command": "wove.slurm.custom",
    "parse_job_id": "wove.slurm.parse",
    "DEFAULT_COMMAND": "wove.slurm.cli",
    "SlurmBootFailError": "wove.slurm.errors",
    "SlurmCancelledError": "wove.slurm.errors",
    "SlurmCommandError": "wove.slurm.errors",
    "SlurmError": "wove.slurm.errors",
    "SlurmJobError": "wove.slurm.errors",
    "SlurmJobFailedError": "wove.slurm.errors",
    "SlurmNodeFailError": "wove.slurm.errors",
    "SlurmOutOfMemoryError": "wove.slurm.errors",
    "SlurmPreemptedError": "wove.slurm.errors",
    "SlurmQueueTimeoutError": "wove.slurm.errors",
    "SlurmSubmitLimitError": "wove.slurm.errors",
    "SlurmTimeLimitError": "wove.slurm.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'wove.slurm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # static type checkers see the real names
    from .cli import DEFAULT_COMMAND as DEFAULT_COMMAND
    from .custom import job_environment as job_environment
    from .custom import job_name as job_name
    from .custom import submit_job as submit_job
    from .custom import worker_command as worker_command
    from .errors import SlurmBootFailError as SlurmBootFailError
    from .errors import SlurmCancelledError as SlurmCancelledError
    from .errors import SlurmCommandError as SlurmCommandError
    from .errors import SlurmError as SlurmError
    from .errors import SlurmJobError as SlurmJobError
    from .errors import SlurmJobFailedError as SlurmJobFailedError
    from .errors import SlurmNodeFailError as SlurmNodeFailError
    from .errors import SlurmOutOfMemoryError as SlurmOutOfMemoryError
    from .errors import SlurmPreemptedError as SlurmPreemptedError
    from .errors import SlurmQueueTimeoutError as SlurmQueueTimeoutError
    from .errors import SlurmSubmitLimitError as SlurmSubmitLimitError
    from .errors import SlurmTimeLimitError as SlurmTimeLimitError
    from .parse import parse_job_id as parse_job_id
    from .tasks import checkpoint as checkpoint
    from .tasks import restored_state as restored_state
    from .tasks import time_limit_near as time_limit_near
