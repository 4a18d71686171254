"""Progress counts of packed maps (issue 15): the per-element tally agrees with a walk over every record."""

from __future__ import annotations

import time

from wove import _progress
from wove._progress import RecordList, Tally
from wove.executors.records import ItemRecord, RunRecord


def _element(records, tally, indices, attempt=0, superseded=None, state="PENDING", reason="Priority"):
    record = RunRecord(task="t", run_id="r", environment="e", attempt=attempt, state=state, reason=reason)
    items = [ItemRecord(record, index, attempt) for index in indices]
    records.extend(items)
    return record, items, tally.element(record, len(items), attempt, superseded)


def test_tally_matches_counting_every_record():
    records = RecordList()
    tally = Tally(records)
    first, items_a, el_a = _element(records, tally, range(0, 5), state="RUNNING")
    first.array_job_id = "7"
    second, items_b, el_b = _element(records, tally, range(5, 10))
    second.array_job_id = "7"
    for item in items_a[:3]:
        item.settle("result", "COMPLETED", time.time())
        tally.settle(el_a, "result")
    items_a[3].settle("error", "FAILED", time.time())
    tally.settle(el_a, "error")
    items_b[0].settle("cancelled", "CANCELLED", time.time())
    tally.settle(el_b, "cancelled")
    _element(records, tally, [3], attempt=1, superseded="failed", state="RUNNING")
    tally.done_already(0)

    fast_arrays: dict[str, None] = {}
    fast = _progress.count(records, fast_arrays)
    slow_arrays: dict[str, None] = {}
    slow = _progress.count(list(records), slow_arrays)   # a plain list: every record walked
    assert fast.counts == slow.counts == {"pending": 4, "running": 2, "done": 3, "failed": 0, "cancelled": 1}
    assert fast.retried == slow.retried == 1
    assert fast.reasons == slow.reasons and fast.reasons["Priority"] == 4
    assert fast_arrays == slow_arrays == {"7": None}


def test_a_record_outside_the_tally_falls_back_to_counting_every_record():
    records = RecordList()
    tally = Tally(records)
    _element(records, tally, range(3))
    records.append(RunRecord(task="t", run_id="x", environment="e", outcome="result", state="COMPLETED"))
    assert _progress.count(records).counts["done"] == 1 and _progress.count(records).items == 4
