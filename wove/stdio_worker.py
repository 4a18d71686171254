"""``python -m wove.stdio_worker``: run tasks sent as JSON lines on stdin, answer with event lines on stdout.

Used by the ``stdio`` executor. The pipe is private to the two processes, so events are not signed.
Anything a task prints goes to stderr, never into the protocol stream.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import pickle
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO, Optional

from .dispatch.worker import (
    _context,
    _dumps,
    _error_fields,
    _extend_import_path,
    unpicklable_result,
    version_mismatch,
)

_TASK_THREADS = "wove-stdio-task"   # the threads of sync tasks; main() does not wait for them


class StdioWorker:
    def __init__(self, out: BinaryIO):
        self.out = out
        self.tasks: dict[str, asyncio.Future[Any]] = {}
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.finished: asyncio.Event = None  # type: ignore[assignment]  # made in main(): 3.9 binds it to a loop
        self.reader: Optional[threading.Thread] = None
        # Sync tasks run here; at shutdown a thread still in a cancelled task cannot be stopped, and the
        # default executor's (or the interpreter's) join would hold the process until the task returns.
        self.pool = ThreadPoolExecutor(thread_name_prefix=_TASK_THREADS)

    def emit(self, frame: dict[str, Any]) -> None:
        self.out.write(json.dumps(frame, separators=(",", ":")).encode() + b"\n")
        self.out.flush()

    def _read_stdin(self) -> None:
        try:
            for line in sys.stdin.buffer:
                if line.strip():
                    self.loop.call_soon_threadsafe(self.handle_line, line)
            self.loop.call_soon_threadsafe(self.finished.set)
        except RuntimeError:   # the loop closed first (a shutdown frame, then end of input)
            pass

    def handle_line(self, line: bytes) -> None:
        try:
            frame = json.loads(line)
        except ValueError:
            print(f"wove.stdio_worker: ignoring malformed line {line[:80]!r}", file=sys.stderr)
            return
        kind = frame.get("type")
        if kind == "run_task":
            self.tasks[frame["run_id"]] = self.loop.create_task(self.run_task(frame))
        elif kind == "cancel_task":
            task = self.tasks.get(frame.get("run_id"))
            if task is not None:
                task.cancel()
        elif kind == "shutdown":
            self.finished.set()

    async def run_task(self, frame: dict[str, Any]) -> None:
        base = {"run_id": frame["run_id"], "task_id": frame.get("task_id")}
        heartbeat = None
        try:
            mismatch = version_mismatch(frame)
            if mismatch:
                self.emit({"type": "task_error", **base, "error": {
                    "kind": "VersionMismatch", "message": mismatch, "traceback": "", "retryable": False,
                    "source": "config"}})
                return
            self.emit({"type": "task_started", **base, **_context()})
            interval = (frame.get("delivery") or {}).get("heartbeat_seconds")
            if interval:
                heartbeat = self.loop.create_task(self._heartbeat(base, float(interval) / 2))
            _extend_import_path(frame.get("sys_path"))
            try:
                func = pickle.loads(base64.b64decode(frame["callable_pickle"]))
                args, kwargs = pickle.loads(base64.b64decode(frame["args_pickle"]))
            except Exception as exc:
                self.emit({"type": "task_error", **base, **_error_fields(exc, source="config")})
                return
            try:
                if asyncio.iscoroutinefunction(func):
                    value = await func(*args, **kwargs)
                else:
                    value = await self.loop.run_in_executor(self.pool, lambda: func(*args, **kwargs))
                    if hasattr(value, "__await__"):
                        value = await value
            except asyncio.CancelledError:
                self.emit({"type": "task_cancelled", **base})
                return
            except Exception as exc:
                self.emit({"type": "task_error", **base, **_error_fields(exc)})
                return
            try:
                encoded = base64.b64encode(_dumps(value)).decode("ascii")
            except Exception as exc:
                self.emit({"type": "task_error", **base, **unpicklable_result(frame, value, exc)})
                return
            self.emit({"type": "task_result", **base, "result_pickle": encoded})
        finally:
            if heartbeat is not None:
                heartbeat.cancel()
            self.tasks.pop(frame["run_id"], None)

    async def _heartbeat(self, base: dict[str, Any], interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.emit({"type": "heartbeat", **base})

    async def main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.finished = asyncio.Event()
        self.reader = threading.Thread(target=self._read_stdin, name="wove-stdin", daemon=True)
        self.reader.start()
        await self.finished.wait()
        for task in list(self.tasks.values()):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        self.pool.shutdown(wait=False, cancel_futures=True)


def main() -> int:
    # Keep the protocol stream private: fd 1 becomes stderr for anything tasks print.
    protocol_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    worker = StdioWorker(protocol_out)
    asyncio.run(worker.main())
    protocol_out.close()
    # After a shutdown frame, stdin's end follows at once. A reader thread still blocked in read() at
    # interpreter exit holds stdin's lock, which aborts the process ("Fatal Python error: could not
    # acquire lock"): wait for it, and if input never ends, leave without finalizing.
    if worker.reader is not None:
        worker.reader.join(2.0)
    busy = any(t.name.startswith(_TASK_THREADS) and t.is_alive() for t in threading.enumerate())
    if busy or (worker.reader is not None and worker.reader.is_alive()):
        # (a cancelled sync task still running in its thread: its run was reported cancelled, so go now)
        sys.stderr.flush()
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
