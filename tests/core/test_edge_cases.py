"""Edge cases found in review: pool starvation by merge, item parameter shapes, fork/config interplay,
timed-out sync tasks, Ctrl-C in a sync weave inside a running loop, per-environment options."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import wove
from wove import Weave, merge, weave


def test_merge_from_sync_tasks_does_not_deadlock_a_full_pool():
    def inner(x):
        return x * 2

    with weave(max_workers=4) as w:
        @w.do(range(8))
        def outer(x):
            return merge(inner, [x, x + 1])

    assert w.result.outer == [[2 * x, 2 * x + 2] for x in range(8)]


def test_positional_only_item_parameter():
    with weave(k=10) as w:
        @w.do([1, 2, 3])
        def scaled(x, /, k):
            return x * k

    assert w.result.scaled == [10, 20, 30]


def test_keyword_only_item_after_a_defaulted_parameter():
    with weave() as w:
        @w.do([1, 2])
        async def shifted(opt=10, *, item):
            return opt + item

    assert w.result.shifted == [11, 12]


def test_positional_only_dependency_and_item_in_order():
    with weave(base=100) as w:
        @w.do([1, 2])
        def combine(base, x, /):
            return base + x

    assert w.result.combine == [101, 102]


def test_a_timed_out_sync_task_does_not_hold_the_weave_or_the_loop():
    async def main():
        started = time.monotonic()
        async with weave(error_mode="return") as w:
            @w.do(timeout=0.2)
            def stuck():
                time.sleep(3)

        return w.result.stuck, time.monotonic() - started

    error, elapsed = asyncio.run(main())
    assert isinstance(error, asyncio.TimeoutError)
    assert elapsed < 2.5


def test_delivery_max_in_flight_is_refused_on_a_single_task():
    with pytest.raises(ValueError, match="delivery_max_in_flight caps an environment"):
        with weave() as w:
            @w.do(delivery_max_in_flight=2)
            def one():
                return 1


def _wait_for(path: Path, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return True
        time.sleep(0.05)
    return path.exists()


def test_fork_configured_globally_runs_the_tasks_once(tmp_path):
    out = tmp_path / "result.txt"
    wove.config(fork=True)

    def on_done(result):
        with open(out, "a") as handle:
            handle.write(f"{result.total}\n")

    with weave(on_done=on_done) as w:
        @w.do
        def total():
            return 6 * 7

    assert w.wait(timeout=30) is w.result   # returns once the child (and its on_done) has exited
    assert out.read_text() == "42\n"


class Doubling(Weave):
    @Weave.do
    def base(self):
        return 21

    @Weave.do
    def doubled(self, base):
        return base * 2


def test_fork_runs_a_template(tmp_path):
    out = tmp_path / "template.txt"

    def on_done(result):
        Path(out).write_text(str(result.doubled))

    with weave(Doubling, fork=True, on_done=on_done) as w:
        pass
    result = w.wait(timeout=30)
    assert out.read_text() == "42"
    assert result.exception is None and result.timings["doubled"] >= 0


def test_ctrl_c_during_a_sync_weave_inside_a_running_loop_cancels_it(tmp_path):
    started, cleaned = tmp_path / "started", tmp_path / "cleaned"
    script = tmp_path / "jupyterish.py"
    script.write_text(textwrap.dedent(f"""
        import asyncio, pathlib
        from wove import weave

        async def cell():
            with weave() as w:          # a sync weave inside a running loop (as in Jupyter)
                @w.do
                async def long():
                    pathlib.Path({str(started)!r}).touch()
                    try:
                        await asyncio.sleep(600)
                    finally:
                        pathlib.Path({str(cleaned)!r}).touch()

        asyncio.run(cell())
    """))
    process = subprocess.Popen([sys.executable, str(script)], stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert _wait_for(started), "the task never started"
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert "KeyboardInterrupt" in err
    assert cleaned.exists(), "the task was not cancelled"
