"""The remote side of a run: load the payload, run the task, sign and deliver its events.

Runs once per remote job, so start-up cost matters: it imports the standard library's C modules
(``_socket``, ``_pickle``, ``_signal``, ``binascii``) rather than their Python wrappers, which pull in
``enum``, ``selectors``, OpenSSL and more (about 10 ms per job here). Events go out through ``sender`` and
its tiny HTTP/1.1 client (``httpclient``); ``asyncio`` is imported only for ``async def`` tasks.

Exit codes: 0 the task succeeded, 1 it raised (or could not even start), 2 its outcome could not be
delivered, 3 the payload was missing or corrupt, 4 the weave could not be reached and the outcome was left
in the run's spool, 5 the task was not started because its weave is gone (``lease``), 6 the task saved a
checkpoint and ended its attempt (``wove.slurm.checkpoint``: the weave submits it again), 128+N it was
stopped by signal N (after reporting; a weave gone while the task ran stops it with SIGTERM).
"""

from __future__ import annotations

import _signal as signal
import _socket as socket
import os
import sys
import threading

from . import checkpoint, lease, protocol, spool
from .httpclient import Connection
from .sender import EventSender, shrink
from .transfer import _b64, _dumps, _load_field, _result_fields, _SpoolRefused, _with_shared

__all__ = ["TIME_WARNING", "EventSender", "WorkerSignal", "execute", "main", "run_payloads", "shrink"]

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Optional

EXIT_OK, EXIT_TASK_FAILED, EXIT_UNDELIVERED, EXIT_BAD_PAYLOAD = 0, 1, 2, 3
EXIT_SPOOLED = protocol.EXIT_SPOOLED   # 4: the weave could not be reached; the outcome waits in the spool
EXIT_CHECKPOINT = 6
#: Set when the job is warned (SIGUSR1, from executor_config "signal_before_timeout") that its time is nearly up.
TIME_WARNING = threading.Event()
SIGNAL_POST_SECONDS = 10.0   # after SIGTERM there is little time left (Slurm's KillWait is 30 s by default)
_TRAPPED = ("SIGTERM", "SIGUSR1")   # report task_cancelled with the signal, then exit
_WARNING = "SIGUSR1"   # ... unless the payload asks for it as a warning: the task keeps running (TIME_WARNING)
_SIGNAL_NAMES = {getattr(signal, name): name for name in ("SIGTERM", "SIGUSR1", "SIGINT") if hasattr(signal, name)}


