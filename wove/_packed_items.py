"""Packed maps, the parts around ``_packed._Map``: which maps can be packed, an element's arguments made
on demand, and rebuilding a packed item's failure (with its job's logs).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Collection, Iterator, Sequence
from typing import Any, Callable, Optional

from .dispatch.error_payload import rebuild_exception
from .errors import EnvironmentExecutionError, TaskPicklingError
from .executors import joblogs
from .executors.records import RunRecord

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._scheduler import Runtime
    from .executors.runtime import RemoteEnvironment

_SMALL = 4096


def eligible(runtime: Runtime, remote: Optional[RemoteEnvironment], settings: dict[str, Any],
             resources: Optional[dict[str, Any]], first_call: Optional[tuple[tuple[Any, ...], dict[str, Any]]]
             ) -> int:
    """Items per element when this map can go out packed, else 0 (take the per-item path)."""
    if remote is None or first_call is None:
        return 0
    if settings["timeout"] is not None or settings["workers"] or settings["limit_per_minute"]:
        return 0
    if settings["delivery_timeout"] or settings["delivery_idempotency_key"] is not None:
        return 0
    if settings["delivery_orphan_policy"] == "detach":
        return 0
    if runtime.resolver.task_value("delivery_max_in_flight", {}, remote.name):
        return 0
    size = remote.batch_size(resources)
    if size <= 1:
        return 0
    args, kwargs = first_call
    # Large inputs every item shares travel once per run directory on the per-item path (shared inputs);
    # packed, they would be pickled into every element.
    if not all(_small(value) for value in (*args, *kwargs.values())):
        return 0
    return size


def _small(value: Any) -> bool:
    if isinstance(value, (type(None), bool, int, float, complex)):
        return True
    if isinstance(value, (str, bytes)):
        return len(value) <= _SMALL
    if isinstance(value, tuple) and len(value) <= 16:
        return all(_small(part) for part in value)
    return False


class Calls(Collection[tuple[tuple[Any, ...], dict[str, Any]]]):
    """An element's items' ``(args, kwargs)``, made as the payload builder reads them (in its thread) and
    never kept: a million items in flight hold no million argument dicts."""

    __slots__ = ("_bind", "_indices", "_items")

    def __init__(self, bind: Callable[[Any], tuple[tuple[Any, ...], dict[str, Any]]], items: Sequence[Any],
                 indices: Sequence[Optional[int]]):
        self._bind, self._items, self._indices = bind, items, indices

    def __len__(self) -> int:
        return sum(1 for index in self._indices if index is not None)

    def __iter__(self) -> Iterator[tuple[tuple[Any, ...], dict[str, Any]]]:
        bind, items = self._bind, self._items
        for index in self._indices:
            if index is not None:
                yield bind(items[index])

    def __contains__(self, call: object) -> bool:
        return any(call == other for other in self)


def rebuild(fields: Any, record: RunRecord, remote: RemoteEnvironment) -> BaseException:
    """An item's exception from its error fields (the job's traceback text, and the pickled exception when
    it can be rebuilt here)."""
    if not isinstance(fields, dict):
        return RuntimeError(f"malformed item outcome: {type(fields).__name__}")
    exception = None
    encoded = fields.get("exception_pickle")
    if isinstance(encoded, str):
        try:
            exception = remote.load_value(base64.b64decode(encoded))
        except Exception:
            exception = None
    error: dict[str, Any] = fields["error"] if isinstance(fields.get("error"), dict) else {}
    return rebuild_exception(exception if isinstance(exception, BaseException) else None, error)


def unreadable(name: str, exc: Exception) -> BaseException:
    return EnvironmentExecutionError(
        f"an item of task {name!r} finished but its result could not be unpickled in the weave process: "
        f"{type(exc).__name__}: {exc}")


async def attach_logs(failures: list[BaseException], record: RunRecord) -> None:
    """Give each failed item's exception its job (``exc.wove_job``: log paths and the stderr tail, read once
    for the element, in a thread)."""
    failures = [exc for exc in failures if getattr(exc, "wove_job", None) is None]
    if not failures or not (record.job_id or record.stderr_path):
        return
    text = await asyncio.to_thread(joblogs.tail, record.stderr_path)
    logs = joblogs.JobLogs(record.job_id, record.node, record.stdout_path, record.stderr_path, text)
    for exc in failures:
        joblogs.attach(exc, logs, note=getattr(exc, "stderr_tail", None) is None)


def unpicklable_items(func: Callable[..., Any], bind: Callable[[Any], tuple[tuple[Any, ...], dict[str, Any]]],
                      items: Sequence[Any], indices: Sequence[Optional[int]], name: str
                      ) -> dict[int, TaskPicklingError]:
    """(Thread) The items of an element whose arguments cannot be pickled, each with the error that names it
    (its index, the argument, the part): they fail alone, as they would one item per job."""
    from .dispatch import pickling

    bad: dict[int, TaskPicklingError] = {}
    for index in indices:
        if index is None:
            continue
        args, kwargs = bind(items[index])
        try:
            pickling.pickle_arguments(func, args, kwargs, name, f"{name}[{index}]")
        except TaskPicklingError as exc:
            bad[index] = exc
    return bad
