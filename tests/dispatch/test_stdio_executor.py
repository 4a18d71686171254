"""The stdio executor and ``python -m wove.stdio_worker``: round trips through a real worker process."""

from __future__ import annotations

import asyncio
import os
import sys
import time

import pytest
from dispatch_helpers import MyError, Unloadable, wait_until

import wove
from wove import DeliveryTimeoutError, weave
from wove.errors import EnvironmentExecutionError
from wove.executors.stdio import StdioExecutor

pytestmark = pytest.mark.timeout(60)


class RecordingStdio(StdioExecutor):
    """The real stdio executor, recording every frame it sends and receives."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[dict] = []
        self.received: list[tuple[str, str, float]] = []
        self.pids: list[int] = []

    async def start(self, **kwargs):
        await super().start(**kwargs)
        assert self.process is not None
        self.pids.append(self.process.pid)

    async def send(self, frame):
        self.sent.append({"type": frame.get("type"), "run_id": frame.get("run_id"),
                          "task_id": frame.get("task_id")})
        await super().send(frame)

    async def recv(self):
        frame = await super().recv()
        self.received.append((frame.get("type"), frame.get("run_id"), time.monotonic()))
        return frame

    def sent_types(self, run_id=None):
        return [f["type"] for f in self.sent if run_id is None or f["run_id"] == run_id]

    def received_types(self, run_id):
        return [kind for kind, rid, _ in self.received if rid == run_id]


def use_stdio(**settings) -> RecordingStdio:
    executor = RecordingStdio()
    wove.config(environments={"io": {"executor": executor, **settings}})
    return executor


def test_values_round_trip_through_a_worker_process():
    executor = use_stdio()
    with weave() as w:
        @w.do
        def local_pid():
            return os.getpid()

        @w.do(environment="io")
        def remote(local_pid):
            return {"pid": os.getpid(), "seen": local_pid, "data": [1, 2.5, "x", None, (3, 4)]}

        @w.do([1, 2, 3], environment="io")
        async def squares(x):
            await asyncio.sleep(0)
            return x * x

        @w.do(environment="io")
        def big_text():
            return "é" * 300_000

    assert w.result.remote["seen"] == os.getpid()
    assert w.result.remote["pid"] != os.getpid()
    assert w.result.remote["pid"] == executor.pids[0]
    assert w.result.remote["data"] == [1, 2.5, "x", None, (3, 4)]
    assert w.result.squares == [1, 4, 9]
    assert w.result.big_text == "é" * 300_000
    assert executor.sent_types().count("run_task") == 5
    assert [r.state for r in w.result.jobs["squares"]] == ["COMPLETED"] * 3


def test_task_stdout_does_not_corrupt_the_protocol_stream():
    use_stdio()
    with weave() as w:
        @w.do(environment="io")
        def chatty():
            print('{"type": "task_result", "run_id": "forged"}')
            print("plain text")
            sys.stdout.flush()
            return "fine"

    assert w.result.chatty == "fine"


def test_original_exception_types_come_back():
    use_stdio()
    with weave(error_mode="return") as w:
        @w.do(environment="io")
        def mine():
            raise MyError("custom")

        @w.do(environment="io")
        def builtin():
            return {}["missing"]

        @w.do(environment="io")
        async def async_error():
            raise ValueError("from a coroutine")

    assert type(w.result.mine) is MyError and str(w.result.mine) == "custom"
    assert type(w.result.builtin) is KeyError
    assert type(w.result.async_error) is ValueError
    # the remote traceback travels along
    remote_traceback = str(w.result.mine.__cause__)
    assert "in mine" in remote_traceback and "MyError: custom" in remote_traceback


def test_exception_that_cannot_be_unpickled_becomes_environment_execution_error():
    use_stdio()
    with weave(error_mode="return") as w:
        @w.do(environment="io")
        def odd():
            raise Unloadable("a", "b")

    error = w.result.odd
    assert isinstance(error, EnvironmentExecutionError)
    assert set(error.payload) >= {"kind", "message", "traceback", "retryable", "source"}
    assert error.payload["kind"].endswith("Unloadable")
    assert error.payload["message"] == "a/b"
    assert error.payload["source"] == "task"


def test_result_that_cannot_be_unpickled_fails_the_task_instead_of_hanging():
    """The worker pickles the value fine, but the weave process cannot load it back."""
    use_stdio()
    started = time.monotonic()
    with weave(error_mode="return") as w:
        # delivery_timeout is only a backstop so that a hang shows up as a failure, not a stuck suite
        @w.do(environment="io", delivery_timeout=4)
        def value():
            return Unloadable("a", "b")

    error = w.result.value
    assert isinstance(error, EnvironmentExecutionError), repr(error)
    assert not isinstance(error, DeliveryTimeoutError)
    assert "unpickl" in str(error)
    assert time.monotonic() - started < 4


class MismatchedStdio(RecordingStdio):
    async def start(self, **kwargs):
        await super().start(**kwargs)
        self._versions = {"python": "3.9", "cloudpickle": "2.2.0", "wove": "0.0.1"}


def test_stdio_worker_reports_a_version_mismatch():
    wove.config(environments={"io": {"executor": MismatchedStdio()}})
    with weave(error_mode="return") as w:
        @w.do(environment="io")
        def task():
            return 1

    error = w.result.task
    assert isinstance(error, EnvironmentExecutionError)
    assert "submitter has 3.9 / 2.2.0" in str(error)
    assert f"job runs Python {sys.version_info[0]}.{sys.version_info[1]}" in str(error)
    assert error.payload["source"] == "config"


def test_raise_mode_reraises_the_remote_exception():
    use_stdio()
    with pytest.raises(MyError, match="boom"), weave() as w:
        @w.do(environment="io")
        def failing():
            raise MyError("boom")


def test_task_timeout_cancels_the_remote_run(tmp_path):
    executor = use_stdio()
    marker = tmp_path / "cancelled"

    with weave(error_mode="return") as w:
        @w.do(environment="io")
        def warm():   # the worker is up before the timed task is sent (its timeout covers only the run)
            return 1

        @w.do(environment="io", timeout=1.0)
        async def slow(warm):
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                marker.write_text("cancelled")
                raise
            return "finished"

        @w.do
        def watcher(warm):
            # The weave is still running: the cancellation must reach the worker now, not at shutdown.
            deadline = time.monotonic() + 15
            while not marker.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            return marker.exists()

    assert isinstance(w.result.slow, asyncio.TimeoutError)
    assert w.result.watcher is True
    run_id = w.result.jobs["slow"][0].run_id
    assert executor.sent_types(run_id) == ["run_task", "cancel_task"]


def test_a_cancelled_sync_task_does_not_hold_the_worker_at_shutdown():
    """A sync task cannot be interrupted in its thread; once its run is cancelled, the worker still exits at
    shutdown at once (it waited for the thread, and the weave killed it after 5 s)."""
    use_stdio()
    started = time.monotonic()
    with weave(error_mode="return") as w:
        @w.do(environment="io", timeout=0.5)
        def stuck():
            time.sleep(30)

    elapsed = time.monotonic() - started
    assert isinstance(w.result.stuck, asyncio.TimeoutError)
    assert elapsed < 4.0, f"the weave took {elapsed:.1f} s to close its worker"


def test_heartbeats_keep_a_long_task_alive():
    executor = use_stdio(delivery_heartbeat_seconds=0.3)
    with weave() as w:
        @w.do(environment="io")
        async def long_task():
            await asyncio.sleep(1.5)
            return "done"

    assert w.result.long_task == "done"
    run_id = w.result.jobs["long_task"][0].run_id
    received = executor.received_types(run_id)
    assert received[0] == "task_started" and received[-1] == "task_result"
    assert received.count("heartbeat") >= 2


def test_heartbeat_loss_raises_delivery_timeout_and_cancels():
    executor = use_stdio(delivery_heartbeat_seconds=0.4)
    started = time.monotonic()
    with weave(error_mode="return") as w:
        @w.do(environment="io")
        async def stuck():
            time.sleep(2.5)   # blocks the worker's loop: no heartbeats
            return "late"

    assert isinstance(w.result.stuck, DeliveryTimeoutError)
    assert "delivery_heartbeat_seconds" in str(w.result.stuck)
    assert w.result.jobs["stuck"][0].outcome == "timeout"
    run_id = w.result.jobs["stuck"][0].run_id
    assert "cancel_task" in executor.sent_types(run_id)
    assert time.monotonic() - started < 15


def test_delivery_timeout_raises_and_cancels(tmp_path):
    executor = use_stdio()
    marker = tmp_path / "cancelled"
    started = time.monotonic()
    with weave(error_mode="return") as w:
        @w.do(environment="io")
        def warm():
            return 1

        @w.do(environment="io", delivery_timeout=1.0)
        async def slow(warm):
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                marker.write_text("x")
                raise

    assert isinstance(w.result.slow, DeliveryTimeoutError)
    assert "delivery_timeout" in str(w.result.slow)
    run_id = w.result.jobs["slow"][0].run_id
    assert executor.sent_types(run_id) == ["run_task", "cancel_task"]
    wait_until(marker.exists, 10)
    assert time.monotonic() - started < 15


@pytest.mark.parametrize("how, code_text", [("exit", "7"), ("kill", "SIGKILL")])
def test_worker_crash_gives_a_clear_error_not_a_hang(how, code_text):
    use_stdio()
    started = time.monotonic()
    with weave(error_mode="return") as w:
        @w.do(environment="io")
        def crash():
            time.sleep(0.2)
            if how == "exit":
                os._exit(7)
            os.kill(os.getpid(), 9)

        @w.do(environment="io")
        async def bystander():
            await asyncio.sleep(20)

    for name in ("crash", "bystander"):
        error = w.result[name]
        assert isinstance(error, EnvironmentExecutionError), (name, error)
        assert "exit" in str(error) and code_text in str(error), str(error)
    assert time.monotonic() - started < 15


def test_stdio_command_is_configurable(tmp_path):
    use_stdio(executor_config={"command": [sys.executable, "-u", "-m", "wove.stdio_worker"],
                               "env": {"WOVE_TEST_MARK": "from-config"}})
    with weave() as w:
        @w.do(environment="io")
        def env_var():
            return os.environ.get("WOVE_TEST_MARK")

    assert w.result.env_var == "from-config"


def test_unstartable_command_fails_cleanly():
    use_stdio(executor_config={"command": ["/nonexistent/wove-worker"]})
    with pytest.raises(EnvironmentExecutionError, match="cannot start stdio worker"), weave() as w:
        @w.do(environment="io")
        def never():
            return 1


def test_async_weave_uses_the_stdio_worker():
    use_stdio()

    async def main():
        async with weave() as w:
            @w.do(environment="io")
            def remote():
                return os.getpid()
        return w.result.remote

    assert asyncio.run(main()) != os.getpid()


def test_require_ack_gets_the_workers_task_cancelled(monkeypatch):
    import wove.executors.runtime

    monkeypatch.setattr(wove.executors.runtime, "REQUIRE_ACK_SECONDS", 5.0)
    executor = use_stdio(delivery_cancel_mode="require_ack")
    started = time.monotonic()
    with weave(error_mode="return") as w:
        @w.do(environment="io")
        def warm():
            return 1

        @w.do(environment="io", timeout=1.0)
        async def slow(warm):
            await asyncio.sleep(30)

    assert isinstance(w.result.slow, asyncio.TimeoutError)
    run_id = w.result.jobs["slow"][0].run_id
    assert executor.sent_types(run_id) == ["run_task", "cancel_task"]
    assert "task_cancelled" in executor.received_types(run_id)
    assert time.monotonic() - started < 1.0 + 4
