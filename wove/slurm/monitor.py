"""One job monitor per Slurm environment: notices jobs that end without reporting, within seconds.

All of the weave's jobs are checked with one ``squeue`` call per interval (plus one ``sacct`` call for jobs
that already left ``squeue``), never one call per job. The interval starts at the floor (1 s) after each
submission or state change and stretches while nothing happens. A controller that does not answer is
retried with backoff and is never mistaken for a failed task; a cluster without accounting is handled by
relying on ``squeue``/``scontrol`` alone.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ..dispatch.protocol import EXIT_SPOOLED
from ..errors import InvalidTypeError
from ..executors import joblogs
from .cli import SlurmCli
from .errors import SlurmCommandError, SlurmQueueTimeoutError
from .states import JobInfo, JobState, job_error, record_state

log = logging.getLogger("wove.slurm")

# Pending reasons that are not queue time: wove's own array throttle (workers=N) and dependencies.
_NOT_QUEUE_WAIT = ("JobArrayTaskLimit", "Dependency")
LOST_AFTER_SECONDS = 30.0
QUERY_COST_FACTOR = 10.0   # poll no more often than every 10x the time one squeue call takes

SPOOLED_GRACE = 10.0   # seconds to wait for the events of a job that exited with EXIT_SPOOLED

@dataclass
class TrackedJob:
    """A job (or array element) the weave waits on, and the runs (items) it carries."""

    key: str
    task: str
    runs: dict[str, Any] = field(default_factory=dict)       # run_id -> RunRecord
    stderr_path: str = ""
    requested_memory: str = ""
    requested_time: str = ""
    memory_history: list[str] = field(default_factory=list)
    submitted: float = field(default_factory=time.monotonic)
    info: Optional[JobInfo] = None
    terminal_since: Optional[float] = None
    missing_since: Optional[float] = None
    held_signal: dict[str, str] = field(default_factory=dict)  # run_id -> signal the worker reported
    pending_since: Optional[float] = None   # start of the wait that counts against queue_timeout
    restarts: int = 0


class JobMonitor:
    """Polls Slurm for the state of tracked jobs and reports the ones that died silently."""

    def __init__(self, report: Callable[[str, dict[str, Any]], None], cli: Optional[SlurmCli] = None, *,
                 poll_interval: float = 1.0, poll_max: float = 15.0, grace: float = 1.0,
                 queue_timeout: Optional[float] = None, callback_url: str = "", read_stderr: bool = True,
                 **tools: Sequence[str]):
        """``cli`` runs the Slurm commands (the adapter's); without it, ``tools`` (``squeue=[...]``, ``sacct``,
        ``scontrol``, ``scancel``) make one, as ``executor_config`` would."""
        unknown = set(tools) - {"squeue", "sacct", "scontrol", "scancel"}
        if unknown:
            raise InvalidTypeError(f"JobMonitor() got unexpected keyword arguments {sorted(unknown)}")
        self._report = report
        self.cli = cli or SlurmCli(tools)
        self.poll_floor = poll_interval
        self.poll_max = max(poll_max, poll_interval)
        self.grace = grace
        self.queue_timeout = queue_timeout
        self.callback_url = callback_url
        self.read_stderr = read_stderr
        self.jobs: dict[str, TrackedJob] = {}
        self._run_to_key: dict[str, str] = {}
        self.interval = poll_interval
        self._quiet_since = time.monotonic()
        self._wake = asyncio.Event()
        self._task: Optional[asyncio.Task[None]] = None
        self.accounting: Optional[bool] = None       # learned on first use of sacct
        self.calls = {"squeue": 0, "sacct": 0, "scontrol": 0}
        self.outage_since: Optional[float] = None
        self._recheck_at: Optional[float] = None
        self.query_seconds = 0.0   # how long the last squeue call took
        self._side_tasks: set[asyncio.Task[None]] = set()
        #: Called when a job no longer carries any awaited run (its slot under a submit limit frees soon).
        self.on_release: Optional[Callable[[], None]] = None

    # ------------------------------------------------------------------ tracking
    def track(self, key: str, task: str, run_id: str, record: Any, *, stderr_path: str = "",
              requested_memory: str = "", requested_time: str = "",
              memory_history: Optional[list[str]] = None) -> None:
        job = self.jobs.get(key)
        if job is None:
            job = self.jobs[key] = TrackedJob(key, task, stderr_path=stderr_path,
                                              requested_memory=requested_memory, requested_time=requested_time,
                                              memory_history=list(memory_history or []))
        job.runs[run_id] = record
        self._run_to_key[run_id] = key
        self.interval = self.poll_floor   # new work: look often again (without an extra poll right now)
        self._quiet_since = time.monotonic()
        if len(self.jobs) == 1 and len(job.runs) == 1:
            self._wake.set()   # the loop sleeps while there is nothing to watch

    def resolved(self, run_id: str) -> None:
        """The run's outcome arrived (or the weave cancelled it): stop watching it."""
        key = self._run_to_key.pop(run_id, None)
        if key is None:
            return
        job = self.jobs.get(key)
        if job is not None:
            job.runs.pop(run_id, None)
            job.held_signal.pop(run_id, None)
            if not job.runs:
                del self.jobs[key]
                if self.on_release is not None:
                    self.on_release()

    def key_of(self, run_id: str) -> Optional[str]:
        return self._run_to_key.get(run_id)

    def hold_cancelled(self, run_id: str, signal_name: str) -> bool:
        """A worker reported being stopped by a signal: decide once Slurm tells us the job's fate."""
        key = self._run_to_key.get(run_id)
        if key is None:
            return False
        self.jobs[key].held_signal[run_id] = signal_name or "a signal"
        self.poke()
        return True

    def poke(self) -> None:
        self.interval = self.poll_floor
        self._quiet_since = time.monotonic()
        self._wake.set()

    # ------------------------------------------------------------------ loop
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._side_tasks:
            await asyncio.gather(*self._side_tasks, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            if not self.jobs:
                self._wake.clear()
                await self._wake.wait()
            self._wake.clear()
            wait = self.interval
            if self._recheck_at is not None:
                wait = max(0.0, min(wait, self._recheck_at - time.monotonic()))
                self._recheck_at = None
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
            except asyncio.TimeoutError:
                pass
            if not self.jobs:
                continue
            try:
                await self.poll()
            except asyncio.CancelledError:
                raise
            except Exception:  # the monitor must survive anything a cluster prints
                log.exception("wove: Slurm job monitor poll failed")
            self._adapt_interval()

    def _adapt_interval(self) -> None:
        if self.outage_since is not None:
            self.interval = min(max(self.interval * 2, self.poll_floor), 30.0)
        elif time.monotonic() - self._quiet_since > 30.0:
            self.interval = min(self.interval * 1.25, self.poll_max)
        else:
            self.interval = self.poll_floor
        # squeue for several jobs makes slurmctld walk every job it holds: on a busy controller one call
        # can take a noticeable fraction of a second. Keep monitoring under ~10% of that cost.
        self.interval = min(max(self.interval, QUERY_COST_FACTOR * self.query_seconds), 30.0)

    # ------------------------------------------------------------------ one poll
    async def poll(self) -> None:
        keys = list(self.jobs)
        if not keys:
            return
        base_ids = sorted({key.split("_", 1)[0] for key in keys}, key=int)
        started = time.monotonic()
        try:
            infos = await self._squeue(base_ids)
        except SlurmCommandError as exc:
            if self.outage_since is None:
                self.outage_since = time.monotonic()
                log.warning("wove: squeue failed (%s); retrying with backoff, tasks keep waiting", exc)
            return
        self.query_seconds = time.monotonic() - started
        if self.outage_since is not None:
            log.warning("wove: Slurm controller answers again after %.0fs", time.monotonic() - self.outage_since)
            self.outage_since = None
        missing = [key for key in keys if key not in infos]
        if missing:
            missing_ids = sorted({k.split("_", 1)[0] for k in missing}, key=int)
            infos.update(await self._sacct(missing_ids))
            if self.accounting is False:   # no accounting: ask the controller directly
                for base_id in missing_ids:
                    infos.update(await self._scontrol(base_id))
        now = time.monotonic()
        changed = False
        for key in keys:
            job = self.jobs.get(key)
            if job is None:
                continue
            info = infos.get(key)
            if info is None:
                changed |= self._missing(job, now)
                continue
            job.missing_since = None
            changed |= self._update(job, info, now)
        if changed:
            self._quiet_since = now

    def _missing(self, job: TrackedJob, now: float) -> bool:
        if job.missing_since is None:
            job.missing_since = now
            return False
        if now - job.missing_since < LOST_AFTER_SECONDS or job.held_signal:
            if job.held_signal and now - job.missing_since >= self.grace:
                self._fail(job, JobInfo(job.key, JobState.CANCELLED))
                return True
            return False
        info = JobInfo(job.key, JobState.UNKNOWN, reason="the job left Slurm's queue and accounting has no "
                       "record of it")
        self._fail(job, info)
        return True

    def _update(self, job: TrackedJob, info: JobInfo, now: float) -> bool:
        previous = job.info
        job.info = info
        changed = previous is None or previous.state != info.state
        for record in job.runs.values():
            record.state = record_state(info.state)
            record.reason = info.reason if info.reason not in ("None", "") else record.reason
            if info.node:
                record.node = info.node
            if info.state is JobState.RUNNING and record.started_at is None:
                record.details.setdefault("slurm_started", time.time())
        if info.restarts > job.restarts:  # requeued: the job lives on, a new run of it will report
            job.restarts = info.restarts
            job.held_signal.clear()
            job.terminal_since = None
            return True
        if info.state.waiting:
            job.terminal_since = None
            if job.held_signal and info.state in (JobState.REQUEUED, JobState.REQUEUE_HOLD, JobState.PENDING):
                job.held_signal.clear()
            if info.reason in _NOT_QUEUE_WAIT:   # held back by wove's own throttle or a dependency
                job.pending_since = None
            elif job.pending_since is None:
                job.pending_since = now
            if (info.state is JobState.PENDING and self.queue_timeout is not None
                    and job.pending_since is not None and now - job.pending_since > self.queue_timeout):
                self._queue_timeout(job, info)
            elif info.state is JobState.PENDING and changed:
                log.debug("wove: job %s pending (%s)", job.key, info.reason)
            return changed
        if not info.state.terminal:
            job.terminal_since = None
            return changed
        # A worker that could not reach the weave left its outcome in the spool (exit 4): the events
        # directory is polled every second, so give the file a few polls before calling the job lost.
        grace = max(self.grace, SPOOLED_GRACE) if info.exit_code == EXIT_SPOOLED else self.grace
        if job.terminal_since is None:
            job.terminal_since = now
            recheck = now + grace   # look again right after the grace period
            self._recheck_at = recheck if self._recheck_at is None else min(self._recheck_at, recheck)
            return True
        if now - job.terminal_since >= grace:
            self._fail(job, info)
            return True
        return changed

    def _fail(self, job: TrackedJob, info: JobInfo) -> None:
        info.requested_memory = info.requested_memory or job.requested_memory
        info.requested_time = info.requested_time or job.requested_time
        path = info.stderr_path or job.stderr_path
        tail = joblogs.tail(path) if self.read_stderr and path else ""
        for run_id, record in list(job.runs.items()):
            signal_name = job.held_signal.get(run_id, "")
            error = job_error(info, tail, task=job.task, log_path=path if os.path.exists(path) else "",
                              memory_history=job.memory_history, cancelled_signal=signal_name,
                              callback_url=self.callback_url)
            record.state = record_state(info.state)
            self._report(run_id, {"type": "task_error", "run_id": run_id, "exception": error,
                                  "error": {"kind": type(error).__name__, "message": str(error),
                                            "traceback": "", "retryable": False, "source": "executor"}})
            self.resolved(run_id)

    def _queue_timeout(self, job: TrackedJob, info: JobInfo) -> None:
        waited = time.monotonic() - (job.pending_since or job.submitted)
        message = (f"Slurm job {job.key} (task {job.task!r}) was still pending after {waited:.0f}s "
                   f"(queue_timeout={self.queue_timeout}s), reason: {info.reason or 'unknown'}; it was "
                   "cancelled. Ask for fewer resources, another partition, or raise queue_timeout")
        error = SlurmQueueTimeoutError(message, job_id=info.job_id, array_index=info.array_index,
                                       state=info.state.value, reason=info.reason)
        task = asyncio.get_running_loop().create_task(self._scancel([job.key]))
        self._side_tasks.add(task)   # awaited by stop(), so the cancellation is never dropped
        task.add_done_callback(self._side_tasks.discard)
        for run_id in list(job.runs):
            self._report(run_id, {"type": "task_error", "run_id": run_id, "exception": error,
                                  "error": {"kind": type(error).__name__, "message": message, "traceback": "",
                                            "retryable": False, "source": "executor"}})
            self.resolved(run_id)

    async def _scancel(self, keys: list[str]) -> None:
        try:
            await self.cli.cancel(keys)
        except SlurmCommandError as exc:
            log.warning("wove: scancel %s failed: %s", " ".join(keys), exc)

    # ------------------------------------------------------------------ Slurm queries
    async def _squeue(self, base_ids: list[str], purpose: str = "squeue") -> dict[str, JobInfo]:
        self.calls[purpose] = self.calls.get(purpose, 0) + 1
        return await self.cli.squeue_jobs(base_ids)

    async def active_jobs(self, base_ids: list[str]) -> list[str]:
        """Keys of the given jobs that are still pending, running or completing."""
        infos = await self._squeue(base_ids, purpose="drain")
        return [key for key, info in infos.items() if not info.state.terminal]

    async def _sacct(self, base_ids: list[str]) -> dict[str, JobInfo]:
        if self.accounting is False:
            return {}
        self.calls["sacct"] += 1
        accounting, infos = await self.cli.sacct_jobs(base_ids)
        if accounting is not None:   # None: sacct failed this once, which says nothing about accounting
            self.accounting = accounting
        return infos

    async def _scontrol(self, job_id: str) -> dict[str, JobInfo]:
        """``scontrol show job`` for a job that left ``squeue``'s view (clusters without accounting)."""
        self.calls["scontrol"] += 1
        return await self.cli.scontrol_job(job_id)


