"""Per-user submission limits: keep a weave's queued jobs within ``MaxSubmitJobs`` and its kin.

Slurm counts every array element as one job against ``MaxSubmitJobs`` (per association),
``GrpSubmitJobs`` (per account or QOS) and ``MaxSubmitJobsPerUser``/``PerAccount`` (per QOS), and refuses an
``sbatch`` whose array does not fit whole. The controller reports each limit with its current use in
``scontrol show assoc_mgr`` (``MaxSubmitJobs=100(37)``), so wove reads the tightest one, sizes arrays to the
room left and submits the rest as earlier jobs finish, instead of being refused.

wove's own caps (``max_queued_jobs`` of the environment, and of a task in its ``resources``) are counted live
from the weave's jobs, never from a reading, so rooms for different tasks never overrun a cap they share.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional

from .cli import SlurmCli
from .errors import SlurmCommandError, SlurmSubmitLimitError
from .parse import REFUSAL_MARKERS, SubmitLimit, parse_assoc_mgr  # noqa: F401  (read by cli/parse; named here too)

log = logging.getLogger("wove.slurm")

REFRESH_SECONDS = 0.5   # re-read the controller's counts at most this often while waiting for room


async def read_submit_limit(scontrol: Sequence[str], qos: str = "", account: str = "") -> Optional[SubmitLimit]:
    """The user's tightest submit limit, asked with this ``scontrol`` (see ``SlurmCli.submit_limit``)."""
    return await SlurmCli({"scontrol": scontrol}).submit_limit(qos, account)


@dataclass(frozen=True)
class QueueCap:
    """A cap wove keeps itself: at most ``limit`` queued jobs, ``held()`` of them outside this room's
    reservations (jobs awaited, and jobs other rooms are submitting)."""

    limit: int
    held: Callable[[], int]
    name: str = "max_queued_jobs"


