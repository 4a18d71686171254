"""Every public exception wove raises.

Every class derives from ``WoveError``, so ``except wove.WoveError`` catches anything wove itself raises.
Each one also derives from the builtin a user would catch for that situation (and that the published
wove 2.0.3 raised), so existing ``except ValueError`` / ``TypeError`` / ``NameError`` / ``RuntimeError``
clauses keep working::

    WoveError
    +-- UsageError                              wove was configured or called in a way that cannot work
    |   +-- InvalidValueError (ValueError)      an option, setting, environment or argument has a bad value
    |   |   +-- EnvironmentDefinitionError (TypeError too)  an environment, ``environments`` or ``WOVE_CONFIG``
    |   |                                       that is not a dict, or an executor that is neither a name
    |   |                                       nor an ``EnvironmentExecutor``
    |   +-- InvalidTypeError (TypeError)        an argument of the wrong type, or an option or key wove
    |   |   |                                   does not know
    |   |   +-- TaskDefinitionError             a task is declared in a way that cannot run
    |   |   +-- TemplateError                   a ``Weave`` template instantiated directly, or not a template
    |   |   +-- MapSourceError                  a mapped task's source is not iterable
    |   +-- UnresolvedSignatureError (NameError)  a parameter names nothing the weave has
    |   +-- ReservedNameError (NameError)       a task or init value uses a name wove reserves
    |   +-- UnknownEnvironmentError (NameError)   an environment name that is not configured
    |   +-- DependencyCycleError (RuntimeError, ValueError)  tasks depend on each other in a circle
    |   +-- WeaveStateError (RuntimeError)      merge() outside a running task, wait() before the block ran
    |   +-- UnknownResultError (KeyError, AttributeError)  reading a name that is no task or init value
    |   +-- ConfigFileNotFoundError (FileNotFoundError)  an explicit ``config_file`` that does not exist
    +-- TaskCancelledError (RuntimeError)       reading a task that never finished
    +-- TooManyItemsError (RuntimeError)        a mapped task has more items than ``max_pending``
    +-- WaitTimeoutError (TimeoutError)         ``w.wait(timeout)`` ran out before the weave finished
    +-- MissingDispatchFeatureError (ImportError, RuntimeError)  ``pip install "wove[dispatch]"`` is needed
    +-- DeliveryTimeoutError (TimeoutError, RuntimeError)  a remote result or heartbeat did not arrive in time
    +-- DeliveryOrphanedError (RuntimeError)    remote work left behind when the weave stopped
    +-- EnvironmentExecutionError (RuntimeError)  a remote task failed and its exception could not be
        |                                         rebuilt, or the executor itself failed
        +-- ExecutorStartError                  an environment's executor could not start
        +-- SlurmError                          anything that went wrong talking to Slurm
            +-- SlurmCommandError               sbatch/scancel/squeue failed (exit code + stderr)
            +-- SlurmSubmitLimitError           a per-user submit limit is used up by other jobs
            +-- SlurmJobError                   a job ended without reporting an outcome
                +-- SlurmOutOfMemoryError
                +-- SlurmTimeLimitError
                +-- SlurmNodeFailError
                +-- SlurmCancelledError
                +-- SlurmPreemptedError
                +-- SlurmJobFailedError
                +-- SlurmBootFailError
                +-- SlurmQueueTimeoutError      pending longer than `queue_timeout`

Where wove 2.0.3 raised the same error, the message starts with 2.0.3's words (so ``pytest.raises(...,
match=...)`` written against it still matches) and goes on with a longer explanation.
"""

from __future__ import annotations

from typing import Any, Optional


class WoveError(Exception):
    """Base class of every exception defined by wove."""


# --------------------------------------------------------------------------- mistakes in using wove


class UsageError(WoveError):
    """wove was configured or called in a way that cannot work (found before the mistaken part runs)."""


class InvalidValueError(UsageError, ValueError):
    """An option, setting, environment or argument has a value wove cannot use."""


class InvalidTypeError(UsageError, TypeError):
    """An argument of the wrong type, or an option or configuration key wove does not know."""


class EnvironmentDefinitionError(InvalidValueError, InvalidTypeError):
    """An environment (or ``environments``, or ``WOVE_CONFIG``) that is not a dict, or a bad ``executor``.

    Both a ``ValueError`` (what wove raised before) and a ``TypeError`` (what wove 2.0.3 raised).
    """


