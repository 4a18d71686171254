"""Batching and arrays: the default submission path, from ready payloads to tracked Slurm jobs.

Payloads of one task with the same resources that arrive within a few milliseconds of each other form a
batch. A batch of one (or any batch with ``arrays=False``) goes out as single jobs; a larger one as job arrays
whose elements each read their own payload from one spool file (``items_per_job`` payloads to an element),
split at ``MaxArraySize`` and at the room a submit limit leaves (pacing.py). A task's ``resources`` may set
its own ``arrays`` and ``items_per_job`` (resources.SUBMIT_KEYS); the environment's are the default. Every
submitted item is handed to the monitor, or cancelled at once when nobody waits for it any more.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ..dispatch import protocol, spool
from . import resources
from .cancel import Canceller
from .cli import SlurmCli
from .limits import SubmitRoom
from .monitor import JobMonitor
from .pacing import Oversized, Pacer, elements_for
from .states import JobState, record_state

BATCH_WINDOW = 0.005   # seconds: payloads ready this close together share a batch (and an array)


@dataclass
class Item:
    """One payload waiting for its job id."""

    payload: dict[str, Any]
    frame: Mapping[str, Any]
    future: asyncio.Future[str]
    cancelled: bool = False


@dataclass
class Batch:
    """Payloads of one task with equal resources, and how they go out (arrays, items to an element)."""

    task: str
    resources: dict[str, Any]
    workers: Optional[int]
    arrays: bool = True
    per_job: int = 1
    items: list[Item] = field(default_factory=list)


class ArrayFiles:
    """The spool file of each array, deleted once no run of the array needs it any more."""

    def __init__(self, remove: Callable[[str], None]):
        self._remove = remove                                   # spool file name -> delete it
        self._files: dict[str, tuple[str, set[str]]] = {}       # array job id -> (spool file, live runs)

    def add(self, job_id: str, path: str, run_ids: set[str]) -> None:
        self._files[job_id] = (path, run_ids)

    def keep(self, job_id: str) -> None:
        """Never delete this array's file (its runs were detached: their payloads must stay readable)."""
        self._files.pop(job_id, None)

    def run_done(self, run_id: str) -> None:
        for job_id, (path, runs) in list(self._files.items()):
            if run_id in runs:
                runs.discard(run_id)
                if not runs:
                    self._remove(os.path.basename(path))
                    del self._files[job_id]
                return


