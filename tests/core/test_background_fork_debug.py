"""background=True (thread), fork=True (separate process), debug=True and execution_plan."""

import asyncio
import os
import threading
import time

import pytest

from wove import weave
from wove.errors import WaitTimeoutError, WeaveStateError

# ----------------------------------------------------------------------------- background


@pytest.mark.timeout(30)
def test_background_returns_at_once_and_calls_sync_on_done():
    release = threading.Event()
    done = threading.Event()
    received = {}

    def on_done(result):
        received["result"] = result
        received["thread"] = threading.current_thread()
        done.set()

    with weave(background=True, on_done=on_done, base=2) as w:
        @w.do
        def waits():
            return release.wait(5)  # True only if the block returned while this task ran

        @w.do
        def after(waits, base):
            return (waits, base * 10)

    release.set()  # reached only if the block did not wait for the weave
    assert w.wait(timeout=10) is w.result
    assert done.is_set(), "wait() returns only after on_done ran"
    result = received["result"]
    assert result.after == (True, 20)
    assert result.exception is None
    assert received["thread"] is not threading.current_thread()
    assert w.result.after == (True, 20)
    assert not any(t.name == "wove-background" for t in threading.enumerate())


@pytest.mark.timeout(30)
def test_background_calls_async_on_done():
    done = threading.Event()
    received = {}

    async def on_done(result):
        await asyncio.sleep(0)
        received["value"] = result.value
        done.set()

    with weave(background=True, on_done=on_done) as w:
        @w.do
        async def value():
            return "async on_done ran"

    w.wait(timeout=10)
    assert done.is_set()
    assert received["value"] == "async on_done ran"


@pytest.mark.timeout(30)
def test_background_failure_is_visible_as_result_exception():
    done = threading.Event()
    received = {}

    def on_done(result):
        received["exception"] = result.exception
        received["cancelled"] = result.cancelled
        done.set()

    with weave(background=True, on_done=on_done) as w:
        @w.do
        def bad():
            raise ValueError("background boom")

        @w.do
        def never(bad):
            return bad

    with pytest.raises(ValueError, match="background boom"):
        w.wait(timeout=10)   # raise mode: wait() re-raises the weave's first failure
    assert done.is_set()
    assert isinstance(received["exception"], ValueError)
    assert str(received["exception"]) == "background boom"
    assert "never" in received["cancelled"]


@pytest.mark.timeout(30)
def test_background_from_async_block_returns_at_once():
    done = threading.Event()
    received = {}

    def on_done(result):
        received["value"] = result.final
        done.set()

    async def main():
        gate = threading.Event()
        async with weave(background=True, on_done=on_done) as w:
            @w.do
            def waits():
                return gate.wait(5)
        gate.set()
        return w

    w = asyncio.run(main())
    assert w.wait(timeout=10).final is True
    assert received["value"] is True


@pytest.mark.timeout(30)
def test_wait_timeout_then_wait_again():
    gate = threading.Event()
    with weave(background=True, error_mode="return") as w:
        @w.do
        def slow():
            return gate.wait(10)

    with pytest.raises(WaitTimeoutError) as info:
        w.wait(timeout=0.05)
    assert isinstance(info.value, TimeoutError)
    gate.set()
    assert w.wait(timeout=10).slow is True


def test_wait_on_a_foreground_weave_returns_at_once():
    with weave() as w:
        @w.do
        def one():
            return 1

    assert w.wait() is w.result and w.wait(timeout=0).one == 1


def test_wait_before_the_block_exits_is_a_state_error():
    with weave() as w:
        with pytest.raises(WeaveStateError, match="wait"):
            w.wait()
        with pytest.raises(RuntimeError):
            w.wait()


def test_wait_in_return_mode_returns_the_failed_result():
    with weave(background=True, error_mode="return") as w:
        @w.do
        def bad():
            raise KeyError("kept")

    result = w.wait(timeout=10)
    assert isinstance(result.exception, KeyError) and isinstance(result.bad, KeyError)


# ----------------------------------------------------------------------------- fork


def _wait_for_file(path, w, timeout=30.0):
    """Wait for the forked weave (w.wait also returns when the child died early), then read its file."""
    try:
        w.wait(timeout=timeout)
    except WaitTimeoutError:
        raise
    except Exception:  # a failed weave (not a timeout): the file its on_done wrote tells what happened
        pass
    assert path.exists(), f"the forked child exited without writing {path.name}"
    return path.read_text()


@pytest.mark.timeout(60)
def test_fork_runs_weave_and_on_done_in_a_child_process(tmp_path):
    pytest.importorskip("cloudpickle")
    out = str(tmp_path / "forked.txt")

    def on_done(result):
        import os as child_os
        with open(out + ".tmp", "w") as fh:
            fh.write(f"{child_os.getpid()} {result.doubled} {result.exception}\n")
        child_os.replace(out + ".tmp", out)

    started = time.monotonic()
    with weave(background=True, fork=True, on_done=on_done, n=21) as w:
        @w.do
        def pid():
            import os as child_os
            return child_os.getpid()

        @w.do
        def doubled(n, pid):
            return n * 2

    returned_after = time.monotonic() - started
    text = _wait_for_file(tmp_path / "forked.txt", w)
    child_pid, doubled, exception = text.split()
    assert int(child_pid) != os.getpid(), "on_done must run in the child process"
    assert doubled == "42"
    assert exception == "None"
    assert returned_after < 10
    # the parent's result carries the outcome, not the values (they stay in the child)
    assert w.result.exception is None and w.result.cancelled == set()
    assert set(w.result.timings) >= {"pid", "doubled"}
    with pytest.raises(WeaveStateError, match="forked process"):
        _ = w.result.doubled


