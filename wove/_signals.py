"""Cancelling a weave's remote work when the driver is told to stop: SIGINT, SIGTERM or SIGHUP.

(A weave with a journal is the exception for SIGTERM and SIGHUP: its jobs keep running, the journal is
written out, and the process ends as the signal says; the next run of the script collects the results.
See ``_detach``.)

Without this, SIGTERM (a login node reaping long processes) and SIGHUP (a closed SSH session) kill the
driver at once and leave every Slurm job queued or running. While a weave with remote work runs in the
foreground, this module owns the handlers of the three signals and gives each the path Ctrl-C already
takes (``asyncio.run``'s: cancel the task that runs the weave). The scheduler then cancels the running
tasks, each remote environment cancels its runs (for Slurm: batched ``scancel``) and the Slurm environment
waits, bounded by ``drain_timeout``, until none of its jobs is in the queue any more. After that:

* a Python handler that was installed before (``signal.signal``; for SIGINT that is Python's own
  ``default_int_handler``, which raises ``KeyboardInterrupt`` as Ctrl-C always did) is called and decides;
  if it returns, the block raises the weave's cancellation (``asyncio.CancelledError``);
* with the default disposition the process ends killed by that same signal (a shell sees 128+N), exactly
  as it would have without wove, only after the cancellation. ``finally`` blocks and ``atexit`` do not run,
  again as with the default disposition: install a handler of your own to get them.

A second signal (any of the three) while the cancellation runs exits at once and prints the job ids that
may be left, for ``scancel``. One line on stderr says what is being cancelled, e.g. ``wove: SIGTERM:
cancelling 20 Slurm jobs (drain_timeout 30 s); send again to exit at once``.

Rules: handlers are installed only from the main thread (``signal.signal``'s rule), never for a signal
whose disposition is ``SIG_IGN`` (under ``nohup`` SIGHUP stays ignored and the driver survives a hang-up)
or is not a Python one, only while a weave with remote work runs, and are restored on every exit path;
nested or concurrent weaves share one installation (reference-counted). Every running weave with remote
work, in any thread, is cancelled by a signal the main thread handles, and the main thread waits (bounded)
for all of them before it acts. A weave in another thread (``background=True``, or a plain thread) installs
nothing: while no foreground weave runs in the main thread, a signal does to the process what it would do
without wove (SIGTERM and SIGHUP kill it and its jobs stay queued; Ctrl-C raises ``KeyboardInterrupt`` in
the main thread).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any, Optional

#: The signals that stop a driver (SIGHUP does not exist on Windows).
SIGNALS: tuple[int, ...] = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP")
                                 if hasattr(signal, name))
_DEFAULT_DRAIN = 30.0   # the Slurm environment's drain_timeout when it sets none
_FINISHED = ("result", "error", "detached")   # outcomes of runs whose job is gone or meant to stay

_lock = threading.RLock()
_changed = threading.Condition(_lock)


class _State:
    """Process-wide: the installation, the running weaves, and the signal being handled."""

    depth = 0                                  # guards that installed, in the main thread
    previous: dict[int, Any] = {}              # signal -> the handler ours replaced
    targets: dict[int, _Target] = {}           # id -> a running weave with remote work
    received: Optional[int] = None             # the signal being handled, until the last guard acts
    frame: Optional[FrameType] = None
    cancelled: list[_Target] = []              # the weaves that signal cancelled
    job_ids: set[str] = set()                  # their Slurm jobs in flight when it arrived


class _Target:
    """One running weave a signal cancels: the loop and task that run it, and its result's run records."""

    def __init__(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any], runtime: Any):
        self.loop, self.task, self.runtime = loop, task, runtime
        self.cancelled = False
        self.done = threading.Event()

    def cancel(self) -> None:
        """Cancel the weave's task from any thread, as ``asyncio.run`` does on Ctrl-C."""
        def cancel_now() -> None:
            waiter = getattr(self.runtime, "_waiter", None)
            if waiter is not None and waiter.done():
                return   # every task has ended: the weave is closing its environments, which cancels the rest
            if not self.task.done():
                self.cancelled = self.task.cancel() or self.cancelled
        try:
            self.loop.call_soon_threadsafe(cancel_now)
        except RuntimeError:   # its loop has closed: the weave is over
            pass

    def records(self) -> list[Any]:
        for _ in range(5):   # the weave's own thread may add records while we read them
            try:
                return [record for runs in list(self.runtime.result._jobs.values()) for record in list(runs)]
            except RuntimeError:
                continue
        return []

    def environment(self, name: str) -> dict[str, Any]:
        return dict(self.runtime.resolver.environments.get(name) or {})


