"""Packed elements (issue 15): one run per array element, items reported in batches, on the real cluster.

An element killed mid-batch keeps the items it reported; the rest fail (or retry) with the real cause.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from wove import weave
from wove.executors.records import ItemRecord
from wove.slurm import SlurmJobError


def _slow(x: int) -> int:
    time.sleep(0.15)
    return x * 10


def test_items_are_reported_while_their_element_still_runs(executor, prefix):
    """Flushes at least every second: a watcher sees finished items of an element that is still running."""
    executor(items_per_job=20)
    seen: dict[str, int] = {}
    with weave() as w:
        @w.do(range(40), environment="slurm")
        def slow(x):
            return _slow(x)

        @w.do
        def watch():   # a local task, running next to the Slurm map
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not seen:
                for record in list(w.result.jobs.get("slow", [])):
                    if record.outcome == "result" and record.element.outcome == "":
                        seen["early"] = record.map_index   # its element has not finished yet
                        break
                time.sleep(0.05)
            return bool(seen)

    assert w.result.slow == [x * 10 for x in range(40)]
    assert w.result.watch, "no item was reported before its element finished"
    records = w.result.jobs["slow"]
    assert len(records) == 40 and all(isinstance(r, ItemRecord) for r in records)
    assert len({r.job_id for r in records}) == 2   # two elements of one array
    assert [r.map_index for r in records] == list(range(40))


def _die_once(x: int, marker: str, how: int) -> int:
    time.sleep(0.3)
    if x == 6 and not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), how)
        time.sleep(5)
    return x + 100


def test_killed_element_keeps_reported_items_and_fails_the_rest_with_the_cause(executor, prefix, tmp_path):
    """SIGKILL at item 6 of 10, no retries: items reported in an earlier flush keep their values, the
    unreported ones carry the element's Slurm failure, and nothing else of the map is cancelled."""
    executor(items_per_job=10)
    marker = str(tmp_path / "died")
    with weave() as w:
        @w.do(range(20), environment="slurm", item_errors="return")
        def work(x):
            return _die_once(x, marker, signal.SIGKILL)

    values = w.result.work
    assert values[10:] == [x + 100 for x in range(10, 20)]   # the other element is untouched
    kept = [i for i in range(10) if values[i] == i + 100]
    lost = [i for i in range(10) if isinstance(values[i], BaseException)]
    assert sorted(kept + lost) == list(range(10))
    assert kept and kept == list(range(len(kept))) and len(kept) <= 6   # a prefix: what was flushed
    assert 6 in lost
    for index in lost:
        exc = values[index]
        assert isinstance(exc, SlurmJobError), exc
        assert exc.wove_job.job_id.endswith("_0")
    errors = w.result.errors["work"]
    assert sorted(e.index for e in errors) == lost


def test_killed_element_retries_only_the_items_it_did_not_report(executor, prefix, tmp_path):
    executor(items_per_job=10)
    marker = str(tmp_path / "died")
    with weave() as w:
        @w.do(range(10), environment="slurm", retries=1)
        def work(x):
            return _die_once(x, marker, signal.SIGKILL)

    assert w.result.work == [x + 100 for x in range(10)]
    records = w.result.jobs["work"]
    attempts = {}
    for record in records:
        attempts.setdefault(record.map_index, []).append(record.attempt)
    retried = sorted(i for i, a in attempts.items() if a == [0, 1])
    once = sorted(i for i, a in attempts.items() if a == [0])
    assert sorted(retried + once) == list(range(10)) and 6 in retried and once == list(range(len(once)))
    assert len({r.job_id for r in records}) == 2   # the first element and the retry's
    assert {r.state for r in records if r.attempt == 1} == {"COMPLETED"}


def test_sigterm_flushes_what_finished_before_it(executor, prefix, tmp_path):
    """A job told to stop reports every item that finished (not only the last flush), then the rest fail."""
    executor(items_per_job=8)
    marker = str(tmp_path / "died")
    with weave() as w:
        @w.do(range(8), environment="slurm", item_errors="return")
        def work(x):
            return _die_once(x, marker, signal.SIGTERM)

    values = w.result.work
    assert values[:6] == [x + 100 for x in range(6)]   # all six, though the last flush had at most three
    assert all(isinstance(v, BaseException) for v in values[6:])


def test_first_final_failure_cancels_the_rest_of_the_packed_map(executor, prefix):
    executor(items_per_job=5)
    start = time.monotonic()
    with pytest.raises(KeyError, match="item two"):
        with weave() as w:
            @w.do(range(30), environment="slurm")
            def work(x):
                if x == 2:
                    raise KeyError("item two")
                time.sleep(3)
                return x

    assert time.monotonic() - start < 14   # the other elements (15 s each) were cancelled, not waited for
    (failure,) = w.result.errors["work"]
    assert failure.index == 2 and failure.job_id
    outcomes = {r.outcome for r in w.result.jobs["work"]}
    assert "cancelled" in outcomes and "error" in outcomes


def _exits_at_three(x: int) -> int:
    if x == 3:
        raise SystemExit(7)
    return x


@pytest.mark.parametrize("per_job", [1, 5])
def test_an_items_system_exit_stops_the_map_like_one_item_per_job(executor, prefix, per_job):
    """``item_errors="return"`` keeps an item's exceptions, not its ``SystemExit``: that stops the map, is not
    retried and reaches the caller, packed or not (as for local tasks)."""
    executor(items_per_job=per_job)
    with pytest.raises(SystemExit) as caught:
        with weave() as w:
            @w.do(range(10), environment="slurm", item_errors="return", retries=1)
            def work(x):
                return _exits_at_three(x)
    assert caught.value.code == 7
    records = [r for r in w.result.jobs["work"] if r.map_index == 3]
    assert len(records) == 1, [(r.attempt, r.state) for r in records]   # not retried


def test_an_item_whose_argument_cannot_be_pickled_fails_alone(executor, prefix):
    """One lock among ten items packed five to a job: that item fails with a ``TaskPicklingError`` naming it
    and its argument; the other four of its element still run (as a new element), the other element too."""
    import threading

    from wove.errors import TaskPicklingError

    executor(items_per_job=5)
    items: list = list(range(10))
    items[7] = threading.Lock()
    with weave() as w:
        @w.do(items, environment="slurm", item_errors="return", retries=2)
        def work(x):
            return x * 2

    values = w.result.work
    assert isinstance(values[7], TaskPicklingError), values[7]
    assert "item 7" in str(values[7]) and "'x'" in str(values[7]) and "lock" in str(values[7]).lower()
    assert [values[i] for i in range(10) if i != 7] == [i * 2 for i in range(10) if i != 7]
    attempts = [r for r in w.result.jobs["work"] if r.map_index == 7]
    assert len(attempts) == 1 and attempts[0].state == "FAILED"   # not retried: it would fail the same way

    with pytest.raises(TaskPicklingError, match="item 7"):
        with weave() as w:
            @w.do(items, environment="slurm")
            def again(x):
                return x * 2