class SubmitRoom:
    """Hands out room under a submit limit; waits (re-reading the controller) while there is none.

    Every grant is a reservation that the submitter confirms (sbatch succeeded) or releases (it did not).
    While any of the weave's own jobs is queued or being submitted, room will come back when it ends, so
    waiting is right. With none of its own and no room for ``patience`` seconds, the limit is used up by
    other work: :class:`SlurmSubmitLimitError` says so, and later requests fail at once until room appears.
    """

    def __init__(self, read: Callable[[], Awaitable[Optional[SubmitLimit]]],
                 own_in_flight: Callable[[], int], patience: float, cap: Optional[int] = None,
                 caps: Sequence[QueueCap] = ()):
        self._read = read
        self._own_in_flight = own_in_flight
        self.patience = patience
        self.cap = cap                      # executor_config.max_queued_jobs
        #: wove's own caps: the environment's (over every job of the weave) and a task's (over its jobs).
        self.caps = [*([QueueCap(cap, own_in_flight)] if cap is not None else []), *caps]
        self.learned: Optional[int] = None  # a size sbatch refusals taught us, when the limit cannot be read
        self.limit: Optional[SubmitLimit] = None
        self._free: Optional[int] = None    # room under the controller's limit since the last read; None: unlimited
        self._read_at = 0.0
        self.reserved = 0                   # granted, not yet confirmed or released
        self._stuck_since: Optional[float] = None
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()
        #: Held by a submission that a limit refused while it retries, so refused submissions retry one by one.
        self.refusals = asyncio.Lock()
        self.waits = 0                      # how often a request had to wait (introspection, tests)

    @property
    def bound(self) -> Optional[int]:
        """The largest number of jobs that can ever be queued at once, if limited."""
        bounds = [b for b in (*(cap.limit for cap in self.caps), self.limit.limit if self.limit else None,
                              self.learned) if b is not None]
        return min(bounds) if bounds else None

    def _room(self) -> Optional[int]:
        """Jobs that may be reserved now: the controller's room (as last read) within wove's caps (live)."""
        free = self._free
        for cap in self.caps:
            left = max(0, cap.limit - cap.held() - self.reserved)
            free = left if free is None else min(free, left)
        return free

    def job_finished(self) -> None:
        self._changed.set()

    def confirm(self, count: int) -> None:
        """``count`` reserved jobs were submitted: the controller (and the monitor) count them now."""
        self.reserved = max(0, self.reserved - count)

    def release(self, count: int) -> None:
        """``count`` reserved jobs were not submitted after all."""
        self.reserved = max(0, self.reserved - count)
        if self._free is not None:
            self._free += count
        self._changed.set()

    def refused(self, count: int) -> None:
        """sbatch was refused by a submit limit: our count was optimistic, read the controller again."""
        self.reserved = max(0, self.reserved - count)
        self._free = 0
        self._read_at = 0.0

    async def ready(self) -> None:
        """Read the limits once, so that ``bound`` is known before arrays are sized."""
        async with self._lock:
            if self._read_at == 0.0:
                await self.refresh()

    async def refresh(self) -> None:
        try:
            self.limit = await self._read()
        except SlurmCommandError as exc:   # keep the last reading (or none): a blip must not lift the limit
            log.debug("wove: cannot read submit limits: %s", exc)
        self._read_at = time.monotonic()
        limit = self.limit
        self._free = None if limit is None else max(0, limit.free - self.reserved)

    async def wait_changed(self, timeout: float) -> None:
        """Wait until one of the weave's jobs ends (or ``timeout``)."""
        self._changed.clear()
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    async def take(self, wanted: int, exact: bool = False,
                   abandoned: Callable[[], bool] = lambda: False) -> int:
        """Reserve room for up to ``wanted`` jobs (exactly ``wanted`` with ``exact``); returns how many.

        Returns 0 once ``abandoned()`` turns true while waiting (nobody wants those jobs any more).
        """
        async with self._lock:
            if self._read_at == 0.0:
                await self.refresh()
            needed = wanted if exact else 1
            while True:
                free = self._room()
                if free is None or free >= needed:
                    granted = wanted if free is None else min(wanted, free)
                    if self._free is not None:
                        self._free -= granted
                    self.reserved += granted
                    self._stuck_since = None
                    return granted
                if time.monotonic() - self._read_at >= REFRESH_SECONDS:   # our count may be stale
                    await self.refresh()
                    free = self._room()
                    if free is None or free >= needed:
                        continue
                if abandoned():
                    return 0
                if self._own_in_flight() or self.reserved:
                    self._stuck_since = None   # our own jobs will end and make room
                else:
                    self._stuck_since = self._stuck_since or time.monotonic()
                    if time.monotonic() - self._stuck_since > self.patience:
                        raise self._exhausted(needed)
                self.waits += 1
                await self.wait_changed(1.0)
                await asyncio.sleep(max(0.0, self._read_at + REFRESH_SECONDS - time.monotonic()))
                await self.refresh()

    def _exhausted(self, needed: int) -> SlurmSubmitLimitError:
        limit = self.limit
        if limit is not None and limit.free - self.reserved < needed:
            what = f"{limit.source} is {limit.limit} and {limit.used} jobs already count against it"
            numbers: dict[str, Any] = {"limit": limit.limit, "used": limit.used, "source": limit.source}
        else:
            cap = next((c for c in self.caps if c.limit - c.held() - self.reserved < needed), None)
            name, value = (cap.name, cap.limit) if cap is not None else ("max_queued_jobs", self.cap)
            what = f"{name} is {value}"
            numbers = {"limit": value, "used": None, "source": name}
        return SlurmSubmitLimitError(
            f"no room to submit {needed} more Slurm job(s): {what}, none of them from this weave, and none "
            f"ended in {self.patience:.0f}s (submit_retry_seconds). Wait for those jobs, ask your admin to raise "
            "the limit, or pack items with items_per_job so fewer jobs are needed", **numbers)
