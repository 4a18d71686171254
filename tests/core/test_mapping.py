"""Mapped tasks: order, empty and bad sources, max_pending, and failure of one item."""

import asyncio
import threading
import time

import pytest

from wove import weave


def test_async_mapped_results_keep_input_order_despite_finish_order():
    finished = []

    with weave() as w:
        @w.do([3, 2, 1, 0])
        async def slowest_first(n):
            await asyncio.sleep(n * 0.02)
            finished.append(n)
            return n * 10

    assert finished == [0, 1, 2, 3], "items ran concurrently (smallest delay finished first)"
    assert w.result.slowest_first == [30, 20, 10, 0]


def test_sync_mapped_results_keep_input_order():
    with weave() as w:
        @w.do([0.04, 0.0, 0.02])
        def wait(seconds):
            time.sleep(seconds)
            return seconds

    assert w.result.wait == [0.04, 0.0, 0.02]


def test_mapped_items_run_concurrently():
    barrier = threading.Barrier(4, timeout=5)

    with weave() as w:
        @w.do(range(4))
        def meet(i):
            barrier.wait()  # breaks (BrokenBarrierError) unless all four run at once
            return i

    assert w.result.meet == [0, 1, 2, 3]


@pytest.mark.parametrize("is_async", [False, True])
def test_empty_source_gives_empty_list(is_async):
    calls = []
    with weave(nothing=[]) as w:
        if is_async:
            @w.do("nothing")
            async def each(x):
                calls.append(x)
        else:
            @w.do("nothing")
            def each(x):
                calls.append(x)

        @w.do([])
        def literal_empty(x):
            calls.append(x)

        @w.do
        def after(each, literal_empty):
            return (each, literal_empty)

    assert w.result.each == []
    assert w.result.literal_empty == []
    assert w.result.after == ([], [])
    assert calls == []


def test_upstream_generator_result_is_mapped():
    with weave() as w:
        @w.do
        def source():
            return (i for i in range(3))

        @w.do("source")
        def each(i):
            return i + 100

    assert w.result.each == [100, 101, 102]


def test_non_iterable_upstream_fails_the_task_with_type_error():
    downstream = []
    with pytest.raises(TypeError) as info, weave() as w:
        @w.do
        def count():
            return 5

        @w.do("count")
        def each(x):
            return x

        @w.do
        def after(each):
            downstream.append(each)

    assert "each" in str(info.value)
    assert downstream == []


def test_non_iterable_source_in_return_mode_is_the_task_result():
    with weave(error_mode="return", number=42) as w:
        @w.do("number")
        def each(x):
            return x

        @w.do
        def unrelated():
            return "fine"

    assert isinstance(w.result.each, TypeError)
    assert w.result.unrelated == "fine"


def test_more_items_than_max_pending_names_both_numbers():
    ran = []
    with pytest.raises(RuntimeError) as info, weave(max_pending=3) as w:
        @w.do(range(7))
        def each(i):
            ran.append(i)

    message = str(info.value)
    assert "7" in message and "3" in message
    assert ran == []


def test_max_pending_exactly_reached_is_allowed():
    with weave(max_pending=3) as w:
        @w.do(range(3))
        def each(i):
            return i

    assert w.result.each == [0, 1, 2]


@pytest.mark.timeout(30)
def test_failing_async_item_cancels_sibling_items():
    state = {"cancelled": 0, "finished": 0}
    started = time.monotonic()
    with pytest.raises(ValueError, match="item 0"), weave() as w:
        @w.do(range(5))
        async def each(i):
            if i == 0:
                await asyncio.sleep(0.02)
                raise ValueError("item 0 failed")
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                state["cancelled"] += 1
                raise
            state["finished"] += 1

    assert state == {"cancelled": 4, "finished": 0}
    assert time.monotonic() - started < 8


@pytest.mark.timeout(30)
def test_failing_async_item_cancels_siblings_in_return_mode_too():
    state = {"cancelled": 0, "finished": 0}
    with weave(error_mode="return") as w:
        @w.do(range(4), retries=0, timeout=20)  # the option path (not the fast path)
        async def each(i):
            if i == 2:
                raise ValueError("item 2 failed")
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                state["cancelled"] += 1
                raise
            state["finished"] += 1

    assert isinstance(w.result.each, ValueError)
    assert state == {"cancelled": 3, "finished": 0}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("options", [{}, {"timeout": 20}], ids=["fast-path", "option-path"])
def test_failing_sync_item_cancels_items_not_yet_started(options):
    # wove itself must cancel the queued items. The weave stays open after the failure (error_mode="return",
    # a sibling task still sleeping), so the thread pool's shutdown at the end of the weave, which cancels
    # queued work anyway, comes too late to stand in for it: without wove's cancellation one item after
    # another would start in that time.
    started = []
    lock = threading.Lock()
    with weave(max_workers=1, error_mode="return") as w:
        @w.do(range(50), **options)
        def each(i):
            with lock:
                started.append(i)
            if i == 0:
                raise ValueError("boom")
            time.sleep(0.2)

        @w.do
        async def keeps_the_weave_open():
            await asyncio.sleep(1.5)
            return "still open"

    assert isinstance(w.result.each, ValueError) and str(w.result.each) == "boom"
    assert w.result.keeps_the_weave_open == "still open"
    # Besides item 0: the item the one worker thread may have taken before the failure reached the event loop,
    # and on the option path (cancellation travels through asyncio tasks, over a few loop iterations) at most
    # one more that the thread reached first. Without wove's cancellation, item after item starts.
    assert started[0] == 0 and len(started) <= 3, f"items started after item 0 failed: {started}"


def test_mapped_task_with_extra_dependencies_and_downstream():
    with weave(words=["a", "bb", "ccc"], sep="-") as w:
        @w.do("words")
        def tagged(word, sep):
            return f"{sep}{word}"

        @w.do
        def joined(tagged):
            return "".join(tagged)

    assert w.result.tagged == ["-a", "-bb", "-ccc"]
    assert w.result.joined == "-a-bb-ccc"
