"""Stopping signals while a weave runs (issue 12, point 2), without a cluster: the remote tasks run in stdio
workers. When the handlers are installed and restored, SIG_IGN left alone, the reference count of nested and
concurrent weaves, chaining to the user's handler and Ctrl-C's KeyboardInterrupt. The Slurm side (jobs
leaving squeue, exit status, the second signal) is tests/slurm/test_signals.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import pytest

import wove
from wove import _signals, weave

STOPPING = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]


@pytest.fixture(autouse=True)
def _proc_environment():
    wove.config(environments={"proc": {"executor": "stdio"}})
    saved = {signum: signal.getsignal(signum) for signum in STOPPING}
    yield
    for signum, handler in saved.items():   # a failing test must not leave handlers behind for the others
        signal.signal(signum, handler)
    assert _signals._State.depth == 0 and not _signals._State.targets


def handlers() -> dict[int, object]:
    return {signum: signal.getsignal(signum) for signum in STOPPING}


def installed() -> dict[int, bool]:
    return {signum: signal.getsignal(signum) is _signals._handle for signum in STOPPING}


def in_flight(w, task: str) -> bool:
    return any(record.outcome == "" for record in w.result._jobs.get(task, ()))


def send_when_running(w, task: str, signum: int) -> list:
    """Send ``signum`` to this process once ``task``'s remote run is in flight; return its records."""
    deadline = time.monotonic() + 60
    while not in_flight(w, task) and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(os.getpid(), signum)
    return list(w.result._jobs[task])


def test_local_only_weaves_install_nothing():
    before = handlers()
    seen = {}
    with weave() as w:
        @w.do
        def look():
            seen["sync"] = handlers()

    async def main():
        async with weave() as w:
            @w.do(environment="default")
            async def look():
                seen["async"] = handlers()

    asyncio.run(main())
    for during in seen.values():   # (SIGINT is asyncio.run's own handler while it runs, as always)
        assert during[signal.SIGTERM] == before[signal.SIGTERM]
        assert during[signal.SIGHUP] == before[signal.SIGHUP]
        assert during[signal.SIGINT] is not _signals._handle
    assert len(seen) == 2
    assert handlers() == before


def test_remote_weave_installs_all_three_and_restores_them():
    before = handlers()
    seen = {}
    with weave() as w:
        @w.do(environment="proc")
        def remote():
            return 1

        @w.do
        def look():
            seen["during"] = installed()

    assert w.result.remote == 1
    assert seen["during"] == {signum: True for signum in STOPPING}
    assert handlers() == before


@pytest.mark.parametrize("style", ["sync", "async"])
def test_handlers_restored_when_the_weave_raises(style):
    before = handlers()
    seen = {}

    def build(w):
        @w.do(environment="proc")
        def remote():
            raise KeyError("remote failure")

        @w.do
        def look():
            seen["during"] = installed()

    if style == "sync":
        with pytest.raises(KeyError), weave() as w:
            build(w)
    else:
        async def main():
            async with weave() as w:
                build(w)
        with pytest.raises(KeyError):
            asyncio.run(main())
    assert all(seen["during"].values())
    assert handlers() == before


def test_ignored_signal_is_left_ignored():
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    seen = {}
    with weave() as w:
        @w.do(environment="proc")
        def remote():
            return 1

        @w.do
        def look():
            seen["hup"] = signal.getsignal(signal.SIGHUP)
            seen["term"] = installed()[signal.SIGTERM]

    assert seen == {"hup": signal.SIG_IGN, "term": True}
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN


def test_concurrent_and_nested_weaves_share_one_installation():
    before = handlers()
    seen = {}

    async def short():
        async with weave() as w:
            @w.do(environment="proc")
            def quick():
                return "quick"

    async def long():
        async with weave() as w:
            @w.do(environment="proc")
            def slow():
                time.sleep(1.0)
                return "slow"

            @w.do
            async def nested():
                async with weave() as inner:
                    @inner.do(environment="proc")
                    def inside():
                        return "inside"
                seen["after_nested"] = installed()
                await asyncio.sleep(0.5)   # the short weave has ended by now (it exited first, out of order)
                seen["after_short"] = installed()

    async def main():
        await asyncio.gather(short(), long())

    asyncio.run(main())
    assert all(seen["after_nested"].values()), "the nested weave's exit removed the outer one's handlers"
    assert all(seen["after_short"].values()), "the first weave to end removed the other one's handlers"
    assert handlers() == before


def test_weaves_off_the_main_thread_install_nothing():
    before = handlers()
    seen = {}

    def in_thread():
        with weave() as w:
            @w.do(environment="proc")
            def remote():
                return 1

            @w.do
            def look():
                seen["thread"] = handlers()

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join(120)

    with weave(background=True) as w:
        @w.do(environment="proc")
        def remote():
            return 1

        @w.do
        def look():
            seen["background"] = handlers()
    w.wait(120)
    assert seen == {"thread": before, "background": before}
    assert handlers() == before


def run_in(style: str, build) -> None:
    """Run a weave built by ``build(w)`` as ``with`` (sync), ``async with``, or a sync ``with`` inside a
    running loop (the helper-thread path of run_sync)."""
    if style == "sync":
        with weave() as w:
            build(w)
        return

    async def main():
        if style == "async":
            try:
                async with weave() as w:
                    build(w)
            finally:   # the task is as it was before the signal: only the handler's own cancel counts
                seen_cancelling.append(getattr(asyncio.current_task(), "cancelling", lambda: 0)())
        else:
            with weave() as w:
                build(w)
    asyncio.run(main())   # for SIGINT, its own Ctrl-C handler is the one chained to


seen_cancelling: list[int] = []


@pytest.mark.parametrize("style", ["sync", "async", "helper"])
def test_sigterm_cancels_then_calls_the_users_handler_and_the_block_raises_the_cancellation(style, capfd):
    calls = []
    records = []

    def users_handler(signum, frame):
        calls.append((signum, [record.outcome for record in records]))

    def build(w):
        @w.do(environment="proc")
        def remote():
            time.sleep(60)

        @w.do
        def trigger():
            records.extend(send_when_running(w, "remote", signal.SIGTERM))

    signal.signal(signal.SIGTERM, users_handler)
    seen_cancelling.clear()
    started = time.monotonic()
    with pytest.raises(asyncio.CancelledError):
        run_in(style, build)
    assert time.monotonic() - started < 50, "the remote task was not cancelled"
    assert calls == [(signal.SIGTERM, ["cancelled"])], "the user's handler runs once, after the cancellation"
    assert signal.getsignal(signal.SIGTERM) is users_handler
    assert seen_cancelling == ([0] if style == "async" else [])
    assert "wove: SIGTERM: cancelling 1 remote run; send again to exit at once" in capfd.readouterr().err


@pytest.mark.parametrize("style", ["sync", "async", "helper"])
def test_ctrl_c_still_raises_keyboard_interrupt_after_the_cancellation(style, capfd):
    records = []

    def build(w):
        @w.do(environment="proc")
        def remote():
            time.sleep(60)

        @w.do
        def trigger():
            records.extend(send_when_running(w, "remote", signal.SIGINT))

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_in(style, build)
    assert time.monotonic() - started < 50
    assert [record.outcome for record in records] == ["cancelled"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert "wove: SIGINT: cancelling 1 remote run" in capfd.readouterr().err
