"""Helpers for code that runs inside a Slurm job (a task's body). Light: nothing of the submit side.

``from wove.slurm import time_limit_near`` loads this module and ``wove/slurm/__init__.py`` only, never the
adapter, the monitor, the scheduler or asyncio, because it runs in every job that asks.
"""

from __future__ import annotations

TYPE_CHECKING = False   # `typing` is not needed at run time: jobs import this file
if TYPE_CHECKING:
    from typing import Any


def checkpoint(state: Any = None, *, stop: bool = True) -> None:
    """Save ``state`` and end this job's attempt: wove submits the same call again (not counted against
    ``retries``, at most ``max_requeues`` times) and the next job's ``restored_state()`` returns ``state``.

    With ``stop=False`` the state is only saved (in the run's spool) and the task goes on; if Slurm requeues
    this job (a preemption, ``scontrol requeue``, a lost node), the requeued job starts from the last state
    saved so. Call it from a task running in a Slurm job (elsewhere it raises ``RuntimeError``).
    """
    from ..dispatch import checkpoint as saved

    if not stop:
        saved.save(state)
        return
    raise saved.Checkpoint(state)


def restored_state() -> Any:
    """The state the previous job of this call checkpointed (or, after a requeue by Slurm, this job last
    saved with ``checkpoint(state, stop=False)``); ``None`` on a first run."""
    from ..dispatch import checkpoint as saved

    return saved.restored()


def time_limit_near() -> bool:
    """True once this job was warned (SIGUSR1 via ``signal_before_timeout``) that its time is nearly up."""
    from ..dispatch.worker import TIME_WARNING  # the worker that runs this task has it loaded already

    return TIME_WARNING.is_set()
