"""Task options: retries, timeout, workers, limit_per_minute, and the weave's max_workers."""

import asyncio
import threading
import time

import pytest

import wove
from wove import weave


class Gauge:
    """Counts how many calls are inside ``with gauge:`` at once, and the peak."""

    def __init__(self):
        self._lock = threading.Lock()
        self.now = 0
        self.peak = 0

    def __enter__(self):
        with self._lock:
            self.now += 1
            self.peak = max(self.peak, self.now)

    def __exit__(self, *exc):
        with self._lock:
            self.now -= 1


# ----------------------------------------------------------------------------- retries


@pytest.mark.parametrize("is_async", [False, True])
def test_retries_rerun_until_success(is_async):
    attempts = []

    def body():
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError(f"attempt {len(attempts)}")
        return "ok"

    with weave() as w:
        if is_async:
            @w.do(retries=2)
            async def flaky():
                return body()
        else:
            @w.do(retries=2)
            def flaky():
                return body()

    assert w.result.flaky == "ok"
    assert len(attempts) == 3


def test_retries_exhausted_raises_and_counts_attempts():
    attempts = []
    with pytest.raises(ValueError, match="always"), weave() as w:
        @w.do(retries=2)
        def broken():
            attempts.append(1)
            raise ValueError("always")

    assert len(attempts) == 3


def test_default_is_no_retry():
    attempts = []
    with pytest.raises(ValueError), weave() as w:
        @w.do
        def broken():
            attempts.append(1)
            raise ValueError("once")

    assert len(attempts) == 1


def test_retries_apply_per_item_of_mapped_task():
    attempts = {}
    with weave() as w:
        @w.do([1, 2, 3], retries=1)
        def each(n):
            attempts[n] = attempts.get(n, 0) + 1
            if n == 2 and attempts[n] == 1:
                raise RuntimeError("item 2 flakes once")
            return n

    assert w.result.each == [1, 2, 3]
    assert attempts == {1: 1, 2: 2, 3: 1}


# ----------------------------------------------------------------------------- timeout


@pytest.mark.timeout(30)
def test_timeout_fails_async_task_with_asyncio_timeout_error():
    started = time.monotonic()
    with pytest.raises(asyncio.TimeoutError), weave() as w:
        @w.do(timeout=0.05)
        async def slow():
            await asyncio.sleep(10)

    assert time.monotonic() - started < 8


@pytest.mark.timeout(30)
def test_timeout_fails_sync_task_with_asyncio_timeout_error():
    with pytest.raises(asyncio.TimeoutError), weave() as w:
        @w.do(timeout=0.05)
        def slow():
            time.sleep(0.5)


@pytest.mark.timeout(30)
def test_timeout_counts_as_failure_for_retries():
    attempts = []
    with weave() as w:
        @w.do(timeout=0.05, retries=2)
        async def slow_then_fast():
            attempts.append(1)
            if len(attempts) < 3:
                await asyncio.sleep(10)
            return len(attempts)

    assert w.result.slow_then_fast == 3


@pytest.mark.timeout(30)
def test_timeout_with_retries_exhausted_raises_timeout():
    attempts = []
    with pytest.raises(asyncio.TimeoutError), weave() as w:
        @w.do(timeout=0.05, retries=1)
        async def always_slow():
            attempts.append(1)
            await asyncio.sleep(10)

    assert len(attempts) == 2


@pytest.mark.timeout(30)
def test_timeout_in_return_mode_is_the_task_result():
    with weave(error_mode="return") as w:
        @w.do(timeout=0.05)
        async def slow():
            await asyncio.sleep(10)

        @w.do
        def quick():
            return 1

    assert isinstance(w.result.slow, asyncio.TimeoutError)
    assert w.result.quick == 1


def test_timeout_does_not_affect_fast_task():
    with weave() as w:
        @w.do(timeout=5)
        async def fast():
            return "done"

    assert w.result.fast == "done"


# ----------------------------------------------------------------------------- workers


def test_workers_caps_concurrency_of_async_mapped_task():
    gauge = Gauge()
    with weave() as w:
        @w.do(range(8), workers=2)
        async def each(i):
            with gauge:
                await asyncio.sleep(0.02)
            return i

    assert w.result.each == list(range(8))
    assert gauge.peak == 2


def test_workers_caps_concurrency_of_sync_mapped_task():
    gauge = Gauge()
    with weave() as w:
        @w.do(range(9), workers=3)
        def each(i):
            with gauge:
                time.sleep(0.05)
            return i

    assert w.result.each == list(range(9))
    assert gauge.peak == 3


def test_max_workers_bounds_sync_tasks():
    gauge = Gauge()
    with weave(max_workers=2) as w:
        @w.do(range(6))
        def each(i):
            with gauge:
                time.sleep(0.05)
            return i

    assert w.result.each == list(range(6))
    assert gauge.peak == 2


@pytest.mark.timeout(30)
def test_default_max_workers_is_large():
    barrier = threading.Barrier(32, timeout=5)
    with weave() as w:
        @w.do(range(32))
        def each(i):
            barrier.wait()
            return i

    assert w.result.each == list(range(32))


# ----------------------------------------------------------------------------- limit_per_minute


@pytest.mark.timeout(30)
def test_limit_per_minute_spaces_launches():
    starts = []
    with weave() as w:
        @w.do(range(5), limit_per_minute=1200)  # one launch per 0.05 s
        async def each(i):
            starts.append(time.monotonic())
            return i

    assert w.result.each == list(range(5))
    starts.sort()
    # 5 launches at 1200/minute need at least 4 intervals of 0.05 s; allow generous slack below that.
    assert starts[-1] - starts[0] >= 0.15


# ----------------------------------------------------------------------------- map-only options


@pytest.mark.parametrize("option", [{"workers": 2}, {"limit_per_minute": 10}])
def test_map_only_options_on_unmapped_task_fail_at_decoration(option):
    (key,) = option
    ran = []

    def plain():
        ran.append(1)

    with weave() as w:
        with pytest.raises(ValueError, match=key):
            w.do(**option)(plain)

        @w.do
        def other():
            return "still runs"

    assert ran == []
    assert w.result.other == "still runs"
    assert len(w.result) == 1


def test_workers_and_limit_as_config_defaults_apply_to_mapped_tasks_only():
    wove.config(workers=1, limit_per_minute=60000)
    gauge = Gauge()
    with weave() as w:
        @w.do
        def unmapped():
            return "fine"

        @w.do
        async def also_unmapped(unmapped):
            return unmapped + "!"

        @w.do(range(4))
        async def mapped(i):
            with gauge:
                await asyncio.sleep(0.02)
            return i

    assert w.result.unmapped == "fine"
    assert w.result.also_unmapped == "fine!"
    assert w.result.mapped == [0, 1, 2, 3]
    assert gauge.peak == 1


def test_workers_config_default_caps_mapped_task_in_weave_without_unmapped_tasks():
    wove.config(workers=2)
    gauge = Gauge()
    with weave() as w:
        @w.do(range(6))
        async def mapped(i):
            with gauge:
                await asyncio.sleep(0.02)
            return i

    assert w.result.mapped == list(range(6))
    assert gauge.peak == 2


def test_workers_default_from_environment_applies_to_mapped_tasks_only():
    wove.config(environments={"narrow": {"executor": "local", "workers": 2}})
    gauge = Gauge()
    with weave(environment="narrow") as w:
        @w.do
        def unmapped():
            return 1

        @w.do(range(6))
        async def mapped(i):
            with gauge:
                await asyncio.sleep(0.02)
            return i

    assert w.result.unmapped == 1
    assert gauge.peak == 2
