"""The driver's lease, job side: a job whose weave is gone does not start its task, and stops a running one.

The weave's process touches ``<run dir>/lease`` every few seconds (``wove.executors.lease``). A job reads the
file's age: past the grace period (``orphan_grace``, default 30 s; for a journaled weave ``orphan_timeout``,
default a day, since a later driver wants the results) nobody will collect its outcome, so it does not
start the task, or, while it runs, stops it (the worker reports ``task_cancelled`` to the spool and exits).
A lease file that cannot be seen (no shared filesystem) never stops anything.

Every Slurm job imports this module: standard library only, nothing costly.
"""

from __future__ import annotations

import os
import threading
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Optional

LEASE_NAME = "lease"
JOBS_NAME = "jobs"
REFRESH_SECONDS = 5.0
DEFAULT_GRACE = 30.0
DEFAULT_JOURNAL_TIMEOUT = 86400.0
EXIT_ORPHANED = 5   # the worker's exit status when it did not run (or stopped) a task whose driver is gone


def limit(payload: dict[str, Any]) -> Optional[float]:
    """Seconds of silence after which the driver counts as gone for this payload (None: never)."""
    if not payload.get("lease") or (payload.get("delivery") or {}).get("orphan_policy") == "detach":
        return None   # a detached run is meant to outlive its weave
    key, default = (("orphan_timeout", DEFAULT_JOURNAL_TIMEOUT) if payload.get("journaled")
                    else ("orphan_grace", DEFAULT_GRACE))
    value = payload.get(key, default)
    return None if value is None else float(value)


def driver_gone(payload: dict[str, Any]) -> Optional[str]:
    """Why the payload's weave counts as gone, or None while its lease is fresh (or not visible)."""
    seconds = limit(payload)
    if seconds is None:
        return None
    path = str(payload["lease"])
    try:
        age = time.time() - os.stat(path).st_mtime
    except OSError:
        return None
    if age < seconds:
        return None
    return (f"the weave that submitted it has been gone for {age:.0f}s (its lease {path} was last renewed "
            f"{age:.0f}s ago; the limit is {seconds:.0f}s)")


class Watchdog(threading.Thread):
    """Calls ``on_gone(reason)`` once when any payload's driver counts as gone."""

    def __init__(self, payloads: list[dict[str, Any]], on_gone: Callable[[str], None]):
        super().__init__(name="wove-lease", daemon=True)
        self.payloads = [p for p in payloads if limit(p) is not None]
        self.on_gone = on_gone
        self.stopped = threading.Event()
        limits = [limit(p) or DEFAULT_GRACE for p in self.payloads]
        self.interval = max(1.0, min([REFRESH_SECONDS, *[s / 4 for s in limits]]))

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            for payload in self.payloads:
                reason = driver_gone(payload)
                if reason is not None:
                    self.on_gone(reason)
                    return
