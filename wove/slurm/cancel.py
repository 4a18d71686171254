"""Cancelling the weave's Slurm jobs with few scancel calls, and waiting for them to leave the queue.

Cancellations requested within a few milliseconds are sent together; when every element of an array that is
still alive is being cancelled, the array is cancelled by its id instead of element by element. scancel is
retried with backoff while the controller does not answer. When the weave ends, :meth:`Canceller.drain` waits
(bounded) until none of its jobs is pending, running or completing any more.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Optional

from .cli import SlurmCli
from .errors import SlurmCommandError
from .monitor import JobMonitor

log = logging.getLogger("wove.slurm")

CANCEL_WINDOW = 0.005   # seconds: cancellations this close together share one scancel
SCANCEL_CHUNK = 500     # job keys per scancel command line


class Canceller:
    """The cancel queue of one environment."""

    def __init__(self, cli: SlurmCli, monitor: JobMonitor):
        self.cli = cli
        self.monitor = monitor
        self._keys: list[str] = []
        self._flush: Optional[asyncio.Task[None]] = None
        self._live: dict[str, set[str]] = {}   # array job id -> its element keys

    def array_submitted(self, job_id: str, keys: list[str]) -> None:
        """An array went in with these element keys (so cancelling all of them can name the array)."""
        self._live[job_id] = set(keys)

    def queue(self, key: str) -> None:
        """Cancel ``key`` (a job, or an array element) with the next scancel."""
        self._keys.append(key)
        if self._flush is None:
            self._flush = asyncio.get_running_loop().create_task(self._send())

    async def sent(self) -> None:
        """Wait until the queued cancellations were sent (scancel answered or gave up)."""
        flush = self._flush
        if flush is not None:
            await asyncio.shield(flush)

    async def close(self) -> None:
        if self._flush is not None:
            await asyncio.gather(self._flush, return_exceptions=True)

    async def _send(self) -> None:
        await asyncio.sleep(CANCEL_WINDOW)
        keys, self._keys, self._flush = self._keys, [], None
        await self.scancel(self.compact(keys))

    def compact(self, keys: list[str]) -> list[str]:
        """Cancel a whole array by its id when every element still alive is being cancelled."""
        chosen: list[str] = []
        by_array: dict[str, set[str]] = {}
        for key in dict.fromkeys(keys):
            base, _, index = key.partition("_")
            if index and base in self._live:
                by_array.setdefault(base, set()).add(key)
            else:
                chosen.append(key)
        for base, wanted in by_array.items():
            live = {k for k in self._live[base] if k in self.monitor.jobs} | wanted
            if wanted >= live:
                chosen.append(base)
            else:
                chosen.extend(sorted(wanted))
        return chosen

    async def scancel(self, keys: list[str], patience: float = 30.0) -> None:
        """scancel, retried with backoff while the controller does not answer (bounded by ``patience``)."""
        if not keys:
            return
        deadline = time.monotonic() + patience
        for start in range(0, len(keys), SCANCEL_CHUNK):
            chunk = keys[start:start + SCANCEL_CHUNK]
            delay = 0.5
            while True:
                try:
                    await self.cli.cancel(chunk)
                    break
                except SlurmCommandError as exc:
                    if time.monotonic() + delay > deadline:
                        log.warning("wove: could not cancel Slurm jobs %s: %s", " ".join(chunk), exc)
                        break
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)

    async def drain(self, base_ids: list[str], timeout: float) -> None:
        """Wait (bounded) until none of these jobs is pending, running or completing in Slurm."""
        deadline = time.monotonic() + timeout
        while base_ids and time.monotonic() < deadline:
            try:
                active = await self.monitor.active_jobs(base_ids)
            except SlurmCommandError:  # controller briefly away: keep trying until the deadline
                await asyncio.sleep(1.0)
                continue
            if not active:
                return
            base_ids = sorted({key.split("_", 1)[0] for key in active}, key=int)
            await asyncio.sleep(0.2)
        if base_ids:
            log.warning("wove: Slurm jobs %s were still active %.0fs after the weave ended", base_ids, timeout)
