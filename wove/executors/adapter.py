"""Backend adapters: plug a job system (Slurm, a queue, a cloud batch service...) into wove.

An adapter only knows how to *submit* a payload and *cancel* a submission. Everything else (building and
signing payloads, spooling large ones, the authenticated callback receiver or the filesystem result channel,
matching events to runs, cleanup) is done once, here, by ``BackendAdapterEnvironmentExecutor``.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import inspect
import logging
import os
import uuid
from collections.abc import Mapping
from typing import Any, Optional

from ..dispatch import protocol, spool
from ..dispatch.events import EventGate
from ..dispatch.filechannel import FALLBACK_POLL_SECONDS, FileChannel
from ..dispatch.lease import DEFAULT_GRACE, DEFAULT_JOURNAL_TIMEOUT
from ..dispatch.payload import (
    DEFAULT_SPOOL_THRESHOLD,
    PayloadBuilder,
    cloudpickle_module,
    encode_payload,
    import_path,
)
from ..dispatch.settings import DISPATCH_KEYS, RESULT_CHANNELS, token_from_url, validate_dispatch_config
from ..errors import ExecutorStartError, InvalidTypeError
from .backend import BackendAdapter
from .base import EnvironmentExecutor
from .lease import LeaseKeeper
from .reattach import Reattach, hint_dead_runs

__all__ = ["DEFAULT_SPOOL_THRESHOLD", "DISPATCH_KEYS", "RESULT_CHANNELS", "BackendAdapter",
           "BackendAdapterEnvironmentExecutor", "cloudpickle_module", "default_spool_root", "encode_payload",
           "import_path", "validate_dispatch_config"]

log = logging.getLogger("wove.dispatch")



def default_spool_root() -> str:
    """``$WOVE_SPOOL_DIR``, else ``~/.cache/wove/spool`` (home directories are shared on most clusters)."""
    return os.environ.get("WOVE_SPOOL_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "wove", "spool")


class BackendAdapterEnvironmentExecutor(Reattach, EnvironmentExecutor):
    """An executor that runs each task through a ``BackendAdapter`` and collects signed events."""

    config_keys = None  # validated in validate_config from DISPATCH_KEYS + the adapter's keys

    def __init__(self, name: str = "backend", adapter_class: Optional[type[BackendAdapter]] = None, *,
                 adapter_options: Optional[Mapping[str, Any]] = None):
        if adapter_class is None or not (isinstance(adapter_class, type)
                                         and issubclass(adapter_class, BackendAdapter)):
            raise InvalidTypeError(f"adapter_class must be a BackendAdapter subclass, got {adapter_class!r}")
        self.adapter_name = name
        self.adapter_class = adapter_class
        self.adapter_options = dict(adapter_options or {})
        self.adapter: Optional[BackendAdapter] = None
        self.spool_dir = ""
        self.spool_root: Optional[spool.RunDir] = None
        self.run_dir: Optional[spool.RunDir] = None
        self.events_run_dir: Optional[spool.RunDir] = None
        self.events_dir = ""
        self.callback_url = ""
        self._queue: Optional[asyncio.Queue[dict[str, Any]]] = None
        self._gate: Optional[EventGate] = None
        self._receiver: Any = None
        self._files: Optional[FileChannel] = None
        self._builder: Optional[PayloadBuilder] = None
        self._runs: dict[str, _Tracked] = {}
        self._detached: set[str] = set()
        self._adopted: dict[str, tuple[spool.RunDir, FileChannel, str]] = {}   # events dir -> reader
        self._lease: Optional[LeaseKeeper] = None
        self._config: dict[str, Any] = {}
        self._active = False

    # ---------------------------------------------------------------- configuration
    def validate_config(self, config: dict[str, Any], *, environment: str) -> dict[str, Any]:  # type: ignore[override]
        return validate_dispatch_config(config, environment=environment, adapter_class=self.adapter_class,
                                        label=self.adapter_name)

    # ---------------------------------------------------------------- lifecycle
    async def start(self, *, environment_name: str, environment_config: Mapping[str, Any],
                    run_config: Mapping[str, Any]) -> None:
        if self._active:
            raise ExecutorStartError(
                f"environment {environment_name!r}: this {type(self).__name__} instance is already serving "
                "another weave; weaves that run at the same time need their own instance (or name the "
                "executor, e.g. 'slurm', and wove makes one per weave)")
        # Fresh per-run state: an instance may serve several weaves one after another.
        self._runs, self._detached = {}, set()
        cloudpickle_module()   # these two fail before anything is acquired (and the instance stays free)
        missing = [m for m in self.adapter_class.required_modules if importlib.util.find_spec(m) is None]
        if missing:
            raise ExecutorStartError(
                f"environment {environment_name!r}: the {self.adapter_name} adapter needs "
                f"{', '.join(missing)}, which is not installed. {self.adapter_class.install_hint}".rstrip())
        config = dict(environment_config.get("executor_config") or {})
        self._config = config
        self._queue = asyncio.Queue()
        self._active = True
        try:
            run_dir = self._make_run_dir(environment_name, config.get("spool_dir") or default_spool_root())
            # The queue tools this environment is configured with, for ``wove cleanup`` after a crash.
            tools = {name: config[name] for name in ("squeue", "scancel") if config.get(name)}
            self._lease = LeaseKeeper(run_dir, journaled=bool(run_config.get("journal")), tools=tools)
            await self._lease.start()
            await asyncio.to_thread(hint_dead_runs, self.spool_root.path if self.spool_root else "")
            allow = config.get("unpickle_allow")
            gate = self._gate = EventGate(self.spool_dir, allowed_modules=tuple(allow) if allow is not None else None)
            # Every run has an events directory: the filesystem channel's, or where a worker that cannot
            # reach the HTTP receiver leaves its events (read here, or by the next driver of a journal).
            self.events_run_dir = run_dir.make_private("events")
            self.events_dir = self.events_run_dir.path
            if config.get("result_channel", "http") == "filesystem":
                self.callback_url = ""
                self._files = FileChannel(self.events_run_dir, self._gate, self._on_verified)
            else:
                await self._start_receiver(gate, config)
                self._files = FileChannel(self.events_run_dir, self._gate, self._on_verified,
                                          poll_seconds=FALLBACK_POLL_SECONDS)
            self._files.start()
            adapter = self.adapter_class(name=environment_name, config=config, callback_url=self.callback_url,
                                         run_config=run_config, **self.adapter_options)
            adapter._executor = self
            await adapter.start()  # an adapter that fails here cleans up after itself
            self.adapter = adapter
        except BaseException:
            await self.stop()
            raise

    def _make_run_dir(self, environment_name: str, root: str) -> spool.RunDir:
        """Check the spool root, then make this run's directory in it: fresh, 0700, used by descriptor only."""
        try:
            self.spool_root = spool.RunDir.open_root(root, "spool directory")
        except spool.UnsafeSpoolError as exc:
            raise ExecutorStartError(f"environment {environment_name!r}: {exc}") from None
        except OSError as exc:
            raise ExecutorStartError(f"environment {environment_name!r}: cannot use spool directory {root}: "
                                     f"{exc.strerror or exc}") from None
        name = f"{environment_name}-{uuid.uuid4().hex[:12]}"
        run_dir = self.run_dir = self.spool_root.make_private(_safe_name(name), register=True)
        self.spool_dir = run_dir.path
        return run_dir

    async def _start_receiver(self, gate: EventGate, config: Mapping[str, Any]) -> None:
        from ..dispatch.receiver import DEFAULT_MAX_BODY, CallbackReceiver

        token = config.get("callback_token") or token_from_url(config.get("callback_url")) \
            or base64.urlsafe_b64encode(os.urandom(24)).decode().rstrip("=")
        self._receiver = CallbackReceiver(
            gate, self._on_verified, token=token,
            host=config.get("callback_host") or self.default_callback_host(),
            port=int(config.get("callback_port") or 0),
            max_body=int(config.get("callback_max_body") or DEFAULT_MAX_BODY))
        await self._receiver.start()
        if config.get("callback_url"):
            self.callback_url = config["callback_url"]
        else:
            host = await self.advertise_host(self._receiver.host)
            # url() may look up this host's name (a 0.0.0.0 bind): never on the event loop
            self.callback_url = await asyncio.get_running_loop().run_in_executor(None, self._receiver.url, host)

    def default_callback_host(self) -> str:
        """Where the receiver binds when ``callback_host`` is not set."""
        return "127.0.0.1"

    async def advertise_host(self, bind_host: str) -> str:
        """The host name workers are told to call back, when ``callback_url`` is not set."""
        return bind_host

    def items_per_job(self, resources: Optional[dict[str, Any]]) -> int:
        """Items of a mapped task one job runs (the adapter's packing), 1 when it does not pack."""
        size = getattr(self.adapter, "items_per_job", None)
        return int(size(resources)) if size is not None else 1

    def load_value(self, data: bytes) -> Any:
        """A packed item's result pickle, unpickled like any result (restricted per ``unpickle_allow``)."""
        from ..dispatch import events

        allowed = self._gate.allowed_modules if self._gate is not None else None
        return events.loads(data) if allowed is None else events.restricted_loads(data, allowed)

    def requeue_limit(self, resources: Optional[dict[str, Any]]) -> int:
        """Checkpoints one call may make (each one submits it again): the adapter's, 0 if it has none."""
        limit = getattr(self.adapter, "requeue_limit", None)
        return int(limit(resources)) if limit is not None else 0

    def free_retries(self, exc: BaseException) -> int:
        """How many times a failure like ``exc`` (the cluster's, not the task's) may be resubmitted without
        using up ``retries``: the adapter's ``max_requeues`` when its ``free_retry`` says so, else 0."""
        adapter = self.adapter
        check = getattr(adapter, "free_retry", None)
        if check is None or not check(exc):
            return 0
        return int(getattr(adapter, "max_requeues", 0))

    def adjust_for_retry(self, exc: BaseException, resources: Optional[dict[str, Any]],
                         settings: dict[str, Any]) -> Optional[dict[str, Any]]:
        adjust = getattr(self.adapter, "adjust_for_retry", None)
        return adjust(exc, resources, settings) if adjust is not None else resources

    async def stop(self) -> None:
        if self._files is not None:
            await self._files.stop()
            self._files = None
        adapter = self.adapter
        try:
            if adapter is not None and not getattr(adapter, "closed", False):   # a subclass may skip __init__
                adapter.closed = True  # the adapter stays readable (e.g. its submission record)
                await adapter.close()
        finally:
            if self._receiver is not None:
                await self._receiver.stop()
                self._receiver = None
            if self._lease is not None:   # renewed until every job of ours is settled
                await self._lease.stop()
                self._lease = None
            if self._adopted:   # after the adapter's close: every reattached job is settled (or cancelled)
                await self._stop_adopted()
            try:
                # In a thread: deleting a large shared input, or any file while the filesystem is flushing
                # hundreds of MB, can take a few tenths of a second. (Cancelled, the thread still finishes.)
                await asyncio.to_thread(self._close_run_dir)
            finally:
                self._runs.clear()
                self._active = False

    def _close_run_dir(self) -> None:
        """Delete this run's spool directory (by descriptor, never through a symlink) and close it."""
        builder, self._builder = self._builder, None
        if builder is not None:
            builder.close()
        if self.events_run_dir is not None:
            self.events_run_dir.close()
            self.events_run_dir = None
        if self.run_dir is not None:
            if self._detached:  # detached runs may still start: keep what they read
                log.info("wove: keeping %s for %d detached run(s)", self.spool_dir, len(self._detached))
                self.run_dir.close()
            else:
                self.run_dir.close_and_remove()
            self.run_dir = None
        if self.spool_root is not None:
            self.spool_root.close()
            self.spool_root = None

    # ---------------------------------------------------------------- frames
    async def send(self, frame: Mapping[str, Any]) -> None:
        """Carry out a command (``RunTask``, ``CancelTask``, ``Shutdown``; or a dict frame of the same shape)."""
        assert self.adapter is not None and self._gate is not None, "executor used before start()"
        kind = frame.get("type")
        if kind == "run_task":
            run_id = frame["run_id"]
            payload = await self.build_payload(frame)
            self._gate.register(payload["run_id"], payload["signing"]["key"])
            self._runs[run_id] = _Tracked(frame, payload["signing"]["key"])
            try:
                submission = self.adapter.submit(payload, frame)
                if inspect.isawaitable(submission):
                    submission = await submission
            except BaseException:
                tracked = self._runs.get(run_id)
                if tracked is None or not tracked.recorded:   # no job went in: nothing to cancel later
                    self._forget(run_id)
                raise
            self.record_submission(run_id, submission)
        elif kind == "cancel_task":
            tracked = self._runs.get(frame["run_id"])
            if tracked is None:
                return
            try:
                outcome = self.adapter.cancel(frame["run_id"], tracked.submission, frame)
                if inspect.isawaitable(outcome):
                    await outcome
            finally:
                # Keep the run known to the gate: its worker's task_cancelled is the acknowledgement.
                self._forget(frame["run_id"], keep_gate=True)
        elif kind == "shutdown":
            await self.stop()

    def record_submission(self, run_id: str, submission: Any) -> None:
        """``run_id`` is submitted as ``submission`` (also when its ``submit`` call is being cancelled: the
        job exists, so the runtime will cancel it)."""
        tracked = self._runs.get(run_id)
        if tracked is None:
            return
        tracked.submission, tracked.recorded = submission, True
        if self._lease is not None:
            self._lease.job_submitted(submission)
        record = tracked.message.get("record")
        if record is not None:
            record.submission = submission
            if isinstance(submission, (str, int)) and not record.job_id:
                record.job_id = str(submission)

    async def recv(self) -> dict[str, Any]:
        assert self._queue is not None, "executor used before start()"
        frame = await self._queue.get()
        if frame.get("type") in protocol.OUTCOME_TYPES:
            self._forget(frame.get("run_id", ""), keep_gate=True)
        return frame

    def detach(self, run_id: str) -> None:
        """The weave stops waiting for ``run_id`` but leaves it running: keep its payload, never cancel it."""
        self._detached.add(run_id)
        self._runs.pop(run_id, None)
        if self._gate is not None:
            self._gate.finish(run_id)
        detach = getattr(self.adapter, "detach", None)
        if detach is not None:
            detach(run_id)

    def deliver(self, frame: dict[str, Any]) -> None:
        if self._queue is not None:
            self._queue.put_nowait(frame)

    def _on_verified(self, frame: dict[str, Any]) -> None:
        adapter = self.adapter
        passed = adapter.on_event(frame) if adapter is not None else frame
        if passed is not None:
            self.deliver(passed)

    def _forget(self, run_id: str, keep_gate: bool = False) -> None:
        self._runs.pop(run_id, None)
        if self._gate is not None:
            if keep_gate:
                self._gate.finish(run_id)
            else:
                self._gate.forget(run_id)
        if self.run_dir is not None:
            self.run_dir.remove(spool.payload_name(run_id))
        if self._builder is not None:
            self._builder.forget(run_id)

    # ---------------------------------------------------------------- payloads
    async def build_payload(self, frame: Mapping[str, Any]) -> dict[str, Any]:
        """The documented payload for a ``run_task`` frame, plus our signing and version fields.

        Pickling (and spooling large pickles) happens off the event loop, see ``dispatch.payload``.
        """
        builder = self._builder
        if builder is None:   # the static part is the same for every payload of this environment run
            assert self.run_dir is not None, "executor used before start()"
            config = self._config
            static = {
                "version": protocol.PAYLOAD_VERSION,
                "adapter": self.adapter_name,
                "callback_url": self.callback_url,
                **protocol.version_info(),
                "max_body": self._receiver.max_body if self._receiver is not None else 0,
                "spool_dir": self.spool_dir,
                "result_channel": config.get("result_channel", "http"),
                # Functions pickled by reference import on the job when it can see the same directories.
                "sys_path": import_path(),
            }
            static["events_dir"] = self.events_dir   # the filesystem channel, or HTTP's fallback
            if self._lease is not None:   # jobs whose weave is gone stop (dispatch.lease)
                static.update(lease=self._lease.path, journaled=self._lease.journaled,
                              orphan_grace=config.get("orphan_grace", DEFAULT_GRACE),
                              orphan_timeout=config.get("orphan_timeout", DEFAULT_JOURNAL_TIMEOUT))
            builder = self._builder = PayloadBuilder(static, self.run_dir, post_timeout=config.get("post_timeout"))
        args, kwargs = frame.get("args") or ((), {})
        return await builder.build(
            run_id=frame["run_id"], task_id=frame.get("task_id"), task_name=frame.get("task_name"),
            func=frame["callable"], args=tuple(args), kwargs=dict(kwargs), delivery=frame.get("delivery") or {},
            mapped=frame.get("map_index") is not None, batch=frame.get("batch"),
            restore=(frame.get("restore"),) if frame.get("restoring") else None)

    def encode_payload(self, payload: dict[str, Any]) -> str:
        threshold = int(self._config.get("spool_threshold") or DEFAULT_SPOOL_THRESHOLD)
        assert self.run_dir is not None, "executor used before start()"
        return encode_payload(payload, self.run_dir, threshold)

class _Tracked:
    """A run this executor submitted: its command and what ``submit`` returned (or reported)."""

    __slots__ = ("key", "message", "recorded", "submission")

    def __init__(self, message: Mapping[str, Any], key: str = ""):
        self.message = message
        self.key = key   # its signing key (a journal keeps it, so a later driver can verify the run's events)
        self.submission: Any = None
        self.recorded = False


def _safe_name(name: str) -> str:
    """A directory name made of ``name``: no separators, nothing hidden."""
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return cleaned.lstrip(".") or "env"
