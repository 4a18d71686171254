"""``weave(progress=True)`` on the real cluster (issue 12, point 4): a row per task, Slurm's pending reasons.

A map throttled to one running element at a time (``workers=1``, Slurm's ``%1``) keeps the other elements
pending with Slurm's reason ``JobArrayTaskLimit``; the live block must say so while it happens.
"""

from __future__ import annotations

import io
import re
import sys
import time

from wove import weave


class _Terminal(io.StringIO):
    """stderr as a terminal, so the live block (redrawn every half second) is what gets written."""

    def isatty(self) -> bool:
        return True


def _blocks(text: str) -> list[list[str]]:
    """Every block drawn, as its lines without the escape codes."""
    return [[line.replace("\x1b[2K", "") for line in chunk.splitlines() if line]
            for chunk in re.split(r"\x1b\[\d+A\r", text) if chunk]


def test_rows_per_task_and_slurm_pending_reasons(executor, prefix, monkeypatch):
    executor()
    terminal = _Terminal()
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setattr(sys, "stderr", terminal)
    with weave(progress=True) as w:
        @w.do(range(4), environment="slurm", workers=1)
        def one_at_a_time(x):
            time.sleep(2)
            return x

        @w.do(environment="slurm")
        def combine(one_at_a_time):
            return sum(one_at_a_time)

    assert w.result.combine == 6
    blocks = _blocks(terminal.getvalue())
    assert len(blocks) >= 3, terminal.getvalue()
    rows = [line.strip() for block in blocks for line in block[1:]]
    # Slurm's reason, counted over the pending elements (2 or 3 of them) while they waited
    waiting = [row for row in rows if row.startswith("one_at_a_time ")
               and re.search(r"pending ([23]) \(JobArrayTaskLimit \1\) \| running 1 \|", row)]
    assert waiting, "\n".join(rows)
    final = blocks[-1]
    assert final[0].startswith("wove: 5 remote tasks: pending 0 | running 0 | done 5 | failed 0 | arrays ")
    assert w.result.jobs["one_at_a_time"][0].array_job_id in final[0]
    assert [row.split()[:4] for row in final[1:]] == [["one_at_a_time", "finished", "4", "items:"],
                                                      ["combine", "finished", "1", "item:"]]
    assert final[1].endswith("pending 0 | running 0 | done 4 | failed 0 | cancelled 0 | retried 0")
