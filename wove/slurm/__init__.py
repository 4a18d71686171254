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
"""

from __future__ import annotations

from typing import Any, Optional

from ..errors import (
    SlurmBootFailError,
    SlurmCancelledError,
    SlurmCommandError,
    SlurmError,
    SlurmJobError,
    SlurmJobFailedError,
    SlurmNodeFailError,
    SlurmOutOfMemoryError,
    SlurmPreemptedError,
    SlurmQueueTimeoutError,
    SlurmSubmitLimitError,
    SlurmTimeLimitError,
)
from .adapter import DEFAULT_COMMAND, _job_name
from .commands import parse_job_id

__all__ = [
    "DEFAULT_COMMAND", "SlurmBootFailError", "SlurmCancelledError", "SlurmCommandError", "SlurmError",
    "SlurmJobError", "SlurmJobFailedError", "SlurmNodeFailError", "SlurmOutOfMemoryError",
    "SlurmPreemptedError", "SlurmQueueTimeoutError", "SlurmSubmitLimitError", "SlurmTimeLimitError",
    "job_environment", "job_name", "parse_job_id", "submit_job", "time_limit_near", "worker_command",
]


def time_limit_near() -> bool:
    """True once this job was warned (SIGUSR1 via ``signal_before_timeout``) that its time is nearly up."""
    from ..dispatch.worker import TIME_WARNING

    return TIME_WARNING.is_set()


def job_environment(payload: dict[str, Any]) -> dict[str, str]:
    """``{"WOVE_BACKEND_PAYLOAD": ...}`` for a payload: inline when small, a spool reference when large.

    A large payload is written like the default path writes it: into the run's private spool directory,
    through the descriptor the live environment holds (never through a path someone could have swapped),
    or, outside a live environment, into ``payload["spool_dir"]`` only if it is yours and nobody else can
    write it.
    """
    from ..dispatch.protocol import PAYLOAD_ENV
    from ..executors.adapter import DEFAULT_SPOOL_THRESHOLD, encode_payload

    spool_dir = payload.get("spool_dir")
    if not spool_dir:
        raise ValueError("payload has no spool_dir: pass the payload wove gave to your submit callable")
    return {PAYLOAD_ENV: encode_payload(payload, spool_dir, DEFAULT_SPOOL_THRESHOLD)}


def worker_command(config: Optional[dict[str, Any]] = None) -> str:
    """The command the job runs: ``config['command']`` or ``python -m wove.backend_worker``."""
    return (config or {}).get("command") or DEFAULT_COMMAND


def job_name(payload: dict[str, Any], config: Optional[dict[str, Any]] = None) -> str:
    """``<job_name_prefix>-<task name>``, as the default path names jobs."""
    prefix = (config or {}).get("job_name_prefix", "wove")
    return f"{prefix}-{_job_name(str(payload.get('task_name') or 'task'))}"


async def submit_job(payload: dict[str, Any], *sbatch_args: str, config: Optional[dict[str, Any]] = None,
                     sbatch: Optional[list[str]] = None) -> str:
    """Submit ``payload`` the way the default path does, plus ``sbatch_args``; return the job id."""
    from . import commands

    config = config or {}
    output: list[str] = []
    if payload.get("log_dir") and not any(a.startswith(("--output", "-o", "--error", "-e")) for a in sbatch_args):
        # like the default path: job output in the run's log directory, not the working directory
        output = [f"--output={payload['log_dir']}/%j.out", f"--error={payload['log_dir']}/%j.err"]
    argv = [*(sbatch or config.get("sbatch") or ["sbatch", "--parsable"]),
            f"--job-name={job_name(payload, config)}", *output, *sbatch_args, "--wrap", worker_command(config)]
    _, out, _ = await commands.run(argv, env=commands.environment_with(job_environment(payload)))
    return parse_job_id(out)
