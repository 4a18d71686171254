"""The Slurm errors: anything that went wrong between wove and Slurm, and jobs that ended without reporting.

They derive from ``wove.errors.EnvironmentExecutionError`` (a ``WoveError`` and a ``RuntimeError``)::

    EnvironmentExecutionError
    +-- SlurmError                      anything that went wrong talking to Slurm
        +-- SlurmCommandError           sbatch/scancel/squeue/sacct/scontrol failed (exit code + stderr)
        +-- SlurmSubmitLimitError       a per-user submit limit is used up by other jobs
        +-- SlurmJobError               a job ended without reporting an outcome (states.py picks the class)
            +-- SlurmOutOfMemoryError
            +-- SlurmTimeLimitError
            +-- SlurmNodeFailError
            +-- SlurmCancelledError
            +-- SlurmPreemptedError
            +-- SlurmJobFailedError
            +-- SlurmBootFailError
            +-- SlurmQueueTimeoutError  pending longer than ``queue_timeout``

They are importable from ``wove.errors`` too (loaded from here on first use, so ``wove.errors`` itself never
imports Slurm code).
"""

from __future__ import annotations

from typing import Any, Optional

from ..errors import EnvironmentExecutionError


class SlurmError(EnvironmentExecutionError):
    """Something went wrong between wove and Slurm."""


class SlurmCommandError(SlurmError):
    """A Slurm command (sbatch, scancel, squeue, sacct, scontrol) failed.

    Carries the command, its exit code and its stderr so the cause (an invalid partition, an unknown
    account, a controller that is down) is visible without digging through logs.
    """

    def __init__(self, message: str, command: Optional[list[str]] = None, returncode: Optional[int] = None,
                 stderr: str = ""):
        super().__init__(message)
        self.command = list(command or [])
        self.returncode = returncode
        self.stderr = stderr

    def __reduce__(self):
        return (type(self), (str(self), self.command, self.returncode, self.stderr))


class SlurmSubmitLimitError(SlurmError):
    """A submit limit (``MaxSubmitJobs`` and kin) stayed used up by jobs that are not the weave's own.

    ``limit`` and ``used`` are the numbers the controller reported, ``source`` names the limit.
    """

    def __init__(self, message: str, *, limit: Optional[int] = None, used: Optional[int] = None,
                 source: str = ""):
        super().__init__(message)
        self.limit, self.used, self.source = limit, used, source

    def __reduce__(self):
        return (_rebuild_limit_error, (str(self), self.limit, self.used, self.source))


def _rebuild_limit_error(message: str, limit: Optional[int], used: Optional[int], source: str
                         ) -> SlurmSubmitLimitError:
    return SlurmSubmitLimitError(message, limit=limit, used=used, source=source)


class SlurmJobError(SlurmError):
    """A Slurm job ended without reporting its task's outcome.

    Attributes describe the job as Slurm saw it: ``job_id``, ``array_index``, ``state``, ``exit_code``,
    ``signal``, ``reason``, ``node``, ``elapsed`` (seconds), ``requested_memory``, ``requested_time``,
    ``stderr_tail`` (the last lines of the job's stderr log) and ``log_path``.
    """

    def __init__(self, message: str, *, job_id: str = "", array_index: Optional[int] = None,
                 state: str = "", exit_code: Optional[int] = None, signal: Optional[int] = None,
                 reason: str = "", node: str = "", elapsed: Optional[float] = None,
                 requested_memory: str = "", requested_time: str = "", stderr_tail: str = "",
                 log_path: str = "", cancelled_by: str = ""):
        super().__init__(message)
        self.job_id = job_id
        self.array_index = array_index
        self.state = state
        self.exit_code = exit_code
        self.signal = signal
        self.reason = reason
        self.node = node
        self.elapsed = elapsed
        self.requested_memory = requested_memory
        self.requested_time = requested_time
        self.stderr_tail = stderr_tail
        self.log_path = log_path
        self.cancelled_by = cancelled_by

    def _fields(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in (
            "job_id", "array_index", "state", "exit_code", "signal", "reason", "node", "elapsed",
            "requested_memory", "requested_time", "stderr_tail", "log_path", "cancelled_by")}

    def __reduce__(self):
        return (_rebuild_job_error, (type(self), str(self), self._fields()))


def _rebuild_job_error(cls, message, fields):
    return cls(message, **fields)


class SlurmOutOfMemoryError(SlurmJobError):
    """The job was killed for using more memory than it requested (``OUT_OF_MEMORY``)."""


class SlurmTimeLimitError(SlurmJobError):
    """The job hit its time limit (``TIMEOUT``)."""


class SlurmNodeFailError(SlurmJobError):
    """The node running the job failed or was set down (``NODE_FAIL``)."""


class SlurmCancelledError(SlurmJobError):
    """The job was cancelled by someone or something other than this weave (``CANCELLED``)."""


class SlurmPreemptedError(SlurmJobError):
    """The job was preempted by a higher-priority job (``PREEMPTED``)."""


class SlurmJobFailedError(SlurmJobError):
    """The job's process exited non-zero or was killed by a signal without reporting (``FAILED``)."""


class SlurmBootFailError(SlurmJobError):
    """The node could not be booted for the job (``BOOT_FAIL``)."""


class SlurmQueueTimeoutError(SlurmJobError):
    """The job stayed pending longer than ``executor_config.queue_timeout`` and was cancelled."""


__all__ = [
    "SlurmBootFailError", "SlurmCancelledError", "SlurmCommandError", "SlurmError", "SlurmJobError",
    "SlurmJobFailedError", "SlurmNodeFailError", "SlurmOutOfMemoryError", "SlurmPreemptedError",
    "SlurmQueueTimeoutError", "SlurmSubmitLimitError", "SlurmTimeLimitError",
]
