"""``weave(progress=True)`` (issue 12, point 4): per-task counts, the live block on a terminal, log lines off one.

Counting and drawing are checked on hand-built ``RunRecord``s; two real weaves (stdio tasks) run in a
subprocess, once on a pseudo-terminal and once with stderr to a pipe. The Slurm side (pending reasons from
a real queue) is tests/slurm/test_slurm_progress.py (a basename of its own: the test directories are
not packages, so two test_progress.py files cannot be collected in one run).
"""

from __future__ import annotations

import io
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import textwrap
import time
from fcntl import ioctl
from pathlib import Path

from wove import RunRecord
from wove._progress import Progress, block, count
from wove._result import WoveResult
from wove.slurm.states import JobState, record_state


def _record(task="work", index=None, *, attempt=0, state="SUBMITTED", outcome="", reason="", job_id=None):
    record = RunRecord(task=task, run_id=f"{task}-{index}-{attempt}", environment="slurm", attempt=attempt,
                       map_index=index, state=state, outcome=outcome, reason=reason, job_id=job_id)
    if outcome:
        record.finished_at = time.time()
    return record


def _done(index, **kw):
    return _record(index=index, state="COMPLETED", outcome="result", **kw)


def _pending(index, reason, **kw):
    return _record(index=index, state=record_state(JobState.PENDING), reason=reason, **kw)


# ---------------------------------------------------------------------------------------------- counting
def test_a_failed_item_and_its_cancelled_siblings_are_told_apart():
    records = [_done(i) for i in range(13)]
    records.append(_record(index=13, state="FAILED", outcome="error"))
    records += [_record(index=i, state="CANCELLED", outcome="cancelled") for i in range(14, 54)]
    counts = count(records)
    assert "done 13 | failed 1 | cancelled 40" in counts.text()
    assert counts.items == 54 and counts.phase == "finished"


def test_items_count_once_and_retried_items_are_counted():
    records = [
        _record(index=0, state="FAILED", outcome="error"), _done(0, attempt=1),            # retried, done
        _record(index=1, state="FAILED", outcome="error"),                                  # retried, running
        _record(index=1, attempt=1, state=record_state(JobState.RUNNING)),
        _record(index=2, state="OUT_OF_MEMORY", outcome="error"),                           # retried twice, failed
        _record(index=2, attempt=1, state="OUT_OF_MEMORY", outcome="error"),
        _record(index=2, attempt=2, state="OUT_OF_MEMORY", outcome="error"),
        _done(3),
    ]
    counts = count(records)
    assert counts.text() == "pending 0 | running 1 | done 2 | failed 1 | cancelled 0 | retried 3"
    assert counts.items == 4 and counts.phase == "running"


def test_pending_items_show_slurm_reasons_counted():
    records = [_pending(i, "Priority") for i in range(30)]
    records += [_pending(i, "QOSMaxJobsPerUserLimit") for i in range(30, 40)]
    records += [_pending(40, "None"), _pending(41, "")]                        # no reason to show
    records.append(_record(index=42, state=record_state(JobState.RUNNING), reason="Priority"))  # stale reason
    counts = count(records)
    assert counts.text().startswith("pending 42 (Priority 30, QOSMaxJobsPerUserLimit 10) | running 1 |")
    assert counts.phase == "running"
    assert count(records[:40]).phase == "submitted"


def test_many_reasons_are_cut_to_the_commonest():
    records = [_pending(i, f"Reason{i % 5}") for i in range(5)] + [_pending(5, "Reason0")]
    assert "pending 6 (Reason0 2, Reason1 1, Reason2 1, 2 more)" in count(records).text()


def test_a_run_that_ended_without_an_outcome_counts_as_cancelled():
    stopped = _record(index=0, state="SUBMITTING")
    stopped.finished_at = time.time()           # the task was cancelled before its job went in
    assert count([stopped]).counts["cancelled"] == 1


