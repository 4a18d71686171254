"""As-soon-as-ready scheduling, sync weaves inside a running loop, and thread hygiene."""

import asyncio
import threading
import time

import pytest

from wove import merge, weave


def _new_threads(before, timeout=3.0):
    """Threads alive now that were not in ``before``, after waiting up to ``timeout`` for them to end."""
    deadline = time.monotonic() + timeout
    while True:
        extra = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not extra or time.monotonic() >= deadline:
            return extra
        time.sleep(0.01)


@pytest.mark.timeout(30)
def test_async_chain_runs_while_unrelated_slow_task_still_runs():
    """``slow`` waits for the end of the a -> b -> c chain; with tier barriers it could never see it."""
    async def main():
        chain_done = asyncio.Event()
        events = []
        async with weave() as w:
            @w.do
            async def slow():
                events.append("slow started")
                try:
                    await asyncio.wait_for(chain_done.wait(), 5)
                except asyncio.TimeoutError:
                    return "chain did not run while slow was running"
                events.append("slow finished")
                return "saw the chain finish"

            @w.do
            async def a():
                events.append("a")
                return 1

            @w.do
            async def b(a):
                events.append("b")
                return a + 1

            @w.do
            async def c(b):
                events.append("c")
                chain_done.set()
                return b + 1

        return w.result, events

    result, events = asyncio.run(main())
    assert result.slow == "saw the chain finish"
    assert result.c == 3
    assert events.index("c") < events.index("slow finished")


@pytest.mark.timeout(30)
def test_sync_chain_runs_while_unrelated_slow_sync_task_still_runs():
    chain_done = threading.Event()
    with weave() as w:
        @w.do
        def slow():
            return chain_done.wait(5)

        @w.do
        def a():
            return 1

        @w.do
        def b(a):
            return a + 1

        @w.do
        def c(b):
            chain_done.set()
            return b + 1

    assert w.result.slow is True, "c must start while slow is still running (no tier barrier)"
    assert w.result.c == 3


@pytest.mark.timeout(30)
def test_deep_task_starts_when_its_own_inputs_are_ready():
    """d depends only on a; it must not wait for the slow sibling of b in the middle level."""
    d_ran = threading.Event()
    with weave() as w:
        @w.do
        def a():
            return 1

        @w.do
        def slow_mid(a):
            return d_ran.wait(5)

        @w.do
        def quick_mid(a):
            return a

        @w.do
        def d(quick_mid):
            d_ran.set()
            return quick_mid + 1

    assert w.result.slow_mid is True
    assert w.result.d == 2


@pytest.mark.timeout(30)
def test_mapped_downstream_starts_before_unrelated_slow_task_ends():
    released = threading.Event()
    with weave() as w:
        @w.do
        def slow():
            return released.wait(5)

        @w.do([1, 2, 3])
        def mapped(i):
            return i

        @w.do
        def after_mapped(mapped):
            released.set()
            return sum(mapped)

    assert w.result.slow is True
    assert w.result.after_mapped == 6


@pytest.mark.timeout(30)
def test_sync_weave_inside_running_event_loop():
    async def handler():
        asyncio.get_running_loop()  # we are inside a running loop
        with weave(n=4) as w:
            @w.do
            async def a(n):
                await asyncio.sleep(0)
                return n

            @w.do
            def b(a):
                return a * 2

            @w.do([1, 2])
            def c(i, b):
                return i + b

        return w.result.b, w.result.c

    assert asyncio.run(handler()) == (8, [9, 10])


@pytest.mark.timeout(30)
def test_sync_weave_inside_running_event_loop_propagates_errors():
    async def handler():
        with weave() as w:
            @w.do
            def bad():
                raise KeyError("inside loop")

    with pytest.raises(KeyError, match="inside loop"):
        asyncio.run(handler())


@pytest.mark.timeout(30)
def test_no_threads_left_after_sync_weave():
    before = set(threading.enumerate())

    def helper():
        return 5

    with weave() as w:
        @w.do
        def a():
            return 1

        @w.do([1, 2, 3, 4])
        def mapped(i, a):
            return i + a

        @w.do
        def merged(mapped):
            return merge(helper) + sum(mapped)

    assert w.result.merged == 19
    assert _new_threads(before) == []


@pytest.mark.timeout(30)
def test_no_threads_left_after_failed_weave():
    before = set(threading.enumerate())
    with pytest.raises(ValueError), weave() as w:
        @w.do([1, 2, 3])
        def mapped(i):
            return i

        @w.do
        def bad(mapped):
            raise ValueError("stop")

    assert _new_threads(before) == []


@pytest.mark.timeout(30)
def test_no_threads_left_after_async_weave_and_nested_sync_weave():
    before = set(threading.enumerate())

    async def main():
        async with weave() as w:
            @w.do
            def sync_task():
                return 1

        with weave() as inner:  # sync weave inside the running loop
            @inner.do
            def other():
                return 2

        return w.result.sync_task, inner.result.other

    assert asyncio.run(main()) == (1, 2)
    assert _new_threads(before) == []


def test_many_independent_tasks_all_run():
    with weave() as w:
        for i in range(50):
            def task(i=i):
                return i
            task.__name__ = f"t{i}"
            w.do(task)

    assert list(w.result) == list(range(50))
