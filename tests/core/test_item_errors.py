"""``item_errors``: what a failed item of a mapped task does (issue 12, point 1), for local and stdio tasks.

The Slurm side is in tests/slurm/test_item_errors.py.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

import wove
from wove import ItemError, merge, weave


def bad_at_3(x: int) -> int:
    if x == 3:
        raise ValueError(f"bad {x}")
    return x * 10


@pytest.fixture(autouse=True)
def _reset_config():
    yield
    wove.config(item_errors=None, environments={"proc": None})


def _run(mode, *, is_async=False, **options):
    seen = []
    with weave() as w:
        if is_async:
            @w.do(range(8), item_errors=mode, **options)
            async def work(x):
                await asyncio.sleep(0.01 * (8 - x))   # later items finish first: order must still hold
                return bad_at_3(x)
        else:
            @w.do(range(8), item_errors=mode, **options)
            def work(x):
                time.sleep(0.01 * (8 - x))
                return bad_at_3(x)

        @w.do
        def after(work):
            seen.append(list(work))
            return len(work)
    return w, seen


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("options", [{}, {"retries": 1}, {"workers": 2}], ids=["fast", "retries", "workers"])
def test_return_keeps_the_exception_at_its_index(is_async, options):
    w, seen = _run("return", is_async=is_async, **options)
    values = w.result.work
    assert [v for i, v in enumerate(values) if i != 3] == [x * 10 for x in range(8) if x != 3]
    assert isinstance(values[3], ValueError) and str(values[3]) == "bad 3"
    assert seen == [values] and w.result.after == 8
    assert w.result.exception is None and not w.result.cancelled
    (failure,) = w.result.errors["work"]
    assert (failure.task, failure.index, failure.item, failure.job_id) == ("work", 3, 3, None)
    assert failure.exception is values[3]


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("options", [{}, {"retries": 1}], ids=["fast", "retries"])
def test_skip_drops_failed_items_in_input_order(is_async, options):
    w, seen = _run("skip", is_async=is_async, **options)
    assert w.result.work == [x * 10 for x in range(8) if x != 3]
    assert seen == [w.result.work] and w.result.after == 7
    assert [e.index for e in w.result.errors["work"]] == [3]


def test_raise_is_the_default_and_cancels_the_rest():
    started = []
    gate = threading.Event()
    with pytest.raises(ValueError, match="bad 3"):
        with weave() as w:
            @w.do(range(20), workers=4)
            def work(x):
                started.append(x)
                if x != 3:
                    gate.wait(5)
                return bad_at_3(x)
    gate.set()
    assert len(started) < 20          # the items not yet started never ran
    assert [e.index for e in w.result.errors["work"]] == [3]


def test_every_failed_item_is_listed_and_a_returned_exception_is_a_value():
    with weave() as w:
        @w.do(range(6), item_errors="return")
        def work(x):
            if x % 2:
                raise KeyError(x)
            return ValueError("a value, not a failure")

    assert [e.index for e in w.result.errors["work"]] == [1, 3, 5]
    assert all(isinstance(e, ItemError) for e in w.result.errors["work"])
    assert isinstance(w.result.work[0], ValueError) and isinstance(w.result.work[1], KeyError)


def test_retried_item_that_recovers_is_not_an_error():
    tries: dict[int, int] = {}
    with weave() as w:
        @w.do(range(4), item_errors="return", retries=2)
        def work(x):
            tries[x] = tries.get(x, 0) + 1
            if x == 2 and tries[x] < 3:
                raise RuntimeError("flaky")
            return x

    assert w.result.work == [0, 1, 2, 3] and tries[2] == 3
    assert w.result.errors == {}


def test_a_cancelled_item_cancels_the_task_and_is_not_an_item_error():
    with weave() as w:
        @w.do(range(3), item_errors="return")
        async def work(x):
            if x == 1:
                raise asyncio.CancelledError()
            return x
    assert w.result.cancelled == {"work"} and w.result.errors == {}


def test_set_per_environment_and_in_config():
    wove.config(item_errors="skip")
    with weave() as w:
        @w.do(range(5))
        def work(x):
            return bad_at_3(x)

        @w.do
        def plain():   # a config default of a mapped-only option never breaks an unmapped task
            return 1
    assert w.result.work == [0, 10, 20, 40] and w.result.plain == 1

    wove.config(item_errors=None, environments={"proc": {"executor": "local", "item_errors": "return"}})
    with weave() as w:
        @w.do(range(5), environment="proc")
        def work2(x):
            return bad_at_3(x)
    assert isinstance(w.result.work2[3], ValueError)


def test_merge_maps_honour_item_errors():
    with weave() as w:
        @w.do
        def outer():
            return merge(bad_at_3, range(5), item_errors="skip")
    assert w.result.outer == [0, 10, 20, 40]
    assert [e.index for e in w.result.errors["bad_at_3"]] == [3]


def test_stdio_items_keep_going():
    wove.config(environments={"proc": {"executor": "stdio"}})
    with weave() as w:
        @w.do(range(6), environment="proc", item_errors="return")
        def work(x):
            return bad_at_3(x)
    assert isinstance(w.result.work[3], ValueError) and w.result.work[5] == 50
    assert [e.index for e in w.result.errors["work"]] == [3]


def test_bad_values_are_refused_with_the_valid_ones():
    with pytest.raises(ValueError, match=r"item_errors.*'raise'.*'return'.*'skip'|'raise', 'return', 'skip'"):
        with weave() as w:
            @w.do(range(3), item_errors="ignore")
            def work(x):
                return x
    with pytest.raises(ValueError, match="not mapped"):
        with weave() as w:
            @w.do(item_errors="return")
            def single():
                return 1


def test_a_task_named_errors_still_works():
    with weave() as w:
        @w.do
        def errors():
            return "mine"
    assert w.result.errors == "mine" and w.result.item_errors() == {}