def test_the_same_function_sent_twice_is_two_items():
    # Two merge() calls of one function: attempt 0 again starts a new item, it is no retry.
    counts = count([_done(None), _done(None), _record(state="FAILED", outcome="error"),
                    _done(None, attempt=1)])
    assert (counts.items, counts.counts["done"], counts.retried) == (3, 3, 1)


# ---------------------------------------------------------------------------------------------- drawing
def _result(order, jobs):
    result = WoveResult(order, {})
    for name, records in jobs.items():
        result._jobs[name] = records
    return result


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_rows_follow_definition_order_and_fit_the_width():
    result = _result(["first", "second"], {"second": [_done(None, job_id="7")],
                                           "first": [_pending(i, "Priority" * 8) for i in range(3)]})
    lines = block(Progress(result)._tasks(), 3.0, width=60)
    assert [line.split()[0] for line in lines[1:]] == ["first", "second"]
    assert all(len(line) < 60 for line in lines) and lines[1].endswith("...")
    wide = block(Progress(result)._tasks(), 75.0)
    assert wide[0] == "wove: 4 remote tasks: pending 3 | running 0 | done 1 | failed 0 | 1m15s"
    assert wide[1] == ("  first   submitted  3 items: pending 3 (" + "Priority" * 8 + " 3) | running 0 | done 0 "
                       "| failed 0 | cancelled 0 | retried 0")


def test_the_terminal_block_is_redrawn_in_place(monkeypatch):
    monkeypatch.setenv("TERM", "xterm")
    records = [_pending(0, "Priority")]
    result = _result(["work", "after"], {"work": records})
    stream = _Terminal()
    progress = Progress(result, stream)
    assert progress.tty
    progress.render()
    first = stream.getvalue()
    assert first.startswith("\x1b[2Kwove: 1 remote tasks") and first.count("\n") == 2
    assert "\x1b[" + "2A" not in first                       # nothing drawn yet to go back over
    records[0] = _done(0)
    result._jobs["after"] = [_record(state=record_state(JobState.RUNNING))]
    progress.render(final=True)
    redraw = stream.getvalue()[len(first):]
    assert redraw.startswith("\x1b[2A\r")                    # up over the header and the one row
    assert redraw.count("\x1b[2K") == 3 and redraw.endswith("\n")
    assert "work   finished   1 item: pending 0 | running 0 | done 1 |" in redraw
    assert "after  running    1 item: pending 0 | running 1 |" in redraw


def test_a_dumb_terminal_gets_log_lines(monkeypatch):
    monkeypatch.setenv("TERM", "dumb")
    assert not Progress(_result([], {}), _Terminal()).tty


def test_log_lines_at_phase_changes_and_at_most_every_log_every():
    records = [_pending(i, "Priority") for i in range(4)]
    result = _result(["work"], {"work": records})
    stream = io.StringIO()
    progress = Progress(result, stream, log_every=3600)
    progress.render()                                        # first seen: submitted
    progress.render()                                        # nothing changed
    records[0] = _record(index=0, state=record_state(JobState.RUNNING))
    progress.render()                                        # phase: running
    records[1] = _done(1)
    progress.render()                                        # counts changed, same phase, within log_every
    lines = stream.getvalue().splitlines()
    assert lines == ["wove: work (submitted): 4 items: pending 4 (Priority 4) | running 0 | done 0 | failed 0 "
                     "| cancelled 0 | retried 0",
                     "wove: work (running): 4 items: pending 3 (Priority 3) | running 1 | done 0 | failed 0 "
                     "| cancelled 0 | retried 0"]
    progress.log_every = 0
    records[2] = _done(2)
    progress.render()                                        # log_every passed: the change is logged
    progress.render()                                        # but an unchanged state is not repeated
    assert len(stream.getvalue().splitlines()) == 3 and "done 2" in stream.getvalue().splitlines()[-1]
    progress.log_every = 3600
    records[3] = _done(3)
    records[0] = _done(0)
    progress.render(final=True)
    final = stream.getvalue().splitlines()[3:]
    assert final[0].startswith("wove: work (finished): 4 items: pending 0 | running 0 | done 4 | failed 0")
    assert final[1].startswith("wove: 4 remote tasks: pending 0 | running 0 | done 4 | failed 0 | after ")
    assert len(final) == 2


