"""Reattaching to jobs an earlier driver submitted (durable weaves), for ``BackendAdapterEnvironmentExecutor``.

A journaled call records, with its job, what a later driver needs to collect that job's outcome: the run's
events directory (where a worker that cannot reach its weave leaves its signed events) and the run's signing
key. A rerun hands that record to ``adopt``: the events are verified with the journaled key, read from the
old directory, and the adapter watches the job (Slurm: the job monitor), so a job that dies meanwhile is
reported with its real cause.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Optional

from ..dispatch import spool
from ..dispatch.filechannel import FALLBACK_POLL_SECONDS, FileChannel

if TYPE_CHECKING:
    from ..dispatch.events import EventGate
    from .backend import BackendAdapter

log = logging.getLogger("wove.dispatch")
_hinted: set[str] = set()


class Reattach:
    """The durable-weave half of ``BackendAdapterEnvironmentExecutor``."""

    adapter: Optional[BackendAdapter]
    spool_dir: str
    events_dir: str
    _gate: Optional[EventGate]
    _runs: dict[str, Any]
    _detached: set[str]
    _adopted: dict[str, tuple[spool.RunDir, FileChannel, str]]

    def _on_verified(self, frame: dict[str, Any]) -> None:  # pragma: no cover - provided by the executor
        raise NotImplementedError

    # ---------------------------------------------------------------- durable weaves (wove.journal)
    def journal_info(self, run_id: str) -> Optional[dict[str, Any]]:
        """What a later driver needs to collect ``run_id``'s outcome from the spool (see ``adopt``)."""
        tracked = self._runs.get(run_id)
        if tracked is None or not tracked.key or not self.events_dir:
            return None
        return {"run_dir": self.spool_dir, "events_dir": self.events_dir, "signing_key": tracked.key}

    def can_adopt(self, info: Mapping[str, Any]) -> bool:
        return (hasattr(self.adapter, "adopt") and bool(info.get("job_id")) and bool(info.get("signing_key"))
                and os.path.isdir(str(info.get("events_dir") or "")))

    def adopt(self, run_id: str, task_name: str, info: Mapping[str, Any], record: Any) -> None:
        """Collect the outcome of a job an earlier driver submitted: verify its events with the journaled key,
        read them from its run's events directory, and let the adapter watch the job."""
        assert self.adapter is not None and self._gate is not None, "executor used before start()"
        self._gate.register(run_id, str(info["signing_key"]))
        events_dir, run_dir = str(info["events_dir"]), str(info["run_dir"])
        if events_dir not in self._adopted:
            events = spool.RunDir.open_private(events_dir, "events directory")
            channel = FileChannel(events, self._gate, self._on_verified, poll_seconds=FALLBACK_POLL_SECONDS,
                                  keep_unknown=True)
            self._adopted[events_dir] = (events, channel, run_dir)
            self._gate.adopted_dirs.append(run_dir)
            channel.start()
            lease = getattr(self, "_lease", None)
            if lease is not None:   # its jobs wait for this driver now: keep them from stopping themselves
                try:
                    lease.adopt(spool.RunDir.open_private(run_dir, "spool directory"))
                except OSError as exc:
                    log.warning("wove: cannot renew the lease of %s: %s", run_dir, exc)
        from .adapter import _Tracked

        tracked = self._runs[run_id] = _Tracked({"type": "run_task", "run_id": run_id, "task_name": task_name,
                                                 "record": record}, str(info["signing_key"]))
        tracked.submission, tracked.recorded = info["job_id"], True
        self.adapter.adopt(run_id, str(info["job_id"]), record, task_name, str(info.get("stderr") or ""))  # type: ignore[attr-defined]

    async def _stop_adopted(self) -> None:
        """Stop reading earlier drivers' run directories, and remove them: their runs are settled now."""
        adopted, self._adopted = self._adopted, {}
        for events, channel, run_dir in adopted.values():
            await channel.stop()
            events.close()
            if not self._detached:
                await asyncio.get_running_loop().run_in_executor(None, spool.remove_tree, run_dir)



def hint_dead_runs(root: str) -> None:
    """(Thread) one line, once per spool root and process, when dead drivers left runs there."""
    if not root or root in _hinted:
        return
    _hinted.add(root)
    from ..cleanup import dead_runs

    runs = dead_runs(root, limit=2000)
    if runs:
        log.warning("wove: %d earlier run(s) in %s belong to weaves whose driver is gone (files, maybe jobs); "
                    "`wove cleanup` lists them, `wove cleanup --cancel` removes them", len(runs), root)
