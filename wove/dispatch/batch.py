"""Job side of a packed element: run many items of one mapped task and report their outcomes in batches.

A packed Slurm element gets one payload for all its items (the function once, the items' arguments as one
list) and reports with one signed ``items_done`` event per flush, at least every ``FLUSH_SECONDS`` while
items finish, and the rest in its final ``task_result``. Each outcome is ``(position, True, value pickle)``
or ``(position, False, error fields)``, the position being the item's place in the payload's list; values
are pickled one by one, so one the weave cannot rebuild fails only its own item. When the job is told to
stop (``WorkerSignal``), what finished is flushed first: the weave keeps those items and fails only the rest.

Job side, like ``worker``: only cheap standard-library modules at import.
"""

from __future__ import annotations

import time

from .transfer import _dumps, _result_fields, _SpoolRefused

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

    from .sender import EventSender

FLUSH_SECONDS = 1.0
FLUSH_BYTES = 64 * 1024 * 1024   # ... or sooner once this much result data waits (memory, one spool file)
EVENT = "items_done"
ITEM_THREADS = "wove-item"   # name prefix of the threads that run items (``backend_worker`` looks for them)


def run(func: Callable[..., Any], calls: list[tuple[tuple[Any, ...], dict[str, Any]]], sender: EventSender,
        error_fields: Callable[[BaseException], dict[str, Any]],
        unpicklable: Callable[[Any, Exception], dict[str, Any]]) -> tuple[str, dict[str, Any], bool]:
    """Run every call in order; flush outcomes as they come. Returns the final event, its fields and whether
    every item succeeded. A flush that cannot be delivered stops the element (nobody collects the rest)."""
    from .worker import WorkerSignal

    parallel = min(len(calls), _parallelism())
    if parallel > 1:
        return _run_parallel(func, calls, sender, error_fields, unpicklable, parallel)
    outcomes: list[tuple[int, bool, Any]] = []
    all_ok = True
    loop = None
    last = time.monotonic()
    waiting = 0   # bytes of result pickles not flushed yet
    try:
        for position, (args, kwargs) in enumerate(calls):
            try:
                value = func(*args, **kwargs)
                if hasattr(value, "__await__"):
                    if loop is None:
                        import asyncio

                        loop = asyncio.new_event_loop()
                    value = loop.run_until_complete(_awaited(value))
            except WorkerSignal:
                raise
            except BaseException as exc:   # SystemExit and KeyboardInterrupt in a task are its outcome too
                outcomes.append((position, False, error_fields(_not_packed(exc))))
                all_ok = False
            else:
                try:
                    pickled = _dumps(value)
                    outcomes.append((position, True, pickled))
                    waiting += len(pickled)
                except Exception as exc:
                    outcomes.append((position, False, unpicklable(value, exc)))
                    all_ok = False
            if time.monotonic() - last >= FLUSH_SECONDS or waiting >= FLUSH_BYTES:
                if not _flush(sender, outcomes):
                    return EVENT, {}, False
                outcomes, waiting = [], 0
                last = time.monotonic()
    except WorkerSignal:
        _last_flush(sender, outcomes)   # what finished is kept; the caller reports the rest as cancelled
        raise
    finally:
        if loop is not None:
            loop.close()
    return "task_result", _final(sender, outcomes, all_ok), all_ok


def _final(sender: EventSender, outcomes: list[tuple[int, bool, Any]], all_ok: bool) -> dict[str, Any]:
    fields = _fields(sender, outcomes)
    if not all_ok:
        fields["failed_items"] = True   # the weave keeps this job's logs (keep_logs="on_failure")
    return fields


def _last_flush(sender: EventSender, outcomes: list[tuple[int, bool, Any]]) -> None:
    """After a stop signal: no second signal interrupts it, and it is quick (Slurm's SIGKILL follows)."""
    from .worker import SIGNAL_POST_SECONDS, _ignore_signals

    _ignore_signals()
    sender.limit_retries(SIGNAL_POST_SECONDS)
    if outcomes:
        _flush(sender, outcomes)


