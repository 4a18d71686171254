"""Running a weave's coroutine from sync code: ``with weave()`` (not ``async with``) and ``on_done`` callbacks.

``run_sync`` uses ``asyncio.run`` when the calling thread runs no event loop; inside one (Jupyter, a sync
helper called from an async handler) it runs the weave on a private loop in a helper thread, and a Ctrl-C
or a cancel of the calling task cancels the weave there, so its tasks and remote jobs are cleaned up.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from typing import Any, Callable, Optional

from ._result import WoveResult


async def _await(awaitable: Any) -> Any:
    return await awaitable


def call_on_done(on_done: Optional[Callable[[WoveResult], Any]], result: WoveResult) -> None:
    """Call a sync or async ``on_done`` from a thread without an event loop (background and fork)."""
    if on_done is not None:
        outcome = on_done(result)
        if inspect.isawaitable(outcome):
            asyncio.run(_await(outcome))


def run_sync(coro: Any) -> Any:
    """Run ``coro`` to completion from sync code, even when this thread already runs an event loop."""
    try:
        asyncio.get_running_loop()
        in_loop = True
    except RuntimeError:
        in_loop = False
    if not in_loop:  # (outside the except block, so task errors carry no "no running event loop" context)
        return asyncio.run(coro)
    # Jupyter, or a sync helper called from an async handler: run on a private loop in a helper thread.
    box: dict[str, Any] = {}
    started = threading.Event()

    async def main() -> Any:
        box["loop"], box["task"] = asyncio.get_running_loop(), asyncio.current_task()
        started.set()
        return await coro

    def target() -> None:
        try:
            box["value"] = asyncio.run(main())
        except BaseException as exc:
            box["error"] = exc
        finally:
            started.set()

    def stop_helper() -> None:
        started.wait()
        if "task" in box and not box["loop"].is_closed():
            box["loop"].call_soon_threadsafe(box["task"].cancel)
        thread.join()

    outer = asyncio.current_task()   # the task whose sync code called us, if any
    thread = threading.Thread(target=target, name="wove-sync-weave")
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.05)
            # asyncio.run() turns Ctrl-C into a cancel of its main task, which cannot interrupt this join:
            # notice it, and cancel the weave too.
            if outer is not None and _cancel_requested(outer):
                stop_helper()
                raise asyncio.CancelledError()
    except BaseException:
        # Ctrl-C as KeyboardInterrupt (Jupyter, plain threads): cancel the weave there, so its tasks and
        # remote jobs are cancelled and cleaned up before we re-raise.
        stop_helper()
        raise
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _cancel_requested(task: asyncio.Task[Any]) -> bool:
    cancelling = getattr(task, "cancelling", None)   # Python 3.11+
    if cancelling is not None:
        return bool(cancelling())
    return bool(getattr(task, "_must_cancel", False))
