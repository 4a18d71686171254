"""The authenticated callback receiver: every bad request is rejected with the right status, before any
unpickling, and without disturbing the runs it serves (directly, and while a real weave is running)."""

from __future__ import annotations

import json
import os
import pickle
import socket
import time
import uuid

import pytest
from dispatch_helpers import (
    AdapterLog,
    CreatesFile,
    LiveReceiver,
    SubprocessAdapter,
    b64,
    event_body,
    free_port,
    listening_sockets,
    post,
    raw_request,
    signed_headers,
    wait_until,
)

import wove
from wove import BackendAdapterEnvironmentExecutor, weave
from wove.dispatch import events, protocol

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def loads_calls(monkeypatch):
    calls = []
    real = events.loads

    def counting(data, buffers=None):
        calls.append(data)
        return real(data, buffers)

    monkeypatch.setattr(events, "loads", counting)
    return calls


@pytest.fixture
def small_receiver():
    live = LiveReceiver(max_body=2048).start()
    yield live
    live.stop()


def send(receiver, run_id, key, event, seq, body, incarnation=0):
    """POST ``body`` correctly signed with ``key`` to the receiver's real path; returns the status."""
    headers = signed_headers(run_id, key, event, seq, body, incarnation)
    return post(receiver.port, receiver.path, body, headers)


def result_body(run_id, value):
    return event_body(run_id, "task_result", result_pickle=b64(pickle.dumps(value)))


# --------------------------------------------------------------------------------------------- direct
def test_a_signed_event_is_accepted_and_unpickled_once(receiver, loads_calls):
    run_id, key = receiver.register()
    body = result_body(run_id, {"x": 1})
    assert send(receiver, run_id, key, "task_result", 1, body) == 200
    frame = receiver.wait_for(run_id, "task_result")
    assert frame["result"] == {"x": 1}
    assert frame["task_id"] == "t" and frame["incarnation"] == 0
    assert len(loads_calls) == 1
    assert receiver.receiver.accepted == 1


@pytest.mark.parametrize("target", [
    "/wove/events/wrong-token",
    "/wove/events/",
    "/wove/events/tok-en_12",          # a prefix of the real token
    "/wove/events/tok-en_1234",        # the real token plus more
    "/other/path",
    "/",
])
def test_wrong_path_is_404(receiver, loads_calls, tmp_path, target):
    run_id, key = receiver.register()
    marker = tmp_path / "unpickled"
    body = result_body(run_id, CreatesFile(marker))
    assert post(receiver.port, target, body, signed_headers(run_id, key, "task_result", 1, body)) == 404
    assert receiver.frames == [] and loads_calls == [] and not marker.exists()
    # the run's sequence was not consumed by the rejected request
    ok = result_body(run_id, 5)
    assert send(receiver, run_id, key, "task_result", 1, ok) == 200


def test_wrong_method_is_rejected(receiver, loads_calls):
    run_id, key = receiver.register()
    body = result_body(run_id, 1)
    status = post(receiver.port, receiver.path, body, signed_headers(run_id, key, "task_result", 1, body),
                  method="PUT")
    assert status in (404, 405)
    assert post(receiver.port, receiver.path, b"", method="GET") in (404, 405)
    assert receiver.frames == [] and loads_calls == []


def test_unsigned_events_are_401(receiver, loads_calls, tmp_path):
    run_id, key = receiver.register()
    marker = tmp_path / "unpickled"
    body = result_body(run_id, CreatesFile(marker))
    assert post(receiver.port, receiver.path, body) == 401
    headers = signed_headers(run_id, key, "task_result", 1, body)
    for missing in (protocol.H_SIGNATURE, protocol.H_SEQ, protocol.H_RUN, protocol.H_EVENT,
                    protocol.H_INCARNATION):
        partial = {k: v for k, v in headers.items() if k != missing}
        assert post(receiver.port, receiver.path, body, partial) in (401, 403), missing
    assert receiver.frames == [] and loads_calls == [] and not marker.exists()