def test_the_final_summary_shows_each_tasks_last_state():
    records = [_pending(0, "Priority")]
    result = _result(["work"], {"work": records})
    stream = io.StringIO()
    progress = Progress(result, stream, log_every=3600)
    progress.render()
    records.append(_pending(1, "Priority"))                  # same phase, within log_every: not logged...
    progress.render(final=True)                              # ...but the final summary has it
    assert "wove: work (submitted): 2 items: pending 2 (Priority 2)" in stream.getvalue().splitlines()[1]


# ---------------------------------------------------------------------------------------------- real weaves
REPO = Path(__file__).resolve().parents[2]
SCRIPT = textwrap.dedent("""
    import time, wove
    from wove import weave
    wove.config(environments={"proc": {"executor": "stdio"}})

    def slow_square(x):
        time.sleep(0.5)
        return x * x

    with weave(progress=True) as w:
        @w.do(range(8), environment="proc", workers=2)
        def square(x):
            return slow_square(x)

        @w.do(environment="proc")
        def total(square):
            return sum(square)
    print("total", w.result.total)
""")


def _script(tmp_path):
    path = tmp_path / "progress_demo.py"
    path.write_text(SCRIPT)
    return path


def _env():
    return {**os.environ, "TERM": "xterm", "PYTHONPATH": str(REPO)}


def test_a_weave_on_a_terminal_redraws_one_row_per_task(tmp_path):
    master, slave = pty.openpty()
    ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))
    child = subprocess.Popen([sys.executable, str(_script(tmp_path))], stdin=slave, stdout=slave, stderr=slave,
                             env=_env(), close_fds=True)
    os.close(slave)
    output = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:              # EIO: the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(master)
    assert child.wait(timeout=120) == 0
    text = output.decode()
    assert "total 140" in text
    ups = re.findall(r"\x1b\[(\d+)A\r", text)
    assert ups and set(ups) <= {"2", "3"}, text               # redrawn in place over header + task rows
    final = text[text.rindex("A\r") + 2:].replace("\r\n", "\n").splitlines()
    assert final[0].startswith("\x1b[2Kwove: 9 remote tasks: pending 0 | running 0 | done 9 | failed 0")
    assert final[1] == ("\x1b[2K  square  finished   8 items: pending 0 | running 0 | done 8 | failed 0 "
                        "| cancelled 0 | retried 0")
    assert final[2].startswith("\x1b[2K  total   finished    1 item: pending 0 | running 0 | done 1 |")
    assert final[3] == "total 140"


def test_a_weave_off_a_terminal_writes_a_few_lines_per_task(tmp_path):
    run = subprocess.run([sys.executable, str(_script(tmp_path))], capture_output=True, text=True, env=_env(),
                         timeout=120)
    assert run.returncode == 0, run.stderr
    lines = run.stderr.splitlines()
    assert "\x1b" not in run.stderr
    for task in ("square", "total"):   # one line per phase reached (log_every is 30 s): no routine lines
        phases = [line.split("(")[1].split(")")[0] for line in lines if line.startswith(f"wove: {task} (")]
        assert len(phases) == len(set(phases)) and phases[-1] == "finished", run.stderr
    assert len(lines) <= 7, run.stderr                         # at most 3 phases of 2 tasks, and the total
    assert [line for line in lines if line.startswith("wove: square (")][-1] == (
        "wove: square (finished): 8 items: pending 0 | running 0 | done 8 | failed 0 | cancelled 0 | retried 0")
    assert [line for line in lines if line.startswith("wove: total (")][-1].startswith(
        "wove: total (finished): 1 item: pending 0 | running 0 | done 1 |")
    assert lines[-1].startswith("wove: 9 remote tasks: pending 0 | running 0 | done 9 | failed 0 | after ")

