"""The Slurm adapter: submit payloads as jobs (arrays when many are ready together), cancel them, watch them.

Default path, per the user's page: ``sbatch --parsable --job-name <prefix>-<task> --wrap "<command>"``, with
the payload in the *environment* of the ``sbatch`` process (``WOVE_BACKEND_PAYLOAD``; ``--export=ALL``
carries it to the job), so it never appears in a command line, in ``scontrol show job`` or in ``ps``.
Items of a mapped task that become ready together go out as one job array whose elements each read their
own payload from one spool file. A custom ``submit`` callable replaces the default path entirely.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ..dispatch import protocol, spool
from ..errors import ExecutorStartError, SlurmCommandError, SlurmOutOfMemoryError, SlurmSubmitLimitError
from ..executors.adapter import BackendAdapter
from . import commands, limits, resources
from .monitor import JobMonitor

log = logging.getLogger("wove.slurm")

DEFAULT_COMMAND = "python -m wove.backend_worker"
_TRANSIENT = ("unable to contact slurm controller", "socket timed out", "temporarily unable",
              "resource temporarily unavailable", "try again",
              "slurm_persist_conn_open", "connection refused")
_SUBMIT_CONCURRENCY = 16
_BATCH_WINDOW = 0.005
_max_array_cache: dict[tuple[str, ...], int] = {}


@dataclass
class _Item:
    payload: dict[str, Any]
    frame: dict[str, Any]
    future: asyncio.Future[str]
    cancelled: bool = False


@dataclass
class _Batch:
    task: str
    resources: dict[str, Any]
    workers: Optional[int]
    items: list[_Item] = field(default_factory=list)


class SlurmAdapter(BackendAdapter):
    """Submits wove payloads to Slurm with sbatch and cancels them with scancel."""

    required_modules = ("cloudpickle",)
    install_hint = 'pip install "wove[dispatch]"'
    config_keys = None  # validated by SlurmExecutor.validate_config

    async def start(self) -> None:
        config = self.config
        self.sbatch_base = list(config.get("sbatch") or ["sbatch", "--parsable"])
        self.scancel_base = list(config.get("scancel") or ["scancel"])
        self.command = config.get("command") or DEFAULT_COMMAND
        self.prefix = config.get("job_name_prefix", "wove")
        self.custom_submit = config.get("submit")
        self.arrays = config.get("arrays", True)
        self.items_per_job = int(config.get("items_per_job") or 1)
        self.env_resources = resources.validate(
            {k: v for k, v in config.items() if k in resources.RESOURCE_KEYS}, f"environment {self.name!r}")
        self.signal_seconds = config.get("signal_before_timeout")
        self.oom_factor = config.get("oom_retry_factor")
        self.oom_max = config.get("oom_max_mem")
        self.keep_logs = config.get("keep_logs", "on_failure")
        self._log_run_dir: Optional[spool.RunDir] = None
        self.log_dir = self._open_log_dir(config.get("log_dir"))
        #: Every sbatch invocation: argv (without the payload, which is never on it), items, job id.
        self.submissions: list[dict[str, Any]] = []
        self.failed_jobs = 0
        self._batches: dict[str, _Batch] = {}
        self._submit_slots = asyncio.Semaphore(_SUBMIT_CONCURRENCY)
        self._cancel_keys: list[str] = []
        self._cancel_flush: Optional[asyncio.Task[None]] = None
        self._live: dict[str, set[str]] = {}        # array job id -> element keys not yet resolved
        self._pending: set[asyncio.Task[Any]] = set()
        self._array_files: dict[str, tuple[str, set[str]]] = {}    # array job id -> (spool file, live runs)
        self._detached_keys: set[str] = set()
        self.monitor = JobMonitor(
            self._report, squeue=config.get("squeue") or ["squeue"], sacct=config.get("sacct") or ["sacct"],
            scontrol=config.get("scontrol") or ["scontrol"], scancel=self.scancel_base,
            poll_interval=float(config.get("poll_interval") or 1.0),
            poll_max=float(config.get("poll_max") or 15.0), queue_timeout=config.get("queue_timeout"),
            callback_url=self.callback_url)
        self.monitor.start()
        self.monitor.on_release = self._job_released
        self.submit_patience = float(config.get("submit_retry_seconds") or 120.0)
        self._rooms: dict[tuple[str, str], limits.SubmitRoom] = {}

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
    async def submit(self, payload: dict[str, Any], frame: dict[str, Any]) -> str:
        if self.signal_seconds:
            payload["time_warning_signal"] = "SIGUSR1"   # the worker tells the task instead of stopping it
        if self.custom_submit is not None:
            payload["log_dir"] = self.log_dir   # where job output belongs (wove.slurm.submit_job uses it)
            return await self._custom_submit(payload, frame)
        task_resources = resources.merge(self.env_resources, frame.get("resources"))
        batch_key = f"{frame.get('group') or frame.get('task_name')}|{resources.signature(task_resources)}"
        loop = asyncio.get_running_loop()
        batch = self._batches.get(batch_key)
        if batch is None:
            batch = self._batches[batch_key] = _Batch(str(frame.get("task_name")), task_resources,
                                                      frame.get("workers"))
            loop.call_later(_BATCH_WINDOW, self._start_flush, batch_key)
        item = _Item(payload, frame, loop.create_future())
        batch.items.append(item)
        try:
            return await asyncio.shield(item.future)
        except asyncio.CancelledError:
            item.cancelled = True
            if item.future.done() and not item.future.cancelled() and item.future.exception() is None:
                frame["submitted"] = True  # the job exists: the runtime will cancel it
                frame["submission"] = item.future.result()
            raise

    async def _custom_submit(self, payload: dict[str, Any], frame: dict[str, Any]) -> str:
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
                    self._queue_cancel(done.result())
            task.add_done_callback(abandon)
            raise

    async def _call_custom_submit(self, payload: dict[str, Any], frame: dict[str, Any]) -> str:
        submit = self.custom_submit
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
        key = text if re.fullmatch(r"\d+(_\d+)?", text) else commands.parse_job_id(text)
        self.submissions.append({"argv": ["<custom submit>"], "items": 1, "job_id": key})
        item = _Item(payload, frame, asyncio.get_running_loop().create_future())
        self._track(item, key)
        return key

    def _start_flush(self, batch_key: str) -> None:
        batch = self._batches.pop(batch_key, None)
        if batch is None:
            return
        items = [item for item in batch.items if not item.cancelled]
        if not items:
            return
        task = asyncio.get_running_loop().create_task(self._flush(batch, items))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _flush(self, batch: _Batch, items: list[_Item]) -> None:
        """Submit a batch: single jobs, or arrays split at MaxArraySize and at the room a submit limit leaves.

        A failed sbatch fails its own items only.
        """
        room = self._room(batch.resources)
        if len(items) == 1 or not self.arrays:
            outcomes = await asyncio.gather(*(self._submit_single(batch, item, room) for item in items),
                                            return_exceptions=True)
            pairs = list(zip([[item] for item in items], outcomes))
        else:
            max_array, _ = await asyncio.gather(self._max_array_size(), room.ready())
            if room.bound is None:   # no submit limit known: every chunk at once
                chunk = max_array * max(1, self.items_per_job)
                groups = [items[start:start + chunk] for start in range(0, len(items), chunk)]
                # A throttle (workers=N) is shared between the chunks so the whole map stays within N.
                throttle = max(1, batch.workers // len(groups)) if batch.workers else None
                outcomes = await asyncio.gather(
                    *(self._reserve_and_submit_array(batch, group, throttle, room) for group in groups),
                    return_exceptions=True)
                pairs = [(g, o) for g, o in zip(groups, outcomes) if not isinstance(o, _Oversized)]
                # Refused by a limit that turned out smaller than a chunk: submit those items paced instead.
                oversized = [item for g, o in zip(groups, outcomes) if isinstance(o, _Oversized) for item in g]
                if oversized:
                    pairs += await self._paced_arrays(batch, oversized, room, max_array)
            else:
                pairs = await self._paced_arrays(batch, items, room, max_array)
        for group, outcome in pairs:
            if isinstance(outcome, BaseException):
                for item in group:
                    if not item.future.done():
                        item.future.set_exception(outcome)
                        item.future.exception()

    async def _reserve_and_submit_array(self, batch: _Batch, items: list[_Item], throttle: Optional[int],
                                        room: limits.SubmitRoom) -> list[str]:
        await room.take(self._elements(len(items)), exact=True)   # no known limit: granted at once (and counted)
        return await self._submit_array(batch, items, throttle, room)

    async def _paced_arrays(self, batch: _Batch, items: list[_Item], room: limits.SubmitRoom,
                            max_array: int) -> list[tuple[list[_Item], Exception]]:
        """Under a submit limit: each array as large as the room left, the next one once jobs end.

        ``workers=N`` caps the jobs of this batch in flight (instead of an array throttle, which could not
        account for the many small arrays pacing makes). Returns the groups that failed, with their error.
        """
        per_job = max(1, self.items_per_job)
        failures: list[tuple[list[_Item], Exception]] = []
        submitted: list[str] = []   # element keys of this batch
        remaining = items
        while True:
            remaining = [item for item in remaining if not item.cancelled]
            if not remaining:
                break
            elements = min(max_array, room.bound or max_array, self._elements(len(remaining)))
            if batch.workers:
                submitted = [key for key in submitted if key in self.monitor.jobs]
                elements = min(elements, batch.workers - len(submitted))
                if elements <= 0:
                    await room.wait_changed(1.0)
                    continue
            try:
                granted = await room.take(elements, abandoned=lambda left=remaining: all(i.cancelled for i in left))
            except SlurmSubmitLimitError as exc:
                failures.append((remaining, exc))
                break
            remaining = [item for item in remaining if not item.cancelled]   # some may have gone meanwhile
            useful = min(granted, self._elements(len(remaining)))
            if useful < granted:
                room.release(granted - useful)
            if useful == 0:
                continue
            group, remaining = remaining[:useful * per_job], remaining[useful * per_job:]
            try:
                submitted += await self._submit_array(batch, group, None, room)
            except _Oversized:   # the limit shrank below this array: put it back, smaller next time
                remaining = group + remaining
                continue
            except Exception as exc:
                failures.append((group, exc))
        return failures

    def _elements(self, items: int) -> int:
        """Array elements needed for ``items`` items, ``items_per_job`` to an element."""
        per_job = max(1, self.items_per_job)
        return (items + per_job - 1) // per_job

    def _room(self, task_resources: dict[str, Any]) -> limits.SubmitRoom:
        """One room per (qos, account): the limits that apply depend on both."""
        key = (str(task_resources.get("qos") or ""), str(task_resources.get("account") or ""))
        room = self._rooms.get(key)
        if room is None:
            scontrol = self.config.get("scontrol") or ["scontrol"]

            async def read() -> Optional[limits.SubmitLimit]:
                return await limits.read_submit_limit(scontrol, qos=key[0], account=key[1])

            def own_in_flight() -> int:   # jobs awaited, and jobs other rooms are submitting right now
                return len(self.monitor.jobs) + sum(other.reserved for other in self._rooms.values()
                                                    if other is not room)

            room = self._rooms[key] = limits.SubmitRoom(read, own_in_flight, self.submit_patience,
                                                        cap=self.config.get("max_queued_jobs"))
        return room

    def _job_released(self) -> None:
        for room in self._rooms.values():
            room.job_finished()

    def _common_args(self, batch: _Batch, task_resources: dict[str, Any]) -> list[str]:
        args = [f"--job-name={self.prefix}-{_job_name(batch.task)}"]
        args.extend(resources.sbatch_options(task_resources))
        if self.signal_seconds:
            args.append(f"--signal=B:USR1@{int(self.signal_seconds)}")
        return args

    def _script_args(self, task_resources: dict[str, Any]) -> tuple[list[str], Optional[bytes]]:
        setup = task_resources.get("setup") or []
        if setup:
            return [], resources.batch_script(self.command, setup).encode()
        return ["--wrap", resources.exec_command(self.command)], None

    async def _submit_single(self, batch: _Batch, item: _Item, room: limits.SubmitRoom) -> None:
        task_resources = resources.merge(batch.resources, item.frame.get("resources") or {})
        if not await room.take(1, abandoned=lambda: item.cancelled):
            return   # cancelled while waiting for room: nobody waits for this job
        try:
            encoded = self.encode_payload(item.payload)
        except BaseException:
            room.release(1)
            raise
        script_args, stdin = self._script_args(task_resources)
        argv = [*self.sbatch_base, *self._common_args(batch, task_resources),
                f"--output={self.log_dir}/%j.out", f"--error={self.log_dir}/%j.err", *script_args]
        job_id = await self._sbatch(argv, encoded, stdin, items=1, room=room, elements=1,
                                    abandoned=lambda: item.cancelled)
        self._deliver(item, job_id, os.path.join(self.log_dir, f"{job_id}.err"), task_resources)

    async def _submit_array(self, batch: _Batch, items: list[_Item], workers: Optional[int],
                            room: limits.SubmitRoom) -> list[str]:
        """Submit one array; the caller reserved one job per element in ``room``. Returns the element keys."""
        per_job = max(1, self.items_per_job)
        elements = self._elements(len(items))
        name = f"array-{uuid.uuid4().hex}.payloads"
        try:
            data = spool.array_data([_spool_text(item.payload) for item in items], per_job)
            path = self.run_dir.write_atomic(name, data)
        except BaseException:
            room.release(elements)
            raise
        throttle = f"%{workers}" if workers else ""
        script_args, stdin = self._script_args(batch.resources)
        argv = [*self.sbatch_base, *self._common_args(batch, batch.resources), f"--array=0-{elements - 1}{throttle}",
                f"--output={self.log_dir}/%A_%a.out", f"--error={self.log_dir}/%A_%a.err", *script_args]
        try:
            job_id = await self._sbatch(argv, protocol.SPOOL_PREFIX + path, stdin, items=len(items), room=room,
                                        elements=elements, abandoned=lambda: all(item.cancelled for item in items))
        except BaseException:
            self._remove_spool(name)
            raise
        keys = [f"{job_id}_{index}" for index in range(elements)]
        self._live[job_id] = set(keys)
        self._array_files[job_id] = (path, {item.payload["run_id"] for item in items})
        for index, item in enumerate(items):
            key = f"{job_id}_{index // per_job}"
            # A packed element is cancelled only when every item in it is unwanted.
            share = items[index - index % per_job:index - index % per_job + per_job]
            self._deliver(item, key, os.path.join(self.log_dir, f"{key}.err"), batch.resources,
                          cancel=all(other.cancelled or other.future.done() for other in share))
        return keys

    def _deliver(self, item: _Item, key: str, stderr_path: str, task_resources: dict[str, Any],
                 cancel: bool = True) -> None:
        record = item.frame.get("record")
        if record is not None:
            record.job_id = key
            record.array_job_id, _, index = key.partition("_")
            record.array_index = int(index) if index else None
            if not index:
                record.array_job_id = None
            record.state = "PENDING"
            record.details["stderr"] = stderr_path
            record.details["submit_done"] = time.perf_counter()
        if item.cancelled or item.future.done():  # nobody waits for this job any more
            self._run_done(item.payload["run_id"])
            if cancel:
                self._queue_cancel(key)
        else:
            self._track(item, key, stderr_path, task_resources)
            item.future.set_result(key)

    def _track(self, item: _Item, key: str, stderr_path: str = "",
               task_resources: Optional[dict[str, Any]] = None) -> None:
        task_resources = task_resources or {}
        self.monitor.track(key, str(item.frame.get("task_name")), item.payload["run_id"],
                           item.frame.get("record") or _NullRecord(), stderr_path=stderr_path,
                           requested_memory=str(task_resources.get("mem", "")),
                           requested_time=str(task_resources.get("time", "")),
                           memory_history=list(task_resources.get("_mem_history", [])))

    async def _sbatch(self, argv: list[str], encoded: str, stdin: Optional[bytes], items: int,
                      room: Optional[limits.SubmitRoom] = None, elements: int = 1,
                      abandoned: Callable[[], bool] = lambda: False) -> str:
        """Run sbatch; retry while the controller is away, or while a submit limit has no room yet.

        The caller reserved ``elements`` jobs in ``room`` (when given); they are confirmed or released here.
        """
        env = commands.environment_with({protocol.PAYLOAD_ENV: encoded})
        started = time.monotonic()
        delay = 0.5
        held = room is not None   # whether ``elements`` are reserved in the room right now
        retrying = False          # whether this call holds ``room.refusals``
        idle_refusals = 0         # refusals in a row while none of the weave's jobs was queued
        try:
            while True:
                try:
                    async with self._submit_slots:
                        _, out, _ = await commands.run(argv, env=env, stdin=stdin, timeout=60.0)
                    break
                except SlurmCommandError as exc:
                    text = (exc.stderr or str(exc)).lower()
                    if room is None or not any(marker in text for marker in limits.REFUSAL_MARKERS):
                        transient = any(p in text for p in _TRANSIENT)
                        if not transient or time.monotonic() - started + delay > self.submit_patience:
                            raise
                        log.warning("wove: sbatch failed transiently (%s); retrying in %.1fs", exc, delay)
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, 10.0)
                        continue
                    # Refused by a submit limit: our reading was optimistic, stale, or impossible.
                    room.refused(elements)
                    held = False
                    await room.ready()
                    own = bool(self.monitor.jobs or room.reserved)
                    if room.bound is not None and elements > room.bound:
                        raise _Oversized(elements) from exc
                    idle_refusals = 0 if own else idle_refusals + 1
                    if room.limit is None and elements > 1 and idle_refusals >= 2:
                        # Refused twice with none of ours queued (jobs that just ended may count for a
                        # moment): a limit wove cannot read is smaller than this array. Halve until it fits.
                        room.learned = max(1, elements // 2)
                        raise _Oversized(elements) from exc
                    if own:
                        started = time.monotonic()   # our own jobs will end and make room
                    elif time.monotonic() - started + delay > self.submit_patience:
                        raise SlurmSubmitLimitError(
                            f"sbatch was refused by a submit limit for {self.submit_patience:.0f}s "
                            f"(submit_retry_seconds) while no job of this weave was queued: "
                            f"{(exc.stderr or str(exc)).strip()}. The limit is used up by other jobs or "
                            f"is smaller than this submission of {elements} job(s); ask your admin, or "
                            "set max_queued_jobs / items_per_job so fewer jobs are queued at once",
                            source="sbatch") from exc
                    log.info("wove: sbatch refused by a submit limit; waiting for room (%s)", exc)
                    if not retrying:   # one refused submission retries at a time, the others queue here
                        await room.refusals.acquire()
                        retrying = True
                    await room.wait_changed(delay)
                    delay = min(delay * 2, 10.0)
                    if abandoned() or not await room.take(elements, exact=True, abandoned=abandoned):
                        raise _Abandoned() from exc
                    held = True
        except BaseException:
            if room is not None and held:
                room.release(elements)
            raise
        finally:
            if retrying:
                room.refusals.release()
        if room is not None:
            room.confirm(elements)
        job_id = commands.parse_job_id(out)
        # "awaited": jobs (array elements) of this weave whose outcome is awaited, these included.
        self.submissions.append({"argv": list(argv), "items": items, "job_id": job_id,
                                 "elements": elements, "awaited": len(self.monitor.jobs) + elements})
        return job_id

    async def _max_array_size(self) -> int:
        if self.config.get("max_array_size"):
            return int(self.config["max_array_size"])
        scontrol = tuple(self.config.get("scontrol") or ["scontrol"])
        if scontrol not in _max_array_cache:
            size = 1001
            try:
                _, out, _ = await commands.run([*scontrol, "show", "config"], timeout=30.0)
                match = re.search(r"^MaxArraySize\s*=\s*(\d+)", out, re.MULTILINE)
                if match:
                    size = int(match.group(1))
            except SlurmCommandError as exc:
                log.warning("wove: could not read MaxArraySize (%s); assuming %d", exc, size)
            _max_array_cache[scontrol] = max(1, size)
        return _max_array_cache[scontrol]

    def detach(self, run_id: str) -> None:
        """Stop watching a run the weave leaves running (delivery_orphan_policy='detach')."""
        key = self.monitor.key_of(run_id)
        self.monitor.resolved(run_id)
        if key is not None:
            base = key.split("_", 1)[0]
            self._detached_keys.add(base)
            self._array_files.pop(base, None)   # its payloads must stay readable

    def _run_done(self, run_id: str) -> None:
        """A run ended: delete its array's spool file once no item of the array needs it."""
        for job_id, (path, runs) in list(self._array_files.items()):
            if run_id in runs:
                runs.discard(run_id)
                if not runs:
                    self._remove_spool(os.path.basename(path))
                    del self._array_files[job_id]
                return

    def _remove_spool(self, name: str) -> None:
        executor = self._executor
        if executor is not None and executor.run_dir is not None:
            executor.run_dir.remove(name)

    # ------------------------------------------------------------------ cancel
    async def cancel(self, run_id: str, submission: Any, frame: dict[str, Any]) -> None:
        key = self.monitor.key_of(run_id) or (str(submission) if submission else None)
        self.monitor.resolved(run_id)
        self._run_done(run_id)
        if key is not None and not self.monitor.jobs.get(key):  # no other item still uses the element
            self._queue_cancel(key)
            flush = self._cancel_flush
            if flush is not None:
                await asyncio.shield(flush)
        # scancel has answered: that is the acknowledgement a pending job will never send itself.
        self.emit({"type": "task_cancelled", "run_id": run_id, "acknowledged_by": "scancel"})

    def _queue_cancel(self, key: str) -> None:
        self._cancel_keys.append(key)
        if self._cancel_flush is None:
            self._cancel_flush = asyncio.get_running_loop().create_task(self._flush_cancels())

    async def _flush_cancels(self) -> None:
        await asyncio.sleep(_BATCH_WINDOW)
        keys, self._cancel_keys, self._cancel_flush = self._cancel_keys, [], None
        await self._scancel(self._compact(keys))

    def _compact(self, keys: list[str]) -> list[str]:
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

    async def _scancel(self, keys: list[str], patience: float = 30.0) -> None:
        """scancel, retried with backoff while the controller does not answer (bounded by ``patience``)."""
        if not keys:
            return
        deadline = time.monotonic() + patience
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            delay = 0.5
            while True:
                try:
                    await commands.run([*self.scancel_base, *chunk], timeout=30.0)
                    break
                except SlurmCommandError as exc:
                    if time.monotonic() + delay > deadline:
                        log.warning("wove: could not cancel Slurm jobs %s: %s", " ".join(chunk), exc)
                        break
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)

    async def _drain(self, timeout: float) -> None:
        """Wait (bounded) until no job of this weave is pending, running or completing in Slurm."""
        base_ids = sorted({str(entry["job_id"]).split("_", 1)[0] for entry in self.submissions}
                          - self._detached_keys, key=int)
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

    # ------------------------------------------------------------------ events
    def on_event(self, frame: dict[str, Any]) -> Optional[dict[str, Any]]:
        kind = frame.get("type")
        run_id = frame.get("run_id", "")
        if kind == "task_cancelled" and frame.get("signal") and self.monitor.hold_cancelled(
                run_id, str(frame.get("signal"))):
            return None  # wait for Slurm's verdict: time limit, preemption, requeue or cancellation
        if kind in protocol.OUTCOME_TYPES:
            self.monitor.resolved(run_id)
            self._run_done(run_id)
        return frame

    def _report(self, run_id: str, frame: dict[str, Any]) -> None:
        self.failed_jobs += 1
        self._run_done(run_id)
        self.emit(frame)

    def adjust_for_retry(self, exc: BaseException, task_resources: Optional[dict[str, Any]],
                         settings: dict[str, Any]) -> Optional[dict[str, Any]]:
        """With ``oom_retry_factor``, an out-of-memory failure is retried with more memory."""
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

    # ------------------------------------------------------------------ close
    async def close(self) -> None:
        drain_timeout = float(self.config.get("drain_timeout") or 30.0)
        if self._pending:
            # Let submissions in flight finish: killing sbatch could leave a job whose id we never learn.
            _, late = await asyncio.wait(set(self._pending), timeout=drain_timeout)
            for task in late:
                task.cancel()
            if late:
                await asyncio.gather(*late, return_exceptions=True)
        if self._cancel_flush is not None:
            await asyncio.gather(self._cancel_flush, return_exceptions=True)
        await self.monitor.stop()
        leftover = sorted(self.monitor.jobs)
        if leftover:  # safety net: nothing of this weave stays queued
            await self._scancel(self._compact(leftover))
        await self._drain(drain_timeout)
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


class _Oversized(Exception):
    """A submission was refused by a submit limit smaller than its array: it must go out in pieces."""


class _Abandoned(Exception):
    """Every item of a submission waiting for room was cancelled: nothing to submit any more."""


class _NullRecord:
    """Stands in for a run record when a frame carries none (direct adapter use)."""

    def __init__(self) -> None:
        self.details: dict[str, Any] = {}
        self.state = self.reason = self.node = ""
        self.started_at = None


def _job_name(task: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", task)[:100] or "task"


def _spool_text(payload: dict[str, Any]) -> str:
    import json

    return json.dumps(payload, separators=(",", ":"))
