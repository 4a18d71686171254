"""A custom BackendAdapter whose submit starts ``python -m wove.backend_worker`` as a child process.

Covers the adapter framework (payloads, required modules, the callback receiver, the filesystem result
channel) and the delivery settings the remote runtime enforces on top of it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from dispatch_helpers import AdapterLog, MyError, SubprocessAdapter, Unloadable, wait_until

import wove
from wove import (
    BackendAdapter,
    BackendAdapterEnvironmentExecutor,
    DeliveryOrphanedError,
    DeliveryTimeoutError,
    weave,
)
from wove.errors import EnvironmentExecutionError, ExecutorStartError

pytestmark = pytest.mark.timeout(90)

DOCUMENTED_PAYLOAD_KEYS = {"version", "adapter", "callback_url", "run_id", "task_id", "task_name",
                           "callable_pickle", "args_pickle", "delivery"}


def use_adapter(adapter_class=SubprocessAdapter, executor_config=None, name="sub", **settings) -> AdapterLog:
    options = settings.pop("adapter_options", {})
    log = options.setdefault("log", AdapterLog())
    executor = BackendAdapterEnvironmentExecutor(name, adapter_class=adapter_class, adapter_options=options)
    spec = {"executor": executor, **settings}
    if executor_config is not None:
        spec["executor_config"] = executor_config
    wove.config(environments={name: spec})
    return log


@pytest.mark.parametrize("mode", ["env", "argv"])
def test_round_trip_through_a_subprocess_worker(mode):
    log = use_adapter(adapter_options={"mode": mode})
    with weave(error_mode="return") as w:
        @w.do
        def base():
            return 20

        @w.do(environment="sub")
        def remote(base):
            return {"pid": os.getpid(), "value": base + 1, "via": "WOVE_BACKEND_PAYLOAD" in os.environ}

        @w.do([1, 2], environment="sub")
        async def mapped(x):
            await asyncio.sleep(0)
            return -x

        @w.do(environment="sub")
        def failing():
            raise MyError("remote failure")

    assert w.result.remote["value"] == 21
    assert w.result.remote["pid"] != os.getpid()
    assert w.result.remote["via"] is (mode == "env")
    assert w.result.mapped == [-1, -2]
    assert type(w.result.failing) is MyError and str(w.result.failing) == "remote failure"
    assert log.starts == 1 and log.closes == 1
    assert len(log.payloads) == 4
    codes = {log.payloads[i]["task_name"]: log.procs[p["run_id"]].returncode
             for i, p in enumerate(log.payloads)}
    assert codes["remote"] == 0 and codes["mapped"] == 0
    assert codes["failing"] == 1   # exit code 1 when the task raised
    records = w.result.jobs["remote"]
    assert len(records) == 1 and records[0].state == "COMPLETED"
    assert records[0].job_id == str(log.procs[records[0].run_id].pid)


def test_unloadable_remote_exception_becomes_environment_execution_error():
    use_adapter()
    with weave(error_mode="return") as w:
        @w.do(environment="sub")
        def odd():
            raise Unloadable(1, 2)

    error = w.result.odd
    assert isinstance(error, EnvironmentExecutionError)
    assert error.payload["kind"] == "dispatch_helpers.Unloadable"
    assert error.payload["message"] == "1/2"
    assert error.payload["source"] == "task"
    assert "Unloadable" in error.payload["traceback"]


def test_result_that_cannot_be_unpickled_becomes_a_transport_error():
    use_adapter()
    with weave(error_mode="return") as w:
        @w.do(environment="sub")
        def value():
            return Unloadable(1, 2)

    error = w.result.value
    assert isinstance(error, EnvironmentExecutionError)
    assert error.payload["source"] == "transport"
    assert "could not be unpickled" in str(error)


def test_task_error_larger_than_the_body_limit_still_fails_the_task():
    """A big exception (message, traceback, pickled payload) must not vanish behind a 413."""
    log = use_adapter(executor_config={"callback_max_body": 4096, "post_timeout": 1})
    started = time.monotonic()
    with weave(error_mode="return") as w:
        @w.do(environment="sub", delivery_timeout=5)    # backstop: without it a lost error hangs the weave
        def failing():
            raise MyError("x" * 10_000)

    error = w.result.failing
    assert not isinstance(error, DeliveryTimeoutError), "the task's error never reached the weave"
    assert isinstance(error, (MyError, EnvironmentExecutionError))
    assert time.monotonic() - started < 5
    log.reap()


def test_payload_has_the_documented_fields_and_ours():
    log = use_adapter()
    with weave() as w:
        @w.do(environment="sub")
        def named_task():
            return 1

    payload = log.payloads[0]
    assert set(payload) >= DOCUMENTED_PAYLOAD_KEYS
    assert payload["version"] == 1
    assert payload["adapter"] == "sub"
    assert payload["task_name"] == "named_task" and payload["task_id"] == "named_task"
    assert payload["run_id"] == w.result.jobs["named_task"][0].run_id
    assert payload["callback_url"].startswith("http://127.0.0.1:")
    assert "/wove/events/" in payload["callback_url"]
    key = payload["signing"]["key"]
    assert isinstance(key, str) and len(key) >= 32
    import sys

    import cloudpickle

    assert payload["python"] == f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert payload["cloudpickle"] == cloudpickle.__version__
    assert payload["wove"] == wove.__version__
    # small payloads go inline, as base64 JSON
    assert not log.encoded[0].startswith("spool:")


def test_each_run_has_its_own_signing_key():
    log = use_adapter()
    with weave() as w:
        @w.do([1, 2, 3], environment="sub")
        def item(x):
            return x

    assert w.result.item == [1, 2, 3]
    keys = {p["signing"]["key"] for p in log.payloads}
    assert len(keys) == 3
    assert len({p["run_id"] for p in log.payloads}) == 3


def _zombie_or_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_retries_resubmit_with_a_new_run_id_and_late_events_are_ignored(tmp_path):
    """Attempt 0 is failed by the adapter (a lost node, say) but keeps running and reports late.

    Its late task_result is authentic (the gate accepts it) and must still be ignored: attempt 1 only
    finishes after attempt 0's worker has delivered its outcome and exited. A duplicate of attempt 1's own
    outcome is ignored as well.
    """
    log = use_adapter()
    pid_file = tmp_path / "attempt0.pid"
    injected = []

    def inject(adapter, frame):
        loop = asyncio.get_running_loop()
        first = log.payloads[0]["run_id"]
        if frame["run_id"] == first and frame["type"] == "task_started":
            loop.call_soon(adapter.emit, {
                "type": "task_error", "run_id": first, "task_id": "flaky",
                "error": {"kind": "NodeFail", "message": "node lost", "traceback": "", "retryable": True,
                          "source": "executor"}})
            injected.append("node lost")
        elif len(log.payloads) == 2 and frame["run_id"] == log.payloads[1]["run_id"] \
                and frame["type"] == "task_result":
            loop.call_soon(adapter.emit, dict(frame, result="duplicate"))
            injected.append("duplicate")

    log.on_event_hook = inject
    with weave() as w:
        @w.do(environment="sub", retries=1)
        def flaky():
            attempt = int(os.environ["WOVE_TEST_ATTEMPT"])
            if attempt == 0:
                (tmp_path / "pid.tmp").write_text(str(os.getpid()))
                os.replace(tmp_path / "pid.tmp", pid_file)
                time.sleep(1.0)
                return "attempt 0 (late)"
            deadline = time.monotonic() + 30
            while not pid_file.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            pid = int(pid_file.read_text())
            while not _zombie_or_gone(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            return "attempt 1"

    assert w.result.flaky == "attempt 1"
    assert injected == ["node lost", "duplicate"]
    first, second = log.payloads
    assert first["run_id"] != second["run_id"]
    assert first["signing"]["key"] != second["signing"]["key"]
    assert [r.attempt for r in w.result.jobs["flaky"]] == [0, 1]
    assert [r.run_id for r in w.result.jobs["flaky"]] == [first["run_id"], second["run_id"]]
    # attempt 0 posted its late outcome before attempt 1 finished (attempt 1 waited for it to exit); the
    # run was already finished, so the receiver acknowledged it without decoding it or passing it on
    assert "task_result" not in log.events_of(first["run_id"])
    assert "task_result" in log.events_of(second["run_id"])
    codes = log.reap()
    assert codes == {first["run_id"]: 0, second["run_id"]: 0}


def test_retry_after_timeout_cancels_the_old_attempt():
    log = use_adapter()
    with weave() as w:
        @w.do(environment="sub", retries=1, timeout=2.0)
        def sometimes_slow():
            if os.environ["WOVE_TEST_ATTEMPT"] == "0":
                time.sleep(60)
            return "second try"

    assert w.result.sometimes_slow == "second try"
    first, second = log.payloads
    assert log.cancels == [first["run_id"]]
    assert first["run_id"] != second["run_id"]
    assert log.procs[first["run_id"]].returncode not in (None, 0)


def test_delivery_max_in_flight_caps_concurrent_runs():
    log = use_adapter(delivery_max_in_flight=2)
    with weave() as w:
        @w.do(range(6), environment="sub")
        def item(x):
            time.sleep(0.5)
            return x * 10

    assert w.result.item == [0, 10, 20, 30, 40, 50]
    assert len(log.payloads) == 6
    assert log.max_in_flight == 2


def test_delivery_idempotency_key_is_formatted_from_the_arguments():
    log = use_adapter()
    with weave(delivery_idempotency_key="job-{x}-{base}") as w:
        @w.do
        def base():
            return "b"

        @w.do(["p", "q"], environment="sub")
        def item(x, base):
            return x + base

        @w.do(environment="sub", delivery_idempotency_key=lambda base: f"callable-{base}")
        def single(base):
            return base

    assert w.result.item == ["pb", "qb"]
    keys = {p["task_id"]: p["delivery"]["idempotency_key"] for p in log.payloads}
    assert keys == {"item[0]": "job-p-b", "item[1]": "job-q-b", "single": "callable-b"}


def test_delivery_settings_reach_the_payload():
    log = use_adapter(delivery_heartbeat_seconds=5, delivery_cancel_mode="require_ack",
                      delivery_orphan_policy="cancel", delivery_timeout=60)
    with weave() as w:
        @w.do(environment="sub")
        def task():
            return 1

    delivery = log.payloads[0]["delivery"]
    assert delivery["heartbeat_seconds"] == 5
    assert delivery["timeout"] == 60
    assert delivery["cancel_mode"] == "require_ack"
    assert delivery["orphan_policy"] == "cancel"


def _sibling_failure_weave(tmp_path, log, policy):
    """A remote task is running when a local sibling fails (raise mode): the weave stops.

    The remote task finishes (writes its marker) only once the test creates the ``release`` file.
    """
    marker = tmp_path / "slow-finished"
    release = tmp_path / "release"
    started = time.monotonic()
    with pytest.raises(MyError, match="sibling"), weave(delivery_orphan_policy=policy) as w:
        @w.do(environment="sub")
        def slow():
            deadline = time.monotonic() + 30
            while not release.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            with open(marker, "w") as handle:
                handle.write("done")
            return "slow"

        @w.do
        def boom():
            wait_until(lambda: any(kind == "task_started" for _, kind, _ in log.events), 30)
            raise MyError("sibling failed")

    return w, marker, time.monotonic() - started


@pytest.mark.parametrize("policy", ["cancel", "fail"])
def test_orphan_policy_cancel_and_fail_cancel_pending_work(tmp_path, policy):
    log = use_adapter()
    w, marker, elapsed = _sibling_failure_weave(tmp_path, log, policy)
    run_id = log.payloads[0]["run_id"]
    assert log.cancels == [run_id]
    assert elapsed < 25
    assert not marker.exists()
    record = w.result.jobs["slow"][0]
    assert record.outcome == ("orphaned" if policy == "fail" else "cancelled")


def test_orphan_policy_detach_leaves_the_remote_run_alone(tmp_path):
    log = use_adapter(adapter_options={"kill_on_close": False}, executor_config={"post_timeout": 1})
    w, marker, _ = _sibling_failure_weave(tmp_path, log, "detach")
    assert log.cancels == []
    proc = next(iter(log.procs.values()))
    assert proc.poll() is None, "a detached run must keep running after the weave stopped"
    (tmp_path / "release").write_text("go")
    wait_until(marker.exists, 30)   # it ran to its end
    log.reap()
    assert w.result.jobs["slow"][0].outcome == "detached"
    _collect_left_outcome(log)


class LateStartAdapter(SubprocessAdapter):
    """Like a batch queue: the job starts (and reads its payload) a while after submission."""

    def submit(self, payload, frame):
        import subprocess
        import sys

        encoded = self.encode_payload(payload)
        self.log.payloads.append(payload)
        self.log.encoded.append(encoded)
        env = {**os.environ, "WOVE_BACKEND_PAYLOAD": encoded}
        proc = subprocess.Popen(["sh", "-c", f"sleep 2; exec {sys.executable} -m wove.backend_worker"],
                                env=env, stderr=subprocess.PIPE, text=True)
        self.log.procs[payload["run_id"]] = proc
        return proc.pid


def test_detached_run_that_starts_late_can_still_read_its_spooled_payload(tmp_path, spool_dir):
    """``detach`` leaves remote work alone; a job that had not started yet still needs its payload."""
    log = use_adapter(LateStartAdapter, adapter_options={"kill_on_close": False},
                      executor_config={"post_timeout": 1, "spool_threshold": 1024, "spool_dir": spool_dir})
    marker = tmp_path / "detached-ran"
    with pytest.raises(MyError), weave(delivery_orphan_policy="detach") as w:
        @w.do(environment="sub")
        def side_effect():
            marker.write_text("ran")

        @w.do
        def boom():
            wait_until(lambda: log.payloads, 30)
            raise MyError("sibling failed")

    assert log.encoded[0].startswith("spool:")       # the payload was spooled
    proc = next(iter(log.procs.values()))
    _, err = proc.communicate(timeout=30)
    assert proc.returncode != 3, err.strip()
    assert marker.exists()
    _collect_left_outcome(log)


def _collect_left_outcome(log: AdapterLog) -> None:
    """A detached run's outcome waits, signed, in its kept spool directory (nobody listened any more)."""
    left = [p for p in Path(log.payloads[0]["events_dir"]).iterdir() if p.name.endswith(".event")]
    assert [p for p in left if p.name.endswith(".task_result.event")], left
    for path in left:
        path.unlink()


