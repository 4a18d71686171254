"""Checkpoints of a remote task (job side): the state a task saves and the state its next job starts from.

``wove.slurm.checkpoint(state)`` raises ``Checkpoint``: the worker reports a ``task_checkpoint`` event with
the state (pickled like a result: inline when small, a spool file when large) and the weave submits the same
call again, with that state in the new payload (``restored_state``), without using up ``retries``.
``checkpoint(state, stop=False)`` only saves the state in the run's spool (``<run>.state``) and the task goes
on: when Slurm itself requeues the job (preemption, ``scontrol requeue``, a failed node), the requeued job
starts from the last state saved that way.

Job side, like ``worker``: only cheap standard-library modules at import.
"""

from __future__ import annotations

import os

from . import protocol, spool

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Optional

_NOTHING = object()
_current: dict[str, Any] = {}   # the running payload's restored state (as loaded) and where to save states


class Checkpoint(BaseException):
    """Raised by ``checkpoint(state)`` to end the attempt; a ``BaseException`` so ``except Exception`` in the
    task does not swallow it."""

    def __init__(self, state: Any):
        super().__init__("checkpoint")
        self.state = state


def begin(payload: dict[str, Any]) -> None:
    """The worker is about to run ``payload``'s task: note where its states go and what it starts from."""
    _current.clear()
    _current["payload"] = payload


def state_path(payload: dict[str, Any]) -> Optional[str]:
    spool_dir = payload.get("spool_dir")
    return os.path.join(spool_dir, f"{payload['run_id']}.state") if spool_dir else None


def restored() -> Any:
    """The state this run starts from: the one its payload carries (a checkpoint of an earlier job), or
    after Slurm requeued this very job, the last one it saved; ``None`` on a first run."""
    if "restored" in _current:
        return _current["restored"]
    from .transfer import _load_field

    payload = _current.get("payload")
    value: Any = None
    if payload is not None:
        field = payload.get("restored_state")
        if isinstance(field, str):
            value = _load_field(field, "restored state", str(payload.get("cloudpickle") or ""))
        path = state_path(payload)
        if path and int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0 and os.path.exists(path):
            value = _load_field(protocol.SPOOL_PREFIX + path, "saved state", str(payload.get("cloudpickle") or ""))
    _current["restored"] = value
    return value


def save(state: Any) -> None:
    """Write ``state`` to the run's spool (private, atomic), for a requeued job of the same run."""
    from .transfer import _dumps

    payload = _current.get("payload")
    if payload is None:
        raise RuntimeError("wove.slurm.checkpoint(state, stop=False) saves a state only inside a remote task")
    path = state_path(payload)
    if path is None:
        raise RuntimeError("this run has no spool directory to save its state in")
    spool.write_private(os.path.dirname(path), os.path.basename(path), _dumps(state))
