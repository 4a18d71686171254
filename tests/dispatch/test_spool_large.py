"""Spool files: private, used above the thresholds, deleted when their run ends; 100 MB both ways."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import stat
import time

import pytest
from dispatch_helpers import (
    AdapterLog,
    LiveReceiver,
    SubprocessAdapter,
    event_body,
    run_worker,
    signed_headers,
)

import wove
from wove import BackendAdapterEnvironmentExecutor, weave
from wove.dispatch import protocol, spool
from wove.executors.adapter import encode_payload

pytestmark = pytest.mark.timeout(120)

MB = 1024 * 1024


@pytest.fixture
def spool_removals(monkeypatch):
    """Every spool file wove deletes in this process: (path, existed, mode)."""
    removed = []
    real, real_by_fd = spool.remove, spool.RunDir.remove

    def record(path):
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except OSError:
            mode = None
        removed.append((path, mode is not None, mode))

    def recording(path):
        record(path)
        real(path)

    def recording_by_fd(run_dir, name):   # files in a run's directory, removed through its descriptor
        record(run_dir.file_path(name))
        real_by_fd(run_dir, name)

    monkeypatch.setattr(spool, "remove", recording)
    monkeypatch.setattr(spool.RunDir, "remove", recording_by_fd)
    return removed


def use_adapter(spool_dir, **executor_config):
    log = AdapterLog()
    executor = BackendAdapterEnvironmentExecutor("sub", adapter_class=SubprocessAdapter,
                                                 adapter_options={"log": log})
    wove.config(environments={"sub": {"executor": executor,
                                      "executor_config": {"spool_dir": spool_dir, **executor_config}}})
    return log


def reverse(data: bytes) -> bytes:
    return data[::-1]


@pytest.mark.slow
def test_100mb_argument_and_result_round_trip_through_the_spool(spool_dir, spool_removals):
    log = use_adapter(spool_dir, callback_max_body=1 * MB)
    data = os.urandom(100 * MB)
    started = time.monotonic()
    with weave() as w:
        @w.do
        def big():
            return data

        @w.do(environment="sub")
        def remote(big):
            return reverse(big)

    elapsed = time.monotonic() - started
    assert len(w.result.remote) == 100 * MB
    assert w.result.remote == data[::-1]
    # the 100 MB argument went raw (no base64) to a private spool file of its own (a shared input, named by
    # its contents), written off the event loop; the payload itself stayed small enough to ride inline
    assert not log.encoded[0].startswith(protocol.SPOOL_PREFIX) and len(log.encoded[0]) < 16384
    assert not log.payloads[0]["args_pickle"].startswith(protocol.SPOOL_PREFIX)
    [[slot, field]] = log.payloads[0]["shared"]
    assert slot == "big" and field.startswith(protocol.SPOOL_PREFIX)
    path = field[len(protocol.SPOOL_PREFIX):]
    assert path.startswith(spool_dir) and path.endswith(".shared")
    assert log.args_at_submit[0][:3] == (path, 0o600, 0o700)
    assert log.args_at_submit[0][3] < 101 * MB   # raw pickle bytes, not the 4/3 of base64
    # the result came back through a spool file (above callback_max_body), which was then deleted
    results = [r for r in spool_removals if r[0].endswith(".result")]
    assert len(results) == 1 and results[0][1] is True and results[0][2] == 0o600
    payloads = [r for r in spool_removals if r[0] == path]
    assert payloads and payloads[0][1] is True
    assert not os.path.exists(path) and not os.path.exists(results[0][0])
    assert log.reap()[log.payloads[0]["run_id"]] == 0
    print(f"100 MB each way through the spool: {elapsed:.1f}s")


def test_small_payloads_stay_inline_and_large_ones_spool(spool_dir):
    spool.ensure_dir(spool_dir)
    small = {"run_id": "small", "data": "x" * 100}
    assert not encode_payload(small, spool_dir, threshold=1024).startswith(protocol.SPOOL_PREFIX)
    large = {"run_id": "large", "data": "x" * 5000}
    reference = encode_payload(large, spool_dir, threshold=1024)
    assert reference.startswith(protocol.SPOOL_PREFIX)
    path = reference[len(protocol.SPOOL_PREFIX):]
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(spool_dir).st_mode) == 0o700
        with open(path) as handle:
            assert json.load(handle) == large
        assert [n for n in os.listdir(spool_dir) if n.endswith(".tmp")] == []   # written atomically
    finally:
        spool.remove(path)


def test_payload_spool_file_is_deleted_when_its_run_ends(spool_dir):
    log = use_adapter(spool_dir, spool_threshold=1024)
    seen = {}
    with weave() as w:
        @w.do(environment="sub")
        def remote():
            return "x" * 10

        @w.do
        def check(remote):
            path = log.encoded[0][len(protocol.SPOOL_PREFIX):]
            seen["exists while the weave still runs"] = os.path.exists(path)
            return path

    assert log.encoded[0].startswith(protocol.SPOOL_PREFIX)   # the callable alone is > 1 KiB encoded
    assert seen == {"exists while the weave still runs": False}
    assert w.result.remote == "x" * 10


def test_spool_files_of_failed_and_cancelled_runs_are_removed(spool_dir):
    log = use_adapter(spool_dir, spool_threshold=1024)
    with weave(error_mode="return") as w:
        @w.do(environment="sub")
        def failing():
            raise ValueError("x")

        @w.do(environment="sub", delivery_timeout=1)
        def slow():
            time.sleep(60)

        @w.do
        def check(failing, slow):
            return 1

    assert isinstance(w.result.failing, ValueError)
    assert isinstance(w.result.slow, wove.DeliveryTimeoutError)
    for reference in log.encoded:
        assert not os.path.exists(reference[len(protocol.SPOOL_PREFIX):])
    log.reap()


def test_worker_spools_a_result_above_the_body_limit(spool_dir, spool_removals):
    spool.ensure_dir(spool_dir)
    live = LiveReceiver(max_body=64 * 1024, spool_dir=spool_dir).start()
    try:
        payload = live.payload(bytes, (3 * MB,), max_body=64 * 1024, spool_dir=spool_dir)
        assert run_worker(payload).returncode == 0
        assert live.wait_for(payload["run_id"], "task_result")["result"] == bytes(3 * MB)
    finally:
        live.stop()
    assert [r[0].endswith(".result") and r[1] for r in spool_removals] == [True]


def test_a_result_the_worker_posts_too_large_is_spooled_after_a_413(spool_dir):
    """The worker does not know the limit (max_body 0): the receiver's 413 makes it spool and retry."""
    spool.ensure_dir(spool_dir)
    live = LiveReceiver(max_body=64 * 1024, spool_dir=spool_dir).start()
    try:
        payload = live.payload(bytes, (1 * MB,), max_body=0, spool_dir=spool_dir)
        assert run_worker(payload).returncode == 0
        assert live.wait_for(payload["run_id"], "task_result")["result"] == bytes(MB)
    finally:
        live.stop()


def test_result_reference_with_a_wrong_digest_is_rejected(spool_dir):
    from dispatch_helpers import post

    spool.ensure_dir(spool_dir)
    live = LiveReceiver(spool_dir=spool_dir).start()
    try:
        run_id, key = live.register()
        path = spool.write_atomic(spool.result_path(spool_dir, run_id), pickle.dumps("tampered"))
        body = event_body(run_id, "task_result",
                          result_ref={"path": path, "sha256": hashlib.sha256(b"original").hexdigest()})
        assert post(live.port, live.path, body, signed_headers(run_id, key, "task_result", 1, body)) == 400
        assert live.frames == []
    finally:
        live.stop()
        spool.remove(path)