def test_require_ack_waits_for_the_worker_to_confirm_cancellation(tmp_path, monkeypatch):
    """With require_ack, stopping the weave waits for the worker's task_cancelled (its ack)."""
    import wove.executors.runtime

    # shorter than the built-in 30 s so that a missing ack fails the test quickly
    monkeypatch.setattr(wove.executors.runtime, "REQUIRE_ACK_SECONDS", 4.0)
    log = use_adapter(delivery_cancel_mode="require_ack")
    _, _, elapsed = _sibling_failure_weave(tmp_path, log, "cancel")
    run_id = log.payloads[0]["run_id"]
    assert log.cancels == [run_id]
    # The adapter terminates the worker, which reports task_cancelled (SIGTERM): that is the ack the
    # runtime waits for, so it must have arrived before the weave returned, and quickly.
    assert "task_cancelled" in log.events_of(run_id)
    assert elapsed < 4
    assert log.reap()[run_id] == 128 + signal.SIGTERM


def test_delivery_timeout_cancels_through_the_adapter():
    log = use_adapter()
    with weave(error_mode="return") as w:
        @w.do(environment="sub", delivery_timeout=1.5)
        def slow():
            time.sleep(60)

    assert isinstance(w.result.slow, DeliveryTimeoutError)
    run_id = log.payloads[0]["run_id"]
    assert log.cancels == [run_id]
    assert log.procs[run_id].wait(10) != 0


