"""Helpers for a custom ``submit(payload, frame, config)`` callable: build the job the way the default path does.

- ``job_environment(payload)``: the environment variables the job needs (``WOVE_BACKEND_PAYLOAD``; large
  payloads are written to a private spool file and passed by reference).
- ``worker_command(config)``: the command the job runs (``python -m wove.backend_worker`` by default).
- ``job_name(payload, config)``: ``<job_name_prefix>-<task>``.
- ``await submit_job(payload, *sbatch_args, config=config)``: the whole default submission with extra
  sbatch options; returns the job id.
"""

from __future__ import annotations

from typing import Any, Optional

from ..errors import InvalidValueError
from .cli import SlurmCli
from .parse import parse_job_id


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
        raise InvalidValueError("payload has no spool_dir: pass the payload wove gave to your submit callable")
    return {PAYLOAD_ENV: encode_payload(payload, spool_dir, DEFAULT_SPOOL_THRESHOLD)}


def worker_command(config: Optional[dict[str, Any]] = None) -> str:
    """The command the job runs: ``config['command']`` or ``python -m wove.backend_worker``."""
    return SlurmCli(config).command


def job_name(payload: dict[str, Any], config: Optional[dict[str, Any]] = None) -> str:
    """``<job_name_prefix>-<task name>``, as the default path names jobs."""
    return SlurmCli(config).job_name(str(payload.get("task_name") or "task"))


async def submit_job(payload: dict[str, Any], *sbatch_args: str, config: Optional[dict[str, Any]] = None,
                     sbatch: Optional[list[str]] = None) -> str:
    """Submit ``payload`` the way the default path does, plus ``sbatch_args``; return the job id."""
    config = dict(config or {})
    if sbatch:
        config["sbatch"] = sbatch
    cli = SlurmCli(config)
    output: list[str] = []
    if payload.get("log_dir") and not any(a.startswith(("--output", "-o", "--error", "-e")) for a in sbatch_args):
        # like the default path: job output in the run's log directory, not the working directory
        output = [f"--output={payload['log_dir']}/%j.out", f"--error={payload['log_dir']}/%j.err"]
    argv = cli.custom_sbatch_argv(job_name(payload, config), output, sbatch_args)
    from ..dispatch.protocol import PAYLOAD_ENV

    out = await cli.run_sbatch(argv, job_environment(payload)[PAYLOAD_ENV])   # errors like the default path's
    return parse_job_id(out)
