"""``python -m wove.backend_worker`` and ``wove.integrations.worker`` against a live callback receiver."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
import time

import pytest
from dispatch_helpers import (
    SIGNALS,
    LiveReceiver,
    MyError,
    b64,
    free_port,
    make_payload,
    run_worker,
    start_worker,
)

from wove.dispatch import protocol, spool
from wove.integrations import worker as integration

pytestmark = pytest.mark.timeout(60)


def add(a, b=0):
    return a + b


def fail():
    raise MyError("worker failure")


async def async_add(a, b):
    await asyncio.sleep(0.01)
    return a + b


@pytest.mark.parametrize("via", ["env", "argv"])
def test_worker_runs_a_payload_and_posts_signed_events(receiver, via):
    payload = receiver.payload(add, (2,), {"b": 3})
    done = run_worker(payload, via=via)
    assert done.returncode == 0, done.stderr
    run_id = payload["run_id"]
    assert receiver.types_of(run_id) == ["task_started", "task_result"]
    assert receiver.wait_for(run_id, "task_result")["result"] == 5
    started = receiver.wait_for(run_id, "task_started")
    assert started["pid"] != os.getpid() and started["host"]
    assert receiver.gate.rejected == {}


def test_worker_exit_code_1_and_original_exception_when_the_task_raises(receiver):
    payload = receiver.payload(fail)
    done = run_worker(payload)
    assert done.returncode == 1
    error = receiver.wait_for(payload["run_id"], "task_error")
    assert type(error["exception"]) is MyError
    assert error["error"]["kind"] == "dispatch_helpers.MyError"
    assert error["error"]["source"] == "task"
    assert "worker failure" in error["error"]["message"]
    assert "MyError" in error["error"]["traceback"]


def test_worker_runs_async_tasks(receiver):
    payload = receiver.payload(async_add, (4, 5))
    assert run_worker(payload).returncode == 0
    assert receiver.wait_for(payload["run_id"], "task_result")["result"] == 9


def test_worker_sends_heartbeats(receiver):
    payload = receiver.payload(time.sleep, (1.2,), delivery={"heartbeat_seconds": 0.25})
    assert run_worker(payload).returncode == 0
    kinds = receiver.types_of(payload["run_id"])
    assert kinds[0] == "task_started" and kinds[-1] == "task_result"
    assert kinds.count("heartbeat") >= 2


def test_worker_reads_a_spooled_payload(receiver, spool_dir):
    spool.ensure_dir(spool_dir)
    payload = receiver.payload(add, ("x" * 200_000, "!"))
    path = spool.write_atomic(spool.payload_path(spool_dir, payload["run_id"]), json.dumps(payload).encode())
    try:
        assert run_worker(protocol.SPOOL_PREFIX + path).returncode == 0
    finally:
        spool.remove(path)
    assert receiver.wait_for(payload["run_id"], "task_result")["result"] == "x" * 200_000 + "!"


def test_task_that_cannot_be_loaded_in_the_job_reports_a_config_error(receiver):
    import pickle
    import types

    module = types.ModuleType("wove_module_only_in_the_submitter")
    exec("def task():\n    return 1\n", module.__dict__)
    sys.modules[module.__name__] = module
    try:
        callable_pickle = b64(pickle.dumps(module.task))    # by reference to a module the job lacks
    finally:
        del sys.modules[module.__name__]
    payload = receiver.payload(add, (1,), callable_pickle=callable_pickle)
    done = run_worker(payload)
    assert done.returncode == 1
    error = receiver.wait_for(payload["run_id"], "task_error")["error"]
    assert error["source"] == "config"
    assert "wove_module_only_in_the_submitter" in error["message"]
    assert "job environment" in error["message"]


# --------------------------------------------------------------------------------------------- versions
def test_version_mismatch_is_reported_before_unpickling(receiver, tmp_path):
    marker = tmp_path / "ran"

    def touch():
        marker.write_text("the task ran")

    payload = receiver.payload(touch, python="3.9", cloudpickle="2.2.1")
    done = run_worker(payload)
    assert done.returncode == 1
    error = receiver.wait_for(payload["run_id"], "task_error")["error"]
    import cloudpickle

    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    message = error["message"]
    assert f"job runs Python {here} / cloudpickle {cloudpickle.__version__}" in message
    assert "submitter has 3.9 / 2.2.1" in message
    assert "install matching versions in the job environment" in message
    assert error["source"] == "config"
    assert not marker.exists()
    assert receiver.types_of(payload["run_id"]) == ["task_error"]


def test_only_a_cloudpickle_mismatch_is_reported_too(receiver):
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    payload = receiver.payload(add, (1,), cloudpickle="0.0.1")
    assert run_worker(payload).returncode == 1
    message = receiver.wait_for(payload["run_id"], "task_error")["error"]["message"]
    assert f"submitter has {here} / 0.0.1" in message


# --------------------------------------------------------------------------------------------- delivery
def test_post_is_retried_while_the_receiver_is_briefly_unavailable():
    port = free_port()
    late = LiveReceiver(port=port)
    run_id, key = late.register()
    url = f"http://127.0.0.1:{port}{late.path}"
    payload = make_payload(url, run_id, key, add, (20, 22))
    proc = start_worker(payload)
    try:
        time.sleep(1.2)           # the worker has been knocking on a closed port for a while
        assert proc.poll() is None
        late.start()
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert late.wait_for(run_id, "task_result")["result"] == 42
        assert late.types_of(run_id) == ["task_started", "task_result"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        late.stop()


def test_worker_gives_up_after_the_post_timeout_with_exit_code_2():
    port = free_port()      # nothing will ever listen here
    url = f"http://127.0.0.1:{port}/wove/events/t"
    payload = make_payload(url, "run", protocol.new_key(), add, (1,), delivery={"post_timeout": 1})
    started = time.monotonic()
    done = run_worker(payload, timeout=30)
    assert done.returncode == 2
    assert time.monotonic() - started < 15
    assert "could not deliver task_started" in done.stderr
    assert str(port) in done.stderr


def test_rejected_delivery_exits_2(receiver):
    payload = receiver.payload(add, (1,))
    receiver.gate.forget(payload["run_id"])       # the weave no longer knows this run
    done = run_worker(payload)
    assert done.returncode == 2
    assert "403" in done.stderr


# --------------------------------------------------------------------------------------------- signals
def long_sleep():
    time.sleep(60)


async def long_async_sleep():
    await asyncio.sleep(60)


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGUSR1"])
@pytest.mark.parametrize("func", [long_sleep, long_async_sleep], ids=["sync", "async"])
def test_signal_reports_task_cancelled_and_exits_128_plus_n(receiver, signame, func):
    payload = receiver.payload(func)
    proc = start_worker(payload)
    try:
        receiver.wait_for(payload["run_id"], "task_started")
        time.sleep(0.2)     # let the task itself begin
        proc.send_signal(SIGNALS[signame])
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + SIGNALS[signame], err
    cancelled = receiver.wait_for(payload["run_id"], "task_cancelled")
    assert cancelled["signal"] == signame
    assert receiver.types_of(payload["run_id"]) == ["task_started", "task_cancelled"]


def test_signal_while_the_receiver_is_unreachable_still_exits_in_bounded_time():
    """SIGTERM during the very first POST (before the task started): the job reports what it can within
    its post timeout and exits with 128+15 instead of hanging."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/wove/events/t"
    payload = make_payload(url, "run", protocol.new_key(), long_sleep, delivery={"post_timeout": 3})
    proc = start_worker(payload)
    try:
        time.sleep(0.8)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + signal.SIGTERM
    assert time.monotonic() - signalled < 10