def test_heartbeat_loss_of_a_stopped_worker_raises_delivery_timeout():
    """The worker process is frozen (SIGSTOP) after it started: its heartbeats stop."""
    log = use_adapter(delivery_heartbeat_seconds=0.5, delivery_timeout=3)   # the timeout only as a backstop

    def freeze(adapter, frame):
        if frame["type"] == "task_started":
            os.kill(log.procs[frame["run_id"]].pid, signal.SIGSTOP)

    log.on_event_hook = freeze
    started = time.monotonic()
    with weave(error_mode="return") as w:
        @w.do(environment="sub")
        def frozen():
            time.sleep(20)
            return "late"

    try:
        assert isinstance(w.result.frozen, DeliveryTimeoutError), w.result.frozen
        assert "delivery_heartbeat_seconds" in str(w.result.frozen)
        assert log.cancels == [log.payloads[0]["run_id"]]
        assert time.monotonic() - started < 3
    finally:
        for proc in log.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
        log.reap()


def test_heartbeats_arrive_over_http():
    log = use_adapter(delivery_heartbeat_seconds=0.25)
    with weave() as w:
        @w.do(environment="sub")
        def long_task():
            time.sleep(1.0)
            return "ok"

    assert w.result.long_task == "ok"
    kinds = log.events_of(log.payloads[0]["run_id"])
    assert kinds[0] == "task_started" and kinds[-1] == "task_result"
    assert kinds.count("heartbeat") >= 2


