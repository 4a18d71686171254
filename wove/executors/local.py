"""The ``local`` executor: tasks run in the weave's own process.

The scheduler short-circuits local environments (a direct call is far cheaper than frames), but the
executor also speaks the frame protocol so it can stand in for a remote one in tests and examples.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Mapping
from typing import Any, Optional

from .base import EnvironmentExecutor


class LocalExecutor(EnvironmentExecutor):
    """Runs ``run_task`` frames in this process and answers with event frames."""

    def __init__(self) -> None:
        self._events: Optional[asyncio.Queue[dict[str, Any]]] = None
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def start(self, *, environment_name: str, environment_config: Mapping[str, Any],
                    run_config: Mapping[str, Any]) -> None:
        self._events = asyncio.Queue()

    async def send(self, frame: Mapping[str, Any]) -> None:
        assert self._events is not None, "LocalExecutor.send() before start()"
        kind = frame.get("type")
        if kind == "run_task":
            run_id = frame["run_id"]
            self._tasks[run_id] = asyncio.get_running_loop().create_task(self._run(frame))
        elif kind == "cancel_task":
            task = self._tasks.get(frame["run_id"])
            if task is not None:
                task.cancel()

    async def _run(self, frame: Mapping[str, Any]) -> None:
        assert self._events is not None
        run_id, task_id = frame["run_id"], frame.get("task_id")
        base = {"run_id": run_id, "task_id": task_id}
        await self._events.put({"type": "task_started", **base})
        args, kwargs = frame.get("args") or ((), {})
        try:
            value = frame["callable"](*args, **kwargs)
            if inspect.isawaitable(value):
                value = await value
        except asyncio.CancelledError:
            await self._events.put({"type": "task_cancelled", **base})
            raise
        except Exception as exc:
            from ..dispatch.error_payload import normalize_error
            await self._events.put({"type": "task_error", **base, "exception": exc,
                                    "error": normalize_error(exc, source="task")})
        else:
            await self._events.put({"type": "task_result", **base, "result": value})
        finally:
            self._tasks.pop(run_id, None)

    async def recv(self) -> dict[str, Any]:
        assert self._events is not None, "LocalExecutor.recv() before start()"
        return await self._events.get()

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
