"""The messages between the scheduler's remote runtime, executors and adapters: small frozen dataclasses.

``RunTask``, ``CancelTask`` and ``Shutdown`` go to an executor (``send``); an executor's ``recv`` returns event
frames, which the runtime reads as an ``Event``. Whoever receives a message cannot change it for the next
reader (an adapter reports a submission through ``BackendAdapter.record_submission`` or its return value,
never by writing into the message).

Every message is also a read-only mapping with the published frame keys (``msg["type"]``, ``msg["run_id"]``,
``msg.get("delivery")``...), so executors and adapters written against the dict frames of wove 2.0.3 keep
working unchanged; ``dict(msg)`` gives such a frame.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

if TYPE_CHECKING:
    from ..executors.records import RunRecord


class _Frame(Mapping[str, Any]):
    """Read-only mapping view of a frozen dataclass (its fields are the frame's keys)."""

    __slots__ = ()

    def __getitem__(self, key: str) -> Any:
        if key in self._keys():
            return getattr(self, key)
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    @classmethod
    def _keys(cls) -> tuple[str, ...]:
        keys = cls.__dict__.get("_KEYS")
        if keys is None:
            keys = tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
            type.__setattr__(cls, "_KEYS", keys)
        return keys


@dataclass(frozen=True, eq=False)
class Delivery(_Frame):
    """The delivery settings a worker needs (see ``delivery_*`` in the README)."""

    timeout: Optional[float] = None
    heartbeat_seconds: Optional[float] = None
    idempotency_key: Optional[str] = None
    cancel_mode: str = "best_effort"
    orphan_policy: str = "cancel"


@dataclass(frozen=True, eq=False)
class RunTask(_Frame):
    """Run one attempt of one call (a task, or one item of a mapped task) under a fresh ``run_id``."""

    run_id: str
    task_id: str
    task_name: str
    callable: Callable[..., Any]
    args: tuple[tuple[Any, ...], dict[str, Any]]
    delivery: Delivery
    attempt: int = 0
    map_index: Optional[int] = None
    resources: Optional[dict[str, Any]] = None
    group: Optional[str] = None      # calls of one group that become ready together may share a job
    workers: Optional[int] = None    # a mapped task's ``workers`` (an array throttle, for Slurm)
    record: Optional[RunRecord] = None   # the run's introspection record; adapters fill in job details
    #: A packed element: the ``(args, kwargs)`` of each of its items, run in one job (``args`` is unused);
    #: its outcomes come as ``items_done`` events and the final ``task_result`` (see ``dispatch.batch``).
    batch: Optional[Collection[tuple[tuple[Any, ...], dict[str, Any]]]] = None
    #: A checkpointed call submitted again: the state its task saved (``restoring`` tells a ``None`` state
    #: from none at all); the job's ``wove.slurm.restored_state()`` returns it.
    restore: Any = None
    restoring: bool = False
    type: str = field(default="run_task", init=False)


@dataclass(frozen=True, eq=False)
class CancelTask(_Frame):
    """Stop a run (and acknowledge with a ``task_cancelled`` event when ``require_ack``)."""

    run_id: str
    task_id: str
    delivery_cancel_mode: str = "best_effort"
    delivery_orphan_policy: str = "cancel"
    reason: str = ""
    record: Optional[RunRecord] = None
    type: str = field(default="cancel_task", init=False)


@dataclass(frozen=True, eq=False)
class Shutdown(_Frame):
    """The environment is done: release everything."""

    type: str = field(default="shutdown", init=False)


Command = Union[RunTask, CancelTask, Shutdown]

EVENT_KINDS = ("task_started", "task_result", "task_error", "task_cancelled", "heartbeat", "items_done",
               "task_checkpoint")


@dataclass(frozen=True, eq=False)
class Event(_Frame):
    """One event about a run, as the runtime reads it; ``extra`` keeps any field of the frame not named here."""

    type: str
    run_id: str
    task_id: Optional[str] = None
    result: Any = None
    exception: Optional[BaseException] = None
    error: Optional[dict[str, Any]] = None
    signal: Optional[str] = None
    node: Optional[str] = None
    host: Optional[str] = None
    job_id: Optional[str] = None
    incarnation: int = 0
    late: bool = False          # a finished run's event, acknowledged but never decoded
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_frame(cls, frame: Mapping[str, Any]) -> Event:
        """Read an executor's event frame (a dict, from any executor, or an ``Event``)."""
        if isinstance(frame, Event):
            return frame
        known = {name: frame[name] for name in _EVENT_FIELDS if name in frame}
        extra = {k: v for k, v in frame.items() if k not in _EVENT_FIELDS}
        known.setdefault("run_id", "")
        known.setdefault("type", "")
        exception = known.get("exception")
        if exception is not None and not isinstance(exception, BaseException):
            known["exception"] = None
        return cls(**known, extra=extra)


_EVENT_FIELDS = frozenset(f.name for f in dataclasses.fields(Event)) - {"extra"}
