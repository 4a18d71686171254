"""The driver's lease, weave side: proof of life for the jobs, and a trail for ``wove cleanup``.

While an environment runs, its run directory holds ``lease`` (rewritten every ``REFRESH_SECONDS``: its age
tells a job whether anyone still waits for it, see ``wove.dispatch.lease``) and ``jobs`` (the job ids
submitted, written within a fraction of a second), so that the runs of a driver that died can be found,
listed and cancelled later. A rerun of a journaled weave also renews the leases of the earlier runs whose
jobs it reattached to. A thread of its own does the writing: a busy event loop must not make live jobs
believe their driver is gone.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from typing import Any, Optional

from ..dispatch import spool
from ..dispatch.lease import JOBS_NAME, LEASE_NAME, REFRESH_SECONDS

log = logging.getLogger("wove.dispatch")
BATCH_SECONDS = 0.2


class LeaseKeeper:
    """Renews one run directory's lease (and adopted ones') and records its job ids; ``stop()`` ends both."""

    def __init__(self, run_dir: spool.RunDir, *, journaled: bool, interval: float = REFRESH_SECONDS,
                 tools: Optional[dict[str, Any]] = None):
        self.run_dir = run_dir
        self.journaled = journaled
        self.interval = interval
        self._new_jobs: list[str] = []
        self._adopted: list[spool.RunDir] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._thread: Optional[threading.Thread] = None
        lease: dict[str, Any] = {"pid": os.getpid(), "host": os.uname().nodename, "journaled": journaled,
                                 "started": time.time()}
        if tools:   # the configured squeue/scancel (argv lists), which ``wove cleanup`` then uses
            lease["tools"] = {name: [value] if isinstance(value, str) else list(value)
                              for name, value in tools.items()}
        self._lease = json.dumps(lease).encode()

    @property
    def path(self) -> str:
        return self.run_dir.file_path(LEASE_NAME)

    async def start(self) -> None:
        await asyncio.to_thread(self._renew)
        self._thread = threading.Thread(target=self._loop, name="wove-lease", daemon=True)
        self._thread.start()

    def job_submitted(self, job_id: Any) -> None:
        """Note a job id; written within a fraction of a second (a driver may die right after submitting)."""
        if isinstance(job_id, (str, int)) and str(job_id):
            with self._lock:
                self._new_jobs.append(str(job_id))
            self._wake.set()

    def adopt(self, run_dir: spool.RunDir) -> None:
        """Also renew ``run_dir``'s lease: its jobs now wait for this driver."""
        with self._lock:
            self._adopted.append(run_dir)
        self._wake.set()

    def _renew(self) -> None:
        with self._lock:
            jobs, self._new_jobs = self._new_jobs, []
            try:
                if jobs:
                    fd = os.open(JOBS_NAME, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0),
                                 0o600, dir_fd=self.run_dir.fd)
                    try:
                        os.write(fd, ("\n".join(jobs) + "\n").encode())
                    finally:
                        os.close(fd)
                for directory in (self.run_dir, *self._adopted):
                    directory.write_atomic(LEASE_NAME, self._lease)
            except OSError as exc:   # a full or read-only spool: jobs then stop after the grace period
                log.warning("wove: could not renew the lease in %s: %s", self.run_dir.path, exc)

    def _loop(self) -> None:
        last_write = 0.0
        while not self._stopping.is_set():
            if self._wake.wait(self.interval) and not self._stopping.is_set() \
                    and time.monotonic() - last_write < BATCH_SECONDS:
                # the rest of a burst of submissions goes in one write; the first one of a quiet spell is
                # written at once (a driver killed right after submitting still leaves the job ids)
                time.sleep(BATCH_SECONDS)
            self._wake.clear()
            if not self._stopping.is_set():
                self._renew()
                last_write = time.monotonic()

    async def stop(self) -> None:
        """The weave ends normally: no lease (and no trail) is left for ``wove cleanup`` to find."""
        thread, self._thread = self._thread, None
        self._stopping.set()
        self._wake.set()
        await asyncio.to_thread(self._stop, thread)

    def _stop(self, thread: Optional[threading.Thread]) -> None:
        if thread is not None:
            thread.join()
        with self._lock:   # unlinks can wait a few tenths of a second on a busy filesystem: not on the loop
            for name in (LEASE_NAME, JOBS_NAME):
                self.run_dir.remove(name)
            for directory in self._adopted:
                directory.close()
            self._adopted.clear()
