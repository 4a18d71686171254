"""One call of a task's function: its retries, its per-attempt timeout, and where it runs.

A call runs in this process (sync functions in the weave's thread pool, async ones on the loop) or, for a
task whose environment is remote, as a ``RemoteCall`` handed to that environment. A failed attempt is
retried up to ``retries`` times; a remote environment may adjust the resources of the next attempt (for
example more memory after an out-of-memory kill).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from .errors import CheckpointRequested, RequeueLimitError, WoveError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._scheduler import Runtime
    from .executors.records import RunRecord
    from .journal.store import Entry


class TaskTimeoutError(WoveError, asyncio.TimeoutError):
    """An attempt of a task ran longer than its ``timeout`` (``except asyncio.TimeoutError`` catches it)."""


@dataclass
class RemoteCall:
    """What an environment needs to run one attempt of one task (or one item of a mapped task)."""

    task_name: str
    func: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    settings: dict[str, Any]
    map_index: Optional[int] = None
    attempt: int = 0
    records: Optional[list[RunRecord]] = field(default_factory=list)
    resources: Optional[dict[str, Any]] = None
    group: Optional[str] = None  # calls with the same group that become ready together may share a job
    journal_key: Optional[str] = None   # in a journaled weave: recorded as submitted once its job is known
    #: A packed element (``wove._packed``): every item's ``(args, kwargs)``, its record made by the caller,
    #: and the callback that takes each ``items_done`` / final ``task_result`` outcome list.
    batch: Optional[Collection[tuple[tuple[Any, ...], dict[str, Any]]]] = None
    record: Optional[RunRecord] = None
    on_items: Optional[Callable[[Any], None]] = None
    restore: Any = None        # a checkpointed call's state, for its next job (``restoring`` says there is one)
    restoring: bool = False
    journal_keys: Optional[list[Optional[str]]] = None   # a packed element's items' keys, in element order
    map_indices: Optional[list[Optional[int]]] = None    # ... and their indices in the map


async def call(runtime: Runtime, name: str, func: Callable[..., Any], is_async: bool, args: tuple[Any, ...],
               kwargs: dict[str, Any], settings: dict[str, Any], environment: str, *,
               map_index: Optional[int] = None, resources: Optional[dict[str, Any]] = None,
               group: Optional[str] = None, pool: Optional[ThreadPoolExecutor] = None) -> Any:
    """Run one call with the task's retries and per-attempt timeout, wherever its environment says.

    In a journaled weave a call an earlier run finished is read back instead of run, and a call that ends
    here is recorded (see ``wove.journal``).
    """
    journal = runtime.journal if settings.get("journal", True) else None
    if journal is None:
        return await _attempts(runtime, name, func, is_async, args, kwargs, settings, environment,
                               map_index=map_index, resources=resources, group=group, pool=pool)
    key = await journal.key(name, func, args, kwargs, environment, resources)
    adopt = None
    if key is not None:
        entry = journal.lookup(key)
        if entry is not None:
            value = await journal.finished_value(entry)
            if not journal.is_missing(value):
                _note_reused(runtime, name, environment, map_index, entry)
                return value
            if entry.state == "submitted":   # its job may still be pending or running: reattach to it
                remote = await runtime.environment(environment)
                info = {**entry.info, "job_id": entry.job_id}
                if remote is not None and remote.can_adopt(info):
                    adopt = info
                    journal.last_job[key] = entry.job_id
    try:
        value = await _attempts(runtime, name, func, is_async, args, kwargs, settings, environment,
                                map_index=map_index, resources=resources, group=group, pool=pool,
                                journal_key=key, adopt=adopt)
    except Exception as exc:
        if key is not None:   # shown by `wove journal`; a rerun runs the call again
            journal.record(key, name, "failed", index=map_index, error=f"{type(exc).__name__}: {exc}"[:500])
        raise
    if key is not None:
        await journal.record_done(key, name, map_index, value, job_id=journal.last_job.pop(key, None))
    return value


def _note_reused(runtime: Runtime, name: str, environment: str, map_index: Optional[int], entry: Entry) -> None:
    """A call read back from the journal shows in ``w.result.jobs`` with state ``JOURNALED``."""
    from .executors.records import RunRecord

    runtime.journal_reused += 1
    runtime.result._records(name).append(RunRecord(
        task=name, run_id="", environment=environment, map_index=map_index, job_id=entry.job_id,
        state="JOURNALED", outcome="result", finished_at=entry.time, details={"journal": "reused"}))


def attempt_line(attempt: int, exc: BaseException, resources: Optional[dict[str, Any]]) -> str:
    """``attempt 1: SlurmNodeFailError on node n2 (job 41, mem=100M): <first line>``, for the final error."""
    node = getattr(exc, "node", "") or ""
    job = getattr(exc, "job_id", "") or ""
    shown = ", ".join(f"{k}={v}" for k, v in (resources or {}).items() if not k.startswith("_"))
    where = ", ".join(part for part in (f"job {job}" if job else "", shown) if part)
    first = (str(exc).splitlines() or [""])[0][:200]
    return (f"attempt {attempt + 1}: {type(exc).__name__}" + (f" on node {node}" if node else "")
            + (f" ({where})" if where else "") + (f": {first}" if first else ""))


def note_attempts(exc: BaseException, history: list[str]) -> None:
    """List every attempt of a call on its final error (``exc.wove_attempts`` and a traceback note)."""
    try:
        exc.wove_attempts = list(history)   # type: ignore[attr-defined]
    except (AttributeError, TypeError):
        pass
    add_note = getattr(exc, "add_note", None)
    if add_note is not None:
        add_note("wove: attempts of this call:\n  " + "\n  ".join(history))


async def _attempts(runtime: Runtime, name: str, func: Callable[..., Any], is_async: bool, args: tuple[Any, ...],
                    kwargs: dict[str, Any], settings: dict[str, Any], environment: str, *,
                    map_index: Optional[int] = None, resources: Optional[dict[str, Any]] = None,
                    group: Optional[str] = None, pool: Optional[ThreadPoolExecutor] = None,
                    journal_key: Optional[str] = None, adopt: Optional[dict[str, Any]] = None) -> Any:
    """The attempts of one call; the first one reattaches to ``adopt`` (a journaled job) when given."""
    remote = await runtime.environment(environment)
    retries, timeout = settings["retries"], settings["timeout"]
    records = runtime.result._records(name) if remote is not None else None
    attempt = charged = free = requeues = 0   # attempts / those that used up a retry / lost nodes / checkpoints
    history: list[str] = []
    restore: tuple[Any, ...] = ()   # (state,) once the task checkpointed
    while True:
        if remote is None:
            if is_async:
                awaitable = func(*args, **kwargs)
            else:
                awaitable = runtime.loop.run_in_executor(pool or runtime.pool(),
                                                         functools.partial(func, *args, **kwargs))
        else:
            awaitable = remote.run(RemoteCall(
                name, func, args, kwargs, settings, map_index=map_index, attempt=attempt,
                records=records, resources=resources, group=group, journal_key=journal_key,
                restore=restore[0] if restore else None, restoring=bool(restore)),
                adopt=adopt if attempt == 0 else None)
        try:
            if timeout is None:
                return await awaitable
            try:
                return await asyncio.wait_for(awaitable, timeout)
            except asyncio.TimeoutError as exc:
                where = f"item {map_index} of task {name!r}" if map_index is not None else f"task {name!r}"
                raise TaskTimeoutError(
                    f"{where} timed out after {timeout}s (attempt {attempt + 1} of {retries + 1})"
                ) from exc
        except CheckpointRequested as saved:
            if remote is None:
                raise
            limit = remote.requeue_limit(resources)
            if requeues >= limit:
                raise RequeueLimitError(
                    f"task {name!r}{'' if map_index is None else f' item {map_index}'} checkpointed "
                    f"{requeues + 1} times, more than max_requeues={limit}: raise max_requeues (executor_config, "
                    "or resources={'max_requeues': ...}), or let each job do more of the work") from saved
            requeues += 1
            attempt += 1
            restore = (saved.state,)
        except Exception as exc:
            is_free = False
            if remote is not None:
                history.append(attempt_line(attempt, exc, resources))
                is_free = free < remote.free_retries(exc)   # a lost node, a preemption: not the task's fault
            if not is_free and charged >= retries:
                if len(history) > 1:
                    note_attempts(exc, history)
                raise
            attempt += 1
            if is_free:
                free += 1
            else:
                charged += 1
            if remote is not None:
                resources = remote.adjust_for_retry(exc, resources, settings)