class TaskDefinitionError(InvalidTypeError):
    """A task was declared in a way that can never run (for example a mapped task with no item parameter)."""


class TemplateError(InvalidTypeError):
    """A ``Weave`` template was instantiated directly, or ``weave(parent)`` got something else."""


class MapSourceError(InvalidTypeError):
    """A mapped task (or ``merge(fn, iterable)``) was given something that is not iterable."""


class UnresolvedSignatureError(UsageError, NameError):
    """A task parameter matches no task, init value or ``data``."""


class ReservedNameError(UsageError, NameError):
    """A task or init value uses a name wove reserves (``data``, or a ``WoveResult`` attribute)."""


class UnknownEnvironmentError(UsageError, NameError):
    """An environment name that is not configured."""


class DependencyCycleError(UsageError, RuntimeError, ValueError):
    """The tasks' parameters form a cycle, so no task on it could ever start.

    A ``RuntimeError`` as in wove 2.0.3, and a ``ValueError`` as in earlier versions of this library.
    ``cycle`` lists the tasks on the cycle, the first repeated at the end.
    """

    def __init__(self, message: str, cycle: Optional[list[str]] = None):
        super().__init__(message)
        self.cycle = list(cycle or [])

    def __reduce__(self):
        return (type(self), (str(self), self.cycle))


class WeaveStateError(UsageError, RuntimeError):
    """Something the weave's state does not allow: ``merge()`` outside a running task, ``wait()`` too early."""


class UnknownResultError(UsageError, KeyError, AttributeError):
    """Reading ``w.result.name`` or ``w.result["name"]`` for a name that is no task or init value.

    Both a ``KeyError`` (for ``[]``) and an ``AttributeError`` (for ``.name``, so ``hasattr`` and
    ``getattr(result, name, default)`` work).
    """

    def __str__(self) -> str:   # the message as written, not KeyError's quoted repr of it
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class ConfigFileNotFoundError(UsageError, FileNotFoundError):
    """``wove.config(config_file=...)`` names a file that does not exist."""


# --------------------------------------------------------------------------- running


class TaskCancelledError(WoveError, RuntimeError):
    """Raised (or returned) when reading a task that was cancelled or never started."""


class TooManyItemsError(WoveError, RuntimeError):
    """A mapped task has more items than ``max_pending`` allows."""


class WaitTimeoutError(WoveError, TimeoutError):
    """``w.wait(timeout=...)`` returned because the background or forked weave had not finished in time."""


class MissingDispatchFeatureError(WoveError, ImportError, RuntimeError):
    """An optional dispatch feature was used without ``wove[dispatch]`` installed.

    An ``ImportError``, and a ``RuntimeError`` as in wove 2.0.3. ``reason`` names the feature.
    """

    def __init__(self, feature: str = "this feature"):
        self.reason = feature
        super().__init__(
            f"Wove dispatch features require cloudpickle. {feature} needs the dispatch extra: "
            'pip install "wove[dispatch]" in the submitting environment and in the worker environment'
        )

    def __reduce__(self):
        return (type(self), (self.reason,))


class DeliveryTimeoutError(WoveError, TimeoutError, RuntimeError):
    """A remote task's outcome (or its heartbeat) did not arrive within the configured window.

    A ``TimeoutError``, and a ``RuntimeError`` as in wove 2.0.3.
    """


class DeliveryOrphanedError(WoveError, RuntimeError):
    """Remote work was still pending when the weave stopped."""


class EnvironmentExecutionError(WoveError, RuntimeError):
    """A remote run failed and the original exception could not be rebuilt, or the executor failed.

    ``payload`` is the normalized error dict: ``{kind, message, traceback, retryable, source}``.
    """

    def __init__(self, message: str, payload: Optional[dict[str, Any]] = None):
        super().__init__(message)
        self.payload: dict[str, Any] = payload if payload is not None else {
            "kind": type(self).__name__,
            "message": message,
            "traceback": "",
            "retryable": False,
            "source": "executor",
        }

    def __reduce__(self):  # keep the payload when pickled across processes
        return (type(self), (str(self), self.payload))


class ExecutorStartError(EnvironmentExecutionError):
    """An environment's executor could not start (missing module, bad command, port in use...)."""


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


__all__ = [name for name, value in list(globals().items())
           if isinstance(value, type) and issubclass(value, BaseException)]
