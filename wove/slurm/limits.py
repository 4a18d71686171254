"""Per-user submission limits: keep a weave's queued jobs within ``MaxSubmitJobs`` and its kin.

Slurm counts every array element as one job against ``MaxSubmitJobs`` (per association),
``GrpSubmitJobs`` (per account or QOS) and ``MaxSubmitJobsPerUser``/``PerAccount`` (per QOS), and refuses an
``sbatch`` whose array does not fit whole. The controller reports each limit with its current use in
``scontrol show assoc_mgr`` (``MaxSubmitJobs=100(37)``), so wove reads the tightest one, sizes arrays to the
room left and submits the rest as earlier jobs finish, instead of being refused.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import re
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Callable, Optional

from ..errors import SlurmCommandError, SlurmSubmitLimitError
from . import commands

log = logging.getLogger("wove.slurm")

_LIMIT = re.compile(r"\b((?:Max|Grp)SubmitJobs(?:PU|PA)?)=(\d+)\((\d+)\)")
# The reasons sbatch prints when a submit limit refused a job (AssocMaxSubmitJobLimit, QOSGrpSubmitJobsLimit,
# QOSMaxSubmitJobPerUserLimit, ...). Not the generic "job submit limit, user's size and/or time limits"
# sentence: it also covers jobs that can never run (over MaxWall, MaxTRESPerJob).
REFUSAL_MARKERS = ("maxsubmitjob", "grpsubmitjob")
REFRESH_SECONDS = 0.5   # re-read the controller's counts at most this often while waiting for room


@dataclass
class SubmitLimit:
    """The tightest submit limit that applies to the user's jobs, and how much of it is in use."""

    limit: int
    used: int
    source: str   # e.g. "MaxSubmitJobs of association account=root user=root"

    @property
    def free(self) -> int:
        return max(0, self.limit - self.used)


def _records(text: str) -> list[tuple[dict[str, str], list[str]]]:
    """Split assoc_mgr output into records: the header line's fields, and the record's other lines."""
    records: list[tuple[dict[str, str], list[str]]] = []
    for raw in text.splitlines():
        if not raw.strip():
            continue
        if not raw.startswith(" "):
            records.append((dict(token.partition("=")[::2] for token in raw.split() if "=" in token), []))
        elif records:
            records[-1][1].append(raw.strip())
    return records


def _field(lines: list[str], name: str) -> str:
    for line in lines:
        for token in line.split():
            key, sep, value = token.partition("=")
            if sep and key == name:
                return value
    return ""


def _limits_in(lines: list[str], source: str, group_only: bool = False) -> list[SubmitLimit]:
    found = []
    for line in lines:
        for name, limit, used in _LIMIT.findall(line):
            if not group_only or name.startswith("Grp"):
                found.append(SubmitLimit(int(limit), int(used), f"{name} of {source}"))
    return found


def parse_assoc_mgr(text: str, uid: int, qos: str = "normal", account: str = "") -> Optional[SubmitLimit]:
    """The tightest submit limit in ``scontrol show assoc_mgr flags=assoc,qos`` output for this user's jobs.

    Counted: the user's association for ``account`` (else the default one, ``DefAssoc=Yes``), the ``Grp``
    limits of that account and of its parents (``ParentAccount``), and the job's QOS: its group limit, and its
    per-user and per-account limits for this user and that account.
    """
    records = _records(text)
    assocs = [(fields, lines) for fields, lines in records if "ClusterName" in fields]
    accounts = {fields.get("Account", ""): lines for fields, lines in assocs if not fields.get("UserName")}
    mine = [(fields, lines) for fields, lines in assocs
            if fields.get("UserName", "").endswith(f"({uid})") and not fields.get("Partition")]
    if account:
        mine = [entry for entry in mine if entry[0].get("Account") == account]
    else:
        mine = [entry for entry in mine if _field(entry[1], "DefAssoc") == "Yes"] or mine
    found: list[SubmitLimit] = []
    used_accounts = set()
    for fields, lines in mine:
        current = fields.get("Account", "")
        used_accounts.add(current)
        found += _limits_in(lines, f"association account={current} user={fields['UserName'].split('(')[0]}")
        seen = set()
        while current in accounts and current not in seen:   # the account and its parents
            seen.add(current)
            found += _limits_in(accounts[current], f"association account={current}", group_only=True)
            current = _field(accounts[current], "ParentAccount").split("(")[0]
    for fields, lines in records:
        if fields.get("QOS", "").split("(")[0] != qos or "ClusterName" in fields:
            continue
        part, applies = "", True
        for line in lines:
            if line in ("Account Limits", "User Limits"):
                part = line
            elif part and _LIMIT.search(line) is None and "=" not in line:   # an account name or a uid
                applies = line == str(uid) if part == "User Limits" else line in used_accounts or not mine
            elif not part or applies:
                found += _limits_in([line], f"QOS {qos}")
    return min(found, key=lambda limit: limit.free, default=None)


