"""The Slurm adapter: what ``executor: "slurm"`` plugs into the backend-adapter executor.

Default path, per the user's page: ``sbatch --parsable --job-name <prefix>-<task> --wrap "<command>"``, with
the payload in the *environment* of the ``sbatch`` process (``WOVE_BACKEND_PAYLOAD``; ``--export=ALL``
carries it to the job), so it never appears in a command line, in ``scontrol show job`` or in ``ps``.
A custom ``submit`` callable replaces the default path entirely.

The adapter composes the parts, each with one job: ``cli`` (every Slurm command line), ``submit``
(batching and arrays), ``pacing`` (submit limits, sbatch retries), ``cancel`` (scancel, drain), ``monitor``
(jobs that end without reporting). What stays here: starting and closing them, the log directory, custom
``submit`` callables, and the out-of-memory retry policy.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import re
from collections.abc import Mapping
from typing import Any, Optional

from ..dispatch import protocol, spool
from ..errors import ExecutorStartError
from ..executors.adapter import BackendAdapter
from . import parse, resources
from .cancel import Canceller
from .cli import DEFAULT_COMMAND, SlurmCli
from .cli import _max_array_cache as _max_array_cache  # cleared by tests that reconfigure Slurm
from .errors import (
    SlurmBootFailError,
    SlurmCommandError,
    SlurmNodeFailError,
    SlurmOutOfMemoryError,
    SlurmPreemptedError,
    SlurmTimeLimitError,
)
from .monitor import JobMonitor
from .pacing import Pacer
from .parse import TRANSIENT_MARKERS as _TRANSIENT  # noqa: F401  (its old name, for the parser tests)
from .submit import ArrayFiles, Item, Submitter

log = logging.getLogger("wove.slurm")

__all__ = ["DEFAULT_COMMAND", "SlurmAdapter"]

DEFAULT_MAX_REQUEUES = 3   # resubmissions after a lost node or a preemption, per call


class SlurmAdapter(BackendAdapter):
    """Submits wove payloads to Slurm with sbatch and cancels them with scancel."""

    required_modules = ("cloudpickle",)
    install_hint = 'pip install "wove[dispatch]"'
    config_keys = None  # validated by SlurmExecutor.validate_config

    def __init__(self, *, name: str, config: Mapping[str, Any], callback_url: str,
                 run_config: Mapping[str, Any]):
        super().__init__(name=name, config=config, callback_url=callback_url, run_config=run_config)
        self.cli = SlurmCli(config)

    async def start(self) -> None:
        config = self.config
        self.custom_submit = config.get("submit")
        self.arrays = config.get("arrays", True)
        self.env_resources = resources.validate(
            {k: v for k, v in config.items() if k in resources.RESOURCE_KEYS}, f"environment {self.name!r}")
        self.oom_factor = config.get("oom_retry_factor")
        self.oom_max = config.get("oom_max_mem")
        self.time_factor = config.get("time_retry_factor")
        self.time_max = config.get("time_max")
        self.max_requeues = int(config.get("max_requeues", DEFAULT_MAX_REQUEUES))
        self.keep_logs = config.get("keep_logs", "on_failure")
        self._log_run_dir: Optional[spool.RunDir] = None
        self.log_dir = self._open_log_dir(config.get("log_dir"))
        #: Every sbatch invocation: argv (without the payload, which is never on it), items, job id.
        self.submissions: list[dict[str, Any]] = []
        self.failed_jobs = 0
        self._pending: set[asyncio.Task[Any]] = set()   # custom submit calls in flight
        self._detached_keys: set[str] = set()
        self.monitor = JobMonitor(
            self._report, self.cli, poll_interval=float(config.get("poll_interval") or 1.0),
            poll_max=float(config.get("poll_max") or 15.0), queue_timeout=config.get("queue_timeout"),
            callback_url=self.callback_url)
        self.monitor.start()
        self.pacer = Pacer(self.cli, self.monitor, self.submissions,
                           patience=float(config.get("submit_retry_seconds") or 120.0),
                           cap=config.get("max_queued_jobs"), items_per_job=int(config.get("items_per_job") or 1))
        self.monitor.on_release = self.pacer.job_released
        self.cancels = Canceller(self.cli, self.monitor)
        self.array_files = ArrayFiles(self._remove_spool)
        self.submitter = Submitter(
            self.cli, self.pacer, self.monitor, self.cancels, self.array_files, use_arrays=self.arrays,
            items_per_job=int(config.get("items_per_job") or 1), log_dir=self.log_dir,
            encode_payload=self.encode_payload, run_dir=lambda: self.run_dir, remove_spool=self._remove_spool)
        self.submitter.record_submission = self.record_submission

    async def _max_array_size(self) -> int:   # for the parser tests; the submitter asks self.cli
        return await self.cli.max_array_size()

    def _open_log_dir(self, configured: Optional[str]) -> str:
        """The job log directory: private like the spool (0700), never one another user could write.

        The default ``<spool_dir>/logs/<run>`` is made fresh per run; a ``log_dir`` of the user's that does
        not exist is created 0700; one that exists must pass the spool directory's checks.
        """
        try:
            if configured is None:
                logs = self.spool_root.subdir("logs", "log directory")
                try:
                    self._log_run_dir = logs.make_private(os.path.basename(self.spool_dir))
                except BaseException:
                    logs.close()
                    raise
                return self._log_run_dir.path
            path = os.path.abspath(os.path.expanduser(configured))
            with spool.RunDir.open_root(path, "log directory") as checked:
                mode = os.fstat(checked.fd).st_mode
            if mode & 0o055:
                log.warning("wove: log directory %s has mode %04o: other users can read the output of jobs "
                            "there (chmod go-rwx %s to prevent that)", path, mode & 0o7777, path)
            return path
        except spool.UnsafeSpoolError as exc:
            raise ExecutorStartError(f"environment {self.name!r}: {exc}") from None

    # ------------------------------------------------------------------ submit
    async def submit(self, payload: dict[str, Any], frame: Mapping[str, Any]) -> str:
        if self.cli.signal_seconds:
            payload["time_warning_signal"] = "SIGUSR1"   # the worker tells the task instead of stopping it
        if self.custom_submit is not None:
            payload["log_dir"] = self.log_dir   # where job output belongs (wove.slurm.submit_job uses it)
            return await self._custom_submit(payload, frame)
        task_resources = resources.merge(self.env_resources, frame.get("resources"))
        return await self.submitter.submit(payload, frame, task_resources)

    def items_per_job(self, task_resources: Optional[dict[str, Any]]) -> int:
        """Items of a mapped task one array element runs (``items_per_job``; 1 without arrays or with a
        custom ``submit``, which gets one payload per item)."""
        if self.custom_submit is not None:
            return 1
        merged = resources.merge(self.env_resources, task_resources)
        if not merged.get("arrays", self.arrays):
            return 1
        return max(1, int(merged.get("items_per_job") or self.submitter.per_job))

    async def _custom_submit(self, payload: dict[str, Any], frame: Mapping[str, Any]) -> str:
        # Its own task, so a caller cancelled mid-submission cannot lose a job that got submitted anyway.
        task = asyncio.get_running_loop().create_task(self._call_custom_submit(payload, frame))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            run_id = payload["run_id"]

            def abandon(done: asyncio.Task[str]) -> None:
                if not done.cancelled() and done.exception() is None:
                    self.monitor.resolved(run_id)
                    self.cancels.queue(done.result())
            task.add_done_callback(abandon)
            raise

    async def _call_custom_submit(self, payload: dict[str, Any], frame: Mapping[str, Any]) -> str:
        submit = self.custom_submit
        assert submit is not None
        if inspect.iscoroutinefunction(submit):
            handle = await submit(payload, frame, self.config)
        else:  # a sync submit (subprocess.run(["sbatch", ...])) must not block the event loop
            handle = await asyncio.get_running_loop().run_in_executor(None, submit, payload, frame, self.config)
        if inspect.isawaitable(handle):
            handle = await handle
        if handle is None:
            raise SlurmCommandError(
                f"the custom submit callable for environment {self.name!r} returned None; it must return "
                "the job id (for example the output of `sbatch --parsable`)")
        text = str(handle).strip()
        key = text if re.fullmatch(r"\d+(_\d+)?", text) else parse.parse_job_id(text)
        self.submissions.append({"argv": ["<custom submit>"], "items": 1, "job_id": key})
        self.submitter.track(Item(payload, frame, asyncio.get_running_loop().create_future()), key)
        return key

    def detach(self, run_id: str) -> None:
        """Stop watching a run the weave leaves running (delivery_orphan_policy='detach')."""
        key = self.monitor.key_of(run_id)
        self.monitor.resolved(run_id)
        if key is not None:
            base = key.split("_", 1)[0]
            self._detached_keys.add(base)
            self.array_files.keep(base)   # its payloads must stay readable

    def _remove_spool(self, name: str) -> None:
        executor = self._executor
        if executor is not None and executor.run_dir is not None:
            executor.run_dir.remove(name)

    # ------------------------------------------------------------------ reattach (durable weaves)
    def adopt(self, run_id: str, job_key: str, record: Any, task: str, stderr_path: str = "") -> None:
        """Watch job ``job_key``, submitted by an earlier driver of this weave's journal, for ``run_id``: its
        outcome comes from the spool, and if the job dies without one the monitor reports why."""
        array_job, _, index = job_key.partition("_")
        record.job_id = job_key
        record.array_job_id = array_job if index else None
        record.array_index = int(index) if index.isdigit() else None
        if stderr_path:
            record.details["stderr"] = stderr_path
        self.monitor.track(job_key, task, run_id, record, stderr_path=stderr_path)
        self.submissions.append({"job_id": job_key, "items": 1, "argv": [], "adopted": True})

    # ------------------------------------------------------------------ cancel
    async def cancel(self, run_id: str, submission: Any, frame: Mapping[str, Any]) -> None:
        key = self.monitor.key_of(run_id) or (str(submission) if submission else None)
        self.monitor.resolved(run_id)
        self.array_files.run_done(run_id)
        if key is not None and not self.monitor.jobs.get(key):  # no other item still uses the element
            self.cancels.queue(key)
            await self.cancels.sent()
        # scancel has answered: that is the acknowledgement a pending job will never send itself.
        self.emit({"type": "task_cancelled", "run_id": run_id, "acknowledged_by": "scancel"})

    # ------------------------------------------------------------------ events
    def on_event(self, frame: dict[str, Any]) -> Optional[dict[str, Any]]:
        kind = frame.get("type")
        run_id = frame.get("run_id", "")
        if kind == "task_cancelled" and frame.get("signal") and self.monitor.hold_cancelled(
                run_id, str(frame.get("signal"))):
            return None  # wait for Slurm's verdict: time limit, preemption, requeue or cancellation
        if kind in protocol.OUTCOME_TYPES:
            self.monitor.resolved(run_id)
            self.array_files.run_done(run_id)
        if kind == "task_error" or frame.get("failed_items"):
            self.failed_jobs += 1   # the task raised: its job's logs are kept like a Slurm failure's (keep_logs)
        return frame

    def _report(self, run_id: str, frame: dict[str, Any]) -> None:
        self.failed_jobs += 1
        self.array_files.run_done(run_id)
        self.emit(frame)

    def requeue_limit(self, task_resources: Optional[dict[str, Any]]) -> int:
        """How many times one call may checkpoint and be submitted again (``max_requeues``, per task in
        ``resources`` or for the environment)."""
        limit = (task_resources or {}).get("max_requeues")
        return int(limit) if limit is not None else self.max_requeues

    def free_retry(self, exc: BaseException) -> bool:
        """A failure of the cluster, not of the task (a node lost or not booted, a preemption without
        requeue): resubmitted without using up ``retries`` (at most ``max_requeues`` times per call)."""
        return isinstance(exc, (SlurmNodeFailError, SlurmBootFailError, SlurmPreemptedError))

    def adjust_for_retry(self, exc: BaseException, task_resources: Optional[dict[str, Any]],
                         settings: dict[str, Any]) -> Optional[dict[str, Any]]:
        """The next attempt's resources, by the cause of the last failure: more memory after an out-of-memory
        kill (``oom_retry_factor``), more time after a time limit (``time_retry_factor``), and never the node
        that failed (``--exclude``)."""
        if isinstance(exc, (SlurmNodeFailError, SlurmBootFailError)) and exc.node:
            merged = resources.merge(self.env_resources, task_resources)
            excluded = [n for n in str(merged.get("exclude") or "").split(",") if n]
            if exc.node not in excluded:
                return {**(task_resources or {}), "exclude": ",".join([*excluded, exc.node])}
            return task_resources
        if isinstance(exc, SlurmTimeLimitError) and self.time_factor:
            return self._longer(exc, task_resources)
        if not self.oom_factor or not isinstance(exc, SlurmOutOfMemoryError):
            return task_resources
        merged = resources.merge(self.env_resources, task_resources)
        current = merged.get("mem") or exc.requested_memory
        if not current:
            return task_resources
        history = list((task_resources or {}).get("_mem_history") or [current])
        bigger = resources.scale_mem(current, float(self.oom_factor))
        if self.oom_max and resources.mem_mb(bigger) > resources.mem_mb(self.oom_max):
            bigger = resources.validate({"mem": self.oom_max}, "oom_max_mem")["mem"]
        if resources.mem_mb(bigger) <= resources.mem_mb(current):
            return task_resources  # at the cap: retry as is (and fail with the same error)
        return {**(task_resources or {}), "mem": bigger, "_mem_history": [*history, bigger]}

    def _longer(self, exc: SlurmTimeLimitError, task_resources: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
        merged = resources.merge(self.env_resources, task_resources)
        current = resources.time_seconds(str(merged.get("time") or exc.requested_time or ""))
        if not current:   # no limit known (or "0", no limit): nothing to scale
            return task_resources
        minutes = -(-int(current * float(self.time_factor or 1)) // 60)
        if self.time_max:
            cap = resources.time_seconds(str(self.time_max))
            if cap:
                minutes = min(minutes, -(-cap // 60))
        if minutes * 60 <= current:
            return task_resources   # at the cap: retry as is (and fail the same way)
        history = list((task_resources or {}).get("_time_history") or [str(merged.get("time") or exc.requested_time)])
        longer = str(minutes)
        return {**(task_resources or {}), "time": longer, "_time_history": [*history, longer]}

    # ------------------------------------------------------------------ close
    async def close(self) -> None:
        drain_timeout = float(self.config.get("drain_timeout") or 30.0)
        pending = self._pending | self.submitter.pending
        if pending:
            # Let submissions in flight finish: killing sbatch could leave a job whose id we never learn.
            _, late = await asyncio.wait(pending, timeout=drain_timeout)
            for task in late:
                task.cancel()
            if late:
                await asyncio.gather(*late, return_exceptions=True)
        await self.cancels.close()
        await self.monitor.stop()
        leftover = sorted(self.monitor.jobs)
        if leftover:  # safety net: nothing of this weave stays queued
            await self.cancels.scancel(self.cancels.compact(leftover))
        base_ids = sorted({str(entry["job_id"]).split("_", 1)[0] for entry in self.submissions}
                          - self._detached_keys, key=int)
        await self.cancels.drain(base_ids, drain_timeout)
        self._close_logs()

    def _close_logs(self) -> None:
        keep = self.keep_logs is True or (self.keep_logs == "on_failure" and self.failed_jobs)
        run_logs, self._log_run_dir = self._log_run_dir, None
        if keep:
            log.info("wove: Slurm job logs kept in %s", self.log_dir)
        if run_logs is not None:   # the default, per-run log directory: removed by descriptor
            if keep:
                run_logs.close()
            else:
                run_logs.close_and_remove()
            if run_logs.parent is not None:
                run_logs.parent.close()   # <spool_dir>/logs