# --------------------------------------------------------------------------------------------- payloads
def _one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


_VALID = protocol.encode_inline(make_payload("http://127.0.0.1:9/wove/events/t", "r", "k", add))
CORRUPT = {
    "missing": None,
    "empty": "",
    "not base64": "%%% definitely not a payload %%%",
    "base64 of garbage": b64(b"\x00\x01garbage"),
    "json array": b64(b"[1, 2, 3]"),
    "missing fields": b64(json.dumps({"version": 1, "run_id": "r"}).encode()),
    "wrong version": b64(json.dumps({"version": 99, "run_id": "r", "callable_pickle": "",
                                     "args_pickle": ""}).encode()),
    "missing spool file": "spool:/nonexistent/wove/run.payload",
    "truncated": _VALID[: len(_VALID) // 2],
}
EXPECTED_WORDS = {
    "missing": ["WOVE_BACKEND_PAYLOAD", "first argument"],
    "empty": ["WOVE_BACKEND_PAYLOAD", "first argument"],
    "not base64": ["base64", "JSON"],
    "base64 of garbage": ["base64", "JSON"],
    "json array": ["JSON object"],
    "missing fields": ["callable_pickle"],
    "wrong version": ["version"],
    "missing spool file": ["/nonexistent/wove/run.payload"],
    "truncated": ["base64", "JSON"],
}


def test_missing_or_corrupt_payload_exits_3_with_one_line():
    procs = {case: start_worker(reference) for case, reference in CORRUPT.items()}   # all at once
    for case, proc in procs.items():
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 3, (case, err)
        assert out == ""
        line = _one_line(err)
        assert line.startswith("wove.backend_worker:"), (case, line)
        for word in EXPECTED_WORDS[case]:
            assert word in line, (case, word, line)


def test_argv_payload_wins_over_the_environment(receiver):
    payload = receiver.payload(add, (7,))
    proc = start_worker(payload, via="argv", env={protocol.PAYLOAD_ENV: "garbage"})
    proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert receiver.wait_for(payload["run_id"], "task_result")["result"] == 7


# --------------------------------------------------------------------------------------------- integration
def test_integrations_run_delivers_events_like_the_worker(receiver):
    before = {s: signal.getsignal(s) for s in SIGNALS.values()}
    payload = receiver.payload(add, (1, 2))
    assert integration.run(payload) == 0
    assert receiver.types_of(payload["run_id"]) == ["task_started", "task_result"]
    assert receiver.wait_for(payload["run_id"], "task_result")["result"] == 3

    failing = receiver.payload(fail)
    assert integration.run(protocol.encode_inline(failing)) == 1     # the encoded form works too
    assert type(receiver.wait_for(failing["run_id"], "task_error")["exception"]) is MyError
    # no signal handlers were installed or left behind
    assert {s: signal.getsignal(s) for s in SIGNALS.values()} == before


def test_integrations_arun_does_not_block_the_loop(receiver):
    payload = receiver.payload(time.sleep, (0.5,))
    ticks = []

    async def main():
        async def ticker():
            while True:
                ticks.append(time.monotonic())
                await asyncio.sleep(0.05)

        tick = asyncio.ensure_future(ticker())
        try:
            return await integration.arun(payload)
        finally:
            tick.cancel()

    assert asyncio.run(main()) == 0
    assert len(ticks) >= 5
    assert receiver.types_of(payload["run_id"]) == ["task_started", "task_result"]


def test_integrations_run_works_off_the_main_thread(receiver):
    payload = receiver.payload(async_add, (1, 1))
    codes = []
    thread = threading.Thread(target=lambda: codes.append(integration.run(payload)))
    thread.start()
    thread.join(30)
    assert codes == [0]
    assert receiver.wait_for(payload["run_id"], "task_result")["result"] == 2


def test_integrations_reject_bad_payloads():
    with pytest.raises(TypeError):
        integration.run(42)
    with pytest.raises(protocol.PayloadError):
        integration.run("not a payload")


def wait_for_time_warning():
    import wove.slurm

    deadline = time.monotonic() + 30
    while not wove.slurm.time_limit_near() and time.monotonic() < deadline:
        time.sleep(0.05)
    return "warned" if wove.slurm.time_limit_near() else "never warned"


def test_sigusr1_is_a_warning_when_the_payload_asks_for_one(receiver):
    """With signal_before_timeout (Slurm), SIGUSR1 tells the task its time is nearly up; it keeps running."""
    payload = receiver.payload(wait_for_time_warning)
    payload["time_warning_signal"] = "SIGUSR1"
    proc = start_worker(payload)
    try:
        receiver.wait_for(payload["run_id"], "task_started")
        time.sleep(0.2)
        proc.send_signal(signal.SIGUSR1)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    result = receiver.wait_for(payload["run_id"], "task_result")
    assert result["result"] == "warned"