async def read_submit_limit(scontrol: Sequence[str], qos: str = "", account: str = "") -> Optional[SubmitLimit]:
    """Ask the controller for the user's tightest submit limit; ``None`` when none applies.

    Raises :class:`SlurmCommandError` when the controller cannot be asked (no accounting, ``PrivateData``,
    controller away): the caller decides what an unknown limit means.
    """
    uid = os.getuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    _, out, _ = await commands.run([*scontrol, "show", "assoc_mgr", f"users={user}", "flags=assoc,qos"],
                                   timeout=30.0)
    return parse_assoc_mgr(out, uid, qos or "normal", account)


class SubmitRoom:
    """Hands out room under a submit limit; waits (re-reading the controller) while there is none.

    Every grant is a reservation that the submitter confirms (sbatch succeeded) or releases (it did not).
    While any of the weave's own jobs is queued or being submitted, room will come back when it ends, so
    waiting is right. With none of its own and no room for ``patience`` seconds, the limit is used up by
    other work: :class:`SlurmSubmitLimitError` says so, and later requests fail at once until room appears.
    """

    def __init__(self, read: Callable[[], Awaitable[Optional[SubmitLimit]]],
                 own_in_flight: Callable[[], int], patience: float, cap: Optional[int] = None):
        self._read = read
        self._own_in_flight = own_in_flight
        self.patience = patience
        self.cap = cap                      # executor_config.max_queued_jobs
        self.learned: Optional[int] = None  # a size sbatch refusals taught us, when the limit cannot be read
        self.limit: Optional[SubmitLimit] = None
        self._free: Optional[int] = None    # room left by our count since the last read; None: unlimited
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
        bounds = [b for b in (self.cap, self.limit.limit if self.limit else None, self.learned) if b is not None]
        return min(bounds) if bounds else None

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
        free = limit.free - self.reserved if limit is not None else None
        if self.cap is not None:
            room = self.cap - self._own_in_flight() - self.reserved
            free = room if free is None else min(free, room)
        self._free = None if free is None else max(0, free)

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
                if self._free is None or self._free >= needed:
                    granted = wanted if self._free is None else min(wanted, self._free)
                    if self._free is not None:
                        self._free -= granted
                    self.reserved += granted
                    self._stuck_since = None
                    return granted
                if time.monotonic() - self._read_at >= REFRESH_SECONDS:   # our count may be stale
                    await self.refresh()
                    if self._free is None or self._free >= needed:
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
            numbers = {"limit": limit.limit, "used": limit.used, "source": limit.source}
        else:
            what = f"max_queued_jobs is {self.cap}"
            numbers = {"limit": self.cap, "used": None, "source": "max_queued_jobs"}
        return SlurmSubmitLimitError(
            f"no room to submit {needed} more Slurm job(s): {what}, none of them from this weave, and none "
            f"ended in {self.patience:.0f}s (submit_retry_seconds). Wait for those jobs, ask your admin to raise "
            "the limit, or pack items with items_per_job so fewer jobs are needed", **numbers)
