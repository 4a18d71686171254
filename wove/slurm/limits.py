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
# What sbatch prints when a submit limit refuses a job (Assoc/QOS, Max/Grp, per user/account).
REFUSAL_MARKERS = ("maxsubmitjob", "grpsubmitjob", "submit limit", "job submit limit")
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


def parse_assoc_mgr(text: str, uid: int, qos: str = "normal", account: str = "") -> Optional[SubmitLimit]:
    """The tightest submit limit in ``scontrol show assoc_mgr flags=assoc,qos`` output for this user.

    Counted: the user's own associations (for ``account`` if given, else all of them), the ``Grp`` limits of
    every account shown (a conservative reading: the output does not say which accounts are parents), and the
    job's QOS (its group limit, this user's and this account's).
    """
    best: Optional[SubmitLimit] = None
    scope, scope_kind = "", ""   # description of the record being read, "" when it does not apply to us
    qos_part = ""       # inside a QOS record: "", "account" or "user" sub-section
    sub_applies = False
    for raw in text.splitlines():
        line = raw.strip()
        if not raw.startswith(" "):   # a new record (or a heading)
            qos_part, sub_applies = "", False
            fields = dict(token.partition("=")[::2] for token in line.split() if "=" in token)
            if "ClusterName" in fields:
                user = fields.get("UserName", "")
                acct = fields.get("Account", "")
                if not user:
                    scope = f"account={acct}"
                elif user.endswith(f"({uid})") and (not account or acct == account):
                    scope = f"account={acct} user={user.split('(')[0]}"
                else:
                    scope = ""
                scope_kind = "account" if not user else "user"
            elif line.startswith("QOS="):
                name = line[4:].split("(")[0]
                scope = f"QOS {name}" if name == qos else ""
                scope_kind = "qos"
            else:
                scope = ""
            continue
        if not scope:
            continue
        if scope_kind == "qos":
            if line == "Account Limits":
                qos_part = "account"
                continue
            if line == "User Limits":
                qos_part = "user"
                continue
            if qos_part and _LIMIT.search(line) is None:   # an account name or uid heading
                sub_applies = line == str(uid) if qos_part == "user" else (not account or line == account)
                continue
            if qos_part and not sub_applies:
                continue
        for name, limit, used in _LIMIT.findall(line):
            if scope_kind == "account" and not name.startswith("Grp"):
                continue   # Max* on an account record is only a default for its users
            candidate = SubmitLimit(int(limit), int(used), f"{name} of {_describe(scope)}")
            if best is None or candidate.free < best.free:
                best = candidate
    return best


def _describe(scope: str) -> str:
    return scope if scope.startswith("QOS") else f"association {scope}"


async def read_submit_limit(scontrol: Sequence[str], qos: str = "", account: str = "") -> Optional[SubmitLimit]:
    """Ask the controller for the user's submit limits; ``None`` when there is none (or it will not say)."""
    uid = os.getuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    try:
        code, out, err = await commands.run([*scontrol, "show", "assoc_mgr", f"users={user}", "flags=assoc,qos"],
                                            timeout=30.0, check=False)
    except SlurmCommandError as exc:
        log.debug("wove: cannot read submit limits: %s", exc)
        return None
    if code != 0:   # no accounting, or PrivateData hides it: refusals are then retried with backoff
        log.debug("wove: cannot read submit limits: %s", err.strip())
        return None
    return parse_assoc_mgr(out, uid, qos or "normal", account)


