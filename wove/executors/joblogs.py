"""Where a remote run's output went, attached to the exception it raised (issue 12, point 3).

A remote exception re-raised in the weave says nothing about the job it came from; the user then digs
through ``squeue``/``sacct`` and the spool for the log. ``attach`` gives every remote exception (the user's
own types too) a ``wove_job`` attribute (a ``JobLogs``) and a note, printed under the traceback, with the
job id, the node, both log paths and the last lines of the job's stderr.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

STDERR_TAIL_LINES = 20
_TAIL_BYTES = 64 * 1024


@dataclass(frozen=True)
class JobLogs:
    """The job behind a remote exception: ``exc.wove_job``."""

    job_id: Optional[str]
    node: str = ""
    stdout: str = ""         # path of the job's stdout file ("" when unknown)
    stderr: str = ""         # path of the job's stderr file
    stderr_tail: str = ""    # its last lines when the exception arrived

    def note(self) -> str:
        where = f"Slurm job {self.job_id}" if self.job_id else "the remote run"
        lines = [f"{where}" + (f" on node {self.node}" if self.node else "")]
        if self.stdout or self.stderr:
            lines.append(f"  stdout: {self.stdout or '(unknown)'}")
            lines.append(f"  stderr: {self.stderr or '(unknown)'}")
        if self.stderr_tail.strip():
            lines.append(f"  last {len(self.stderr_tail.splitlines())} lines of stderr:")
            lines.extend(f"    {line}" for line in self.stderr_tail.splitlines())
        elif self.stderr:
            lines.append("  (stderr was empty)")
        return "\n".join(lines)


def tail(path: str, lines: int = STDERR_TAIL_LINES) -> str:
    """The last ``lines`` lines of a file ("" when it cannot be read); reads at most 64 KiB."""
    if not path:
        return ""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - _TAIL_BYTES))
            data = handle.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def attach(exc: BaseException, logs: JobLogs, *, note: bool = True) -> BaseException:
    """Give ``exc`` its ``wove_job`` and (unless the message already has it all) a note; returns ``exc``."""
    try:
        exc.wove_job = logs   # type: ignore[attr-defined]
    except (AttributeError, TypeError):   # an exception type with __slots__: the note still carries it
        pass
    if note:
        text = logs.note()
        add_note = getattr(exc, "add_note", None)
        if add_note is not None:   # Python 3.11+
            add_note(text)
        else:
            try:
                exc.__notes__ = [*getattr(exc, "__notes__", []), text]
            except (AttributeError, TypeError):
                pass
    return exc
