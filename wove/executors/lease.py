"""The driver's lease, weave side: proof of life for the jobs, and a trail for ``wove cleanup``.

While an environment runs, its run directory holds ``lease`` (rewritten every ``REFRESH_SECONDS``: its age
tells a job whether anyone still waits for it, see ``wove.dispatch.lease``) and ``jobs`` (the job ids
submitted, appended at the same pace), so that the runs of a driver that died can be found, listed and
cancelled later. All file writes happen in a thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from typing import Any, Optional

from ..dispatch import spool
from ..dispatch.lease import JOBS_NAME, LEASE_NAME, REFRESH_SECONDS

log = logging.getLogger("wove.dispatch")
BATCH_SECONDS = 0.2


class LeaseKeeper:
    """Renews one run directory's lease and records its job ids; ``stop()`` ends both."""

    def __init__(self, run_dir: spool.RunDir, *, journaled: bool, interval: float = REFRESH_SECONDS):
        self.run_dir = run_dir
        self.journaled = journaled
        self.interval = interval
        self._new_jobs: list[str] = []
        self._task: Optional[asyncio.Task[None]] = None
        self._wake: Optional[asyncio.Event] = None
        self._lease = json.dumps({"pid": os.getpid(), "host": os.uname().nodename, "journaled": journaled,
                                  "started": time.time()}).encode()

    @property
    def path(self) -> str:
        return self.run_dir.file_path(LEASE_NAME)

    async def start(self) -> None:
        await asyncio.to_thread(self._renew)
        self._task = asyncio.get_running_loop().create_task(self._loop())

    def job_submitted(self, job_id: Any) -> None:
        """Note a job id; written within a fraction of a second (a driver may die right after submitting)."""
        if isinstance(job_id, (str, int)) and str(job_id):
            self._new_jobs.append(str(job_id))
            if self._wake is not None:
                self._wake.set()

    def _renew(self) -> None:
        jobs, self._new_jobs = self._new_jobs, []
        try:
            if jobs:
                fd = os.open(JOBS_NAME, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0),
                             0o600, dir_fd=self.run_dir.fd)
                try:
                    os.write(fd, ("\n".join(jobs) + "\n").encode())
                finally:
                    os.close(fd)
            self.run_dir.write_atomic(LEASE_NAME, self._lease)
        except OSError as exc:   # a full or read-only spool: jobs then stop after the grace period
            log.warning("wove: could not renew the lease in %s: %s", self.run_dir.path, exc)

    async def _loop(self) -> None:
        wake = self._wake = asyncio.Event()
        while True:
            try:
                await asyncio.wait_for(wake.wait(), self.interval)
                await asyncio.sleep(BATCH_SECONDS)   # the rest of a burst of submissions goes in the same write
            except asyncio.TimeoutError:
                pass
            wake.clear()
            await asyncio.to_thread(self._renew)

    async def stop(self) -> None:
        """The weave ends normally: no lease (and no trail) is left for ``wove cleanup`` to find."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        for name in (LEASE_NAME, JOBS_NAME):
            self.run_dir.remove(name)
