"""``fork=True``: run a weave in a separate Python process started from a cloudpickled copy.

The parent returns at once; the child rebuilds the weave (tasks, init values, options, the parent's
configuration), runs it, and calls ``on_done`` there. Run as ``python -m wove._fork`` reading the blob on
stdin, so nothing the size of a program rides on a command line.

Before ``on_done`` the child writes a small report (each failed task's exception, the cancelled tasks,
timings; not the task values, which may be large or unpicklable) to a private file the parent named. The
parent reads it when the child exits, so ``w.wait()`` in the parent can return or raise the outcome.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from typing import Any, Callable, Optional

from ._graph import TaskSpec
from .errors import EnvironmentExecutionError, WaitTimeoutError
from .executors.adapter import cloudpickle_module

log = logging.getLogger("wove")


class ForkedWeave:
    """The parent's handle on a forked weave: the child process, and its report once it has exited."""

    def __init__(self, process: subprocess.Popen[bytes], report_dir: str, result: Any):
        self.process = process
        self._report_dir = report_dir
        self._result = result
        self._done = threading.Event()
        threading.Thread(target=self._reap, name="wove-fork-reaper", daemon=True).start()

    def wait(self, timeout: Optional[float] = None) -> None:
        """Block until the child has exited and its report is on the result; ``WaitTimeoutError`` if not yet."""
        if not self._done.wait(timeout):
            raise WaitTimeoutError(f"the forked weave (pid {self.process.pid}) was still running after "
                                   f"{timeout}s; it keeps running, and wait() can be called again")

    def _reap(self) -> None:
        """Wait for the child so it never lingers as a zombie, then put its outcome on the parent's result."""
        try:
            code = self.process.wait()
            report = self._read_report()
            if report is None or code not in (0, 1):   # 1: the weave ran and a task failed (on_done saw it)
                log.warning("wove: the forked weave (pid %d) exited with code %d before finishing; see its "
                            "stderr", self.process.pid, code)
            _apply_report(self._result, report, code, self.process.pid)
        finally:
            shutil.rmtree(self._report_dir, ignore_errors=True)
            self._done.set()

    def _read_report(self) -> Optional[dict[str, Any]]:
        try:
            with open(os.path.join(self._report_dir, "report"), "rb") as fh:
                data = fh.read()
        except OSError:
            return None
        try:
            return cloudpickle_module("weave(fork=True)").loads(data)
        except Exception as exc:  # an exception class the parent cannot import, say
            log.warning("wove: cannot read the forked weave's report: %r", exc)
            return None


def _apply_report(result: Any, report: Optional[dict[str, Any]], code: int, pid: int) -> None:
    if report is None:
        error = EnvironmentExecutionError(
            f"the forked weave (pid {pid}) exited with code {code} before reporting its outcome; see its stderr")
        result._first_error = error
        for name in result._order:
            result._set_cancelled(name, "the forked weave did not report it")
        return
    for name, error in report["errors"].items():
        result._errors[name] = error
    for name, reason in report["cancelled"].items():
        result._set_cancelled(name, reason)
    result.timings.update(report["timings"])
    result._first_error = report["exception"]
    result._values_elsewhere = "it ran in the forked process (fork=True), and task values stay there; read " \
                               "them in on_done"


def _report(result: Any) -> dict[str, Any]:
    return {
        "errors": dict(result._errors),
        "cancelled": dict(result._cancel_reasons),
        "timings": dict(result.timings),
        "exception": result.exception,
    }


def _write_report(path: str, result: Any, cloudpickle: Any) -> None:
    report = _report(result)
    try:
        data = cloudpickle.dumps(report)
        cloudpickle.loads(data)   # an exception whose class cannot be rebuilt from its args fails here
    except Exception:   # an exception that does not pickle: send its type and text instead
        def plain(exc: Optional[BaseException]) -> Optional[BaseException]:
            if exc is None:
                return None
            return EnvironmentExecutionError(f"{type(exc).__name__}: {exc} (raised in the forked weave; the "
                                             "exception itself could not be pickled back)")
        report["errors"] = {name: plain(exc) for name, exc in report["errors"].items()}
        report["exception"] = plain(report["exception"])
        data = cloudpickle.dumps(report)
    with open(path + ".tmp", "wb") as fh:
        fh.write(data)
    os.replace(path + ".tmp", path)


def start_forked(tasks: dict[str, TaskSpec], init_data: dict[str, Any], options: dict[str, Any],
                 on_done: Optional[Callable[..., Any]], result: Any) -> ForkedWeave:
    from . import _config

    cloudpickle = cloudpickle_module("weave(fork=True)")
    # The child runs the weave itself, in the foreground, whatever the configuration says.
    child_options = {**{k: v for k, v in options.items() if k != "on_done"}, "background": False, "fork": False}
    snapshot = _config.snapshot()
    blob = cloudpickle.dumps({
        "tasks": [(spec.name, spec.func, spec.map_source, spec.options) for spec in tasks.values()],
        "init": init_data,
        "options": child_options,
        "on_done": on_done,
        "config": {"default_environment": snapshot["default_environment"],
                   "environments": snapshot["environments"],   # "default" too: its settings apply in the child
                   **snapshot["_explicit"]},
    })
    report_dir = tempfile.mkdtemp(prefix="wove-fork-")   # private (0700): only we and the child write here
    try:
        process = subprocess.Popen([sys.executable, "-m", "wove._fork"], stdin=subprocess.PIPE)
    except BaseException:
        shutil.rmtree(report_dir, ignore_errors=True)
        raise
    assert process.stdin is not None
    # The parent's import path goes first, so functions pickled by reference import in the child too.
    header = {"sys_path": sys.path, "report": os.path.join(report_dir, "report")}
    process.stdin.write(json.dumps(header).encode() + b"\n")
    process.stdin.write(blob)
    process.stdin.close()
    return ForkedWeave(process, report_dir, result)


def _child_main() -> int:
    from . import _config
    from ._weave import WeaveContext, _make_spec, call_on_done

    cloudpickle = cloudpickle_module("weave(fork=True)")
    stream = sys.stdin.buffer
    header = json.loads(stream.readline())
    for entry in reversed(header["sys_path"]):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    job = cloudpickle.loads(stream.read())
    _config._apply(job["config"], source="forked weave")
    context = WeaveContext(None, job["options"], job["init"])
    for name, func, map_source, options in job["tasks"]:
        context._register(_make_spec(func, map_source, options, name=name))
    try:
        with context:
            pass
    except Exception as exc:  # task failures are on the result already; anything else goes there too
        if context.result.exception is None:
            context.result._first_error = exc
    try:
        _write_report(header["report"], context.result, cloudpickle)
    except Exception as exc:  # the parent then reports a weave that ended without an outcome
        log.warning("wove: the forked weave could not report its outcome to the parent: %r", exc)
    call_on_done(job["on_done"], context.result)
    return 1 if context.result.exception is not None else 0


if __name__ == "__main__":
    sys.exit(_child_main())
