"""merge(), sync_to_async() and the six data helpers."""

import asyncio
import threading

import pytest

from wove import batch, denone, flatten, fold, merge, redict, sync_to_async, undict, weave

# ----------------------------------------------------------------------------- merge


def test_merge_in_sync_task_blocks_and_returns_value():
    def forty_two():
        return 42

    async def async_seven():
        return 7

    with weave() as w:
        @w.do
        def task():
            return merge(forty_two), merge(async_seven)

    assert w.result.task == (42, 7)


def test_merge_in_async_task_returns_awaitable():
    def double_of_twenty():
        return 40

    async def async_three():
        await asyncio.sleep(0)
        return 3

    with weave() as w:
        @w.do
        async def task():
            pending = merge(double_of_twenty)
            assert hasattr(pending, "__await__")
            return await pending, await merge(async_three)

    assert w.result.task == (40, 3)


def test_mapped_merge_in_sync_and_async_tasks_keeps_order():
    def square(x):
        return x * x

    async def negate(x):
        await asyncio.sleep(0.01 * (3 - x))
        return -x

    with weave() as w:
        @w.do
        def sync_task():
            return merge(square, [1, 2, 3])

        @w.do
        async def async_task():
            return await merge(negate, range(3))

        @w.do
        def empty():
            return merge(square, [])

    assert w.result.sync_task == [1, 4, 9]
    assert w.result.async_task == [0, -1, -2]
    assert w.result.empty == []


def test_merge_accepts_task_options():
    attempts = []

    def flaky():
        attempts.append(1)
        if len(attempts) < 2:
            raise ConnectionError("once")
        return "recovered"

    with weave() as w:
        @w.do
        async def task():
            return await merge(flaky, retries=1)

    assert w.result.task == "recovered"
    assert len(attempts) == 2


@pytest.mark.timeout(30)
def test_merge_timeout_raises_asyncio_timeout_error():
    async def slow():
        await asyncio.sleep(10)

    with pytest.raises(asyncio.TimeoutError), weave() as w:
        @w.do
        def task():
            return merge(slow, timeout=0.05)


def test_merge_with_map_only_option_without_iterable_is_value_error():
    def f():
        return 1

    with pytest.raises(ValueError, match="workers"), weave() as w:
        @w.do
        def task():
            return merge(f, workers=2)


def test_merge_failure_fails_the_calling_task():
    def broken():
        raise LookupError("inside merge")

    with weave(error_mode="return") as w:
        @w.do
        def task():
            return merge(broken)

    assert isinstance(w.result.task, LookupError)


def test_merge_outside_a_weave_raises_runtime_error():
    with pytest.raises(RuntimeError):
        merge(lambda: 1)


def test_merge_in_weave_body_is_outside_a_running_task():
    with pytest.raises(RuntimeError), weave():
        merge(lambda: 1)


def test_merge_outside_a_weave_from_async_code_raises_runtime_error():
    async def main():
        return merge(lambda: 1)

    with pytest.raises(RuntimeError):
        asyncio.run(main())


# ----------------------------------------------------------------------------- sync_to_async


def test_sync_to_async_runs_in_weave_pool_thread():
    def blocking(x, y=1):
        return x + y, threading.current_thread().name

    wrapped = sync_to_async(blocking)

    async def main():
        loop_thread = threading.current_thread().name
        async with weave() as w:
            @w.do
            async def task():
                return await wrapped(2, y=3)
        return loop_thread, w.result.task

    loop_thread, (value, thread_name) = asyncio.run(main())
    assert value == 5
    assert thread_name != loop_thread
    assert asyncio.iscoroutinefunction(wrapped)


def test_sync_to_async_inside_weave_is_bounded_by_weave_max_workers():
    lock = threading.Lock()
    state = {"now": 0, "peak": 0}

    def blocking(i):
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        threading.Event().wait(0.03)
        with lock:
            state["now"] -= 1
        return i

    wrapped = sync_to_async(blocking)
    with weave(max_workers=1) as w:
        @w.do
        async def task():
            return await asyncio.gather(*(wrapped(i) for i in range(4)))

    assert w.result.task == [0, 1, 2, 3]
    assert state["peak"] == 1, "the weave's pool (max_workers=1) runs the calls, not the loop's default pool"


def test_sync_to_async_works_outside_a_weave():
    wrapped = sync_to_async(lambda: threading.current_thread() is threading.main_thread())
    assert asyncio.run(wrapped()) is False


# ----------------------------------------------------------------------------- helpers


def test_flatten():
    assert flatten([[1, 2], [3], []]) == [1, 2, 3]
    assert flatten([]) == []
    assert flatten([[[1]], [2]]) == [[1], 2], "one level only"


def test_fold_chunks_of_size():
    assert fold([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]
    assert fold(range(4), 4) == [[0, 1, 2, 3]]
    assert fold([], 3) == []


def test_batch_about_count_chunks():
    chunks = batch(list(range(10)), 3)
    assert len(chunks) == 3
    assert flatten(chunks) == list(range(10))
    sizes = sorted(len(c) for c in chunks)
    assert sizes[-1] - sizes[0] <= 1
    assert flatten(batch([1, 2], 5)) == [1, 2]
    assert len(batch([1, 2], 5)) <= 2
    assert batch([], 3) == []


def test_undict_redict_round_trip():
    data = {"a": 1, "b": 2}
    pairs = undict(data)
    assert pairs == [("a", 1), ("b", 2)]
    assert redict(pairs) == data
    assert redict([("x", None)]) == {"x": None}


def test_denone_drops_only_none():
    assert denone([0, None, False, "", None, [], 1]) == [0, False, "", [], 1]
    assert denone([]) == []


@pytest.mark.parametrize("call", [
    lambda: fold([1, 2], 0),
    lambda: fold([1, 2], -1),
    lambda: batch([1, 2], 0),
    lambda: batch([1, 2], -3),
])
def test_bad_sizes_raise_value_error(call):
    with pytest.raises(ValueError):
        call()


def test_helpers_compose_with_mapping():
    with weave(records={"a": 1, "b": None, "c": 3}) as w:
        @w.do
        def pairs(records):
            return undict(records)

        @w.do("pairs")
        def cleaned(pair):
            key, value = pair
            return None if value is None else (key, value * 10)

        @w.do
        def rebuilt(cleaned):
            return redict(denone(cleaned))

    assert w.result.rebuilt == {"a": 10, "c": 30}
