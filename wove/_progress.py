"""``weave(progress=True)``: what a weave's remote tasks (Slurm jobs, for instance) are doing, per task.

On a terminal a block of one header line plus one row per task is redrawn in place (plain ANSI: cursor up,
clear line) at most twice a second, and its final state is left on screen. Elsewhere (CI logs, files) each
task gets a summary line when its phase changes (submitted, running, finished) and otherwise at most one
every ``log_every`` seconds (30), plus a final summary; a log stays readable for a sweep of any length.

Counts are per item, not per attempt: the latest attempt of each item decides its bucket, and ``retried``
counts the items that needed more than one. Only the standard library is used: a few lines of ANSI draw
this as well as a dependency would.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional, TextIO

BUCKETS = ("pending", "running", "done", "failed", "cancelled")
_HEADER_BUCKETS = ("pending", "running", "done", "failed")   # always shown in the header; the rest when not 0
SHOWN_REASONS = 3


def _bucket(record: Any) -> str:
    outcome = record.outcome
    if outcome == "result":
        return "done"
    if outcome == "cancelled":
        return "cancelled"
    if outcome:
        return "failed"           # error, timeout, orphaned, detached
    if getattr(record, "finished_at", None) is not None:
        return "cancelled"        # the run ended without an outcome: stopped before its job went in
    # An executor's own states say how they count (``phase``, e.g. wove.slurm.states.RecordState); the
    # runtime's plain ones are "RUNNING" once the task started, and waiting before that.
    phase = getattr(record.state, "phase", None)
    if phase is not None:
        return "running" if phase == "running" else "pending"
    return "running" if record.state == "RUNNING" else "pending"


def latest(records: list[Any]) -> list[tuple[Any, int]]:
    """Each item's latest attempt and how many attempts it had, items in the order they were first sent.

    An item is a ``map_index`` of the task; an attempt that does not follow the item's last one (attempt 0
    again) starts a new item: the same function sent again, for instance by two ``merge`` calls.
    """
    items: list[tuple[Any, int]] = []
    slot: dict[Any, int] = {}
    for record in records:
        index = slot.get(record.map_index)
        attempt = getattr(record, "attempt", 0) or 0
        if index is None or attempt <= (getattr(items[index][0], "attempt", 0) or 0):
            slot[record.map_index] = len(items)
            items.append((record, 1))
        else:
            items[index] = (record, items[index][1] + 1)
    return items


@dataclass
class TaskCounts:
    """One task's items by bucket, the pending items' reasons (Slurm's, e.g. ``Priority``) and retries."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(BUCKETS, 0))
    reasons: Counter[str] = field(default_factory=Counter)
    retried: int = 0

    @property
    def items(self) -> int:
        return sum(self.counts.values())

    @property
    def phase(self) -> str:
        """``submitted`` until an item runs or ends, ``running`` while any is in flight, then ``finished``."""
        counts = self.counts
        if not counts["pending"] and not counts["running"]:
            return "finished"
        return "running" if counts["running"] or self.items > counts["pending"] else "submitted"

    def text(self) -> str:
        """``pending 40 (Priority 30, QOSMaxJobsPerUserLimit 10) | running 2 | ... | retried 1``."""
        parts = []
        for name in BUCKETS:
            part = f"{name} {self.counts[name]}"
            if name == "pending" and self.reasons:
                part += f" ({reasons_text(self.reasons)})"
            parts.append(part)
        parts.append(f"retried {self.retried}")
        return " | ".join(parts)


def reasons_text(reasons: Counter[str]) -> str:
    ranked = sorted(reasons.items(), key=lambda pair: (-pair[1], pair[0]))
    shown = ", ".join(f"{reason} {count}" for reason, count in ranked[:SHOWN_REASONS])
    more = len(ranked) - SHOWN_REASONS
    return shown + (f", {more} more" if more > 0 else "")


def count(records: list[Any]) -> TaskCounts:
    """One task's records (all attempts) counted per item."""
    result = TaskCounts()
    for record, attempts in latest(records):
        bucket = _bucket(record)
        result.counts[bucket] += 1
        if bucket == "pending" and record.reason and record.reason != "None":
            result.reasons[record.reason] += 1
        if attempts > 1:
            result.retried += 1
    return result


def status_line(records: list[Any]) -> str:
    """The header: one count per record given (give it each item's latest attempt), and the arrays."""
    counts = dict.fromkeys(BUCKETS, 0)
    arrays: dict[str, None] = {}
    for record in records:
        counts[_bucket(record)] += 1
        array = getattr(record, "array_job_id", None) or (
            record.job_id if getattr(record, "job_id", None) and record.map_index is not None else None)
        if array:
            arrays[array] = None
    text = " | ".join(f"{name} {counts[name]}" for name in BUCKETS
                      if name in _HEADER_BUCKETS or counts[name])
    if arrays:
        shown = list(arrays)[:4]
        more = f" +{len(arrays) - len(shown)}" if len(arrays) > len(shown) else ""
        text += f" | arrays {', '.join(shown)}{more}"
    return f"wove: {len(records)} remote tasks: {text}"


def _items(number: int) -> str:
    return f"{number} item" + ("" if number == 1 else "s")


def _elapsed(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def block(tasks: list[tuple[str, list[Any]]], elapsed: float, width: int = 0) -> list[str]:
    """The terminal block: the header, then ``  name  phase  N items: counts`` per task, cut to ``width``."""
    everything = [record for _, records in tasks for record, _ in latest(records)]
    lines = [f"{status_line(everything)} | {_elapsed(elapsed)}"]
    counted = [(name, count(records)) for name, records in tasks]
    name_width = max(len(name) for name, _ in counted)
    items_width = max(len(_items(counts.items)) for _, counts in counted)
    for name, counts in counted:
        lines.append(f"  {name:<{name_width}}  {counts.phase:<9}  {_items(counts.items):>{items_width}}: "
                     f"{counts.text()}")
    if width > 3:
        lines = [line if len(line) < width else line[:width - 4] + "..." for line in lines]
    return lines


def log_line(name: str, counts: TaskCounts) -> str:
    """A task's line off a terminal: ``wove: name (phase): N items: counts``."""
    return f"wove: {name} ({counts.phase}): {_items(counts.items)}: {counts.text()}"


class Progress:
    """Redraws (on a terminal) or logs (elsewhere) the per-task status of a result's remote runs.

    The scheduler calls ``start()`` when the weave starts running and ``await stop()`` when it is done;
    ``log_every`` (seconds between a task's routine lines off a terminal) exists for tests.
    """

    def __init__(self, result: Any, stream: Optional[TextIO] = None, *, interval: float = 0.5,
                 log_every: float = 30.0):
        self.result = result
        self.stream = stream or sys.stderr
        # A terminal that cannot move its cursor (TERM=dumb: Emacs shells, some CI consoles) gets log lines.
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)()) and os.environ.get("TERM") != "dumb"
        self.interval = max(0.5, interval)  # never more than twice a second
        self.log_every = log_every
        self._task: Optional[asyncio.Task[None]] = None
        self._started = time.monotonic()
        self._shown: list[str] = []                       # the block on screen (terminal)
        self._logged: dict[str, tuple[str, str, float]] = {}   # task -> (phase, line, when) last logged
        self.lines_written = 0

    def _tasks(self) -> list[tuple[str, list[Any]]]:
        """Tasks with remote runs in definition order (then any others, e.g. ``merge`` calls)."""
        jobs = self.result._jobs
        order = list(getattr(self.result, "_order", ()))
        names = [name for name in order if jobs.get(name)]
        names += [name for name in jobs if jobs[name] and name not in names]
        return [(name, list(jobs[name])) for name in names]

    def _width(self) -> int:
        try:
            return os.get_terminal_size(self.stream.fileno()).columns
        except (AttributeError, OSError, ValueError):
            return 0

    def _write(self, text: str, lines: int) -> None:
        self.stream.write(text)
        self.stream.flush()
        self.lines_written += lines

    def render(self, final: bool = False) -> None:
        tasks = self._tasks()
        if not tasks:
            return
        if self.tty:
            self._draw(tasks, final)
        else:
            self._log(tasks, final)

    def _draw(self, tasks: list[tuple[str, list[Any]]], final: bool) -> None:
        lines = block(tasks, time.monotonic() - self._started, self._width())
        if lines == self._shown and not final:
            return
        # Back to the block's first line (tasks are only ever added, so the new block is never shorter).
        up = f"\x1b[{len(self._shown)}A\r" if self._shown else ""
        self._write(up + "".join(f"\x1b[2K{line}\n" for line in lines), len(lines))
        self._shown = lines

    def _log(self, tasks: list[tuple[str, list[Any]]], final: bool) -> None:
        now = time.monotonic()
        out = []
        for name, records in tasks:
            counts = count(records)
            line = log_line(name, counts)
            last = self._logged.get(name)
            if (last is None or counts.phase != last[0]
                    or (line != last[1] and (final or now - last[2] >= self.log_every))):
                out.append(line)
                self._logged[name] = (counts.phase, line, now)
        if final:
            everything = [record for _, records in tasks for record, _ in latest(records)]
            out.append(f"{status_line(everything)} | after {_elapsed(now - self._started)}")
        if out:
            self._write("".join(line + "\n" for line in out), len(out))

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self._render_quietly()

    def _render_quietly(self, final: bool = False) -> None:
        try:
            self.render(final)
        except (OSError, ValueError):   # a closed or broken stream must not fail the weave
            pass

    def start(self) -> None:
        self._started = time.monotonic()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self._render_quietly(final=True)
