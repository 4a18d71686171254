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
    if outcome:
        return outcome_bucket(outcome)
    if getattr(record, "finished_at", None) is not None:
        return "cancelled"        # the run ended without an outcome: stopped before its job went in
    return state_bucket(record.state)


def outcome_bucket(outcome: str) -> str:
    """Where an ended run counts: ``result`` is done, ``cancelled`` cancelled, anything else (error,
    timeout, orphaned, detached) failed."""
    return "done" if outcome == "result" else "cancelled" if outcome == "cancelled" else "failed"


def state_bucket(state: Any) -> str:
    """Where a run still in flight counts: an executor's own states say (``phase``, e.g.
    wove.slurm.states.RecordState); the runtime's plain ones are "RUNNING" once started, waiting before."""
    phase = getattr(state, "phase", None)
    if phase is not None:
        return "running" if phase == "running" else "pending"
    return "running" if state == "RUNNING" else "pending"


class _ElementTally:
    __slots__ = ("record", "unsettled")

    def __init__(self, record: Any, unsettled: int):
        self.record, self.unsettled = record, unsettled


class Tally:
    """A packed map's counts, kept as its items change, so a redraw costs one step per element in flight
    instead of one per item (``count`` of a million records takes seconds)."""

    def __init__(self, records: RecordList):
        self._records = records
        self._settled = {"done": 0, "failed": 0, "cancelled": 0}
        self._elements: list[_ElementTally] = []
        self._retried = 0
        self._arrays: dict[str, None] = {}
        records.tallies.append(self)

    def element(self, record: Any, items: int, attempt: int, superseded: Optional[str] = None) -> _ElementTally:
        """``items`` new item records of one element run (appended by the caller); for a retry, their
        earlier attempts (counted in ``superseded``) no longer count."""
        self._records.tallied += items
        if superseded is not None:
            self._settled[superseded] -= items
        if attempt == 1:
            self._retried += items
        tally = _ElementTally(record, items)
        self._elements.append(tally)
        return tally

    def done_already(self, items: int = 1) -> None:
        """Records of calls read back from a journal (done, never run here)."""
        self._records.tallied += items
        self._settled["done"] += items

    def settle(self, element: _ElementTally, outcome: str) -> None:
        element.unsettled -= 1
        self._settled[outcome_bucket(outcome)] += 1

    def add_to(self, counts: TaskCounts, arrays: dict[str, None]) -> None:
        for bucket, number in self._settled.items():
            counts.counts[bucket] += number
        counts.retried += self._retried
        live = []
        for element in self._elements:
            record = element.record
            array = record.array_job_id or record.job_id
            if array:
                self._arrays[array] = None
            if element.unsettled:   # only elements in flight are looked at again
                live.append(element)
                bucket = state_bucket(record.state)
                counts.counts[bucket] += element.unsettled
                if bucket == "pending" and record.reason and record.reason != "None":
                    counts.reasons[record.reason] += element.unsettled
        self._elements = live
        arrays.update(self._arrays)


class RecordList(list[Any]):
    """A task's records (``w.result.jobs[name]``), with the tallies of its packed maps: while every record
    is covered by one (``tallied``), counting it needs no walk over the records."""

    def __init__(self, *args: Any):
        super().__init__(*args)
        self.tallies: list[Tally] = []
        self.tallied = 0


def _tallied(records: Any) -> bool:
    return isinstance(records, RecordList) and bool(records.tallies) and records.tallied == len(records)


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


def count(records: list[Any], arrays: Optional[dict[str, None]] = None) -> TaskCounts:
    """One task's records (all attempts) counted per item (and their arrays noted in ``arrays``)."""
    result = TaskCounts()
    if _tallied(records):
        arrays = {} if arrays is None else arrays
        for tally in records.tallies:  # type: ignore[attr-defined]
            tally.add_to(result, arrays)
        return result
    for record, attempts in latest(records):
        if arrays is not None:
            array = _array_of(record)
            if array:
                arrays[array] = None
        bucket = _bucket(record)
        result.counts[bucket] += 1
        if bucket == "pending" and record.reason and record.reason != "None":
            result.reasons[record.reason] += 1
        if attempts > 1:
            result.retried += 1
    return result


def _array_of(record: Any) -> Optional[str]:
    return getattr(record, "array_job_id", None) or (
        record.job_id if getattr(record, "job_id", None) and record.map_index is not None else None)


def status_line(records: list[Any]) -> str:
    """The header: one count per record given (give it each item's latest attempt), and the arrays."""
    counts = dict.fromkeys(BUCKETS, 0)
    arrays: dict[str, None] = {}
    for record in records:
        counts[_bucket(record)] += 1
        array = _array_of(record)
        if array:
            arrays[array] = None
    return _header(counts, arrays)


def _header(counts: dict[str, int], arrays: dict[str, None]) -> str:
    total = sum(counts.values())
    text = " | ".join(f"{name} {counts[name]}" for name in BUCKETS
                      if name in _HEADER_BUCKETS or counts[name])
    if arrays:
        shown = list(arrays)[:4]
        more = f" +{len(arrays) - len(shown)}" if len(arrays) > len(shown) else ""
        text += f" | arrays {', '.join(shown)}{more}"
    return f"wove: {total} remote tasks: {text}"


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
    arrays: dict[str, None] = {}
    counted = [(name, count(records, arrays)) for name, records in tasks]
    lines = [f"{_header(_total(counted), arrays)} | {_elapsed(elapsed)}"]
    name_width = max(len(name) for name, _ in counted)
    items_width = max(len(_items(counts.items)) for _, counts in counted)
    for name, counts in counted:
        lines.append(f"  {name:<{name_width}}  {counts.phase:<9}  {_items(counts.items):>{items_width}}: "
                     f"{counts.text()}")
    if width > 3:
        lines = [line if len(line) < width else line[:width - 4] + "..." for line in lines]
    return lines


def _total(counted: list[tuple[str, TaskCounts]]) -> dict[str, int]:
    total = dict.fromkeys(BUCKETS, 0)
    for _, counts in counted:
        for bucket, number in counts.counts.items():
            total[bucket] += number
    return total


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
        return [(name, jobs[name]) for name in names]   # the lists themselves: a RecordList keeps its tallies

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
        arrays: dict[str, None] = {}
        counted = []
        for name, records in tasks:
            counts = count(records, arrays)
            counted.append((name, counts))
            line = log_line(name, counts)
            last = self._logged.get(name)
            if (last is None or counts.phase != last[0]
                    or (line != last[1] and (final or now - last[2] >= self.log_every))):
                out.append(line)
                self._logged[name] = (counts.phase, line, now)
        if final:
            out.append(f"{_header(_total(counted), arrays)} | after {_elapsed(now - self._started)}")
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