@pytest.mark.timeout(60)
def test_fork_failure_reaches_on_done_in_child(tmp_path):
    pytest.importorskip("cloudpickle")
    out = str(tmp_path / "failed.txt")

    def on_done(result):
        with open(out, "w") as fh:
            fh.write(f"{type(result.exception).__name__}: {result.exception}\n")

    with weave(background=True, fork=True, on_done=on_done) as w:
        @w.do
        def bad():
            raise KeyError("in child")

    text = _wait_for_file(tmp_path / "failed.txt", w)
    assert text.startswith("KeyError")
    assert "in child" in text
    with pytest.raises(KeyError, match="in child"):
        w.wait(timeout=10)   # the child's failure, re-raised in the parent
    assert isinstance(w.result.exception, KeyError)


class _NeedsTwoArgs(Exception):
    def __init__(self, code, detail):
        super().__init__(f"{code}: {detail}")


@pytest.mark.timeout(60)
def test_fork_failure_whose_exception_cannot_be_rebuilt_still_reaches_the_parent():
    pytest.importorskip("cloudpickle")
    with weave(background=True, fork=True) as w:
        @w.do
        def bad():
            raise _NeedsTwoArgs(7, "odd exception")

    from wove.errors import EnvironmentExecutionError
    with pytest.raises(EnvironmentExecutionError, match="_NeedsTwoArgs: 7: odd exception"):
        w.wait(timeout=30)


@pytest.mark.timeout(60)
def test_fork_child_that_dies_is_reported_by_wait():
    pytest.importorskip("cloudpickle")

    def on_done(result):
        os._exit(3)

    with weave(background=True, fork=True, on_done=on_done, error_mode="return") as w:
        @w.do
        def fine():
            return 1

    # the report is written before on_done, so the outcome is known even though on_done killed the child
    assert w.wait(timeout=30).exception is None


@pytest.mark.timeout(60)
def test_fork_child_that_dies_before_reporting_fails_wait():
    pytest.importorskip("cloudpickle")
    from wove.errors import EnvironmentExecutionError

    with weave(background=True, fork=True) as w:
        @w.do
        def die():
            os._exit(3)

    with pytest.raises(EnvironmentExecutionError, match="exited with code 3 before reporting"):
        w.wait(timeout=30)
    assert "die" in w.result.cancelled


def module_level_task(n):
    return n + 1


@pytest.mark.timeout(60)
def test_fork_with_task_defined_at_module_level(tmp_path):
    """Tasks defined in an importable module (not __main__) must also load in the child."""
    pytest.importorskip("cloudpickle")
    out = str(tmp_path / "module.txt")

    def on_done(result):
        with open(out, "w") as fh:
            fh.write(f"{result.exception!r} {result['module_level_task']}\n")

    with weave(background=True, fork=True, on_done=on_done, n=1) as w:
        w.do(module_level_task)

    text = _wait_for_file(tmp_path / "module.txt", w)
    assert text == "None 2\n"


# ----------------------------------------------------------------------------- debug / execution_plan


def test_debug_prints_report_before_running(capsys):
    with weave(debug=True, user_id=7) as w:
        @w.do
        def fetch_profile(user_id):
            print("RUNNING fetch_profile")
            return {"id": user_id}

        @w.do
        def render_page(fetch_profile):
            return fetch_profile["id"]

        @w.do
        def audit_log():
            return "ok"

    out = capsys.readouterr().out
    assert w.result.render_page == 7
    assert "RUNNING fetch_profile" in out
    report = out.split("RUNNING fetch_profile")[0]
    for name in ("fetch_profile", "render_page", "audit_log"):
        assert name in report, f"the report printed before running lists {name}"
    assert "depend" in report.lower(), "the report shows dependencies"


def test_no_report_without_debug(capsys):
    with weave() as w:
        @w.do
        def quiet_task():
            return 1

    assert capsys.readouterr().out == ""
    assert w.result.quiet_task == 1


def test_execution_plan_keys_and_contents():
    with weave() as w:
        @w.do
        def a():
            return 1

        @w.do
        def c():
            return 3

        @w.do
        def b(a):
            return a + 1

        @w.do
        def d(b, c):
            return b + c

    plan = w.execution_plan
    assert set(plan) == {"dependencies", "dependents", "tiers", "sorted_tasks"}
    assert plan["dependencies"]["b"] == ["a"]
    assert sorted(plan["dependencies"]["d"]) == ["b", "c"]
    assert plan["dependencies"]["a"] == []
    assert plan["dependents"]["a"] == ["b"]
    assert sorted(plan["dependents"]["c"]) == ["d"]
    assert plan["dependents"]["d"] == []
    assert [sorted(t) for t in plan["tiers"]] == [["a", "c"], ["b"], ["d"]]
    order = plan["sorted_tasks"]
    assert sorted(order) == ["a", "b", "c", "d"]
    assert order.index("a") < order.index("b") < order.index("d")
    assert order.index("c") < order.index("d")
    assert w.result.d == 5


def test_execution_plan_available_with_debug(capsys):
    with weave(debug=True) as w:
        @w.do
        def only():
            return 1

    assert w.execution_plan["sorted_tasks"] == ["only"]
    assert "only" in capsys.readouterr().out
