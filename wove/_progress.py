"""``weave(progress=True)``: a live one-line status of a weave's remote tasks (Slurm jobs, for instance).

On a terminal the line is redrawn in place at most twice a second; elsewhere (CI logs, files) a plain log
line is written when the counts change, at most every few seconds, plus a final summary. Only the
standard library is used: one status line does not justify a dependency.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any, Optional, TextIO

_BUCKETS = ("pending", "running", "done", "failed")


def _bucket(record: Any) -> str:
    outcome = record.outcome
    if outcome == "result":
        return "done"
    if outcome:
        return "failed"
    # An executor's own states say how they count (``phase``, e.g. wove.slurm.states.RecordState); the
    # runtime's plain ones are "RUNNING" once the task started, and waiting before that.
    phase = getattr(record.state, "phase", None)
    if phase is not None:
        return "running" if phase == "running" else "pending"
    return "running" if record.state == "RUNNING" else "pending"


def status_line(records: list[Any]) -> str:
    counts = dict.fromkeys(_BUCKETS, 0)
    arrays: dict[str, None] = {}
    for record in records:
        counts[_bucket(record)] += 1
        array = getattr(record, "array_job_id", None) or (
            record.job_id if getattr(record, "job_id", None) and record.map_index is not None else None)
        if array:
            arrays[array] = None
    text = " | ".join(f"{name} {counts[name]}" for name in _BUCKETS)
    if arrays:
        shown = list(arrays)[:4]
        more = f" +{len(arrays) - len(shown)}" if len(arrays) > len(shown) else ""
        text += f" | arrays {', '.join(shown)}{more}"
    return f"wove: {len(records)} remote tasks: {text}"


class Progress:
    """Redraws (or logs) the status of every remote run recorded on a result."""

    def __init__(self, result: Any, stream: Optional[TextIO] = None, *, interval: float = 0.5,
                 log_every: float = 5.0):
        self.result = result
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = max(0.5, interval)  # never more than twice a second
        self.log_every = log_every
        self._task: Optional[asyncio.Task[None]] = None
        self._last_line = ""
        self._last_log = 0.0
        self.lines_written = 0

    def _records(self) -> list[Any]:
        return [record for records in self.result._jobs.values() for record in records]

    def render(self, final: bool = False) -> None:
        records = self._records()
        if not records:
            return
        line = status_line(records)
        now = time.monotonic()
        if self.tty:
            if line != self._last_line or final:
                self.stream.write("\r\x1b[2K" + line + ("\n" if final else ""))
                self.stream.flush()
                self.lines_written += 1
        elif line != self._last_line and (final or now - self._last_log >= self.log_every):
            self.stream.write(line + "\n")
            self.stream.flush()
            self._last_log = now
            self.lines_written += 1
        else:
            return
        self._last_line = line

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.render()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self._last_line = ""  # always print the final state
        self.render(final=True)
