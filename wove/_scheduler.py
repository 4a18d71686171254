"""As-soon-as-ready execution of a planned weave on one asyncio loop.

Every task starts the moment its last input is ready: there are no tier barriers, so a slow task only
delays the tasks that actually need its value. Sync functions run in the weave's thread pool, async ones on
the loop, remote ones through their environment's executor. Every asyncio task and remote run the scheduler
starts is finished or cancelled before ``run()`` returns, on every exit path; the one thing Python cannot
cancel is a sync function already running in a thread, which is left to return on its own.

One call with its retries and per-attempt timeout is ``_call``; mapped tasks (items, ``workers``,
``limit_per_minute``) are ``_mapping``.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional

from . import _call, _config, _mapping
from ._call import RemoteCall as RemoteCall  # (re-exported: it was defined here)
from ._graph import DATA_NAME, Plan, TaskSpec
from ._mapping import ITEM
from ._mapping import binder as _binder  # noqa: F401  (re-exported: wove._merge imports it from here)
from ._result import WoveResult

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .executors.base import EnvironmentExecutor
    from .executors.runtime import RemoteEnvironment
    from .journal.session import JournalSession

_current_runtime: contextvars.ContextVar[Optional[Runtime]] = contextvars.ContextVar(
    "wove_runtime", default=None)
_thread_state = threading.local()

_MAP_ONLY = ("workers", "limit_per_minute", "item_errors")
_RESTART = object()   # an environment start was cancelled with its task: whoever needs it next starts it


def current_runtime() -> Optional[Runtime]:
    """The weave runtime the calling code runs under (async task or pool thread), if any."""
    runtime = _current_runtime.get()
    if runtime is None:
        runtime = getattr(_thread_state, "runtime", None)
    return runtime


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
        self._environments: dict[str, asyncio.Future[Optional[RemoteEnvironment] | object]] = {}
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
        self.journal: Optional[JournalSession] = None   # weave(journal=PATH): opened by run()
        self.journal_reused = 0                          # calls read back from it instead of run

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

    async def environment(self, name: str) -> Optional[RemoteEnvironment]:
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
                return value  # type: ignore[return-value]   # (the only other value is an environment)

    async def _start_environment(self, name: str) -> Optional[RemoteEnvironment]:
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
        settings["journal"] = options.get("journal", True)   # a task's journal=False: never journaled
        return settings

    # ------------------------------------------------------------------ the run
    async def run(self) -> None:
        self.loop = asyncio.get_running_loop()
        journal_path = self.resolver.weave_value("journal")
        if journal_path:   # before anything starts: a journal in use elsewhere refuses the whole weave
            from .journal.session import JournalSession
            self.journal = await asyncio.to_thread(JournalSession.open, journal_path)
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
                try:
                    if self.journal is not None:   # everything recorded reaches the disk before the block exits
                        journal, self.journal = self.journal, None
                        # (shielded: a second Ctrl-C must not leave the journal locked by this process)
                        await asyncio.shield(asyncio.to_thread(journal.close))
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
                      and self.is_local(environment) and self.journal is None)
        else:  # the common case: one cached answer for every plain task
            environment = self._default_environment
            direct = self._plain_direct
            if direct is None:
                settings = self.task_settings(spec, environment)
                direct = self._plain_direct = (settings["retries"] == 0 and settings["timeout"] is None
                                               and self.is_local(environment) and self.journal is None)
        if spec.map_source is not None:
            assert settings is not None   # resolved above for every mapped task
            awaitable = _mapping.run_mapped(self, spec, list(args), kwargs, settings, environment)
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
            waiter = self._waiter
            if self._finished >= self._total and waiter is not None and not waiter.done():
                waiter.set_result(None)
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
                if self._waiter is not None and not self._waiter.done():
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
        return await _call.call(self, spec.name, spec.func, spec.is_async, tuple(args), kwargs, settings,
                                environment, resources=spec.options.get("resources"))

    # One call with its retries and timeout, and one call per item of a map; merge() uses both.
    call = _call.call
    call_each = _mapping.call_each

    # ------------------------------------------------------------------ teardown
    async def _close_environments(self) -> None:
        errors = []
        for future in list(self._environments.values()):
            if not future.done() or future.cancelled() or future.exception() is not None:
                continue
            environment = future.result()
            if environment is _RESTART or environment is None:
                continue
            try:
                await environment.aclose()  # type: ignore[attr-defined]
            except Exception as exc:  # keep closing the others
                errors.append(exc)
        self._environments.clear()
        if errors and self._failure is None:
            raise errors[0]


def _failed_future(loop: asyncio.AbstractEventLoop, exc: BaseException) -> asyncio.Future[Any]:
    future = loop.create_future()
    future.set_exception(exc)
    future.exception()
    return future


def _is_local(executor: str | EnvironmentExecutor) -> bool:
    if isinstance(executor, str):
        return executor == "local"
    from .executors.local import LocalExecutor
    return isinstance(executor, LocalExecutor)