def test_worker_terminated_from_outside_fails_the_task_naming_the_signal():
    """The job system stops the worker (preemption, scancel): the weave learns it from task_cancelled."""
    log = use_adapter()

    def terminate(adapter, frame):
        if frame["type"] == "task_started":
            proc = log.procs[frame["run_id"]]
            threading.Timer(0.3, proc.send_signal, (signal.SIGTERM,)).start()

    log.on_event_hook = terminate
    with weave(error_mode="return") as w:
        @w.do(environment="sub")
        def victim():
            time.sleep(30)

    error = w.result.victim
    assert isinstance(error, EnvironmentExecutionError)
    assert "SIGTERM" in str(error)
    run_id = log.payloads[0]["run_id"]
    assert log.events_of(run_id) == ["task_started", "task_cancelled"]
    assert log.cancels == []
    assert log.reap()[run_id] == 128 + signal.SIGTERM
    assert w.result.jobs["victim"][0].state == "CANCELLED"


class NeedsMissingModule(SubprocessAdapter):
    required_modules = ("json", "wove_no_such_module_xyz")
    install_hint = "Install it with: pip install wove-no-such-module-xyz"


def test_missing_required_module_fails_at_start_with_the_install_hint():
    log = use_adapter(NeedsMissingModule, name="needy")
    with pytest.raises(ExecutorStartError) as info, weave() as w:
        @w.do(environment="needy")
        def never():
            return 1

    message = str(info.value)
    assert "wove_no_such_module_xyz" in message
    assert "pip install wove-no-such-module-xyz" in message
    assert "'needy'" in message
    assert log.starts == 0 and log.payloads == []


