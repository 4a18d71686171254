"""Regression tests for environment start-up (issue 11, bugs a-c): a start cancelled with its task is not
the environment's failure, an executor whose start failed can serve the next weave, and ``fork=True`` keeps
the ``default`` environment's settings."""

from __future__ import annotations

import asyncio
import functools
import os
import time

import pytest
from dispatch_helpers import SubprocessAdapter

import wove
from wove import BackendAdapterEnvironmentExecutor, weave
from wove.errors import ExecutorStartError

pytestmark = pytest.mark.timeout(60)


class SlowStartAdapter(SubprocessAdapter):
    """Takes a while to start, like an adapter that checks credentials or finds commands."""

    async def start(self) -> None:
        await asyncio.sleep(0.5)
        await super().start()


def remote_add(x):
    return x + 1


def test_a_start_cancelled_with_its_task_does_not_fail_later_tasks_of_that_environment():
    executor = BackendAdapterEnvironmentExecutor("slow", adapter_class=SlowStartAdapter)
    wove.config(environments={"slow": {"executor": executor}})
    with weave(error_mode="return") as w:
        @w.do(timeout=0.1)   # times out, cancelling its merged call while that call starts the environment
        async def impatient():
            return await wove.merge(functools.partial(remote_add, 1), environment="slow")

        @w.do
        async def later_input():
            await asyncio.sleep(0.3)
            return 20

        @w.do(environment="slow")
        def later(later_input):
            return later_input + 1

    assert isinstance(w.result.impatient, BaseException)
    assert w.result.later == 21


def test_an_executor_whose_start_failed_serves_the_next_weave():
    class NeedsMissingModule(SubprocessAdapter):
        required_modules = ("wove_no_such_module_xyz",)
        install_hint = "pip install wove-no-such-module"

    executor = BackendAdapterEnvironmentExecutor("picky", adapter_class=NeedsMissingModule)
    wove.config(environments={"picky": {"executor": executor}})
    for _ in range(2):   # before the fix, the second weave said "already serving another weave"
        with pytest.raises(ExecutorStartError, match="wove_no_such_module_xyz, which is not installed"):
            with weave() as w:
                @w.do(environment="picky")
                def task():
                    return 1
    NeedsMissingModule.required_modules = ()
    with weave() as w:
        @w.do(environment="picky")
        def works():
            return 2
    assert w.result.works == 2


def test_fork_keeps_the_default_environments_settings(tmp_path):
    counter = tmp_path / "attempts"
    wove.config(environments={"default": {"retries": 2}})
    with weave(fork=True) as w:
        @w.do
        def flaky():
            attempts = int(counter.read_text()) if counter.exists() else 0
            counter.write_text(str(attempts + 1))
            if attempts < 2:
                raise RuntimeError(f"attempt {attempts}")
            return attempts
    w.wait(30)
    assert w.result.exception is None
    assert counter.read_text() == "3"


def test_fork_weave_wait_times_out_and_can_wait_again(tmp_path):
    go = tmp_path / "go"
    with weave(fork=True) as w:
        @w.do
        def slow():
            deadline = time.monotonic() + 20
            while not os.path.exists(go) and time.monotonic() < deadline:
                time.sleep(0.02)
            return 1
    with pytest.raises(TimeoutError):
        w.wait(0.2)
    go.write_text("go")
    w.wait(30)
    assert w.result.exception is None