class SubmitRoom:
    """Hands out room under a submit limit; waits (re-reading the controller) while there is none.

    ``own_in_flight`` says how many of the weave's jobs are still queued or running: while any is, room will
    come back when it ends, so waiting is right. With none of its own and no room for ``patience`` seconds,
    the limit is used up by other work and :class:`SlurmSubmitLimitError` says so.
    """

    def __init__(self, read: Callable[[], Awaitable[Optional[SubmitLimit]]],
                 own_in_flight: Callable[[], int], patience: float, cap: Optional[int] = None):
        self._read = read
        self._own_in_flight = own_in_flight
        self.patience = patience
        self.cap = cap                      # executor_config.max_queued_jobs
        self.limit: Optional[SubmitLimit] = None
        self._free: Optional[int] = None    # room left by our count since the last read
        self._read_at = 0.0
        self._reserved = 0                  # granted, not yet confirmed by sbatch
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self.waits = 0                      # how often a submission had to wait (introspection, tests)

    @property
    def bound(self) -> Optional[int]:
        """The largest number of jobs that can ever be queued at once, if limited."""
        bounds = [b for b in (self.cap, self.limit.limit if self.limit else None) if b is not None]
        return min(bounds) if bounds else None

    def job_finished(self) -> None:
        self._changed.set()

    def confirm(self, count: int) -> None:
        """``count`` reserved jobs were submitted: the controller (and the monitor) count them now."""
        self._reserved = max(0, self._reserved - count)

    def release(self, count: int) -> None:
        """``count`` reserved jobs were not submitted after all."""
        self._reserved = max(0, self._reserved - count)
        if self._free is not None:
            self._free += count
        self._changed.set()

    def refused(self, count: int) -> None:
        """sbatch was refused by a submit limit: our count was optimistic, read the controller again."""
        self._reserved = max(0, self._reserved - count)
        self._free = 0
        self._read_at = 0.0

    async def ready(self) -> None:
        """Read the limits once, so that ``bound`` is known before arrays are sized."""
        async with self._lock:
            if self._read_at == 0.0:
                await self.refresh()

    async def refresh(self) -> None:
        limit = await self._read()
        self._read_at = time.monotonic()
        self.limit = limit
        free = limit.free - self._reserved if limit is not None else None
        if self.cap is not None:
            room = self.cap - self._own_in_flight() - self._reserved
            free = room if free is None else min(free, room)
        self._free = None if free is None else max(0, free)

    async def take(self, wanted: int, exact: bool = False,
                   abandoned: Callable[[], bool] = lambda: False) -> int:
        """Reserve room for up to ``wanted`` jobs (exactly ``wanted`` with ``exact``); returns how many.

        Returns 0 once ``abandoned()`` turns true while waiting (nobody wants those jobs any more).
        """
        async with self._lock:
            if self._read_at == 0.0:
                await self.refresh()
            stuck_since: Optional[float] = None
            while True:
                if self._free is None:
                    return wanted
                needed = wanted if exact else 1
                if self._free >= needed:
                    granted = min(wanted, self._free)
                    self._free -= granted
                    self._reserved += granted
                    return granted
                if abandoned():
                    return 0
                if self._own_in_flight() == 0:
                    stuck_since = stuck_since or time.monotonic()
                    if time.monotonic() - stuck_since > self.patience:
                        raise self._exhausted(needed)
                else:
                    stuck_since = None
                self.waits += 1
                self._changed.clear()
                try:
                    await asyncio.wait_for(self._changed.wait(), 1.0)
                except asyncio.TimeoutError:
                    pass
                await asyncio.sleep(max(0.0, self._read_at + REFRESH_SECONDS - time.monotonic()))
                await self.refresh()

    def _exhausted(self, needed: int) -> SlurmSubmitLimitError:
        limit = self.limit
        if limit is not None and (self.cap is None or limit.limit <= self.cap):
            what = f"{limit.source} is {limit.limit} and {limit.used} jobs already count against it"
        else:
            what = f"max_queued_jobs is {self.cap}"
        return SlurmSubmitLimitError(
            f"no room to submit {needed} more Slurm job(s): {what}, none of them from this weave, and none "
            f"ended in {self.patience:.0f}s (submit_retry_seconds). Wait for those jobs, ask your admin to raise "
            "the limit, or pack items with items_per_job so fewer jobs are needed",
            limit=limit.limit if limit else self.cap, used=limit.used if limit else None,
            source=limit.source if limit else "max_queued_jobs")
