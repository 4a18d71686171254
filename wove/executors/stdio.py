"""The ``stdio`` executor: tasks run in a worker process, frames travel as JSON lines over its stdin/stdout.

The default worker is ``python -m wove.stdio_worker`` (same interpreter as the weave); ``command`` in
``executor_config`` runs anything that speaks the same protocol (a container, ``ssh host python -m ...``).
If the worker dies, every run it had fails at once with the exit code, instead of waiting forever.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import sys
from collections.abc import Mapping
from typing import Any, Optional

from ..dispatch import pickling, protocol
from ..dispatch.events import unpack
from ..errors import EnvironmentDefinitionError, EnvironmentExecutionError, ExecutorStartError
from .adapter import cloudpickle_module, import_path
from .base import EnvironmentExecutor

_LINE_LIMIT = 1 << 30   # a 100 MB result is one (base64) line


class StdioExecutor(EnvironmentExecutor):
    config_keys = frozenset({"command", "env", "cwd"})

    def __init__(self) -> None:
        self.process: Optional[asyncio.subprocess.Process] = None
        self._queue: Optional[asyncio.Queue[Any]] = None
        self._reader: Optional[asyncio.Task[None]] = None
        self._versions: dict[str, str] = {}
        self._environment = ""

    @classmethod
    def validate_config(cls, config: dict[str, Any], *, environment: str) -> dict[str, Any]:
        config = super().validate_config(config, environment=environment)
        command = config.get("command")
        if command is not None and not (isinstance(command, str) and command.strip()) and not (
                isinstance(command, (list, tuple)) and command and all(isinstance(c, str) for c in command)):
            raise EnvironmentDefinitionError(
                f"environment {environment!r}: executor_config.command must be a command string or a list of "
                f"strings, got {command!r}")
        env = config.get("env")
        if env is not None and not (isinstance(env, Mapping) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in env.items())):
            raise EnvironmentDefinitionError(
                f"environment {environment!r}: executor_config.env must be a dict of strings, got {env!r}")
        return config

    async def start(self, *, environment_name: str, environment_config: Mapping[str, Any],
                    run_config: Mapping[str, Any]) -> None:
        cloudpickle_module()
        self._environment = environment_name
        self._versions = protocol.version_info()
        config = environment_config.get("executor_config") or {}
        command = config.get("command") or [sys.executable, "-m", "wove.stdio_worker"]
        argv = shlex.split(command) if isinstance(command, str) else list(command)
        env = {**os.environ, **(config.get("env") or {})}
        try:
            self.process = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env,
                cwd=config.get("cwd"), limit=_LINE_LIMIT)
        except OSError as exc:
            raise ExecutorStartError(
                f"environment {environment_name!r}: cannot start stdio worker {argv!r}: "
                f"{exc.strerror or exc}") from exc
        self._queue = asyncio.Queue()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None and self._queue is not None
        process, ending = self.process, None
        try:
            while True:
                line = await process.stdout.readline()  # type: ignore[union-attr]
                if not line:
                    break
                try:
                    self._queue.put_nowait(unpack(json.loads(line)))
                except ValueError:
                    continue
            code = await process.wait()
            ending = (f"stdio worker of environment {self._environment!r} exited with code {code} "
                      f"({_describe_exit(code)}); its running tasks are lost")
        except asyncio.CancelledError:
            ending = f"stdio executor of environment {self._environment!r} was stopped"
            raise
        except Exception as exc:  # e.g. a line over the size limit: fail the runs instead of hanging them
            ending = f"stdio executor of environment {self._environment!r} stopped reading: {exc}"
        finally:
            self._queue.put_nowait(EnvironmentExecutionError(ending or "stdio executor stopped"))

    async def send(self, frame: Mapping[str, Any]) -> None:
        assert self.process is not None and self.process.stdin is not None, "executor used before start()"
        kind = frame.get("type")
        if kind == "run_task":
            cloudpickle_module()
            func, (args, kwargs) = frame["callable"], frame.get("args") or ((), {})
            args, kwargs = tuple(args), dict(kwargs)
            task_name, task_id = frame.get("task_name"), frame.get("task_id")
            pickling.warn_open_files(func, args, kwargs, task_name, task_id)
            wire = {
                "type": "run_task", "run_id": frame["run_id"], "task_id": task_id,
                "task_name": task_name, "delivery": dict(frame.get("delivery") or {}),
                "callable_pickle": protocol.b64encode(pickling.pickle_function(func, task_name, task_id)),
                "args_pickle": protocol.b64encode(pickling.pickle_arguments(func, args, kwargs, task_name, task_id)),
                **self._versions,
                "sys_path": import_path(),
            }
        elif kind == "cancel_task":
            wire = {"type": "cancel_task", "run_id": frame["run_id"]}
        else:
            wire = {"type": kind}
        if self.process.returncode is not None:
            raise EnvironmentExecutionError(
                f"stdio worker of environment {self._environment!r} is not running "
                f"(exit code {self.process.returncode})")
        try:
            self.process.stdin.write(json.dumps(wire, separators=(",", ":")).encode() + b"\n")
            await self.process.stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise EnvironmentExecutionError(
                f"stdio worker of environment {self._environment!r} went away: {exc}") from exc

    async def recv(self) -> dict[str, Any]:
        assert self._queue is not None, "executor used before start()"
        item = await self._queue.get()
        if isinstance(item, BaseException):
            self._queue.put_nowait(item)  # every later recv() sees the same end
            raise item
        return item

    async def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.returncode is None and process.stdin is not None:
            try:
                process.stdin.write(b'{"type":"shutdown"}\n')
                await process.stdin.drain()
                process.stdin.close()
            except (BrokenPipeError, ConnectionResetError):
                pass
            try:
                await asyncio.wait_for(process.wait(), 5.0)
            except asyncio.TimeoutError:
                process.kill()
                await process.wait()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)


def _describe_exit(code: Optional[int]) -> str:
    if code is None:
        return "still running"
    if code < 0:
        import signal
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return "exited normally" if code == 0 else "crashed"
