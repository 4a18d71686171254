"""As-soon-as-ready execution of a planned weave on one asyncio loop.

Every task starts the moment its last input is ready: there are no tier barriers, so a slow task only
delays the tasks that actually need its value. Sync functions run in the weave's thread pool, async ones on
the loop, remote ones through their environment's executor. Every asyncio task and remote run the scheduler
starts is finished or cancelled before ``run()`` returns, on every exit path; the one thing Python cannot
cancel is a sync function already running in a thread, which is left to return on its own.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from . import _config
from ._graph import DATA_NAME, MapFrom, Plan, TaskSpec
from ._result import WoveResult

_current_runtime: contextvars.ContextVar[Optional[Runtime]] = contextvars.ContextVar(
    "wove_runtime", default=None)
_thread_state = threading.local()

_MAP_ONLY = ("workers", "limit_per_minute")
_RESTART = object()   # an environment start was cancelled with its task: whoever needs it next starts it


def current_runtime() -> Optional[Runtime]:
    """The weave runtime the calling code runs under (async task or pool thread), if any."""
    runtime = _current_runtime.get()
    if runtime is None:
        runtime = getattr(_thread_state, "runtime", None)
    return runtime


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
    records: list[Any] = field(default_factory=list)
    resources: Optional[dict[str, Any]] = None
    group: Optional[str] = None  # calls with the same group that become ready together may share a job


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


class Runtime:
    """Runs one planned weave. Created per weave run; not reusable."""

    def __init__(self, plan: Plan, init_data: dict[str, Any], resolver: _config.Resolver,
                 result: WoveResult, *, max_workers: int, error_mode: str, max_pending: Optional[int],
                 progress: bool = False):
        self.plan = plan
        self.init_data = init_data
        self.resolver = resolver
        self.result = result
        self.max_workers = max_workers
        self.error_mode = error_mode
        self.max_pending = max_pending
        self.progress = progress
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._pool: Optional[ThreadPoolExecutor] = None
        self._merge_pool: Optional[ThreadPoolExecutor] = None
        self._environments: dict[str, asyncio.Future[Any]] = {}
        self._settings_cache: dict[tuple[str, bool], dict[str, Any]] = {}
        self._local: dict[str, bool] = {}
        self._plain_direct: Optional[bool] = None   # plain tasks (no options) call their function directly
        self._default_environment = resolver.environment_name(None)
        self._running: dict[str, asyncio.Future[Any]] = {}
        self._values: dict[str, Any] = dict(init_data)
        self._values[DATA_NAME] = dict(init_data)
        self._stopping = False
        self._cancel_reason = "cancelled"
        self._failed_name = ""
        self._failure: Optional[BaseException] = None
        self._waiter: Optional[asyncio.Future[None]] = None
        self._remaining: dict[str, int] = {}
        self._total = len(plan.tasks)
        self._finished = 0
        self._started: dict[str, float] = {}

    # ------------------------------------------------------------------ resources
    def _new_pool(self, prefix: str) -> ThreadPoolExecutor:
        def mark_thread(runtime: Runtime = self) -> None:   # lets merge() in a sync task find its weave
            _thread_state.runtime = runtime
        return ThreadPoolExecutor(self.max_workers, thread_name_prefix=prefix, initializer=mark_thread)

    def pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = self._new_pool("wove")
        return self._pool

    def merge_pool(self) -> ThreadPoolExecutor:
        """Threads for sync calls merged from sync tasks: those tasks hold the main pool's threads while
        they wait, so merged work needs threads of its own or a full pool would deadlock."""
        if self._merge_pool is None:
            self._merge_pool = self._new_pool("wove-merge")
        return self._merge_pool

    async def environment(self, name: str) -> Any:
        """The started remote environment ``name``, or ``None`` when it runs tasks in this process.

        The first task to need it starts it; the others wait for that start. A start that fails is that
        environment's failure for every task; a start cut short because *its* task was cancelled is not:
        the next task to need the environment starts it again.
        """
        while True:
            future = self._environments.get(name)
            if future is None:
                return await self._start_environment(name)
            value = await asyncio.shield(future) if not future.done() else future.result()
            if value is not _RESTART:
                return value

    async def _start_environment(self, name: str) -> Any:
        spec = self.resolver.environments[name]
        if _is_local(spec["executor"]):
            return None
        future = self.loop.create_future()
        self._environments[name] = future
        try:
            from .executors.runtime import RemoteEnvironment
            environment = RemoteEnvironment(name, spec, self)
            await environment.start()
        except asyncio.CancelledError:
            self._environments.pop(name, None)
            future.set_result(_RESTART)   # waiters try again instead of reading the cancellation as theirs
            raise
        except BaseException as exc:
            self._environments[name] = _failed_future(self.loop, exc)
            future.set_exception(exc)
            future.exception()  # mark retrieved: the caller re-raises it
            raise
        future.set_result(environment)
        return environment

    def task_settings(self, spec: TaskSpec, environment: str) -> dict[str, Any]:
        """Settings of a task; tasks without options share one resolved dict per environment."""
        if spec.options:
            return self.resolve_settings(spec.options, environment, mapped=spec.mapped)
        key = (environment, spec.map_source is not None)
        settings = self._settings_cache.get(key)
        if settings is None:
            settings = self._settings_cache[key] = self.resolve_settings({}, environment, mapped=key[1])
        return settings

    def resolve_settings(self, options: dict[str, Any], environment: str, *, mapped: bool) -> dict[str, Any]:
        settings = {key: self.resolver.task_value(key, options, environment) for key in _config.TASK_SETTINGS}
        if not mapped:
            for key in _MAP_ONLY:  # config-level map defaults never break unmapped tasks
                settings[key] = None
        return settings

    # ------------------------------------------------------------------ the run
    async def run(self) -> None:
        self.loop = asyncio.get_running_loop()
        token = _current_runtime.set(self)
        progress = None
        if self.progress:
            from ._progress import Progress
            progress = Progress(self.result)
            progress.start()
        try:
            await self._schedule()
        finally:
            try:
                if progress is not None:
                    await progress.stop()
                await self._close_environments()
            finally:
                if self._pool is not None:
                    # Never wait here: everything awaited is done, and a thread still running a timed-out
                    # sync task must not block the caller's event loop (it ends on its own).
                    self._pool.shutdown(wait=False, cancel_futures=True)
                if self._merge_pool is not None:
                    self._merge_pool.shutdown(wait=False, cancel_futures=True)
                _current_runtime.reset(token)

    async def _schedule(self) -> None:
        tasks = self.plan.tasks
        if not tasks:
            return
        self._waiter = self.loop.create_future()
        self._remaining = {name: len(deps) for name, deps in self.plan.dependencies.items()}
        for name in self.plan.sorted_tasks:
            if self._remaining[name] == 0:
                self._launch(name)
        try:
            await self._waiter
        except BaseException:
            self._stopping = True
            await self._cancel_running("the weave was interrupted")
            raise
        if self._failure is not None and self.error_mode == "raise":
            await self._cancel_running(f"task {self._failed_name!r} failed")
            raise self._failure

    async def _cancel_running(self, reason: str) -> None:
        self._stopping = True
        self._cancel_reason = reason
        running = list(self._running.values())
        for future in running:
            future.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
        for name in self.plan.tasks:
            self.result._set_cancelled(name, reason)

    def _launch(self, name: str) -> None:
        spec = self.plan.tasks[name]
        self._started[name] = time.perf_counter()
        try:
            self._running[name] = self._start(spec)
        except Exception as exc:  # e.g. a bad idempotency key or setting: the task fails, the rest goes on
            self._complete(name, None, exc)

    def _start(self, spec: TaskSpec) -> asyncio.Future[Any]:
        values = self._values
        kwargs = {name: values[name] for name in spec.inputs}
        # (for a mapped task, ITEM marks where a positional-only item goes)
        args = [ITEM if p == spec.item_param else values[p] for p in spec.positional] if spec.positional else ()
        name = spec.name
        settings: Optional[dict[str, Any]] = None
        if spec.options or spec.map_source is not None:
            environment = (self.resolver.environment_name(spec.options.get("environment")) if spec.options
                           else self._default_environment)
            settings = self.task_settings(spec, environment)
            direct = (spec.map_source is None and settings["retries"] == 0 and settings["timeout"] is None
                      and self.is_local(environment))
        else:  # the common case: one cached answer for every plain task
            environment = self._default_environment
            direct = self._plain_direct
            if direct is None:
                settings = self.task_settings(spec, environment)
                direct = self._plain_direct = (settings["retries"] == 0 and settings["timeout"] is None
                                               and self.is_local(environment))
        if spec.map_source is not None:
            awaitable = self._run_mapped(spec, list(args), kwargs, settings, environment)
        elif direct:
            if not spec.is_async:
                future = self.loop.run_in_executor(self.pool(), functools.partial(spec.func, *args, **kwargs))
                future.add_done_callback(functools.partial(self._on_future_done, name))
                return future
            awaitable = spec.func(*args, **kwargs)
        else:
            settings = settings or self.task_settings(spec, environment)   # resolved above, or a plain task's
            awaitable = self._run_one(spec, list(args), kwargs, settings, environment)
        return self.loop.create_task(self._drive(name, awaitable))

    async def _drive(self, name: str, awaitable: Any) -> None:
        # Awaiting inside the task and completing inline saves a done-callback hop per task.
        try:
            value = await awaitable
        except asyncio.CancelledError:
            self._complete(name, None, None, cancelled=True)
            raise
        except Exception as exc:
            self._complete(name, None, exc)
        else:
            self._complete(name, value, None)

    def _on_future_done(self, name: str, future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            self._complete(name, None, None, cancelled=True)
        else:
            error = future.exception()
            self._complete(name, None if error is not None else future.result(), error)

    def is_local(self, environment: str) -> bool:
        local = self._local.get(environment)
        if local is None:  # first use of this environment in the weave
            local = self._local[environment] = _is_local(self.resolver.environments[environment]["executor"])
        return local

    def _complete(self, name: str, value: Any, error: Optional[BaseException], cancelled: bool = False) -> None:
        self._running.pop(name, None)
        self.result.timings[name] = time.perf_counter() - self._started[name]
        if error is None and not cancelled:  # the hot path, kept flat
            self._values[name] = self.result._values[name] = value
            self._finished += 1
            if self._finished >= self._total and not self._waiter.done():
                self._waiter.set_result(None)
            if self._stopping:
                return
            remaining = self._remaining
            for child in self.plan.dependents[name]:
                left = remaining[child] - 1
                remaining[child] = left
                if not left:
                    self._launch(child)
            return
        if cancelled:
            orphaned = [r for r in self.result._jobs.get(name, ()) if r.outcome == "orphaned"]
            if orphaned:   # delivery_orphan_policy="fail": remote work cut off is a failure, not a cancel
                from .errors import DeliveryOrphanedError
                self.result._set_error(name, DeliveryOrphanedError(
                    f"task {name!r} had {len(orphaned)} remote run(s) pending when the weave stopped "
                    f"({self._cancel_reason}); delivery_orphan_policy='fail' cancelled them"))
            else:
                self.result._set_cancelled(name, self._cancel_reason)
            self._finish_one()
            return
        if error is not None:
            self.result._set_error(name, error)
            if self._failure is None:
                self._failure = error
                self._failed_name = name
            self._finish_one()
            if self._stopping:
                return
            if self.error_mode == "raise":
                if not self._waiter.done():
                    self._waiter.set_result(None)
            else:
                self._skip_dependents(name)
            return

    def _finish_one(self) -> None:
        self._finished += 1
        if self._finished >= self._total and self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _skip_dependents(self, failed: str) -> None:
        stack = list(self.plan.dependents[failed])
        while stack:
            child = stack.pop()
            if self._remaining.get(child, 0) < 0:
                continue
            self._remaining[child] = -1  # never launch
            self.result._set_cancelled(child, f"not started because task {failed!r} failed")
            self._finish_one()
            stack.extend(self.plan.dependents[child])

    # ------------------------------------------------------------------ one task, with options
    async def _run_one(self, spec: TaskSpec, args: list[Any], kwargs: dict[str, Any],
                       settings: dict[str, Any], environment: str) -> Any:
        return await self.call(spec.name, spec.func, spec.is_async, tuple(args), kwargs, settings,
                               environment, resources=spec.options.get("resources"))

    async def call(self, name: str, func: Callable[..., Any], is_async: bool, args: tuple[Any, ...],
                   kwargs: dict[str, Any], settings: dict[str, Any], environment: str, *,
                   map_index: Optional[int] = None, resources: Optional[dict[str, Any]] = None,
                   group: Optional[str] = None, pool: Optional[ThreadPoolExecutor] = None) -> Any:
        """Run one call with the task's retries and per-attempt timeout, wherever its environment says."""
        remote = await self.environment(environment)
        retries, timeout = settings["retries"], settings["timeout"]
        records = self.result._jobs.setdefault(name, []) if remote is not None else None
        attempt = 0
        while True:
            if remote is None:
                if is_async:
                    awaitable = func(*args, **kwargs)
                else:
                    awaitable = self.loop.run_in_executor(pool or self.pool(),
                                                          functools.partial(func, *args, **kwargs))
            else:
                awaitable = remote.run(RemoteCall(
                    name, func, args, kwargs, settings, map_index=map_index, attempt=attempt,
                    records=records, resources=resources, group=group))
            try:
                if timeout is None:
                    return await awaitable
                try:
                    return await asyncio.wait_for(awaitable, timeout)
                except asyncio.TimeoutError as exc:
                    where = f"item {map_index} of task {name!r}" if map_index is not None else f"task {name!r}"
                    raise asyncio.TimeoutError(
                        f"{where} timed out after {timeout}s (attempt {attempt + 1} of {retries + 1})"
                    ) from exc
            except Exception as exc:
                if attempt >= retries:
                    raise
                attempt += 1
                if remote is not None:
                    resources = remote.adjust_for_retry(exc, resources, settings)

    # ------------------------------------------------------------------ mapped tasks
    def _map_items(self, spec: TaskSpec) -> list[Any]:
        source = spec.map_source
        if isinstance(source, MapFrom):
            value = self._values[source.name]
            origin = f"{source.name!r}"
        else:
            value = source
            origin = "the iterable given to w.do()"
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            raise TypeError(
                f"mapped task {spec.name!r} needs an iterable to map over, but {origin} is "
                f"{type(value).__name__} {_short(value)}")
        items = list(value)
        if self.max_pending is not None and len(items) > self.max_pending:
            raise RuntimeError(
                f"mapped task {spec.name!r} has {len(items)} items, more than max_pending={self.max_pending}; "
                "raise max_pending or split the input")
        return items

    async def _run_mapped(self, spec: TaskSpec, args: list[Any], kwargs: dict[str, Any],
                          settings: dict[str, Any], environment: str) -> list[Any]:
        items = self._map_items(spec)
        if not items:
            return []
        bind = _binder(spec.item_param, args, kwargs)
        simple = (self.is_local(environment) and settings["retries"] == 0 and settings["timeout"] is None
                  and settings["workers"] is None and settings["limit_per_minute"] is None)
        if simple and not spec.is_async:
            return await self._map_sync_fast(spec.func, bind, items)
        if simple:
            func = spec.func
            if spec.item_first:
                coros = [func(item, **kwargs) for item in items]
            else:
                coros = []
                for item in items:
                    item_args, item_kwargs = bind(item)
                    coros.append(func(*item_args, **item_kwargs))
            return await _gather_or_cancel([self.loop.create_task(c) for c in coros])
        return await self.call_each(spec.name, spec.func, spec.is_async, items, bind, settings, environment,
                                    spec.options.get("resources"))

    async def call_each(self, name: str, func: Callable[..., Any], is_async: bool, items: list[Any],
                        bind: Callable[[Any], tuple[tuple[Any, ...], dict[str, Any]]],
                        settings: dict[str, Any], environment: str,
                        resources: Optional[dict[str, Any]] = None,
                        pool: Optional[ThreadPoolExecutor] = None) -> list[Any]:
        """One ``call`` per item (``bind(item)`` gives its arguments), honouring ``workers`` and
        ``limit_per_minute``; results in input order."""
        workers = settings["workers"]
        remote = await self.environment(environment)
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
                return await self.call(name, func, is_async, call_args, call_kwargs, settings, environment,
                                       map_index=index, resources=resources, group=name, pool=pool)
            finally:
                if semaphore is not None:
                    semaphore.release()

        return await _gather_or_cancel([self.loop.create_task(one(i, item)) for i, item in enumerate(items)])

    async def _map_sync_fast(self, func: Callable[..., Any], bind: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        """Thread-pool fan-out with one loop wake-up for the whole map instead of one per item."""
        loop = self.loop
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
            if error is not None:
                loop.call_soon_threadsafe(finish, error)
                return
            with lock:
                left[0] -= 1
                last = left[0] == 0
            if last:
                loop.call_soon_threadsafe(finish, None)

        submit = self.pool().submit
        futures = []
        for item in items:
            item_args, item_kwargs = bind(item)
            cf = submit(func, *item_args, **item_kwargs)
            cf.add_done_callback(on_done)
            futures.append(cf)
        try:
            await waiter
        except BaseException:
            for cf in futures:
                cf.cancel()
            raise
        return [cf.result() for cf in futures]

    # ------------------------------------------------------------------ teardown
    async def _close_environments(self) -> None:
        errors = []
        for future in list(self._environments.values()):
            if not future.done() or future.cancelled() or future.exception() is not None:
                continue
            try:
                await future.result().aclose()
            except Exception as exc:  # keep closing the others
                errors.append(exc)
        self._environments.clear()
        if errors and self._failure is None:
            raise errors[0]


ITEM = object()   # where a positional-only item parameter goes in a mapped task's arguments


def _binder(item_param: Optional[str], args: Any, kwargs: dict[str, Any]) -> Callable[[Any], Any]:
    """``item -> (args, kwargs)`` for one item of a mapped call (keyword, positional-only, or appended)."""
    args = tuple(args)
    if item_param is None:                       # merge(fn, items): fn(item)
        return lambda item: ((*args, item), kwargs)
    if ITEM in args:                             # a positional-only item parameter
        return lambda item: (tuple(item if a is ITEM else a for a in args), kwargs)
    return lambda item: (args, {**kwargs, item_param: item})


async def _gather_or_cancel(tasks: list[asyncio.Task[Any]]) -> list[Any]:
    """Gather in order; on the first failure (or our own cancellation) cancel and await the rest."""
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _failed_future(loop: asyncio.AbstractEventLoop, exc: BaseException) -> asyncio.Future[Any]:
    future = loop.create_future()
    future.set_exception(exc)
    future.exception()
    return future


def _is_local(executor: Any) -> bool:
    if isinstance(executor, str):
        return executor == "local"
    from .executors.local import LocalExecutor
    return isinstance(executor, LocalExecutor)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
