"""Submitting under submit limits: one room per (qos, account), sbatch retried until it is accepted.

A submission first reserves its jobs (array elements) in the room of its QOS and account (limits.py), then
runs sbatch; a task with its own ``max_queued_jobs`` has rooms of its own, which also count its jobs. sbatch
is retried while the controller is away (transient errors, with backoff, for
``submit_retry_seconds``) and while a submit limit refuses it: a refusal means wove's reading of the limit
was optimistic, stale, or impossible, so the room is read again and the submission waits for the weave's own
jobs to end. An array larger than the limit can ever hold is handed back (:class:`Oversized`) to be sent in
pieces; :meth:`Pacer.paced_arrays` sends a batch as arrays sized to the room left.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Sequence
from typing import Any, Callable, Optional, Protocol

from . import parse
from .cli import SlurmCli
from .errors import SlurmCommandError, SlurmSubmitLimitError
from .limits import QueueCap, SubmitLimit, SubmitRoom
from .monitor import JobMonitor

log = logging.getLogger("wove.slurm")

SUBMIT_CONCURRENCY = 16   # sbatch processes at once
MAX_DELAY = 10.0          # seconds between sbatch retries, at most


class Oversized(Exception):
    """A submission was refused by a submit limit smaller than its array: it must go out in pieces."""


class Abandoned(Exception):
    """Every item of a submission waiting for room was cancelled: nothing to submit any more."""


class PacedItem(Protocol):
    cancelled: bool


def elements_for(items: int, per_job: int) -> int:
    """Array elements needed for ``items`` items, ``per_job`` to an element."""
    per_job = max(1, per_job)
    return (items + per_job - 1) // per_job


class Pacer:
    """Runs sbatch for one environment: within its submit limits, a few at a time, retried when it may pass."""

    def __init__(self, cli: SlurmCli, monitor: JobMonitor, submissions: list[dict[str, Any]], *, patience: float,
                 cap: Optional[int], items_per_job: int):
        self.cli = cli
        self.monitor = monitor
        self.submissions = submissions   # every sbatch that went in (the adapter's record of them)
        self.patience = patience         # submit_retry_seconds
        self.cap = cap                   # max_queued_jobs
        self.per_job = max(1, items_per_job)
        self.rooms: dict[tuple[str, str, str, int], SubmitRoom] = {}   # (qos, account, capped task, its cap)
        self.slots = asyncio.Semaphore(SUBMIT_CONCURRENCY)

    # ------------------------------------------------------------------ rooms
    def room_for(self, task_resources: dict[str, Any], task: str = "") -> SubmitRoom:
        """One room per (qos, account): the limits that apply depend on both. A task with its own
        ``max_queued_jobs`` gets rooms of its own, capped by its jobs as well as by all of the weave's."""
        task_cap = task_resources.get("max_queued_jobs")
        key = (str(task_resources.get("qos") or ""), str(task_resources.get("account") or ""),
               task if task_cap else "", int(task_cap or 0))
        room = self.rooms.get(key)
        if room is None:
            async def read() -> Optional[SubmitLimit]:
                return await self.cli.submit_limit(qos=key[0], account=key[1])

            def own_in_flight() -> int:   # jobs awaited, and jobs other rooms are submitting right now
                return len(self.monitor.jobs) + sum(other.reserved for other in self.rooms.values()
                                                    if other is not room)

            def task_in_flight() -> int:  # the same, for this task's jobs only
                return (sum(1 for job in self.monitor.jobs.values() if job.task == task)
                        + sum(other.reserved for other_key, other in self.rooms.items()
                              if other_key[2] == task and other is not room))

            caps = [QueueCap(int(task_cap), task_in_flight, f"max_queued_jobs of task {task!r}")] if task_cap else []
            room = self.rooms[key] = SubmitRoom(read, own_in_flight, self.patience, cap=self.cap, caps=caps)
        return room

    def job_released(self) -> None:
        """One of the weave's jobs stopped counting against the limits: waiting submissions may go."""
        for room in self.rooms.values():
            room.job_finished()

    # ------------------------------------------------------------------ sbatch
    async def sbatch(self, argv: list[str], payload: str, stdin: Optional[bytes], *, items: int, room: SubmitRoom,
                     elements: int = 1, abandoned: Callable[[], bool] = lambda: False) -> str:
        """Run sbatch for ``elements`` jobs the caller reserved in ``room``; return the job id.

        The reservation is confirmed when sbatch is accepted and released when it fails for good.
        """
        async def attempt() -> str:
            async with self.slots:
                return await self.cli.run_sbatch(argv, payload, stdin)

        out = await _Retries(self, room, elements, abandoned).run(attempt)
        job_id = parse.parse_job_id(out)
        # "awaited": jobs (array elements) of this weave whose outcome is awaited, these included.
        self.submissions.append({"argv": list(argv), "items": items, "job_id": job_id,
                                 "elements": elements, "awaited": len(self.monitor.jobs) + elements})
        return job_id

    # ------------------------------------------------------------------ arrays under a limit
    async def paced_arrays(self, items: Sequence[PacedItem], room: SubmitRoom, max_array: int,
                           workers: Optional[int], submit_array: Callable[[list[Any]], Awaitable[list[str]]],
                           per_job: Optional[int] = None) -> list[tuple[list[Any], Exception]]:
        """Under a submit limit: each array as large as the room left, the next one once jobs end.

        ``workers=N`` caps the jobs of this batch in flight (instead of an array throttle, which could not
        account for the many small arrays pacing makes). ``submit_array(group)`` submits one array whose
        elements are reserved in ``room`` and returns its element keys. Returns the groups that failed,
        with their error. ``per_job``: items to an element (the task's ``items_per_job``).
        """
        per_job = max(1, per_job or self.per_job)
        failures: list[tuple[list[Any], Exception]] = []
        submitted: list[str] = []   # element keys of this batch
        remaining = list(items)
        while True:
            remaining = [item for item in remaining if not item.cancelled]
            if not remaining:
                break
            elements = min(max_array, room.bound or max_array, elements_for(len(remaining), per_job))
            if workers:
                submitted = [key for key in submitted if key in self.monitor.jobs]
                elements = min(elements, workers - len(submitted))
                if elements <= 0:
                    await room.wait_changed(1.0)
                    continue
            try:
                granted = await room.take(elements, abandoned=functools.partial(_all_cancelled, remaining))
            except SlurmSubmitLimitError as exc:
                failures.append((remaining, exc))
                break
            remaining = [item for item in remaining if not item.cancelled]   # some may have gone meanwhile
            useful = min(granted, elements_for(len(remaining), per_job))
            if useful < granted:
                room.release(granted - useful)
            if useful == 0:
                continue
            group, remaining = remaining[:useful * per_job], remaining[useful * per_job:]
            try:
                submitted += await submit_array(group)
            except Oversized:   # the limit shrank below this array: put it back, smaller next time
                remaining = group + remaining
                continue
            except Exception as exc:
                failures.append((group, exc))
        return failures


