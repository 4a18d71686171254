"""Helpers for code that runs inside a Slurm job (a task's body). Light: nothing of the submit side.

``from wove.slurm import time_limit_near`` loads this module and ``wove/slurm/__init__.py`` only, never the
adapter, the monitor, the scheduler or asyncio, because it runs in every job that asks.
"""

from __future__ import annotations


def time_limit_near() -> bool:
    """True once this job was warned (SIGUSR1 via ``signal_before_timeout``) that its time is nearly up."""
    from ..dispatch.worker import TIME_WARNING  # the worker that runs this task has it loaded already

    return TIME_WARNING.is_set()
