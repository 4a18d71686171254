"""The remote runtime: one per remote environment per weave, between the scheduler and an executor.

It turns each call into a ``run_task`` frame, matches event frames back to their runs, and enforces the
delivery settings: ``delivery_timeout`` and ``delivery_heartbeat_seconds`` (-> ``DeliveryTimeoutError``
and a ``cancel_task``), ``delivery_max_in_flight``, ``delivery_idempotency_key``,
``delivery_cancel_mode`` and ``delivery_orphan_policy``. Every retry is a new run id, so events that
arrive late from an earlier attempt (or twice) are simply ignored.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Optional

from .. import _config
from ..dispatch.error_payload import error_dict, rebuild_exception
from ..dispatch.messages import CancelTask, Delivery, Event, RunTask
from ..errors import (
    CheckpointRequested,
    DeliveryOrphanedError,
    DeliveryTimeoutError,
    EnvironmentExecutionError,
    InvalidValueError,
    ReattachError,
)
from . import joblogs
from .base import EnvironmentExecutor
from .capabilities import Capabilities
from .records import RunRecord

if TYPE_CHECKING:
    from .._call import RemoteCall
    from .._scheduler import Runtime

__all__ = ["RemoteEnvironment", "RunRecord", "make_executor"]

log = logging.getLogger("wove.dispatch")

REQUIRE_ACK_SECONDS = 30.0


class _Run:
    __slots__ = (
        "acked",
        "call",
        "cancel_requested",
        "closing",
        "future",
        "last_event",
        "record",
        "run_id",
        "settings",
        "started",
    )

    def __init__(self, run_id: str, call: RemoteCall, future: asyncio.Future[Any], record: RunRecord):
        self.run_id = run_id
        self.call = call
        self.settings = call.settings
        self.future = future
        self.record = record
        self.started = False
        self.last_event = time.monotonic()
        self.cancel_requested = False
        self.closing = False   # its outcome is being completed (job logs read): later events are ignored
        self.acked: Optional[asyncio.Future[None]] = None


def make_executor(executor: str | EnvironmentExecutor) -> EnvironmentExecutor:
    if isinstance(executor, str):
        return _config.executor_class(executor)()
    return executor


class RemoteEnvironment(Capabilities):
    """Runs calls through one environment's executor and resolves them from its event frames."""

    def __init__(self, name: str, spec: dict[str, Any], runtime: Runtime):
        self.name = name
        self.spec = spec
        self.runtime = runtime
        self.executor = make_executor(spec["executor"])
        self._runs: dict[str, _Run] = {}
        self._reader: Optional[asyncio.Task[None]] = None
        self._closed: Optional[BaseException] = None
        self._finishing: set[asyncio.Task[None]] = set()
        cap = runtime.resolver.task_value("delivery_max_in_flight", {}, name)
        self._in_flight = asyncio.Semaphore(cap) if cap else None

    async def start(self) -> None:
        run_config = {key: self.runtime.resolver.task_value(key, {}, self.name) for key in _config.TASK_SETTINGS}
        run_config["journal"] = self.runtime.journal is not None   # a durable weave: its jobs outlive a driver
        await self.executor.start(environment_name=self.name, environment_config=self.spec,
                                  run_config=run_config)
        self._reader = asyncio.get_running_loop().create_task(self._read_events())

    # ------------------------------------------------------------------ running one call
    async def run(self, call: RemoteCall, adopt: Optional[Mapping[str, Any]] = None) -> Any:
        """Run one attempt; with ``adopt`` (a journal's record of a job an earlier driver submitted), wait
        for that job instead of submitting a new one."""
        if self._in_flight is None:
            return await self._run(call, adopt)
        async with self._in_flight:
            return await self._run(call, adopt)

    def _message(self, run_id: str, call: RemoteCall, record: RunRecord) -> RunTask:
        settings = call.settings
        task_id = call.task_name if call.map_index is None else f"{call.task_name}[{call.map_index}]"
        return RunTask(
            run_id=run_id, task_id=task_id, task_name=call.task_name, callable=call.func,
            args=(call.args, call.kwargs),
            delivery=Delivery(
                timeout=settings["delivery_timeout"], heartbeat_seconds=settings["delivery_heartbeat_seconds"],
                idempotency_key=_idempotency_key(settings["delivery_idempotency_key"], call),
                cancel_mode=settings["delivery_cancel_mode"], orphan_policy=settings["delivery_orphan_policy"]),
            attempt=call.attempt, map_index=call.map_index, resources=call.resources, group=call.group,
            workers=settings["workers"], record=record, batch=call.batch, restore=call.restore,
            restoring=call.restoring)

    async def _run(self, call: RemoteCall, adopt: Optional[Mapping[str, Any]] = None) -> Any:
        if self._closed is not None:
            raise EnvironmentExecutionError(
                f"environment {self.name!r} is no longer usable: {self._closed}") from self._closed
        loop = asyncio.get_running_loop()
        run_id = str(adopt["run_id"]) if adopt is not None else uuid.uuid4().hex
        if call.record is not None:   # a packed element's, made by its caller (whose item records read it)
            record = call.record
            record.run_id, record.submitted_at = run_id, time.time()
        else:
            record = RunRecord(task=call.task_name, run_id=run_id, environment=self.name, attempt=call.attempt,
                               map_index=call.map_index, submitted_at=time.time())
        if call.records is not None:
            call.records.append(record)
        run = _Run(run_id, call, loop.create_future(), record)
        self._runs[run_id] = run
        submitted = False
        try:
            try:
                if adopt is not None:
                    try:
                        self.executor.adopt(run_id, call.task_name, adopt, record)   # type: ignore[attr-defined]
                        record.details["journal"] = "reattached"
                    except OSError as exc:   # its run directory went away or is not private: run it afresh
                        if call.on_items is not None and call.batch is None:
                            raise ReattachError(f"cannot reattach task {call.task_name!r} to job "
                                                f"{adopt.get('job_id')}: {exc}") from exc
                        log.warning("wove: cannot reattach task %r to job %s (%s); submitting it again",
                                    call.task_name, adopt.get("job_id"), exc)
                        adopt = None
                if adopt is None:
                    await self.executor.send(self._message(run_id, call, record))
                submitted = True
                record.state = "SUBMITTED" if record.state == "SUBMITTING" else record.state
                if (call.journal_key is not None or call.journal_keys) and adopt is None:
                    self._journal_submitted(call, run_id, record)
                return await self._wait(run)
            except asyncio.CancelledError:
                # A job that went in just as the task was cancelled was recorded by its executor: cancel it too.
                if submitted or record.submission is not None:
                    await self._cancel_remote(run, "the task was cancelled")
                raise
            except DeliveryTimeoutError:
                raise
            except BaseException as exc:
                record.outcome = record.outcome or "error"
                if submitted and not run.future.done():
                    await self._cancel_remote(run, f"{type(exc).__name__}")
                raise
        finally:
            record.finished_at = record.finished_at or time.time()
            self._runs.pop(run_id, None)

    def _journal_submitted(self, call: RemoteCall, run_id: str, record: RunRecord) -> None:
        """Note the job in the journal, with what a later driver needs to collect its outcome."""
        journal = self.runtime.journal
        info_of = getattr(self.executor, "journal_info", None)
        info = info_of(run_id) if info_of is not None else None
        if journal is not None and info is not None and record.job_id:
            journal.submitted(call, run_id, record.job_id, self.name, record.stderr_path, info)

    async def _wait(self, run: _Run) -> Any:
        settings = run.settings
        delivery_timeout = settings["delivery_timeout"]
        heartbeat = settings["delivery_heartbeat_seconds"]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delivery_timeout if delivery_timeout else None
        while True:
            now = loop.time()
            waits = []
            if deadline is not None:
                waits.append(deadline - now)
            if heartbeat:
                # Before task_started the window is not running yet; look again a window later, since
                # nothing else wakes this wait when the first event arrives.
                waits.append(run.last_event + heartbeat - time.monotonic() if run.started else heartbeat)
            if not waits:
                return await run.future
            await asyncio.wait({run.future}, timeout=max(0.0, min(waits)))
            if run.future.done():
                return run.future.result()
            where = f"task {run.call.task_name!r}" + (
                f" item {run.call.map_index}" if run.call.map_index is not None else "")
            if deadline is not None and loop.time() >= deadline:
                run.record.outcome = "timeout"
                await self._cancel_remote(run, "delivery_timeout")
                raise DeliveryTimeoutError(
                    f"{where} produced no outcome within delivery_timeout={delivery_timeout}s in environment "
                    f"{self.name!r} (run {run.run_id}); the remote run was cancelled")
            if heartbeat and run.started and time.monotonic() - run.last_event >= heartbeat:
                run.record.outcome = "timeout"
                await self._cancel_remote(run, "heartbeat")
                raise DeliveryTimeoutError(
                    f"{where} sent no event for {heartbeat}s (delivery_heartbeat_seconds) in environment "
                    f"{self.name!r} (run {run.run_id}); the worker is presumed lost and the run was cancelled")

    async def _cancel_remote(self, run: _Run, reason: str) -> None:
        settings = run.settings
        policy = settings["delivery_orphan_policy"]
        record = run.record
        if policy == "detach":
            record.state = record.state if record.outcome else "DETACHED"
            record.outcome = record.outcome or "detached"
            detach = getattr(self.executor, "detach", None)
            if detach is not None:
                detach(run.run_id)
            return
        run.cancel_requested = True
        if not record.outcome:
            record.outcome = "orphaned" if policy == "fail" else "cancelled"
            record.state = "ORPHANED" if policy == "fail" else "CANCELLED"
        if policy == "fail" and not run.future.done():
            run.future.set_exception(DeliveryOrphanedError(
                f"task {run.call.task_name!r} was still running remotely when the weave stopped ({reason})"))
            run.future.exception()
        message = CancelTask(run_id=run.run_id, task_id=run.call.task_name,
                             delivery_cancel_mode=settings["delivery_cancel_mode"], delivery_orphan_policy=policy,
                             reason=reason, record=record)
        if settings["delivery_cancel_mode"] == "require_ack":
            run.acked = asyncio.get_running_loop().create_future()
        try:
            await asyncio.shield(self.executor.send(message))
        except Exception as exc:  # cancellation is best effort unless an ack is required
            log.warning("wove: cancelling run %s of task %r failed: %s", run.run_id, run.call.task_name, exc)
        if run.acked is not None:
            try:
                await asyncio.wait_for(asyncio.shield(run.acked), REQUIRE_ACK_SECONDS)
            except asyncio.TimeoutError:
                log.warning("wove: no cancellation acknowledgement for run %s of task %r within %ss",
                            run.run_id, run.call.task_name, REQUIRE_ACK_SECONDS)

    # ------------------------------------------------------------------ events
    async def _read_events(self) -> None:
        while True:
            try:
                frame = await self.executor.recv()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._closed = exc
                for run in list(self._runs.values()):
                    if not run.future.done():
                        run.future.set_exception(exc if isinstance(exc, EnvironmentExecutionError) else
                                                 EnvironmentExecutionError(
                                                     f"environment {self.name!r} stopped delivering events: "
                                                     f"{type(exc).__name__}: {exc}",
                                                     payload=error_dict(type(exc).__name__, str(exc),
                                                                        source="transport")))
                return
            try:
                self.handle(frame)
            except Exception:
                log.exception("wove: bad event frame from environment %r: %r", self.name, frame)

    def handle(self, frame: Mapping[str, Any]) -> None:
        """Apply one event frame; frames for unknown or finished runs are ignored."""
        event = Event.from_frame(frame)
        run = self._runs.get(event.run_id)
        if run is None:
            return
        kind = event.type
        record = run.record
        if kind == "task_cancelled" and run.acked is not None and not run.acked.done():
            run.acked.set_result(None)
        if run.future.done() or run.closing or (kind == "task_cancelled" and run.cancel_requested):
            return  # a late event, or the acknowledgement of our own cancel_task
        run.last_event = time.monotonic()
        if event.extra.get("via_spool"):
            record.details["delivered_via"] = "spool"   # the worker could not reach the weave over HTTP
        if kind == "task_started":
            run.started = True
            record.started_at = record.started_at or time.time()
            record.state = "RUNNING"
            record.node = event.node or event.host or record.node
            record.job_id = record.job_id or event.job_id
        elif kind == "items_done":
            self._items_done(run, event.result)
        elif kind == "task_result":
            record.state, record.outcome = "COMPLETED", "result"
            record.finished_at = time.time()
            if run.call.on_items is None:
                run.future.set_result(event.result)
            elif self._items_done(run, event.result) and not run.future.done():   # (it may stop its own map)
                run.future.set_result(None)
        elif kind == "task_error":
            record.state = record.state if record.state not in ("RUNNING", "SUBMITTED") else "FAILED"
            record.outcome = "error"
            record.finished_at = time.time()
            error = event.error or error_dict("Error", "remote task failed", source="executor")
            self._fail(run, event.exception, error)
        elif kind == "task_checkpoint":   # the task saved a state and ended its attempt: submitted again
            record.state, record.outcome = "CHECKPOINTED", "checkpoint"
            record.finished_at = time.time()
            run.future.set_exception(CheckpointRequested(
                f"task {run.call.task_name!r} checkpointed (run {run.run_id})", state=event.result))
        elif kind == "task_cancelled":
            record.state, record.outcome = "CANCELLED", record.outcome or "cancelled"
            record.finished_at = time.time()
            signal_name = event.signal
            why = f" by {signal_name}" if signal_name else ""
            error = event.error or error_dict(
                "Cancelled", f"the remote run of task {run.call.task_name!r} was cancelled{why} "
                f"(environment {self.name!r})", source="executor")
            run.future.set_exception(rebuild_exception(event.exception, error))

    def _items_done(self, run: _Run, outcomes: Any) -> bool:
        """Hand a packed element's outcome list to its caller; a list it cannot read fails the element."""
        on_items = run.call.on_items
        if on_items is None:
            return False
        try:
            on_items(outcomes)
        except Exception as exc:
            log.exception("wove: unreadable outcomes from run %s of task %r", run.run_id, run.call.task_name)
            if not run.future.done():
                run.future.set_exception(EnvironmentExecutionError(
                    f"the outcomes reported by run {run.run_id} of task {run.call.task_name!r} could not be "
                    f"read: {type(exc).__name__}: {exc}",
                    payload=error_dict(type(exc).__name__, str(exc), source="transport")))
            return False
        return True

    def _fail(self, run: _Run, exception: Any, error: dict[str, Any]) -> None:
        """Fail ``run`` with the rebuilt exception, carrying its job's log paths and stderr tail if it had a
        job. Rebuilding reads source files for the traceback and the tail reads the log: both in a thread."""
        run.closing = True
        record = run.record

        def rebuild() -> BaseException:
            exc = rebuild_exception(exception, error)
            if record.job_id or record.stderr_path:
                text = joblogs.tail(record.stderr_path)
                joblogs.attach(exc, joblogs.JobLogs(record.job_id, record.node, record.stdout_path,
                                                    record.stderr_path, text),
                               note=getattr(exc, "stderr_tail", None) is None)   # a Slurm error already says
            return exc

        async def finish() -> None:
            try:
                exc = await asyncio.to_thread(rebuild)
            except Exception as problem:   # never leave the run hanging
                exc = problem
            if not run.future.done():
                run.future.set_exception(exc)

        task = asyncio.get_running_loop().create_task(finish())
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)

    async def aclose(self) -> None:
        """Stop reading events and stop the executor; runs still pending become orphaned."""
        if self._finishing:   # failures whose job logs are being read complete first
            await asyncio.gather(*self._finishing, return_exceptions=True)
        for run in list(self._runs.values()):
            if not run.future.done():
                run.future.set_exception(DeliveryOrphanedError(
                    f"task {run.call.task_name!r} was still pending in environment {self.name!r} when the "
                    "weave stopped"))
                run.future.exception()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        await self.executor.stop()


def _idempotency_key(template: Any, call: RemoteCall) -> Optional[str]:
    if template is None:
        return None
    if callable(template):
        return str(template(*call.args, **call.kwargs))
    try:
        return template.format(*call.args, **call.kwargs)
    except (KeyError, IndexError) as exc:
        raise InvalidValueError(
            f"delivery_idempotency_key {template!r} refers to {exc}, which is not an argument of task "
            f"{call.task_name!r} (arguments: {', '.join(call.kwargs) or 'none'})") from None
