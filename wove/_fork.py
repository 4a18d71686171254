"""``fork=True``: run a weave in a separate Python process started from a cloudpickled copy.

The parent returns at once; the child rebuilds the weave (tasks, init values, options, the parent's
configuration), runs it, and calls ``on_done`` there. Run as ``python -m wove._fork`` reading the blob on
stdin, so nothing the size of a program rides on a command line.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from typing import Any, Callable, Optional

from ._graph import TaskSpec
from .executors.adapter import cloudpickle_module

log = logging.getLogger("wove")


def start_forked(tasks: dict[str, TaskSpec], init_data: dict[str, Any], options: dict[str, Any],
                 on_done: Optional[Callable[..., Any]]) -> subprocess.Popen[bytes]:
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
                   "environments": {k: v for k, v in snapshot["environments"].items() if k != "default"},
                   **snapshot["_explicit"]},
    })
    process = subprocess.Popen([sys.executable, "-m", "wove._fork"], stdin=subprocess.PIPE)
    assert process.stdin is not None
    # The parent's import path goes first, so functions pickled by reference import in the child too.
    process.stdin.write(json.dumps(sys.path).encode() + b"\n")
    process.stdin.write(blob)
    process.stdin.close()
    threading.Thread(target=_reap, args=(process,), name="wove-fork-reaper", daemon=True).start()
    return process


def _reap(process: subprocess.Popen[bytes]) -> None:
    """Wait for the forked weave so it never lingers as a zombie, and say so when it could not even run."""
    code = process.wait()
    if code not in (0, 1):   # 1: the weave ran and a task failed (on_done saw it)
        log.warning("wove: the forked weave (pid %d) exited with code %d before finishing; see its stderr",
                    process.pid, code)


def _child_main() -> int:
    from . import _config
    from ._weave import WeaveContext, _make_spec, call_on_done

    cloudpickle = cloudpickle_module("weave(fork=True)")
    stream = sys.stdin.buffer
    for entry in reversed(json.loads(stream.readline())):
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
    call_on_done(job["on_done"], context.result)
    return 1 if context.result.exception is not None else 0


if __name__ == "__main__":
    sys.exit(_child_main())