class FailingStart(SubprocessAdapter):
    async def start(self):
        raise RuntimeError("no credentials")


def test_adapter_start_failure_is_reported_and_cleaned_up():
    use_adapter(FailingStart, name="broken")
    with pytest.raises(RuntimeError, match="no credentials"), weave() as w:
        @w.do(environment="broken")
        def never():
            return 1


def test_adapter_class_must_be_a_backend_adapter():
    with pytest.raises(TypeError):
        BackendAdapterEnvironmentExecutor("x", adapter_class=object)
    with pytest.raises(TypeError):
        BackendAdapterEnvironmentExecutor("x")


class Minimal(BackendAdapter):
    """Only ``submit``; uses the base class for everything else."""

    procs: list = []

    async def submit(self, payload, frame):
        import subprocess
        import sys

        proc = subprocess.Popen([sys.executable, "-m", "wove.backend_worker", self.encode_payload(payload)])
        Minimal.procs.append(proc)
        return str(proc.pid)


def test_minimal_adapter_with_async_submit():
    Minimal.procs = []
    executor = BackendAdapterEnvironmentExecutor("m", adapter_class=Minimal)
    wove.config(environments={"m": {"executor": executor}})
    with weave() as w:
        @w.do(environment="m")
        def task():
            return "minimal"

    assert w.result.task == "minimal"
    for proc in Minimal.procs:
        assert proc.wait(10) == 0