class _Retries:
    """One submission's way to acceptance: what used to be five flags in one retry loop.

    ``held``: the submission's jobs are reserved in the room right now. ``retrying``: it holds
    ``room.refusals`` (refused submissions retry one at a time). ``idle_refusals``: refusals in a row while
    none of the weave's jobs was queued. ``started`` and ``delay``: patience and backoff.
    """

    def __init__(self, pacer: Pacer, room: SubmitRoom, elements: int, abandoned: Callable[[], bool]):
        self.pacer, self.room, self.elements, self.abandoned = pacer, room, elements, abandoned
        self.started = time.monotonic()
        self.delay = 0.5
        self.held = True
        self.retrying = False
        self.idle_refusals = 0

    async def run(self, attempt: Callable[[], Awaitable[str]]) -> str:
        """``attempt()`` until it succeeds; confirm the reservation then, or release it on the way out."""
        try:
            out = await self._until_accepted(attempt)
        except BaseException:
            if self.held:
                self.room.release(self.elements)
            raise
        finally:
            if self.retrying:
                self.room.refusals.release()
        self.room.confirm(self.elements)
        return out

    async def _until_accepted(self, attempt: Callable[[], Awaitable[str]]) -> str:
        while True:
            try:
                return await attempt()
            except SlurmCommandError as exc:
                if parse.refused_by_submit_limit(exc):
                    await self._after_refusal(exc)
                elif not await self._after_failure(exc):
                    raise

    def _out_of_patience(self) -> bool:
        return time.monotonic() - self.started + self.delay > self.pacer.patience

    def _back_off(self) -> None:
        self.delay = min(self.delay * 2, MAX_DELAY)

    async def _after_failure(self, exc: SlurmCommandError) -> bool:
        """sbatch failed without a limit refusing it: True to retry (the controller is briefly away)."""
        if not parse.transient(exc) or self._out_of_patience():
            return False
        log.warning("wove: sbatch failed transiently (%s); retrying in %.1fs", exc, self.delay)
        await asyncio.sleep(self.delay)
        self._back_off()
        return True

    async def _after_refusal(self, exc: SlurmCommandError) -> None:
        """Refused by a submit limit: read the room again, then wait for room (or raise why not)."""
        room = self.room
        room.refused(self.elements)
        self.held = False
        await room.ready()
        own = bool(self.pacer.monitor.jobs or room.reserved)
        self._check_size(own, exc)
        if own:
            self.started = time.monotonic()   # our own jobs will end and make room
        elif self._out_of_patience():
            raise self._used_up(exc) from exc
        log.info("wove: sbatch refused by a submit limit; waiting for room (%s)", exc)
        await self._wait_for_room(exc)

    def _check_size(self, own: bool, exc: SlurmCommandError) -> None:
        """Raise :class:`Oversized` when this array can never fit under the limit as it is."""
        room, elements = self.room, self.elements
        if room.bound is not None and elements > room.bound:
            raise Oversized(elements) from exc
        self.idle_refusals = 0 if own else self.idle_refusals + 1
        if room.limit is None and elements > 1 and self.idle_refusals >= 2:
            # Refused twice with none of ours queued (jobs that just ended may count for a moment): a limit
            # wove cannot read is smaller than this array. Halve until it fits.
            room.learned = max(1, elements // 2)
            raise Oversized(elements) from exc

    async def _wait_for_room(self, exc: SlurmCommandError) -> None:
        room = self.room
        if not self.retrying:   # one refused submission retries at a time, the others queue here
            await room.refusals.acquire()
            self.retrying = True
        await room.wait_changed(self.delay)
        self._back_off()
        if self.abandoned() or not await room.take(self.elements, exact=True, abandoned=self.abandoned):
            raise Abandoned() from exc
        self.held = True

    def _used_up(self, exc: SlurmCommandError) -> SlurmSubmitLimitError:
        patience = self.pacer.patience
        return SlurmSubmitLimitError(
            f"sbatch was refused by a submit limit for {patience:.0f}s (submit_retry_seconds) while no job of "
            f"this weave was queued: {(exc.stderr or str(exc)).strip()}. The limit is used up by other jobs or "
            f"is smaller than this submission of {self.elements} job(s); ask your admin, or set "
            "max_queued_jobs / items_per_job so fewer jobs are queued at once", source="sbatch")


def _all_cancelled(items: list[Any]) -> bool:
    return all(item.cancelled for item in items)
