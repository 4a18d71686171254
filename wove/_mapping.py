"""Mapped tasks: one call per item of an iterable or of an upstream task's value, results in input order.

``@w.do(items)`` / ``@w.do("upstream")`` and ``merge(fn, items)`` come here. A local map with no retries,
timeout, ``workers`` or ``limit_per_minute`` takes a fast path (sync items straight into the thread pool with
one loop wake-up for the whole map); everything else is one ``_call.call`` per item, at most ``workers`` at a
time and at most ``limit_per_minute`` started in any minute.

A failed item (after its own retries) does what the task's ``item_errors`` says: ``"raise"`` (the default, as
in wove 2.0.3) cancels the remaining items and fails the task; ``"return"`` keeps the others running and puts
the exception at the item's index; ``"skip"`` drops the item. Every way, the failure is listed in
``w.result.errors``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Optional

from ._call import call
from ._graph import MapFrom, TaskSpec
from ._result import ItemError
from .errors import MapSourceError, TooManyItemsError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._scheduler import Runtime

ITEM = object()   # where a positional-only item parameter goes in a mapped task's arguments


class _Failed:
    """An item's exception while the map collects outcomes (a task may return an exception as a value)."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException):
        self.error = error


def binder(item_param: Optional[str], args: Any, kwargs: dict[str, Any]) -> Callable[[Any], Any]:
    """``item -> (args, kwargs)`` for one item of a mapped call (keyword, positional-only, or appended)."""
    args = tuple(args)
    if item_param is None:                       # merge(fn, items): fn(item)
        return lambda item: ((*args, item), kwargs)
    if ITEM in args:                             # a positional-only item parameter
        return lambda item: (tuple(item if a is ITEM else a for a in args), kwargs)
    return lambda item: (args, {**kwargs, item_param: item})


class _RateLimiter:
    """Spaces launches evenly so that at most ``per_minute`` start in any minute."""

    def __init__(self, per_minute: float):
        self._interval = 60.0 / per_minute
        self._next = 0.0

    async def wait(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        slot = max(now, self._next)
        self._next = slot + self._interval
        if slot > now:
            await asyncio.sleep(slot - now)


def _map_items(runtime: Runtime, spec: TaskSpec) -> Sequence[Any]:
    source = spec.map_source
    if isinstance(source, MapFrom):
        value = runtime._values[source.name]
        origin = f"{source.name!r}"
    else:
        value = source
        origin = "the iterable given to w.do()"
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise MapSourceError(
            f"result of type '{type(value).__name__}' is not iterable: mapped task {spec.name!r} needs an iterable "
            f"to map over, but {origin} is {type(value).__name__} {_short(value)}")
    items = value if type(value) is range else list(value)   # a range indexes itself: a million items cost nothing
    if runtime.max_pending is not None and len(items) > runtime.max_pending:
        raise TooManyItemsError(
            f"Mapped task '{spec.name}' has {len(items)} items, which exceeds max_pending={runtime.max_pending}. "
            "Raise max_pending or split the input")
    return items


async def run_mapped(runtime: Runtime, spec: TaskSpec, args: list[Any], kwargs: dict[str, Any],
                     settings: dict[str, Any], environment: str) -> list[Any]:
    """Run mapped task ``spec`` (its other inputs already in ``args`` / ``kwargs``); one value per item."""
    items = _map_items(runtime, spec)
    if not items:
        return []
    bind = binder(spec.item_param, args, kwargs)
    keep_going = (settings.get("item_errors") or "raise") != "raise"
    simple = (runtime.is_local(environment) and settings["retries"] == 0 and settings["timeout"] is None
              and settings["workers"] is None and settings["limit_per_minute"] is None and runtime.journal is None)
    if simple and not spec.is_async:
        outcomes = await _map_sync_fast(runtime, spec.name, spec.func, bind, items, keep_going)
        return settle(runtime, spec.name, items, outcomes, settings)
    if simple:
        func = spec.func
        if spec.item_first:
            coros = [func(item, **kwargs) for item in items]
        else:
            coros = []
            for item in items:
                item_args, item_kwargs = bind(item)
                coros.append(func(*item_args, **item_kwargs))
        tasks = [runtime.loop.create_task(c) for c in coros]
        outcomes = await _gather(runtime, spec.name, items, tasks, keep_going)
        return settle(runtime, spec.name, items, outcomes, settings)
    return await call_each(runtime, spec.name, spec.func, spec.is_async, items, bind, settings, environment,
                           spec.options.get("resources"))


async def call_each(runtime: Runtime, name: str, func: Callable[..., Any], is_async: bool, items: Sequence[Any],
                    bind: Callable[[Any], tuple[tuple[Any, ...], dict[str, Any]]],
                    settings: dict[str, Any], environment: str,
                    resources: Optional[dict[str, Any]] = None,
                    pool: Optional[ThreadPoolExecutor] = None) -> list[Any]:
    """One ``call`` per item (``bind(item)`` gives its arguments), honouring ``workers``,
    ``limit_per_minute`` and ``item_errors``; results in input order."""
    workers = settings["workers"]
    remote = await runtime.environment(environment)
    if remote is not None and items:   # many items to a job: one run per element (wove._packed)
        from . import _packed

        per_job = _packed.eligible(runtime, remote, settings, resources, bind(items[0]))
        if per_job:
            return await _packed.run_packed(runtime, remote, name, func, items, bind, settings, resources, per_job,
                                            group=name)
    native = remote is not None and remote.handles_workers(len(items), settings)  # e.g. Slurm's %N
    semaphore = asyncio.Semaphore(workers) if workers and not native else None
    limiter = _RateLimiter(settings["limit_per_minute"]) if settings["limit_per_minute"] else None

    async def one(index: int, item: Any) -> Any:
        call_args, call_kwargs = bind(item)
        if semaphore is not None:
            await semaphore.acquire()
        try:
            if limiter is not None:
                await limiter.wait()
            return await call(runtime, name, func, is_async, call_args, call_kwargs, settings, environment,
                              map_index=index, resources=resources, group=name, pool=pool)
        finally:
            if semaphore is not None:
                semaphore.release()

    keep_going = (settings.get("item_errors") or "raise") != "raise"
    tasks = [runtime.loop.create_task(one(i, item)) for i, item in enumerate(items)]
    outcomes = await _gather(runtime, name, items, tasks, keep_going)
    return settle(runtime, name, items, outcomes, settings)


async def _map_sync_fast(runtime: Runtime, name: str, func: Callable[..., Any], bind: Callable[[Any], Any],
                         items: Sequence[Any], keep_going: bool) -> list[Any]:
    """Thread-pool fan-out with one loop wake-up for the whole map instead of one per item."""
    loop = runtime.loop
    waiter: asyncio.Future[None] = loop.create_future()
    lock = threading.Lock()
    left = [len(items)]

    def finish(error: Optional[BaseException]) -> None:
        if not waiter.done():
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)

    def on_done(cf: Any) -> None:
        if cf.cancelled():
            return
        error = cf.exception()
        if error is not None and not (keep_going and isinstance(error, Exception)):
            loop.call_soon_threadsafe(finish, error)
            return
        with lock:
            left[0] -= 1
            last = left[0] == 0
        if last:
            loop.call_soon_threadsafe(finish, None)

    submit = runtime.pool().submit
    futures = []
    for item in items:
        item_args, item_kwargs = bind(item)
        cf = submit(func, *item_args, **item_kwargs)
        cf.add_done_callback(on_done)
        futures.append(cf)
    try:
        await waiter
    except BaseException as exc:
        for cf in futures:
            cf.cancel()
        for index, cf in enumerate(futures):
            if cf.done() and not cf.cancelled() and cf.exception() is exc:
                _note_failure(runtime, name, index, items[index], exc)
                break
        raise
    return [_Failed(error) if (error := cf.exception()) is not None else cf.result() for cf in futures]


