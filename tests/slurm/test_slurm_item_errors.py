"""Per-item outcomes of mapped Slurm tasks (issue 12, point 1): one bad item does not sink a sweep."""

from __future__ import annotations

import pytest
from slurm_helpers import all_jobs

from wove import ItemError, weave


def _shape(x: int) -> int:
    if x == 13:
        raise ValueError(f"item {x} is bad")
    return x * 2


@pytest.mark.parametrize("mode", ["return", "skip"])
def test_one_raising_item_of_120_leaves_the_other_119(executor, prefix, mode):
    executor()
    seen = {}
    with weave() as w:
        @w.do(range(120), environment="slurm", item_errors=mode)
        def work(x):
            return _shape(x)

        @w.do
        def reduce(work):
            seen["input"] = work
            return sum(v for v in work if not isinstance(v, BaseException))

    values = w.result.work
    expected = [x * 2 for x in range(120) if x != 13]
    if mode == "return":
        assert len(values) == 120 and isinstance(values[13], ValueError)
        assert [v for i, v in enumerate(values) if i != 13] == expected
    else:
        assert values == expected
    assert seen["input"] == values and w.result.reduce == sum(expected)   # the dependent ran on the list
    assert w.result.exception is None and not w.result.cancelled

    (failure,) = w.result.errors["work"]
    assert isinstance(failure, ItemError)
    assert (failure.index, failure.item) == (13, 13) and "item 13 is bad" in str(failure.exception)
    records = w.result.jobs["work"]
    assert failure.job_id == next(r.job_id for r in records if r.map_index == 13) and failure.job_id
    # Nothing was cancelled: every other item's job completed, in wove's records and in Slurm's.
    assert sorted(r.outcome for r in records) == ["error"] + ["result"] * 119
    states = {row["state"] for row in all_jobs(prefix)}
    assert "CANCELLED" not in states


def test_packed_items_with_retries_fail_only_after_their_retries(executor, prefix, tmp_path):
    executor(items_per_job=10)
    with weave() as w:
        @w.do(range(40), environment="slurm", item_errors="return", retries=1)
        def work(x):
            if x in (5, 31):
                raise RuntimeError(f"always fails: {x}")
            return x

    values = w.result.work
    assert [v for i, v in enumerate(values) if i not in (5, 31)] == [x for x in range(40) if x not in (5, 31)]
    assert isinstance(values[5], RuntimeError) and isinstance(values[31], RuntimeError)
    assert [(e.index, e.item) for e in w.result.errors["work"]] == [(5, 5), (31, 31)]
    attempts = sorted(r.attempt for r in w.result.jobs["work"] if r.map_index == 5)
    assert attempts == [0, 1]   # failed only after its retry
    assert all(e.job_id for e in w.result.errors["work"])


def test_default_still_raises_and_cancels_the_rest(executor, prefix):
    executor()
    with pytest.raises(ValueError, match="item 13 is bad"):
        with weave() as w:
            @w.do(range(30), environment="slurm")
            def work(x):
                import time
                if x != 13:
                    time.sleep(20)
                return _shape(x)

    (failure,) = w.result.errors["work"]
    assert failure.index == 13
    others = [r for r in w.result.jobs["work"] if r.map_index != 13]
    assert others and all(r.outcome == "cancelled" and r.state == "CANCELLED" for r in others)
