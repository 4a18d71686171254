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
    |   |   +-- TaskPicklingError               a remote task's function, argument or return value cannot
    |   |                                       be pickled
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
    +-- SpoolFullError (OSError)                a payload or result does not fit in the spool's filesystem
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

The Slurm classes are defined in ``wove.slurm.errors`` (beside the code that raises them) and importable from
here as well; they are loaded on first use, so this module imports nothing of Slurm.

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


class SpoolFullError(WoveError, OSError):
    """A payload, shared input or result does not fit in the spool directory's filesystem (or quota).

    ``directory`` is where it was to be written, ``needed`` its size in bytes, ``available`` the free bytes
    there when it was checked (``None`` if unknown). Its partial file has been deleted.
    """

    def __init__(self, message: str, directory: str = "", needed: int = 0, available: Optional[int] = None):
        super().__init__(message)
        self.errno = 28   # ENOSPC
        self.directory, self.needed, self.available = directory, needed, available

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __reduce__(self):
        return (type(self), (str(self), self.directory, self.needed, self.available))


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


class CheckpointRequested(EnvironmentExecutionError):
    """A remote task ended its attempt with ``wove.slurm.checkpoint(state)``: wove submits the call again
    with ``state`` (seen only when that is not possible, e.g. through an executor that cannot requeue)."""

    def __init__(self, message: str, state: Any = None):
        super().__init__(message)
        self.state = state

    def __reduce__(self):
        return (type(self), (str(self), self.state))


class ReattachError(EnvironmentExecutionError):
    """A packed element an earlier driver submitted cannot be reattached (its run directory went away): its
    items are submitted afresh, as a new element (``wove._packed``)."""


class RequeueLimitError(EnvironmentExecutionError):
    """A call checkpointed (or lost its node) more often than ``max_requeues`` allows."""


# --------------------------------------------------------------------------- Slurm (defined in wove.slurm.errors)

#: Names that live in ``wove.slurm.errors`` and stay importable from here. They are loaded on first use
#: (PEP 562), so importing ``wove.errors`` never imports Slurm code; ``_rebuild_*`` keep older pickles loading.
#: (Type checkers see them as ``Any`` here; ``wove.slurm`` and ``wove.slurm.errors`` give the real types.)
_SLURM_NAMES = (
    "SlurmError", "SlurmCommandError", "SlurmSubmitLimitError", "SlurmJobError", "SlurmOutOfMemoryError",
    "SlurmTimeLimitError", "SlurmNodeFailError", "SlurmCancelledError", "SlurmPreemptedError",
    "SlurmJobFailedError", "SlurmBootFailError", "SlurmQueueTimeoutError",
)
_SLURM_HELPERS = ("_rebuild_limit_error", "_rebuild_job_error")


_LAZY = ("TaskTimeoutError",)


def __getattr__(name: str) -> Any:
    if name == "TaskTimeoutError":   # defined beside asyncio's TimeoutError, which it also is (3.9+)
        from ._call import TaskTimeoutError

        globals()[name] = TaskTimeoutError
        return TaskTimeoutError
    if name in _SLURM_NAMES or name in _SLURM_HELPERS:
        from .slurm import errors as slurm_errors

        value = getattr(slurm_errors, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SLURM_NAMES) | {"TaskTimeoutError"})


__all__ = [*(name for name, value in list(globals().items())
             if isinstance(value, type) and issubclass(value, BaseException)), *_SLURM_NAMES, *_LAZY]


class TaskPicklingError(InvalidTypeError):
    """A remote task's function, an argument or its return value cannot be pickled, so it cannot travel.

    A ``TypeError`` (what pickle raises). ``task`` names the task, ``what`` the part that failed
    (``"argument 'x'"``, ``"the function itself"``, ``"return value"``), ``type_name`` the type that could
    not be pickled; the original error is the ``__cause__``.
    """

    def __init__(self, message: str, *, task: Optional[str] = None, what: Optional[str] = None,
                 type_name: Optional[str] = None):
        super().__init__(message)
        self.task, self.what, self.type_name = task, what, type_name


__all__.append("TaskPicklingError")
