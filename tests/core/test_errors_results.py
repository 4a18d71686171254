"""error_mode raise/return and the WoveResult object."""

import asyncio
import time

import pytest

from wove import weave
from wove.errors import TaskCancelledError


@pytest.mark.timeout(30)
def test_raise_mode_reraises_first_exception_skips_dependents_cancels_running():
    raised, dependent_ran, slow_state = [], [], {}
    started = time.monotonic()
    with pytest.raises(ValueError) as info, weave() as w:
        @w.do
        async def fails():
            await asyncio.sleep(0.05)
            error = ValueError("boom")
            raised.append(error)
            raise error

        @w.do
        def dependent(fails):
            dependent_ran.append(fails)

        @w.do
        async def slow():
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                slow_state["cancelled"] = True
                raise
            slow_state["finished"] = True

    assert info.value is raised[0], "the task's own exception object is re-raised"
    assert dependent_ran == []
    assert slow_state == {"cancelled": True}
    assert time.monotonic() - started < 8
    assert w.result.exception is raised[0]
    assert {"dependent", "slow"} <= w.result.cancelled
    assert "fails" not in w.result.cancelled


@pytest.mark.timeout(30)
def test_raise_mode_reraises_the_first_of_several_failures():
    with pytest.raises(KeyError, match="early"), weave() as w:
        @w.do
        async def late():
            await asyncio.sleep(0.3)
            raise ValueError("late")

        @w.do
        async def early():
            await asyncio.sleep(0.01)
            raise KeyError("early")

    assert isinstance(w.result.exception, KeyError)


def test_raise_mode_reading_results_after_failure():
    with pytest.raises(ZeroDivisionError), weave() as w:
        @w.do
        def ok():
            return 1

        @w.do
        def bad(ok):
            return ok / 0

        @w.do
        def never(bad):
            return bad

    assert w.result.ok == 1
    with pytest.raises(ZeroDivisionError):
        _ = w.result.bad
    with pytest.raises(ZeroDivisionError):
        _ = w.result["bad"]
    with pytest.raises(TaskCancelledError):
        _ = w.result.never
    assert "never" in w.result.cancelled


@pytest.mark.timeout(30)
def test_return_mode_runs_unrelated_tasks_and_returns_exceptions():
    ran = []
    with weave(error_mode="return") as w:
        @w.do
        async def first_failure():
            raise ValueError("first")

        @w.do
        async def second_failure():
            await asyncio.sleep(0.05)
            raise KeyError("second")

        @w.do
        def needs_failed(first_failure):
            ran.append("needs_failed")

        @w.do
        def needs_needs_failed(needs_failed):
            ran.append("needs_needs_failed")

        @w.do
        async def unrelated():
            await asyncio.sleep(0.1)
            ran.append("unrelated")
            return "done"

    assert ran == ["unrelated"]
    assert w.result.unrelated == "done"
    assert isinstance(w.result.first_failure, ValueError)
    assert isinstance(w.result["second_failure"], KeyError)
    assert w.result.exception is w.result.first_failure
    assert isinstance(w.result.needs_failed, TaskCancelledError)
    assert isinstance(w.result.needs_needs_failed, TaskCancelledError)
    assert w.result.cancelled == {"needs_failed", "needs_needs_failed"}


def test_result_attribute_and_item_access():
    with weave(x=1) as w:
        @w.do
        def a(x):
            return x + 1

        @w.do
        def b(a):
            return a * 2

    assert w.result.a == 2 and w.result["a"] == 2
    assert w.result.b == 4 and w.result["b"] == 4
    assert w.result.x == 1


@pytest.mark.timeout(30)
def test_final_is_last_task_in_definition_order_not_last_finished():
    with weave() as w:
        @w.do
        async def defined_first():
            await asyncio.sleep(0.1)
            return "first"

        @w.do
        async def defined_last():
            return "last"

    assert w.result.final == "last"


def test_exception_and_cancelled_on_success():
    with weave() as w:
        @w.do
        def a():
            return 1

    assert w.result.exception is None
    assert w.result.cancelled == set()


def test_timings_has_planning_and_every_task():
    with weave() as w:
        @w.do
        async def slow():
            await asyncio.sleep(0.1)

        @w.do
        def quick():
            return 1

        @w.do([1, 2])
        def mapped(i):
            return i

    timings = w.result.timings
    assert {"planning", "slow", "quick", "mapped"} <= set(timings)
    assert all(isinstance(v, float) and v >= 0 for v in timings.values())
    assert timings["slow"] >= 0.05


def test_iteration_unpacking_and_len_follow_definition_order():
    with weave(ignored_init=99) as w:
        @w.do
        async def one():
            await asyncio.sleep(0.02)
            return 1

        @w.do
        def two():
            return 2

        @w.do
        def three(one, two):
            return one + two

    assert list(w.result) == [1, 2, 3]
    first, second, third = w.result
    assert (first, second, third) == (1, 2, 3)
    assert len(w.result) == 3, "init values are not tasks"


def test_unknown_name_raises_attribute_error_and_key_error():
    with weave() as w:
        @w.do
        def a():
            return 1

    with pytest.raises(AttributeError):
        _ = w.result.missing
    with pytest.raises(KeyError):
        _ = w.result["missing"]
    assert getattr(w.result, "missing", "fallback") == "fallback"
    assert not hasattr(w.result, "missing")


def test_iteration_in_return_mode_yields_exception_objects():
    with weave(error_mode="return") as w:
        @w.do
        def good():
            return "g"

        @w.do
        def bad():
            raise OSError("disk")

    values = list(w.result)
    assert values[0] == "g"
    assert isinstance(values[1], OSError)
    assert w.result.final is values[1]


def test_reraised_exception_carries_no_internal_wove_context():
    """The task's exception reaches the user as the task raised it, without wove's own plumbing chained."""
    with pytest.raises(ValueError) as info, weave() as w:
        @w.do
        def bad():
            raise ValueError("plain")

    chain, error = [], info.value
    while error is not None and len(chain) < 10:
        chain.append(error)
        error = error.__cause__ or error.__context__
    assert [type(e) for e in chain] == [ValueError], [repr(e) for e in chain]