def _not_packed(exc: BaseException) -> BaseException:
    from .checkpoint import Checkpoint

    if isinstance(exc, Checkpoint):
        return RuntimeError("wove.slurm.checkpoint() ends a job of its own, which the items of a packed map "
                            "(items_per_job > 1) do not have: run the task with items_per_job=1 to checkpoint it")
    return exc


def _parallelism() -> int:
    """Items run at once: the job's CPUs (``cpus_per_task``), as for the per-item path."""
    import os

    try:
        return max(1, int(os.environ.get("SLURM_CPUS_PER_TASK") or os.environ.get("WOVE_ITEM_PARALLELISM") or 1))
    except ValueError:
        return 1


def _sent(future: Any) -> bool:
    return bool(getattr(future, "sent", False))


def _one(func: Callable[..., Any], args: Any, kwargs: Any, error_fields: Callable[[BaseException], dict[str, Any]],
         unpicklable: Callable[[Any, Exception], dict[str, Any]]) -> tuple[bool, Any]:
    """One item in a worker thread: ``(True, value pickle)`` or ``(False, error fields)``."""
    try:
        value = func(*args, **kwargs)
        if hasattr(value, "__await__"):
            import asyncio

            value = asyncio.run(_awaited(value))
    except BaseException as exc:
        return False, error_fields(_not_packed(exc))
    try:
        return True, _dumps(value)
    except Exception as exc:
        return False, unpicklable(value, exc)


def _run_parallel(func: Callable[..., Any], calls: list[tuple[tuple[Any, ...], dict[str, Any]]],
                  sender: EventSender, error_fields: Callable[[BaseException], dict[str, Any]],
                  unpicklable: Callable[[Any, Exception], dict[str, Any]],
                  parallel: int) -> tuple[str, dict[str, Any], bool]:
    """``run`` with up to ``parallel`` items at once in threads; the main thread flushes (and takes signals)."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    from .worker import WorkerSignal

    pool = ThreadPoolExecutor(parallel, thread_name_prefix=ITEM_THREADS)
    futures = {pool.submit(_one, func, args, kwargs, error_fields, unpicklable): position
               for position, (args, kwargs) in enumerate(calls)}
    outcomes: list[tuple[int, bool, Any]] = []
    all_ok = True
    last = time.monotonic()
    pending = set(futures)
    try:
        while pending:
            finished, pending = wait(pending, timeout=FLUSH_SECONDS / 2, return_when=FIRST_COMPLETED)
            for future in finished:
                ok, data = future.result()
                outcomes.append((futures[future], ok, data))
                all_ok = all_ok and ok
                future.sent = True   # type: ignore[attr-defined]   # (taken: a stop signal must not resend it)
            if pending and outcomes and time.monotonic() - last >= FLUSH_SECONDS:
                if not _flush(sender, outcomes):
                    for future in pending:
                        future.cancel()
                    return EVENT, {}, False
                outcomes = []
                last = time.monotonic()
    except WorkerSignal:
        for future in pending:
            future.cancel()
        known = {position for position, _, _ in outcomes}
        outcomes += [(futures[f], *f.result()) for f in futures
                     if f.done() and not f.cancelled() and futures[f] not in known and not _sent(f)]
        _last_flush(sender, outcomes)
        raise
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return "task_result", _final(sender, outcomes, all_ok), all_ok


async def _awaited(value: Any) -> Any:
    return await value


def _fields(sender: EventSender, outcomes: list[tuple[int, bool, Any]]) -> dict[str, Any]:
    """One flush's event fields: the outcome list rides inline when small, else in the run's spool."""
    sender.parts += 1
    try:
        return _result_fields(outcomes, sender)
    except _SpoolRefused as refused:   # nowhere to put a large flush: fail its items, keep the element going
        from .worker import _error_fields

        error = _error_fields(refused.error, source="spool")
        return _result_fields([(position, False, error) for position, _, _ in outcomes], sender)


def _flush(sender: EventSender, outcomes: list[tuple[int, bool, Any]]) -> bool:
    return sender.send(EVENT, _fields(sender, outcomes))