def test_filesystem_result_channel_end_to_end(spool_dir):
    log = use_adapter(executor_config={"result_channel": "filesystem", "spool_dir": spool_dir})
    with weave(error_mode="return") as w:
        @w.do(environment="sub")
        def value():
            return {"answer": 42}

        @w.do(environment="sub")
        def error():
            raise MyError("via files")

    assert w.result.value == {"answer": 42}
    assert type(w.result.error) is MyError
    payload = log.payloads[0]
    assert payload["result_channel"] == "filesystem"
    assert payload["callback_url"] == ""
    assert payload["events_dir"].startswith(spool_dir)
    for proc in log.procs.values():
        assert proc.returncode is not None


def test_filesystem_channel_ignores_forged_event_files(spool_dir, monkeypatch):
    """A file dropped in the events directory without a valid signature never reaches the weave."""
    log = use_adapter(executor_config={"result_channel": "filesystem", "spool_dir": spool_dir})
    import json

    from wove.dispatch import events

    loads_calls = []
    real_loads = events.loads

    def counting_loads(data, buffers=None):
        loads_calls.append(len(data))
        return real_loads(data, buffers)

    def forge(adapter, frame):
        if frame["type"] == "task_started":
            run_id = frame["run_id"]
            events_dir = log.payloads[0]["events_dir"]
            body = json.dumps({"type": "task_result", "run_id": run_id, "task_id": "t",
                               "result_pickle": "gASVBQAAAAAAAACMAWWULg=="}).encode()
            envelope = {"run": run_id, "event": "task_result", "incarnation": 0, "seq": 50,
                        "signature": "0" * 64}
            with open(os.path.join(events_dir, f"{run_id}.0.000050.task_result.event"), "wb") as handle:
                handle.write(json.dumps(envelope).encode() + b"\n" + body)

    log.on_event_hook = forge
    monkeypatch.setattr(events, "loads", counting_loads)
    with weave() as w:
        @w.do(environment="sub")
        def real():
            time.sleep(1.0)
            return "genuine"

    assert w.result.real == "genuine"
    assert len(loads_calls) == 1


class StrictKeys(BackendAdapter):
    config_keys = frozenset({"queue"})


def test_unknown_executor_config_key_is_rejected():
    executor = BackendAdapterEnvironmentExecutor("sub", adapter_class=StrictKeys)
    wove.config(environments={"sub": {"executor": executor,
                                      "executor_config": {"queue": "q", "spool_dir": "/x"}}})
    with pytest.raises(ValueError, match="callback_port"):
        wove.config(environments={"sub": {"executor": executor, "executor_config": {"callback_prot": 1}}})
    with pytest.raises(ValueError, match="result_channel"):
        wove.config(environments={"sub": {"executor": executor,
                                          "executor_config": {"result_channel": "carrier-pigeon"}}})


def test_environment_error_when_the_adapter_submit_fails():
    class BadSubmit(SubprocessAdapter):
        def submit(self, payload, frame):
            raise OSError("queue is full")

    use_adapter(BadSubmit, name="bad")
    with weave(error_mode="return") as w:
        @w.do(environment="bad")
        def task():
            return 1

    assert isinstance(w.result.task, OSError)
    assert "queue is full" in str(w.result.task)


def test_orphaned_error_type_is_exported():
    assert issubclass(DeliveryOrphanedError, RuntimeError)
    assert issubclass(DeliveryTimeoutError, TimeoutError)
    assert issubclass(ExecutorStartError, EnvironmentExecutionError)