def test_forged_signatures_are_rejected(receiver, loads_calls, tmp_path):
    run_id, key = receiver.register()
    other_run, other_key = receiver.register()
    marker = tmp_path / "unpickled"
    evil = result_body(run_id, CreatesFile(marker))
    good = result_body(run_id, "genuine")
    attempts = {
        "random key": signed_headers(run_id, protocol.new_key(), "task_result", 1, evil),
        "another run's key": signed_headers(run_id, other_key, "task_result", 1, evil),
        "garbage signature": {**signed_headers(run_id, key, "task_result", 1, evil),
                              protocol.H_SIGNATURE: "not-hex-at-all"},
        "non-ascii signature": {**signed_headers(run_id, key, "task_result", 1, evil),
                                protocol.H_SIGNATURE: "\u00e9" * 64},
        "signature of another body": signed_headers(run_id, key, "task_result", 1, good),
        "sequence changed": {**signed_headers(run_id, key, "task_result", 1, evil), protocol.H_SEQ: "2"},
        "event type changed": {**signed_headers(run_id, key, "task_started", 1, evil),
                               protocol.H_EVENT: "task_result"},
        "incarnation changed": {**signed_headers(run_id, key, "task_result", 1, evil),
                                protocol.H_INCARNATION: "1"},
        "run changed": {**signed_headers(other_run, key, "task_result", 1, evil), protocol.H_RUN: run_id},
        "non-numeric sequence": {**signed_headers(run_id, key, "task_result", 1, evil), protocol.H_SEQ: "x"},
    }
    for name, headers in attempts.items():
        body = evil
        try:
            status = post(receiver.port, receiver.path, body, headers)
        except UnicodeEncodeError:     # http.client refuses non-latin-1 headers: send them raw
            head = (f"POST {receiver.path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n" + "".join(
                f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode("utf-8")
            status = raw_request(receiver.port, head, body)
        assert status in (401, 403), (name, status)
    assert receiver.frames == [] and loads_calls == [] and not marker.exists()
    assert receiver.gate.rejected.get(401, 0) + receiver.gate.rejected.get(403, 0) == len(attempts)
    # the genuine run is unaffected
    assert send(receiver, run_id, key, "task_result", 1, good) == 200
    assert receiver.wait_for(run_id, "task_result")["result"] == "genuine"


def test_unknown_run_is_rejected(receiver, loads_calls, tmp_path):
    run_id, key = uuid.uuid4().hex, protocol.new_key()   # never registered
    marker = tmp_path / "unpickled"
    body = result_body(run_id, CreatesFile(marker))
    assert send(receiver, run_id, key, "task_result", 1, body) \
        in (401, 403)
    # a run that was forgotten (cancelled) is unknown too
    gone, gone_key = receiver.register()
    receiver.gate.forget(gone)
    body = result_body(gone, CreatesFile(marker))
    assert post(receiver.port, receiver.path, body, signed_headers(gone, gone_key, "task_result", 1, body)) \
        in (401, 403)
    assert receiver.frames == [] and loads_calls == [] and not marker.exists()


def test_replayed_sequences_are_409(receiver, loads_calls):
    run_id, key = receiver.register()
    started = event_body(run_id, "task_started")
    headers = signed_headers(run_id, key, "task_started", 1, started)
    assert post(receiver.port, receiver.path, started, headers) == 200
    assert post(receiver.port, receiver.path, started, headers) == 409        # exact replay
    beat = event_body(run_id, "heartbeat")
    assert send(receiver, run_id, key, "heartbeat", 3, beat) == 200
    assert send(receiver, run_id, key, "heartbeat", 2, beat) == 409
    result = result_body(run_id, "r")
    assert post(receiver.port, receiver.path, result,
                signed_headers(run_id, key, "task_result", 3, result)) == 409       # same seq, other event
    assert loads_calls == []
    assert receiver.types_of(run_id) == ["task_started", "heartbeat"]
    # a requeued job (next incarnation) starts its sequence again; the old incarnation is then stale
    assert post(receiver.port, receiver.path, started,
                signed_headers(run_id, key, "task_started", 1, started, incarnation=1)) == 200
    assert post(receiver.port, receiver.path, result,
                signed_headers(run_id, key, "task_result", 9, result, incarnation=0)) == 409
    assert post(receiver.port, receiver.path, result,
                signed_headers(run_id, key, "task_result", 2, result, incarnation=1)) == 200
    assert receiver.wait_for(run_id, "task_result")["incarnation"] == 1
    assert len(loads_calls) == 1
    assert receiver.gate.rejected.get(409) == 4


def test_oversized_bodies_are_413_without_being_read(small_receiver, loads_calls, tmp_path):
    receiver = small_receiver
    run_id, key = receiver.register()
    marker = tmp_path / "unpickled"
    body = event_body(run_id, "task_result", result_pickle=b64(pickle.dumps(CreatesFile(marker))),
                      padding="x" * 4096)
    assert len(body) > 2048
    assert send(receiver, run_id, key, "task_result", 1, body) == 413
    # a claimed 1 GB body is refused from the headers alone: the server does not wait for it
    headers = signed_headers(run_id, key, "task_result", 1, body)
    head = (f"POST {receiver.path} HTTP/1.1\r\nHost: x\r\nContent-Length: {10**9}\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode()
    started = time.monotonic()
    assert raw_request(receiver.port, head, body[:100]) == 413
    assert time.monotonic() - started < 5
    assert receiver.frames == [] and loads_calls == [] and not marker.exists()
    # a body at the limit is fine
    ok = event_body(run_id, "heartbeat", pad="y" * (2048 - len(event_body(run_id, "heartbeat", pad=""))))
    assert len(ok) == 2048
    assert send(receiver, run_id, key, "heartbeat", 1, ok) == 200


def test_negative_or_bad_content_length_is_rejected(receiver, loads_calls):
    for length in ("-5", "abc"):
        head = f"POST {receiver.path} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode()
        assert raw_request(receiver.port, head) in (400, 413), length
    assert receiver.frames == [] and loads_calls == []


@pytest.mark.parametrize("name", ["not json", "json list", "wrong type", "wrong run", "unknown event",
                                  "spool ref outside the spool dir", "binary"])
def test_malformed_bodies_with_a_valid_signature_are_400(receiver, loads_calls, name):
    run_id, key = receiver.register()
    event = "task_result"
    bodies = {
        "not json": b"{this is not json",
        "json list": b'["task_result"]',
        "wrong type": event_body(run_id, "task_started"),
        "wrong run": result_body("someone-else", 1),
        "unknown event": event_body(run_id, "rm_rf"),
        "spool ref outside the spool dir": event_body(run_id, "task_result",
                                                      result_ref={"path": "/etc/passwd", "sha256": "0"}),
        "binary": b"\xff\xfe\x00\x01",
    }
    if name == "unknown event":
        event = "rm_rf"
    body = bodies[name]
    assert post(receiver.port, receiver.path, body, signed_headers(run_id, key, event, 1, body)) == 400
    assert receiver.frames == [] and loads_calls == []


def test_authentic_but_unloadable_result_becomes_a_transport_error(receiver):
    run_id, key = receiver.register()
    body = event_body(run_id, "task_result", result_pickle=b64(b"not a pickle"))
    assert send(receiver, run_id, key, "task_result", 1, body) == 200
    frame = receiver.wait_for(run_id, "task_error")
    assert frame["error"]["source"] == "transport"
    assert "could not be unpickled" in frame["error"]["message"]


def test_protocol_garbage_does_not_break_the_server(receiver):
    assert raw_request(receiver.port, b"NONSENSE\r\n\r\n") == 400
    huge_header = b"POST " + receiver.path.encode() + b" HTTP/1.1\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n"
    assert raw_request(receiver.port, huge_header) in (400, 413, 431)
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=5) as sock:
        sock.sendall(b"POST /wove/ev")   # half a request, then hang up
    run_id, key = receiver.register()
    body = result_body(run_id, "still fine")
    assert send(receiver, run_id, key, "task_result", 1, body) == 200


def test_keep_alive_connection_survives_rejections(receiver, loads_calls):
    """Rejected requests on one keep-alive connection do not poison the next request on it."""
    import http.client

    run_id, key = receiver.register()
    conn = http.client.HTTPConnection("127.0.0.1", receiver.port, timeout=10)
    try:
        def send(path, body, headers):
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            return response.status

        body = result_body(run_id, 42)
        assert send(receiver.path, body, {}) == 401
        assert send(receiver.path, body, signed_headers(run_id, protocol.new_key(), "task_result", 1, body)) \
            == 401
        assert send("/wrong", body, {}) == 404
        assert send(receiver.path, body, signed_headers(run_id, key, "task_result", 1, body)) == 200
    finally:
        conn.close()
    assert receiver.wait_for(run_id, "task_result")["result"] == 42
    assert len(loads_calls) == 1


def test_receiver_stop_closes_open_connections():
    live = LiveReceiver().start()
    run_id, key = live.register()
    headers = signed_headers(run_id, key, "heartbeat", 1, b"0123456789")
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    sock = socket.create_connection(("127.0.0.1", live.port), timeout=5)
    try:
        # a request that passed the header checks, stuck in the middle of its body
        sock.sendall(b"POST " + live.path.encode() + b" HTTP/1.1\r\nContent-Length: 10\r\n" + head.encode()
                     + b"\r\n12")
        time.sleep(0.2)
        live.stop()
        sock.settimeout(5)
        assert sock.recv(100) == b""   # closed by the server
    finally:
        sock.close()


# --------------------------------------------------------------------------------------------- weave
def test_attacks_while_a_weave_is_running_have_no_effect(tmp_path, loads_calls):
    log = AdapterLog()
    executor = BackendAdapterEnvironmentExecutor("sub", adapter_class=SubprocessAdapter,
                                                 adapter_options={"log": log})
    wove.config(environments={"sub": {"executor": executor, "executor_config": {"callback_max_body": 4096}}})
    go = tmp_path / "go"
    marker = tmp_path / "unpickled"
    statuses = {}

    with weave() as w:
        @w.do(environment="sub")
        def remote():
            deadline = time.monotonic() + 30
            while not os.path.exists(go) and time.monotonic() < deadline:
                time.sleep(0.02)
            return "the real result"

        @w.do
        def attacker():
            wait_until(lambda: any(kind == "task_started" for _, kind, _ in log.events), 30)
            payload = log.payloads[0]
            url = payload["callback_url"]
            port = int(url.split(":")[2].split("/")[0])
            path = "/" + url.split("/", 3)[3]
            run_id, key = payload["run_id"], payload["signing"]["key"]
            evil = result_body(run_id, CreatesFile(marker))
            statuses["wrong path"] = post(port, "/wove/events/guess", evil,
                                          signed_headers(run_id, protocol.new_key(), "task_result", 2, evil))
            statuses["unsigned"] = post(port, path, evil)
            statuses["forged"] = post(port, path, evil,
                                      signed_headers(run_id, protocol.new_key(), "task_result", 2, evil))
            other = uuid.uuid4().hex
            statuses["unknown run"] = post(port, path, evil,
                                           signed_headers(other, protocol.new_key(), "task_result", 1, evil))
            replay = event_body(run_id, "task_started")
            statuses["replayed"] = post(port, path, replay,
                                        signed_headers(run_id, key, "task_started", 1, replay))
            big = event_body(run_id, "task_result", result_pickle=b64(pickle.dumps(CreatesFile(marker))),
                             pad="z" * 10_000)
            statuses["oversized"] = post(port, path, big,
                                         signed_headers(run_id, protocol.new_key(), "task_result", 2, big))
            statuses["malformed, unsigned"] = post(port, path, b"{{{")
            go.write_text("go")
            return "attacked"

    assert statuses == {"wrong path": 404, "unsigned": 401, "forged": 401, "unknown run": 403,
                        "replayed": 409, "oversized": 413, "malformed, unsigned": 401}
    assert w.result.remote == "the real result"
    assert not marker.exists()
    assert len(loads_calls) == 1 and pickle.loads(loads_calls[0]) == "the real result"
    run_id = log.payloads[0]["run_id"]
    assert log.events_of(run_id) == ["task_started", "task_result"]
    assert w.result.jobs["remote"][0].state == "COMPLETED"
    assert log.reap()[run_id] == 0


def test_receiver_honours_callback_token_port_and_url():
    port = free_port()
    log = AdapterLog()
    executor = BackendAdapterEnvironmentExecutor("sub", adapter_class=SubprocessAdapter,
                                                 adapter_options={"log": log})
    wove.config(environments={"sub": {"executor": executor, "executor_config": {
        "callback_host": "127.0.0.1", "callback_port": port, "callback_token": "my-token",
        "callback_url": f"http://localhost:{port}/wove/events/my-token"}}})
    with weave() as w:
        @w.do(environment="sub")
        def remote():
            return "via the advertised url"

    assert w.result.remote == "via the advertised url"
    assert log.payloads[0]["callback_url"] == f"http://localhost:{port}/wove/events/my-token"


def test_callback_token_mismatch_with_url_is_rejected_at_config_time():
    executor = BackendAdapterEnvironmentExecutor("sub", adapter_class=SubprocessAdapter)
    with pytest.raises(ValueError, match="callback_token"):
        wove.config(environments={"sub": {"executor": executor, "executor_config": {
            "callback_token": "a", "callback_url": "http://h:1/wove/events/b"}}})
    with pytest.raises(ValueError, match="callback_url"):
        wove.config(environments={"sub": {"executor": executor, "executor_config": {
            "callback_url": "ftp://h/wove/events/b"}}})


def test_one_receiver_per_environment_started_lazily_and_stopped():
    logs = {name: AdapterLog() for name in ("one", "two")}
    wove.config(environments={
        name: {"executor": BackendAdapterEnvironmentExecutor(name, adapter_class=SubprocessAdapter,
                                                             adapter_options={"log": logs[name]})}
        for name in logs})
    before = listening_sockets()
    seen = {}

    with weave() as w:
        @w.do
        def first():
            seen["before any remote task"] = listening_sockets() - before
            return 1

        @w.do(environment="one")
        def in_one(first):
            return "one"

        @w.do(environment="two")
        def in_two(first):
            return "two"

        @w.do
        def after(in_one, in_two):
            seen["while running"] = listening_sockets() - before
            return 2

    assert seen["before any remote task"] == set()
    assert len(seen["while running"]) == 2
    urls = {logs[name].payloads[0]["callback_url"] for name in logs}
    assert len(urls) == 2
    assert listening_sockets() - before == set()


def test_a_port_in_use_gives_a_clear_start_error():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        executor = BackendAdapterEnvironmentExecutor("sub", adapter_class=SubprocessAdapter)
        wove.config(environments={"sub": {"executor": executor, "executor_config": {"callback_port": port}}})
        with pytest.raises(wove.errors.ExecutorStartError, match="callback_port"), weave() as w:
            @w.do(environment="sub")
            def never():
                return 1


def test_json_of_payload_does_not_contain_the_signing_key_on_the_command_line():
    """Only an adapter that puts the payload in argv exposes it; the default transport is the environment.

    (Sanity check of the helper used elsewhere: the env mode passes nothing on the command line.)
    """
    log = AdapterLog()
    executor = BackendAdapterEnvironmentExecutor("sub", adapter_class=SubprocessAdapter,
                                                 adapter_options={"log": log})
    wove.config(environments={"sub": {"executor": executor}})
    with weave() as w:
        @w.do(environment="sub")
        def remote():
            with open(f"/proc/{os.getpid()}/cmdline", "rb") as handle:
                return handle.read()

    key = log.payloads[0]["signing"]["key"]
    assert key.encode() not in w.result.remote
    assert json.dumps(log.payloads[0]["signing"]).encode() not in w.result.remote