def _is_slurm(executor: Any) -> bool:
    if isinstance(executor, str):
        return executor == "slurm"
    module = sys.modules.get("wove.slurm.executor")
    return module is not None and isinstance(executor, module.SlurmExecutor)


def _drain_timeout(target: _Target, environment: str) -> float:
    config = target.environment(environment).get("executor_config") or {}
    return float(config.get("drain_timeout") or _DEFAULT_DRAIN)


# ---------------------------------------------------------------------------- the handler


def _write(line: str) -> None:
    """One line on stderr, written to the descriptor: a handler may interrupt a write to ``sys.stderr``."""
    try:
        os.write(2, (line + "\n").encode(errors="replace"))
    except OSError:
        pass


def _name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _in_flight(targets: list[_Target]) -> tuple[int, int, set[str], float]:
    """(Slurm runs, other remote runs, Slurm job ids, the longest drain_timeout) of runs still in flight."""
    slurm = other = 0
    ids: set[str] = set()
    drain = 0.0
    for target in targets:
        for record in target.records():
            if record.outcome:
                continue
            if _is_slurm(target.environment(record.environment).get("executor")):
                slurm += 1
                drain = max(drain, _drain_timeout(target, record.environment))
                if record.job_id:
                    ids.add(str(record.job_id))
            else:
                other += 1
    return slurm, other, ids, drain


def _handle(signum: int, frame: Optional[FrameType]) -> None:
    """The handler of all three signals while a weave with remote work runs."""
    if _State.received is not None:
        _exit_now(signum)
    _State.received, _State.frame = signum, frame
    targets = list(_State.targets.values())
    journals = [getattr(target.runtime, "journal", None) for target in targets]
    if (signum in _DETACHING and targets and all(journals)
            and _State.previous.get(signum, signal.SIG_DFL) == signal.SIG_DFL):
        _detach(signum, targets, journals)
    _State.cancelled = targets
    slurm, other, ids, drain = _in_flight(targets)
    _State.job_ids = ids
    parts = ([_plural(slurm, "Slurm job")] if slurm else []) + (
        [_plural(other, "other remote run" if slurm else "remote run")] if other else [])
    what = " and ".join(parts) if parts else "the weave (no remote run in flight)"
    wait = f" (drain_timeout {drain:g} s)" if slurm else ""
    _write(f"wove: {_name(signum)}: cancelling {what}{wait}; send again to exit at once")
    for target in targets:
        target.cancel()


#: Signals that end a journaled weave without cancelling its jobs: a hang-up (SSH dropped) or a reaper's
#: SIGTERM is not a decision to give up the sweep, and the next run of the script collects the results.
#: Ctrl-C (SIGINT) is one, and cancels as always.
_DETACHING = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))
_JOURNAL_CLOSE_SECONDS = 5.0


def _detach(signum: int, targets: list[_Target], journals: list[Any]) -> None:
    """A journaled weave told to stop by SIGTERM/SIGHUP: leave its jobs running (their leases let them run
    until ``orphan_timeout``, their outcomes wait in the spool), write out the journal, and end the process
    killed by the signal, as without wove. A rerun of the script reattaches to the jobs and reads back
    what they finished."""
    slurm, other, _, _ = _in_flight(targets)
    paths = sorted({str(getattr(getattr(journal, "journal", None), "path", "?")) for journal in journals})
    parts = ([_plural(slurm, "Slurm job")] if slurm else []) + (
        [_plural(other, "other remote run" if slurm else "remote run")] if other else [])
    what = " and ".join(parts) if parts else "no remote run"
    _write(f"wove: {_name(signum)}: leaving {what} running for the journal {', '.join(paths)}; run the script "
           "again to collect the results (or `wove cleanup --cancel` to stop them)")

    def close_all() -> None:
        for journal in journals:
            try:
                journal.close()
            except Exception as exc:   # reported, and the process still ends as the signal says
                _write(f"wove: could not write the journal: {exc}")
    # In a thread, bounded: the signal may have interrupted this very thread inside the journal's queue.
    closer = threading.Thread(target=close_all, name="wove-journal-close", daemon=True)
    closer.start()
    closer.join(_JOURNAL_CLOSE_SECONDS)
    _die(signum)


def _base_id(job_id: str) -> str:
    return job_id.split("_", 1)[0]


def _left_behind() -> list[str]:
    """Slurm job ids (array ids for arrays) of the cancelled weaves that may still be queued or running."""
    ids = set(_State.job_ids)
    for target in _State.cancelled:
        for record in target.records():
            if record.job_id and record.outcome not in _FINISHED and _is_slurm(
                    target.environment(record.environment).get("executor")):
                ids.add(str(record.job_id))
    bases = {_base_id(job_id) for job_id in ids}
    return sorted(bases, key=lambda base: (len(base), base))


