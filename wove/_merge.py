"""``merge`` and ``sync_to_async``: calling more work from inside a running task."""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Optional

from ._graph import is_async_callable
from ._scheduler import Runtime, _binder, current_runtime
from .errors import InvalidTypeError, MapSourceError, WeaveStateError


def _require_runtime() -> Runtime:
    runtime = current_runtime()
    if runtime is None or runtime.loop is None or runtime.loop.is_closed():
        # leading words as in wove 2.0.3
        raise WeaveStateError("The `merge` function can only be used inside a task running within an active "
                              "`weave` block. Outside a weave, call the function directly.")
    return runtime


def merge(fn: Callable[..., Any], iterable: Optional[Any] = None, **options: Any) -> Any:
    """Run ``fn`` (once, or once per item of ``iterable``) with the same options as ``@w.do``.

    From an async task this returns an awaitable; from a sync task it blocks until the value is ready.
    The call goes through the weave's scheduler, so ``retries``, ``timeout``, ``workers`` and
    ``environment`` (for example a Slurm environment) apply exactly as they do to tasks.
    """
    from ._weave import validate_task_options

    runtime = _require_runtime()
    validate_task_options(options, mapped=iterable is not None, name=getattr(fn, "__name__", ""), caller="merge")
    if options.get("resources") is not None:
        from ._weave import validate_resources
        options["resources"] = validate_resources(runtime.resolver, options, f"merge({getattr(fn, '__name__', fn)})")
    if iterable is not None and (isinstance(iterable, (str, bytes)) or not hasattr(iterable, "__iter__")):
        raise MapSourceError(f"merge() maps over an iterable; got {type(iterable).__name__} {iterable!r}")
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is runtime.loop:
        return _merge(runtime, fn, iterable, options, None)
    # From a sync task: that task holds a thread of the weave's pool while it waits, so merged sync work
    # runs in threads of its own (a full pool would otherwise deadlock).
    coro = _merge(runtime, fn, iterable, options, runtime.merge_pool())
    return asyncio.run_coroutine_threadsafe(coro, runtime.loop).result()


async def _merge(runtime: Runtime, fn: Callable[..., Any], iterable: Any, options: dict[str, Any],
                 pool: Optional[ThreadPoolExecutor]) -> Any:
    name = getattr(fn, "__name__", "merge")
    environment = runtime.resolver.environment_name(options.get("environment"))
    runtime.resolver.check_environment(environment, f"merge({name})")
    settings = runtime.resolve_settings(options, environment, mapped=iterable is not None)
    is_async = is_async_callable(fn)
    resources = options.get("resources")
    if iterable is None:
        return await runtime.call(name, fn, is_async, (), {}, settings, environment, resources=resources,
                                  pool=pool)
    return await runtime.call_each(name, fn, is_async, list(iterable), _binder(None, (), {}), settings,
                                   environment, resources, pool=pool)


def sync_to_async(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a blocking function as a coroutine function that runs it in a thread.

    Inside a weave it uses the weave's thread pool (so ``max_workers`` bounds it); elsewhere the loop's
    default executor.
    """
    if is_async_callable(fn):
        raise InvalidTypeError(f"sync_to_async expects a regular function, but {fn!r} is already async")

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        runtime = current_runtime()
        pool = runtime.pool() if runtime is not None and runtime.loop is loop else None
        return await loop.run_in_executor(pool, functools.partial(fn, *args, **kwargs))

    return wrapper
