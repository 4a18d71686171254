"""background=True (thread), fork=True (separate process), debug=True and execution_plan."""

import asyncio
import os
import threading
import time

import pytest

from wove import weave


def _wait_for_threads_named(name, timeout=5.0):
    deadline = time.monotonic() + timeout
    while any(t.name == name for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)


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
    assert done.wait(10), "on_done was not called"
    result = received["result"]
    assert result.after == (True, 20)
    assert result.exception is None
    assert received["thread"] is not threading.current_thread()
    assert w.result.after == (True, 20)
    _wait_for_threads_named("wove-background")


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

    assert done.wait(10)
    assert received["value"] == "async on_done ran"
    _wait_for_threads_named("wove-background")


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

    assert done.wait(10)
    assert isinstance(received["exception"], ValueError)
    assert str(received["exception"]) == "background boom"
    assert "never" in received["cancelled"]
    _wait_for_threads_named("wove-background")


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

    asyncio.run(main())
    assert done.wait(10)
    assert received["value"] is True
    _wait_for_threads_named("wove-background")


# ----------------------------------------------------------------------------- fork


def _wait_for_file(path, context, timeout=20.0):
    """Poll for a file the forked child writes; stop early if the child process already exited."""
    child = getattr(context, "_process", None)  # the engine's child handle, used only to fail fast
    deadline = time.monotonic() + timeout
    exited_at = None
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().endswith("\n"):
            if child is not None:
                child.wait(timeout=10)
            return path.read_text()
        if child is not None and child.poll() is not None:
            exited_at = exited_at or time.monotonic()
            if time.monotonic() - exited_at > 1.0:
                raise AssertionError(f"the forked child exited with code {child.returncode} "
                                     f"without writing {path.name}")
        time.sleep(0.02)
    raise AssertionError(f"{path} was not written within {timeout}s")


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