def _exit_now(signum: int) -> None:
    """A second signal: say which jobs may be left, and end the process now, killed by that signal."""
    left = _left_behind()
    if left:
        joined = " ".join(left)
        _write(f"wove: {_name(signum)} again: exiting now without waiting for the cancellation; Slurm jobs that "
               f"may be left: {joined} (cancel them with: scancel {joined})")
    else:
        _write(f"wove: {_name(signum)} again: exiting now without waiting for the cancellation; no Slurm job "
               "was in flight")
    _die(signum)


def _die(signum: int) -> None:
    """End the process killed by ``signum`` (its default disposition), as it would have without wove."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:   # a closed or broken stream must not keep the process alive
            pass
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    time.sleep(1.0)   # delivery is immediate on POSIX; this only covers a signal that does not kill
    os._exit(128 + signum)


# ---------------------------------------------------------------------------- install, watch, restore


def _install() -> bool:
    """Install the handlers, or count one more weave using them; ``False`` outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return False
    with _lock:
        if _State.depth == 0:
            previous: dict[int, Any] = {}
            for signum in SIGNALS:
                current = signal.getsignal(signum)
                if current is None or current == signal.SIG_IGN or current is _handle:
                    continue   # ignored (nohup: keep surviving a hang-up), or not Python's to restore
                try:
                    signal.signal(signum, _handle)
                except (ValueError, OSError):   # e.g. an embedded interpreter without signal support
                    continue
                previous[signum] = current
            _State.previous = previous
        _State.depth += 1
    return True


def _uninstall() -> None:
    """One weave fewer; the last one puts the earlier handlers back (unless someone replaced ours since)."""
    with _lock:
        _State.depth -= 1
        if _State.depth:
            return
        for signum, previous in _State.previous.items():
            if signal.getsignal(signum) is _handle:
                signal.signal(signum, previous)
        _State.previous = {}


def _wait_for(targets: list[_Target]) -> None:
    """Wait (bounded) until the weaves the signal cancelled have finished cancelling, in every thread."""
    drain = _DEFAULT_DRAIN
    for target in targets:
        for spec in target.runtime.resolver.environments.values():
            if _is_slurm(spec.get("executor")):
                drain = max(drain, float((spec.get("executor_config") or {}).get("drain_timeout") or 0))
    deadline = time.monotonic() + drain + 15.0
    for target in targets:
        target.done.wait(max(0.0, deadline - time.monotonic()))


async def watch(runtime: Any, guard: Optional[Guard] = None) -> None:
    """Run ``runtime.run()`` as a weave that a stopping signal cancels (whichever thread runs it)."""
    target = _Target(asyncio.get_running_loop(), asyncio.current_task(), runtime)  # type: ignore[arg-type]
    with _lock:
        _State.targets[id(target)] = target
        stopping = _State.received is not None
    if guard is not None:
        guard.target = target
    try:
        if stopping:   # the signal came before this weave started: start nothing
            raise asyncio.CancelledError()
        await runtime.run()
    finally:
        with _changed:
            _State.targets.pop(id(target), None)
            target.done.set()
            _changed.notify_all()


class Guard:
    """The handlers around one weave with remote work: ``with Guard(): run(watch(runtime, guard))``.

    On exit, the last guard of a signalled process waits for every cancelled weave, restores the handlers,
    and then does what the signal's earlier disposition says (see the module's docstring).
    """

    def __init__(self) -> None:
        self.installed = False
        self.target: Optional[_Target] = None

    def __enter__(self) -> Guard:
        self.installed = _install()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if not self.installed:
            return None
        self.installed = False
        last = _State.depth == 1
        signum, frame = _State.received, _State.frame
        if not last or signum is None:
            _uninstall()
            return None   # an outer weave (or none) acts on the signal; this one's cancellation propagates
        try:
            _wait_for(_State.cancelled)
            previous = _State.previous.get(signum, signal.SIG_DFL)
        finally:
            _State.received, _State.frame, _State.cancelled, _State.job_ids = None, None, [], set()
            _uninstall()
        target = self.target
        if target is not None and target.cancelled and not target.task.done():
            uncancel = getattr(target.task, "uncancel", None)   # Python 3.11+: the task is as before the signal
            if uncancel is not None:
                uncancel()
        if previous == signal.SIG_DFL:
            _die(signum)
        if callable(previous):
            try:
                previous(signum, frame)   # the user's handler decides (Python's own for SIGINT raises)
            except BaseException as error:
                error.__suppress_context__ = True   # the cancellation it follows is not news
                raise
        return None   # it returned: the weave was cancelled, and its cancellation propagates
