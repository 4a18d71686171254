"""weave(): sync and async blocks, init values, ``data``, reserved names and block-level validation."""

import asyncio
import threading

import pytest

from wove import WoveResult, weave

RESERVED = ["final", "exception", "cancelled", "timings", "jobs", "data"]


def _task_named(name, value=1):
    def task():
        return value
    task.__name__ = task.__qualname__ = name
    return task


def test_sync_with_runs_tasks_only_at_block_exit():
    ran = []
    with weave() as w:
        @w.do
        def a():
            ran.append("a")
            return 1

        assert ran == [], "the body must only register tasks"
    assert ran == ["a"]
    assert w.result.a == 1
    assert isinstance(w.result, WoveResult)


def test_async_with_runs_async_on_loop_and_sync_in_pool():
    async def main():
        loop_thread = threading.current_thread()
        async with weave() as w:
            @w.do
            async def a():
                await asyncio.sleep(0)
                return threading.current_thread() is loop_thread

            @w.do
            def b():
                return threading.current_thread() is loop_thread

            @w.do
            def c(a, b):
                return (a, b)
        return w.result

    result = asyncio.run(main())
    assert result.a is True, "async tasks run on the weave's loop"
    assert result.b is False, "sync tasks run in the weave's thread pool"
    assert result.c == (True, False)


def test_sync_body_exception_propagates_and_nothing_runs():
    ran = []
    with pytest.raises(KeyError, match="from the body"), weave() as w:
        @w.do
        def a():
            ran.append("a")

        raise KeyError("from the body")
    assert ran == []
    assert w.result.timings.get("a") is None


def test_async_body_exception_propagates_and_nothing_runs():
    ran = []

    async def main():
        async with weave() as w:
            @w.do
            async def a():
                ran.append("a")

            raise LookupError("async body")

    with pytest.raises(LookupError, match="async body"):
        asyncio.run(main())
    assert ran == []


def test_init_values_feed_tasks_and_are_readable_on_result():
    with weave(x=3, y=4) as w:
        @w.do
        def total(x, y):
            return x + y

        @w.do
        def everything(data):
            return data

    assert w.result.total == 7
    assert w.result.everything == {"x": 3, "y": 4}
    assert w.result.x == 3
    assert w.result["y"] == 4


def test_empty_weave_runs_and_has_no_tasks():
    with weave() as w:
        pass
    assert len(w.result) == 0
    assert list(w.result) == []
    assert w.result.exception is None


@pytest.mark.parametrize("name", RESERVED)
def test_reserved_init_value_names_raise_name_error(name):
    with pytest.raises(NameError, match=name):
        weave(**{name: 1})


@pytest.mark.parametrize("name", RESERVED)
def test_reserved_task_names_raise_name_error(name):
    ran = []
    with pytest.raises(NameError, match=name), weave() as w:
        @w.do
        def other():
            ran.append("other")

        w.do(_task_named(name))
    assert ran == []


def test_unknown_weave_environment_raises_name_error():
    with pytest.raises(NameError, match="nowhere"):
        weave(environment="nowhere")


def test_unknown_task_environment_raises_name_error_and_nothing_runs():
    ran = []
    with pytest.raises(NameError, match="nowhere"), weave() as w:
        @w.do(environment="nowhere")
        def a():
            ran.append("a")
    assert ran == []


def test_bad_error_mode_raises_value_error_naming_value_and_valid_modes():
    with pytest.raises(ValueError) as info:
        weave(error_mode="explode")
    message = str(info.value)
    assert "explode" in message
    assert "raise" in message and "return" in message


@pytest.mark.parametrize("kwargs", [{"max_workers": 0}, {"max_pending": -1}, {"max_workers": "many"}])
def test_bad_weave_settings_raise_value_error_naming_value(kwargs):
    (key, value), = kwargs.items()
    with pytest.raises(ValueError) as info:
        weave(**kwargs)
    assert repr(value) in str(info.value)
    assert key in str(info.value)