class WorkerSignal(BaseException):
    """Raised in the task's thread when the job is told to stop (Slurm sends SIGTERM, or SIGUSR1 early)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
        self.name = _SIGNAL_NAMES.get(signum, f"signal {signum}")


# ---------------------------------------------------------------------------------------------- running
def _error_fields(exc: BaseException, source: str = "task", message: Optional[str] = None) -> dict[str, Any]:
    import traceback

    kind = type(exc)
    error = {
        "kind": kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}",
        "message": message or str(exc),
        "traceback": "".join(traceback.format_exception(kind, exc, exc.__traceback__)),
        "retryable": False,
        "source": source,
    }
    fields: dict[str, Any] = {"error": error}
    try:
        fields["exception_pickle"] = _b64(_dumps(exc))
    except Exception:  # unpicklable exception: the error dict still describes it
        pass
    return fields


def unpicklable_result(frame: dict[str, Any], value: Any, exc: Exception) -> dict[str, Any]:
    """The ``task_error`` fields for a return value that cannot be pickled: which task, which type."""
    from .pickling import return_value_error

    try:
        raise return_value_error(frame.get("task_name"), frame.get("task_id"), value, exc, _dumps) from exc
    except Exception as error:
        return _error_fields(error)


def _cloudpickle_version() -> str:
    """The installed cloudpickle's version, read without importing it (that costs ~25 ms per job)."""
    module = sys.modules.get("cloudpickle")
    if module is not None:
        return getattr(module, "__version__", "unknown")
    import importlib.util

    found = importlib.util.find_spec("cloudpickle")
    if found is None or not found.origin:
        return "missing"
    try:
        with open(found.origin, encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("__version__"):
                    return line.split("=", 1)[1].strip().strip("'\"")
    except OSError:
        pass
    import cloudpickle
    return getattr(cloudpickle, "__version__", "unknown")


def version_mismatch(payload: dict[str, Any]) -> Optional[str]:
    """A one-line explanation when this job cannot safely unpickle what the submitter pickled."""
    want_py, want_cp = payload.get("python"), payload.get("cloudpickle")
    have_py = f"{sys.version_info[0]}.{sys.version_info[1]}"
    have_cp = _cloudpickle_version()
    if (want_py and want_py != have_py) or (want_cp and want_cp != have_cp):
        from .._version import __version__

        return (f"job runs Python {have_py} / cloudpickle {have_cp} / wove {__version__}; submitter has "
                f"{want_py} / {want_cp} / {payload.get('wove', '?')}: install matching versions in the job "
                f"environment (pip install \"cloudpickle=={want_cp}\" with Python {want_py})")
    return None


def _extend_import_path(entries: Any) -> None:
    """Append the submitter's import directories that exist here, after the job's own (which win)."""
    if not isinstance(entries, list):
        return
    for entry in entries:
        if isinstance(entry, str) and entry not in sys.path and os.path.isdir(entry):
            sys.path.append(entry)


def _context() -> dict[str, Any]:
    env = os.environ
    info = {"host": socket.gethostname(), "pid": os.getpid()}
    for key, name in (("job_id", "SLURM_JOB_ID"), ("array_job_id", "SLURM_ARRAY_JOB_ID"),
                      ("array_task_id", "SLURM_ARRAY_TASK_ID"), ("node", "SLURMD_NODENAME")):
        if env.get(name):
            info[key] = env[name]
    return info


class _Heartbeat(threading.Thread):
    def __init__(self, sender: EventSender, interval: float):
        super().__init__(name="wove-heartbeat", daemon=True)
        self.sender, self.interval, self.stopped = sender, interval, threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            self.sender.send("heartbeat")


def execute(payload: dict[str, Any], *, sender: Optional[EventSender] = None,
            before_outcome: Optional[Callable[[], None]] = None) -> int:
    """Run one payload and deliver its events. ``WorkerSignal`` propagates (the caller reports it)."""
    sender = sender or EventSender(payload)
    mismatch = version_mismatch(payload)
    if mismatch is not None:
        error = {"kind": "VersionMismatch", "message": mismatch, "traceback": "", "retryable": False,
                 "source": "config"}
        return EXIT_TASK_FAILED if sender.send("task_error", {"error": error}) else EXIT_UNDELIVERED
    detached = (payload.get("delivery") or {}).get("orphan_policy") == "detach"
    gone = lease.driver_gone(payload)
    if gone is not None:   # nobody will collect the outcome: do not start the work
        print(f"wove.backend_worker: not starting task {payload.get('task_id') or payload.get('task_name')!r}: "
              f"{gone}", file=sys.stderr)
        if payload.get("events_dir"):
            sender.channel = "filesystem"   # its receiver is gone with it
        sender.send("task_cancelled", {"reason": "orphaned", "message": gone})
        return lease.EXIT_ORPHANED
    if not sender.send("task_started", _context()) and not detached:
        return EXIT_UNDELIVERED   # nobody is listening; a detached run still does its work
    heartbeat = None
    interval = (payload.get("delivery") or {}).get("heartbeat_seconds")
    if interval:
        heartbeat = _Heartbeat(sender, float(interval) / 2)   # two beats per window: one may be late
        heartbeat.start()
    _extend_import_path(payload.get("sys_path"))
    try:
        try:
            version = str(payload.get("cloudpickle") or "")
            func = _load_field(payload["callable_pickle"], "function", version)
            loaded = _load_field(payload["args_pickle"], "arguments", version)
            if payload.get("batch"):   # a packed element: its items' arguments, one pair per item
                calls = loaded
                if not isinstance(calls, list) or len(calls) != payload["batch"]:
                    raise ValueError(f"the payload lists {payload['batch']} items but holds "
                                     f"{len(calls) if isinstance(calls, list) else type(calls).__name__}")
            else:
                args, kwargs = loaded
            if payload.get("shared"):
                args, kwargs = _with_shared(args, kwargs, payload["shared"], version)
        except Exception as exc:
            fields = _error_fields(exc, source="config", message=(
                f"could not load task {payload.get('task_name')!r} in the job: {type(exc).__name__}: {exc}. "
                "Install your code and its dependencies in the job environment."))
            return EXIT_TASK_FAILED if sender.send("task_error", fields) else EXIT_UNDELIVERED
        if payload.get("batch"):
            from . import batch

            outcome, fields, all_ok = batch.run(func, calls, sender, _error_fields,
                                                lambda value, exc: unpicklable_result(payload, value, exc))
            if outcome == batch.EVENT:   # a flush could not be delivered: nobody collects the rest
                return EXIT_UNDELIVERED
            code = EXIT_OK if all_ok else EXIT_TASK_FAILED
        else:
            checkpoint.begin(payload)
            outcome, fields, code = _run_one(payload, func, args, kwargs, sender)
    finally:
        if heartbeat is not None:
            heartbeat.stopped.set()
    if before_outcome is not None:
        before_outcome()
    return code if sender.send(outcome, fields) else EXIT_UNDELIVERED


def _run_one(payload: dict[str, Any], func: Callable[..., Any], args: Any, kwargs: Any,
             sender: EventSender) -> tuple[str, dict[str, Any], int]:
    """Call the task once: its outcome event, the event's fields and the job's exit code."""
    try:
        value = func(*args, **kwargs)
        if hasattr(value, "__await__"):
            import asyncio

            async def _await() -> Any:
                return await value
            value = asyncio.run(_await())
    except WorkerSignal:
        raise
    except checkpoint.Checkpoint as saved:   # the weave submits the call again, starting from this state
        try:
            outcome, fields, code = "task_checkpoint", _result_fields(saved.state, sender), EXIT_CHECKPOINT
        except _SpoolRefused as refused:
            outcome, fields, code = "task_error", _error_fields(refused.error, source="spool"), EXIT_TASK_FAILED
        except Exception as exc:
            fields = _error_fields(exc, message=f"the state given to wove.slurm.checkpoint() cannot be pickled: "
                                                f"{type(exc).__name__}: {exc}")
            outcome, code = "task_error", EXIT_TASK_FAILED
    except BaseException as exc:   # SystemExit and KeyboardInterrupt in a task are its outcome too
        outcome, fields, code = "task_error", _error_fields(exc), EXIT_TASK_FAILED
    else:
        try:
            outcome, fields, code = "task_result", _result_fields(value, sender), EXIT_OK
        except _SpoolRefused as refused:   # no room in the spool (SpoolFullError), or a spool not ours
            outcome, fields, code = "task_error", _error_fields(refused.error, source="spool"), EXIT_TASK_FAILED
        except Exception as exc:
            outcome, fields, code = "task_error", unpicklable_result(payload, value, exc), EXIT_TASK_FAILED
    return outcome, fields, code


def _stop_orphaned(reason: str) -> None:
    """(Watchdog thread) the weave is gone: stop the task the way Slurm would, by SIGTERM to this process."""
    print(f"wove.backend_worker: stopping: {reason}", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGTERM)


def _raise_signal(signum: int, frame: Any) -> None:
    raise WorkerSignal(signum)


def _warn(signum: int, frame: Any) -> None:
    TIME_WARNING.set()


def _trap_signals(handler: Any, warn: bool = False) -> dict[int, Any]:
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for name in _TRAPPED:
            signum = getattr(signal, name, None)
            if signum is not None:
                previous[signum] = signal.signal(signum, _warn if warn and name == _WARNING else handler)
    return previous


def _restore(previous: dict[int, Any]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def _ignore_signals() -> None:
    if threading.current_thread() is threading.main_thread():
        for name in _TRAPPED:
            signum = getattr(signal, name, None)
            if signum is not None:
                signal.signal(signum, signal.SIG_IGN)


def run_payloads(payloads: list[dict[str, Any]], *, max_parallel: int = 1, trap_signals: bool = True) -> int:
    """Run this job's payloads (one, or a packed share of an array) and report each one's events.

    With ``trap_signals`` (the dedicated worker process), SIGTERM/SIGUSR1 make every unfinished item
    report ``task_cancelled`` with the signal name, then the process exits with 128+N.
    """
    connection_lock = threading.Lock()
    shared: Optional[Connection] = None
    urls = {p.get("callback_url") for p in payloads}
    if len(urls) == 1 and all(p.get("result_channel", "http") == "http" for p in payloads):
        shared = Connection(payloads[0]["callback_url"])
    senders = [EventSender(p, shared, connection_lock) for p in payloads]
    done: set[int] = set()
    codes: list[int] = [EXIT_OK] * len(payloads)
    warn = any(p.get("time_warning_signal") == _WARNING for p in payloads)
    previous = _trap_signals(_raise_signal, warn) if trap_signals else {}
    watchdog = None
    if previous:   # the dedicated worker process: a task whose weave is gone is stopped like a SIGTERM
        watchdog = lease.Watchdog(payloads, _stop_orphaned)
        if watchdog.payloads:
            watchdog.start()
    single = len(payloads) == 1 or max_parallel <= 1
    # A single in-thread task must not be interrupted while its outcome is being delivered.
    before_outcome = _ignore_signals if previous and single else None
    try:
        if single:
            for index, payload in enumerate(payloads):
                codes[index] = execute(payload, sender=senders[index], before_outcome=before_outcome)
                done.add(index)
                if before_outcome is not None and index + 1 < len(payloads):
                    _trap_signals(_raise_signal, warn)
        else:
            from concurrent.futures import ThreadPoolExecutor, wait

            pool = ThreadPoolExecutor(max_parallel, thread_name_prefix="wove-item")
            futures = {pool.submit(execute, p, sender=s): i for i, (p, s) in enumerate(zip(payloads, senders))}
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, timeout=0.5)
                for future in finished:
                    index = futures[future]
                    codes[index] = future.result()
                    done.add(index)
            pool.shutdown()
    except WorkerSignal as stop:
        _ignore_signals()   # finish reporting, then go
        for index, sender in enumerate(senders):
            if index not in done:
                sender.limit_retries(SIGNAL_POST_SECONDS)
                sender.send("task_cancelled", {"signal": stop.name, **_context()})
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(128 + stop.signum)   # item threads cannot be interrupted; do not wait for them
    finally:
        if watchdog is not None:
            watchdog.stopped.set()
        _restore(previous)
        if shared is not None:
            shared.close()
    spooled = False
    for sender in senders:
        if sender.undelivered:
            print(f"wove.backend_worker: {sender.undelivered}", file=sys.stderr)
        elif sender.spooled:
            spooled = True
            print(f"wove.backend_worker: {sender.spooled}; the outcome of {sender.task_id or sender.run_id} was "
                  f"written to {sender.payload.get('events_dir')} for the weave (or the next run of its "
                  "journal) to collect", file=sys.stderr)
    code = max(codes) if codes else EXIT_OK
    return EXIT_SPOOLED if spooled and code != EXIT_UNDELIVERED else code


def main(argv: list[str]) -> int:
    reference = argv[1] if len(argv) > 1 else os.environ.get(protocol.PAYLOAD_ENV)
    index_text = os.environ.get("WOVE_ARRAY_INDEX") or os.environ.get("SLURM_ARRAY_TASK_ID")
    try:
        payloads = protocol.read_payload(reference, int(index_text) if index_text else None)
    except (protocol.PayloadError, ValueError) as exc:
        print(f"wove.backend_worker: {exc}", file=sys.stderr)
        return EXIT_BAD_PAYLOAD
    cpus = int(os.environ.get("SLURM_CPUS_PER_TASK") or os.environ.get("WOVE_ITEM_PARALLELISM") or 1)
    code = run_payloads(payloads, max_parallel=min(cpus, len(payloads)))
    if code in (EXIT_UNDELIVERED, EXIT_SPOOLED) and reference and reference.startswith(protocol.SPOOL_PREFIX) \
            and reference.endswith(".payload"):
        # The weave that would have deleted this run's payload is gone: do not leave it behind.
        spool.remove_private(reference[len(protocol.SPOOL_PREFIX):])
    return code