async def _gather(runtime: Runtime, name: str, items: Sequence[Any], tasks: list[asyncio.Task[Any]],
                  keep_going: bool) -> list[Any]:
    """Outcomes in input order. Unless ``keep_going``, the first failure (or our own cancellation) cancels and
    awaits the rest, and is raised; with it, each failed item's outcome is a ``_Failed``."""
    if keep_going:
        try:
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        for outcome in outcomes:   # only the items' own failures are kept; an interrupt still stops the map
            if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
                raise outcome
        return [_Failed(o) if isinstance(o, BaseException) else o for o in outcomes]
    try:
        return await asyncio.gather(*tasks)
    except BaseException as exc:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for index, task in enumerate(tasks):
            if not task.cancelled() and task.exception() is exc:
                _note_failure(runtime, name, index, items[index], exc)
                break
        raise


def settle(runtime: Runtime, name: str, items: Sequence[Any], outcomes: list[Any],
           settings: dict[str, Any]) -> list[Any]:
    """The mapped task's value from its items' outcomes, per ``item_errors``; failures go to the result."""
    failed = [index for index, outcome in enumerate(outcomes) if isinstance(outcome, _Failed)]
    if not failed:
        return outcomes
    for index in failed:
        _note_failure(runtime, name, index, items[index], outcomes[index].error)
    if settings.get("item_errors") == "skip":
        return [outcome for outcome in outcomes if not isinstance(outcome, _Failed)]
    return [outcome.error if isinstance(outcome, _Failed) else outcome for outcome in outcomes]


def settle_packed(runtime: Runtime, name: str, items: Sequence[Any], outcomes: list[Any], settings: dict[str, Any],
                  job_ids: dict[int, Optional[str]]) -> list[Any]:
    """``settle`` for a packed map, whose failed items' job ids are known (no search through its records)."""
    failed = [index for index, outcome in enumerate(outcomes) if isinstance(outcome, _Failed)]
    if not failed:
        return outcomes
    for index in failed:
        _note_failure(runtime, name, index, items[index], outcomes[index].error, job_id=job_ids.get(index))
    if settings.get("item_errors") == "skip":
        return [outcome for outcome in outcomes if not isinstance(outcome, _Failed)]
    return [outcome.error if isinstance(outcome, _Failed) else outcome for outcome in outcomes]


_UNKNOWN = object()


def _note_failure(runtime: Runtime, name: str, index: int, item: Any, error: BaseException,
                  job_id: Any = _UNKNOWN) -> None:
    """List one failed item on ``w.result.errors`` with the job id of its last attempt (remote items)."""
    if job_id is _UNKNOWN:
        job_id = None
        attempts = [r for r in runtime.result._jobs.get(name, ()) if r.map_index == index]
        if attempts:
            job_id = max(attempts, key=lambda r: r.attempt).job_id
    runtime.result._add_item_error(ItemError(task=name, index=index, item=item, exception=error, job_id=job_id))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