class Submitter:
    """Batches payloads and submits them as single jobs or arrays; resolves each item with its job key."""

    def __init__(self, cli: SlurmCli, pacer: Pacer, monitor: JobMonitor, cancels: Canceller, arrays: ArrayFiles,
                 *, use_arrays: bool, items_per_job: int, log_dir: str,
                 encode_payload: Callable[[dict[str, Any]], str], run_dir: Callable[[], spool.RunDir],
                 remove_spool: Callable[[str], None]):
        self.cli, self.pacer, self.monitor, self.cancels, self.arrays = cli, pacer, monitor, cancels, arrays
        self.use_arrays = use_arrays
        self.per_job = max(1, items_per_job)
        self.log_dir = log_dir
        self._encode_payload = encode_payload
        self._run_dir = run_dir
        self._remove_spool = remove_spool
        self._batches: dict[str, Batch] = {}
        self.pending: set[asyncio.Task[Any]] = set()   # flushes in flight (awaited when the adapter closes)
        #: Told about a job that went in while its ``submit`` call was being cancelled.
        self.record_submission: Optional[Callable[[str, str], None]] = None

    async def submit(self, payload: dict[str, Any], frame: Mapping[str, Any], task_resources: dict[str, Any]) -> str:
        """Queue ``payload`` in its batch; return its job key (``123`` or ``123_4``) once submitted."""
        packed = frame.get("batch") is not None   # one payload for many items already: one per element
        batch_key = (f"{frame.get('group') or frame.get('task_name')}|{resources.signature(task_resources)}"
                     f"{'|packed' if packed else ''}")
        loop = asyncio.get_running_loop()
        batch = self._batches.get(batch_key)
        if batch is None:
            batch = self._batches[batch_key] = Batch(
                str(frame.get("task_name")), task_resources, frame.get("workers"),
                arrays=bool(task_resources.get("arrays", self.use_arrays)),
                per_job=1 if packed else max(1, int(task_resources.get("items_per_job") or self.per_job)))
            loop.call_later(BATCH_WINDOW, self._start_flush, batch_key)
        item = Item(payload, frame, loop.create_future())
        batch.items.append(item)
        try:
            return await asyncio.shield(item.future)
        except asyncio.CancelledError:
            item.cancelled = True
            job_exists = item.future.done() and not item.future.cancelled() and item.future.exception() is None
            if job_exists and self.record_submission is not None:   # the runtime will cancel it
                self.record_submission(payload["run_id"], item.future.result())
            raise

    def _start_flush(self, batch_key: str) -> None:
        batch = self._batches.pop(batch_key, None)
        if batch is None:
            return
        items = [item for item in batch.items if not item.cancelled]
        if not items:
            return
        task = asyncio.get_running_loop().create_task(self._flush(batch, items))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _flush(self, batch: Batch, items: list[Item]) -> None:
        """Submit a batch: single jobs, or arrays split at MaxArraySize and at the room a submit limit leaves.

        A failed sbatch fails its own items only.
        """
        room = self.pacer.room_for(batch.resources, batch.task)
        if len(items) == 1 or not batch.arrays:
            pairs = await self._singles(batch, items, room)
        else:
            max_array, _ = await asyncio.gather(self.cli.max_array_size(), room.ready())
            if room.bound is None:
                pairs = await self._unbounded_arrays(batch, items, room, max_array)
            else:
                pairs = await self._paced_arrays(batch, items, room, max_array)
        for group, outcome in pairs:
            if isinstance(outcome, BaseException):
                for item in group:
                    if not item.future.done():
                        item.future.set_exception(outcome)
                        item.future.exception()

    async def _singles(self, batch: Batch, items: list[Item], room: SubmitRoom) -> list[tuple[list[Item], Any]]:
        """One job per item; with ``workers=N``, at most N of them queued or running at once (the scheduler
        leaves ``workers`` to an environment with arrays, and a task's ``arrays=False`` has no ``%N``)."""
        workers = batch.workers
        if not workers or len(items) <= workers:
            outcomes = await asyncio.gather(*(self._submit_single(batch, item, room) for item in items),
                                            return_exceptions=True)
            return list(zip([[item] for item in items], outcomes))
        started: list[tuple[Item, asyncio.Task[None]]] = []

        def in_flight() -> int:
            return sum(1 for item, task in started if not task.done() or _job_key(item) in self.monitor.jobs)

        loop = asyncio.get_running_loop()
        for item in items:
            while not item.cancelled and in_flight() >= workers:
                await room.wait_changed(1.0)
            if not item.cancelled:
                started.append((item, loop.create_task(self._submit_single(batch, item, room))))
        outcomes = await asyncio.gather(*(task for _, task in started), return_exceptions=True)
        return list(zip([[item] for item, _ in started], outcomes))

    async def _unbounded_arrays(self, batch: Batch, items: list[Item], room: SubmitRoom,
                                max_array: int) -> list[tuple[list[Item], Any]]:
        """No submit limit known: every chunk of ``MaxArraySize`` elements at once."""
        chunk = max_array * batch.per_job
        groups = [items[start:start + chunk] for start in range(0, len(items), chunk)]
        # A throttle (workers=N) is shared between the chunks so the whole map stays within N.
        throttle = max(1, batch.workers // len(groups)) if batch.workers else None

        async def reserve_and_submit(group: list[Item]) -> list[str]:
            await room.take(elements_for(len(group), batch.per_job), exact=True)   # granted at once (and counted)
            return await self._submit_array(batch, group, throttle, room)

        outcomes = await asyncio.gather(*(reserve_and_submit(group) for group in groups), return_exceptions=True)
        pairs: list[tuple[list[Item], Any]] = [(g, o) for g, o in zip(groups, outcomes)
                                               if not isinstance(o, Oversized)]
        # Refused by a limit that turned out smaller than a chunk: submit those items paced instead.
        oversized = [item for g, o in zip(groups, outcomes) if isinstance(o, Oversized) for item in g]
        if oversized:
            pairs += await self._paced_arrays(batch, oversized, room, max_array)
        return pairs

    async def _paced_arrays(self, batch: Batch, items: list[Item], room: SubmitRoom,
                            max_array: int) -> list[tuple[list[Item], Any]]:
        def submit_array(group: list[Item]) -> Any:
            return self._submit_array(batch, group, None, room)

        return await self.pacer.paced_arrays(items, room, max_array, batch.workers, submit_array,
                                             per_job=batch.per_job)

    async def _submit_single(self, batch: Batch, item: Item, room: SubmitRoom) -> None:
        task_resources = batch.resources   # the environment's and the task's already (merging again would
        # repeat the task's sbatch_args and setup lines)
        if not await room.take(1, abandoned=lambda: item.cancelled):
            return   # cancelled while waiting for room: nobody waits for this job
        try:
            encoded = self._encode_payload(item.payload)
        except BaseException:
            room.release(1)
            raise
        argv, stdin = self.cli.sbatch_argv(batch.task, task_resources, self.log_dir)
        job_id = await self.pacer.sbatch(argv, encoded, stdin, items=_item_count([item]), room=room, elements=1,
                                         abandoned=lambda: item.cancelled)
        self._deliver(item, job_id, os.path.join(self.log_dir, f"{job_id}.err"), task_resources)

    async def _submit_array(self, batch: Batch, items: list[Item], workers: Optional[int],
                            room: SubmitRoom) -> list[str]:
        """Submit one array; the caller reserved one job per element in ``room``. Returns the element keys."""
        per_job = batch.per_job
        elements = elements_for(len(items), per_job)
        name = f"array-{uuid.uuid4().hex}.payloads"
        try:
            data = spool.array_data([_spool_text(item.payload) for item in items], per_job)
            path = self._run_dir().write_atomic(name, data)
        except BaseException:
            room.release(elements)
            raise
        argv, stdin = self.cli.sbatch_argv(batch.task, batch.resources, self.log_dir, elements=elements,
                                           throttle=workers)
        try:
            job_id = await self.pacer.sbatch(argv, protocol.SPOOL_PREFIX + path, stdin, items=_item_count(items),
                                             room=room, elements=elements,
                                             abandoned=lambda: all(item.cancelled for item in items))
        except BaseException:
            self._remove_spool(name)
            raise
        keys = [f"{job_id}_{index}" for index in range(elements)]
        self.cancels.array_submitted(job_id, keys)
        self.arrays.add(job_id, path, {item.payload["run_id"] for item in items})
        for index, item in enumerate(items):
            key = f"{job_id}_{index // per_job}"
            # A packed element is cancelled only when every item in it is unwanted.
            share = items[index - index % per_job:index - index % per_job + per_job]
            self._deliver(item, key, os.path.join(self.log_dir, f"{key}.err"), batch.resources,
                          cancel=all(other.cancelled or other.future.done() for other in share))
        return keys

    def _deliver(self, item: Item, key: str, stderr_path: str, task_resources: dict[str, Any],
                 cancel: bool = True) -> None:
        record = item.frame.get("record")
        if record is not None:
            record.job_id = key
            record.array_job_id, _, index = key.partition("_")
            record.array_index = int(index) if index else None
            if not index:
                record.array_job_id = None
            record.state = record_state(JobState.PENDING)
            record.details["stderr"] = stderr_path
            record.details["submit_done"] = time.perf_counter()
        if item.cancelled or item.future.done():  # nobody waits for this job any more
            self.arrays.run_done(item.payload["run_id"])
            if cancel:
                self.cancels.queue(key)
        else:
            self.track(item, key, stderr_path, task_resources)
            item.future.set_result(key)

    def track(self, item: Item, key: str, stderr_path: str = "",
              task_resources: Optional[dict[str, Any]] = None) -> None:
        """Hand a submitted item to the monitor, which reports its job if it ends without a word."""
        task_resources = task_resources or {}
        self.monitor.track(key, str(item.frame.get("task_name")), item.payload["run_id"],
                           item.frame.get("record") or _NullRecord(), stderr_path=stderr_path,
                           requested_memory=str(task_resources.get("mem", "")),
                           requested_time=str(task_resources.get("time", "")),
                           memory_history=list(task_resources.get("_mem_history", [])))


class _NullRecord:
    """Stands in for a run record when a frame carries none (direct adapter use)."""

    def __init__(self) -> None:
        self.details: dict[str, Any] = {}
        self.state = self.reason = self.node = ""
        self.started_at = None


def _job_key(item: Item) -> Optional[str]:
    """The job key an item was given, if its submission succeeded."""
    future = item.future
    if future.done() and not future.cancelled() and future.exception() is None:
        return future.result()
    return None


def _item_count(items: list[Item]) -> int:
    """The map items these payloads carry (a packed element's payload carries many)."""
    return sum(len(item.frame.get("batch") or (None,)) for item in items)


def _spool_text(payload: dict[str, Any]) -> str:
    return json.dumps(payload, separators=(",", ":"))
