"""The callback receiver against unauthenticated and half-authenticated clients (issue 10, points 2-4, 6-8):
deadlines on every read, bodies of rejected requests never read, descriptor and per-peer caps that evict
the oldest idle connection, a small streamed body budget, strict HTTP parsing, an opt-in restricted
unpickler, and finished runs' late events never decoded."""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from dispatch_helpers import CreatesFile, LiveReceiver, b64, event_body, post, signed_headers, wait_until

from wove.dispatch import events, protocol
from wove.dispatch import receiver as receiver_module
from wove.dispatch.receiver import DEFAULT_MAX_BODY, CallbackReceiver

pytestmark = pytest.mark.timeout(60)


class RunsShell:
    """Unpickling this runs ``touch path`` through ``os.system``: what a malicious result would carry."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def live(**options):
    """A ``LiveReceiver`` whose receiver takes ``options`` (caps, body limit) and whose gate may be replaced."""
    gate = options.pop("gate", None)
    rec = LiveReceiver(max_body=options.get("max_body"))
    if gate is not None:
        rec.gate = gate
    rec.receiver = CallbackReceiver(rec.gate, rec.frames.append, token=rec.receiver.token, **options)
    return rec.start()


@pytest.fixture
def rec():
    receiver = live()
    yield receiver
    receiver.stop()


def signed_head(path, run_id, key, event, seq, body, length=None, extra=b""):
    headers = signed_headers(run_id, key, event, seq, body)
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    size = len(body) if length is None else length
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n{lines}".encode() + extra + b"\r\n")


def answer(sock, timeout=5.0):
    """Read until the server closes (or ``timeout``): ``(status, closed)``."""
    sock.settimeout(timeout)
    data, closed = b"", False
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                closed = True
                break
            data += chunk
    except socket.timeout:
        pass
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    return status, closed


def connect(port, source=None):
    sock = socket.socket()
    if source:
        sock.bind((source, 0))
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    return sock


def is_closed(sock, wait=0.5):
    sock.settimeout(wait)
    try:
        return sock.recv(1) == b""
    except socket.timeout:
        return False
    except OSError:
        return True


# --------------------------------------------------------------------------------------------- point 2
@pytest.mark.parametrize("path", ["/x", "/wove/events/wrong-token"])
def test_a_slow_body_on_a_wrong_path_is_answered_and_closed_without_reading_it(rec, path):
    """Before: the 404 path waited forever for the promised 1,000 bytes (the read had no deadline)."""
    with connect(rec.port) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n".encode() + b"0123456789")
        started = time.monotonic()
        status, closed = answer(sock, timeout=5)
    assert (status, closed) == (404, True)
    assert time.monotonic() - started < 2


def test_unknown_runs_and_bad_signatures_are_answered_without_reading_the_body(rec, tmp_path):
    run_id, key = rec.register()
    body = event_body(run_id, "heartbeat")
    assert post(rec.port, rec.path, body, signed_headers(run_id, key, "heartbeat", 1, body)) == 200
    for head in (signed_head(rec.path, "not-a-run", key, "heartbeat", 1, body, length=1000),      # 403
                 signed_head(rec.path, run_id, key, "heartbeat", 1, body, length=1000),           # 409
                 f"POST {rec.path} HTTP/1.1\r\nContent-Length: 1000\r\n\r\n".encode()):           # 401
        with connect(rec.port) as sock:
            sock.sendall(head + b"partial")
            status, closed = answer(sock, timeout=5)
        assert status in (401, 403, 409) and closed
    assert rec.types_of(run_id) == ["heartbeat"]


def test_every_read_has_a_deadline(monkeypatch, rec):
    """A signed head followed by a body that never completes, and a head that never completes, are dropped."""
    monkeypatch.setattr(receiver_module, "BODY_SECONDS", 0.5)
    monkeypatch.setattr(receiver_module, "HEAD_SECONDS", 0.5)
    run_id, key = rec.register()
    body = event_body(run_id, "heartbeat")
    slow_body, slow_head = connect(rec.port), connect(rec.port)
    try:
        slow_body.sendall(signed_head(rec.path, run_id, key, "heartbeat", 1, body) + body[:5])
        slow_head.sendall(b"POST " + rec.path.encode() + b" HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        wait_until(lambda: is_closed(slow_body, 0.1) and is_closed(slow_head, 0.1), timeout=5)
        assert time.monotonic() - started < 4
    finally:
        slow_body.close()
        slow_head.close()
    # the run's body slot is free again: the genuine event goes through
    assert post(rec.port, rec.path, body, signed_headers(run_id, key, "heartbeat", 1, body)) == 200


def test_at_the_connection_cap_the_oldest_idle_connection_is_evicted_not_the_new_one():
    rec = live(max_connections=20, max_per_peer=20)
    socks = []
    try:
        for _ in range(30):
            sock = connect(rec.port)
            sock.sendall(b"POST /x HTTP/1.1\r\n")   # an idle client, stuck in its request head
            socks.append(sock)
            time.sleep(0.01)
        run_id, key = rec.register()
        body = event_body(run_id, "heartbeat")
        assert post(rec.port, rec.path, body, signed_headers(run_id, key, "heartbeat", 1, body)) == 200
        assert rec.receiver.evicted >= 11
        oldest_closed = [is_closed(s, 0.2) for s in socks[:10]]
        newest_open = [not is_closed(s, 0.05) for s in socks[-5:]]
        assert all(oldest_closed) and all(newest_open)
    finally:
        for sock in socks:
            sock.close()
        rec.stop()


def test_one_peer_cannot_take_the_slots_of_others():
    rec = live(max_connections=20, max_per_peer=8)
    greedy, other = [], []
    try:
        for _ in range(15):
            sock = connect(rec.port, source="127.0.0.2")
            sock.sendall(b"POST /x HTTP/1.1\r\n")
            greedy.append(sock)
            time.sleep(0.01)
        for _ in range(8):
            sock = connect(rec.port, source="127.0.0.3")
            sock.sendall(b"POST /x HTTP/1.1\r\n")
            other.append(sock)
            time.sleep(0.01)
        time.sleep(0.2)
        assert sum(not is_closed(s, 0.05) for s in greedy) == 8   # its own oldest were evicted
        assert all(not is_closed(s, 0.05) for s in other)         # nobody else's
    finally:
        for sock in greedy + other:
            sock.close()
        rec.stop()


ISOLATED_RECEIVER = textwrap.dedent("""
    import asyncio, json, logging, resource, sys
    sys.path.insert(0, {helpers!r})
    soft, hard = {soft}, {hard}
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="LOG %(name)s %(message)s")
    from wove.dispatch import protocol
    from wove.dispatch.events import EventGate
    from wove.dispatch.receiver import CallbackReceiver

    async def main():
        gate = EventGate()
        run_id, key = "run1", protocol.new_key()
        gate.register(run_id, key)
        frames = []
        rec = CallbackReceiver(gate, frames.append, token="tok")
        await rec.start()
        hold = [open("/dev/null") for _ in range({hold})]   # descriptors used by the rest of the process
        print(json.dumps({{"port": rec.port, "key": key, "cap": rec.max_connections,
                          "limit": resource.getrlimit(resource.RLIMIT_NOFILE)}}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        print(json.dumps({{"frames": [f["type"] for f in frames]}}), flush=True)
        await rec.stop()
        for handle in hold:
            handle.close()

    asyncio.run(main())
""")


def isolated_receiver(soft, hard, hold=0):
    code = ISOLATED_RECEIVER.format(helpers=os.path.dirname(__file__), soft=soft, hard=hard, hold=hold)
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    info = json.loads(proc.stdout.readline())
    return proc, info


def finish(proc):
    out, err = proc.communicate("\n", timeout=20)
    return json.loads(out.strip().splitlines()[-1]), err


def genuine_heartbeat(port, key, seq=1, attempts=50):
    body = event_body("run1", "heartbeat")
    for _ in range(attempts):
        try:
            status = post(port, "/wove/events/tok", body, signed_headers("run1", key, "heartbeat", seq, body))
        except OSError:
            status = 0
        if status == 200:
            return status
        time.sleep(0.1)
    return status


def test_idle_clients_cannot_exhaust_descriptors_under_a_low_soft_limit():
    """Before: 195 idle connections under ``ulimit -n 200`` made accept fail with EMFILE and flood the log."""
    hard = __import__("resource").getrlimit(__import__("resource").RLIMIT_NOFILE)[1]
    proc, info = isolated_receiver(64, hard)
    socks = []
    try:
        assert info["limit"][0] == info["limit"][1] == hard   # the soft limit was raised to the hard one
        assert info["cap"] <= max(16, hard // 4)
        for _ in range(200):
            sock = connect(info["port"])
            sock.sendall(b"POST /x HTTP/1.1\r\nContent-Length: 1000\r\n")
            socks.append(sock)
        assert genuine_heartbeat(info["port"], info["key"], attempts=1) == 200
    finally:
        for sock in socks:
            sock.close()
        result, err = finish(proc)
    assert result["frames"] == ["heartbeat"]
    assert "out of system resource" not in err and "Too many open files" not in err, err[-2000:]


def test_accept_errors_are_logged_at_most_once_a_second_and_genuine_events_still_arrive():
    """Descriptors used up by the rest of the process: accept fails, idle clients are dropped to make room."""
    proc, info = isolated_receiver(64, 64, hold=40)
    socks = []
    started = time.monotonic()
    try:
        for _ in range(120):
            try:
                sock = connect(info["port"])
                sock.sendall(b"POST /x HTTP/1.1\r\n")
                socks.append(sock)
            except OSError:
                pass
        assert genuine_heartbeat(info["port"], info["key"]) == 200
    finally:
        for sock in socks:
            sock.close()
        result, err = finish(proc)
    elapsed = time.monotonic() - started
    assert result["frames"] == ["heartbeat"]
    lines = [line for line in err.splitlines() if "accept" in line]
    assert len(lines) <= elapsed + 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]


# --------------------------------------------------------------------------------------------- point 3
def test_the_in_memory_body_limit_is_a_few_mib_and_larger_bodies_are_refused_unread(rec):
    assert DEFAULT_MAX_BODY <= 8 * 1024 * 1024
    run_id, key = rec.register()
    with connect(rec.port) as sock:
        sock.sendall(signed_head(rec.path, run_id, key, "task_result", 1, b"", length=DEFAULT_MAX_BODY + 1))
        status, closed = answer(sock, timeout=5)
    assert (status, closed) == (413, True)


def post_in_thread(rec, run_id, key, event, seq):
    """POST a signed event from a thread; returns a list that receives the status."""
    body = event_body(run_id, event)
    status: list[int] = []
    thread = threading.Thread(target=lambda: status.append(
        post(rec.port, rec.path, body, signed_headers(run_id, key, event, seq, body))), daemon=True)
    thread.start()
    return status, thread


def test_one_body_in_flight_per_run_the_next_waits_its_turn(rec):
    run_id, key = rec.register()
    body = event_body(run_id, "heartbeat")
    with connect(rec.port) as slow:
        slow.sendall(signed_head(rec.path, run_id, key, "heartbeat", 1, body) + body[:5])
        time.sleep(0.2)
        second, thread = post_in_thread(rec, run_id, key, "task_started", 2)
        time.sleep(0.5)
        assert second == [] and rec.frames == []      # its body is not read while the first one's is
        slow.sendall(body[5:])
        status, _ = answer(slow, timeout=1)
    thread.join(5)
    assert status == 200 and second == [200]
    assert rec.types_of(run_id) == ["heartbeat", "task_started"]


def test_waiting_for_a_runs_turn_is_bounded(rec, monkeypatch):
    monkeypatch.setattr(receiver_module, "SLOT_WAIT_SECONDS", 0.5)
    run_id, key = rec.register()
    body = event_body(run_id, "heartbeat")
    with connect(rec.port) as stuck:
        stuck.sendall(signed_head(rec.path, run_id, key, "heartbeat", 1, body) + body[:5])
        time.sleep(0.2)
        second = event_body(run_id, "task_started")
        assert post(rec.port, rec.path, second, signed_headers(run_id, key, "task_started", 2, second)) == 503
    time.sleep(0.2)
    assert post(rec.port, rec.path, second, signed_headers(run_id, key, "task_started", 2, second)) == 200


def test_junk_for_a_known_run_delays_but_cannot_starve_its_genuine_events(rec):
    """Someone with the token and a run id streams junk-signed bodies for it over and over."""
    run_id, key = rec.register()
    stop = threading.Event()

    def junk():
        junk_body = b"x" * (DEFAULT_MAX_BODY // 2)
        forged = signed_headers(run_id, protocol.new_key(), "heartbeat", 10**6, junk_body)
        while not stop.is_set():
            try:
                post(rec.port, rec.path, junk_body, forged)
            except OSError:
                pass

    attackers = [threading.Thread(target=junk, daemon=True) for _ in range(6)]
    for thread in attackers:
        thread.start()
    try:
        time.sleep(0.3)
        for seq in range(1, 6):
            body = event_body(run_id, "heartbeat")
            assert post(rec.port, rec.path, body, signed_headers(run_id, key, "heartbeat", seq, body)) == 200
    finally:
        stop.set()
        for thread in attackers:
            thread.join(10)
    assert rec.types_of(run_id) == ["heartbeat"] * 5
    assert rec.gate.rejected.get(401, 0) > 0


def test_bodies_in_memory_have_a_total_budget(rec, monkeypatch):
    monkeypatch.setattr(receiver_module, "SLOT_WAIT_SECONDS", 0.5)
    budget = receiver_module.MAX_BUFFERED
    size = DEFAULT_MAX_BODY
    holders = []
    try:
        for _ in range(budget // size):
            run_id, key = rec.register()
            sock = connect(rec.port)
            sock.sendall(signed_head(rec.path, run_id, key, "task_result", 1, b"", length=size) + b"x" * 1000)
            holders.append(sock)
        time.sleep(0.3)
        run_id, key = rec.register()
        body = event_body(run_id, "heartbeat")
        assert post(rec.port, rec.path, body, signed_headers(run_id, key, "heartbeat", 1, body)) == 503
    finally:
        for sock in holders:
            sock.close()
    time.sleep(0.3)
    assert post(rec.port, rec.path, body, signed_headers(run_id, key, "heartbeat", 1, body)) == 200


def test_large_bodies_are_hashed_while_streaming_and_decoded_off_the_loop(rec, monkeypatch):
    threads_seen = []
    real = events.loads

    def recording(data, buffers=None):
        threads_seen.append(threading.current_thread().name)
        return real(data, buffers)

    monkeypatch.setattr(events, "loads", recording)
    run_id, key = rec.register()
    value = os.urandom(2 * 1024 * 1024)
    body = event_body(run_id, "task_result", result_pickle=b64(pickle.dumps(value)))
    assert len(body) < DEFAULT_MAX_BODY
    assert post(rec.port, rec.path, body, signed_headers(run_id, key, "task_result", 1, body)) == 200
    assert rec.wait_for(run_id, "task_result")["result"] == value
    assert threads_seen and all(name.startswith("wove-decode") for name in threads_seen)


# --------------------------------------------------------------------------------------------- point 4
@pytest.mark.parametrize("evil", [CreatesFile, RunsShell])
def test_the_restricted_unpickler_refuses_globals_outside_the_allow_list(tmp_path, evil):
    marker = tmp_path / "pwned"
    rec = live(gate=events.EventGate(allowed_modules=("collections",)))
    try:
        run_id, key = rec.register()
        body = event_body(run_id, "task_result", result_pickle=b64(pickle.dumps(evil(marker))))
        assert post(rec.port, rec.path, body, signed_headers(run_id, key, "task_result", 1, body)) == 200
        frame = rec.wait_for(run_id, "task_error")
    finally:
        rec.stop()
    assert not marker.exists()
    message = frame["error"]["message"]
    assert "refused" in message and "unpickle_allow" in message and "'collections'" in message
    assert ("io.open" in message) if evil is CreatesFile else ("posix.system" in message)


def test_the_restricted_unpickler_rebuilds_allowed_values_and_builtin_exceptions():
    from collections import OrderedDict

    rec = live(gate=events.EventGate(allowed_modules=("collections",)))
    try:
        run_id, key = rec.register()
        value = {"a": [1, 2.5, "x", b"y", (True, None)], "o": OrderedDict(k=1), "s": {1, 2}}
        body = event_body(run_id, "task_result", result_pickle=b64(pickle.dumps(value)))
        assert post(rec.port, rec.path, body, signed_headers(run_id, key, "task_result", 1, body)) == 200
        assert rec.wait_for(run_id, "task_result")["result"] == value
        other, other_key = rec.register()
        error = {"kind": "KeyError", "message": "'k'", "traceback": "", "retryable": False, "source": "task"}
        body = event_body(other, "task_error", error=error, exception_pickle=b64(pickle.dumps(KeyError("k"))))
        assert post(rec.port, rec.path, body, signed_headers(other, other_key, "task_error", 1, body)) == 200
        exc = rec.wait_for(other, "task_error")["exception"]
        assert isinstance(exc, KeyError) and exc.args == ("k",)
    finally:
        rec.stop()


# --------------------------------------------------------------------------------------------- point 6
def test_a_finished_runs_late_task_cancelled_is_acknowledged_but_never_decoded(rec, tmp_path):
    marker = tmp_path / "unpickled"
    run_id, key = rec.register()
    rec.gate.finish(run_id)
    body = event_body(run_id, "task_cancelled", exception_pickle=b64(pickle.dumps(CreatesFile(marker))),
                      error={"kind": "x", "message": "y"})
    assert post(rec.port, rec.path, body, signed_headers(run_id, key, "task_cancelled", 1, body)) == 200
    frame = rec.wait_for(run_id, "task_cancelled")
    assert not marker.exists()
    assert frame == {"type": "task_cancelled", "run_id": run_id, "incarnation": 0, "late": True}
    # and a late result of a finished run is acknowledged and dropped
    late = event_body(run_id, "task_result", result_pickle=b64(pickle.dumps(CreatesFile(marker))))
    assert post(rec.port, rec.path, late, signed_headers(run_id, key, "task_result", 2, late)) == 200
    time.sleep(0.1)
    assert not marker.exists() and rec.types_of(run_id) == ["task_cancelled"]


# --------------------------------------------------------------------------------------------- point 7
@pytest.mark.parametrize("count", [101, 6000])
def test_too_many_headers_are_refused(rec, count):
    run_id, key = rec.register()
    body = event_body(run_id, "heartbeat")
    extra = b"".join(b"X-%d: b\r\n" % i for i in range(count))
    with connect(rec.port) as sock:
        try:
            sock.sendall(signed_head(rec.path, run_id, key, "heartbeat", 1, body, extra=extra) + body)
        except OSError:   # the server may close before the whole flood is written
            pass
        status, closed = answer(sock)
    assert status == 431 and closed
    assert rec.frames == []


def test_a_head_over_8_kib_is_refused(rec):
    with connect(rec.port) as sock:
        sock.sendall(b"POST " + rec.path.encode() + b" HTTP/1.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n")
        status, closed = answer(sock)
    assert status == 431 and closed


def test_404_bodies_are_never_read(rec):
    """Before: up to 1 MiB of a 404 body was read into memory (150 of them kept 155 MB)."""
    with connect(rec.port) as sock:
        sock.sendall(f"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: {1024 * 1024}\r\n\r\n".encode())
        status, closed = answer(sock, timeout=3)
    assert (status, closed) == (404, True)


# --------------------------------------------------------------------------------------------- point 8
@pytest.mark.parametrize("headers", [
    [b"Transfer-Encoding: chunked"],
    [b"Transfer-Encoding: identity"],
    [b"Content-Length: 5", b"Content-Length: 5"],
    [b"Content-Length: 5_0"],
    [b"Content-Length: +5"],
    [b"Content-Length: -5"],
    [b"Content-Length: 5 0"],
    [b"Content-Length: 0x5"],
    [b"Content-Length: \xd9\xa5"],   # an Arabic-Indic digit five: int() would accept it
    [b"Content-Length : 5"],
    [b"Content-Length: 5", b" folded"],
])
def test_ambiguous_framing_is_a_400_and_closes(rec, headers):
    run_id, key = rec.register()
    body = event_body(run_id, "heartbeat")
    signed = signed_headers(run_id, key, "heartbeat", 1, body)
    lines = b"".join(f"{k}: {v}\r\n".encode() for k, v in signed.items())
    head = b"POST " + rec.path.encode() + b" HTTP/1.1\r\nHost: x\r\n" + lines + b"\r\n".join(headers) + b"\r\n\r\n"
    with connect(rec.port) as sock:
        sock.sendall(head + b"5\r\nhello\r\n0\r\n\r\n")
        status, closed = answer(sock)
    assert (status, closed) == (400, True)
    assert rec.frames == []


def test_strict_parsing_still_accepts_ordinary_requests(rec):
    run_id, key = rec.register()
    body = event_body(run_id, "heartbeat")
    head = signed_head(rec.path, run_id, key, "heartbeat", 1, body).replace(
        b"Content-Length: ", b"content-length:\t ")
    with connect(rec.port) as sock:
        sock.sendall(head + body)
        sock.settimeout(5)
        data = sock.recv(4096)
    assert data.startswith(b"HTTP/1.1 200")
    assert rec.types_of(run_id) == ["heartbeat"]


# --------------------------------------------------------------------------------------------- point 4, weave
def test_unpickle_allow_in_a_real_weave_refuses_results_outside_it_and_keeps_allowed_ones(tmp_path):
    from dispatch_helpers import SubprocessAdapter

    import wove
    from wove import BackendAdapterEnvironmentExecutor, weave

    def environment(allow):
        executor = BackendAdapterEnvironmentExecutor("sub", adapter_class=SubprocessAdapter)
        return {"executor": executor, "executor_config": {"unpickle_allow": allow}}

    wove.config(environments={"strict": environment(["json"]), "collections": environment(["collections"])})
    with weave(error_mode="return") as w:
        @w.do(environment="strict")
        def refused():
            import collections
            return collections.OrderedDict(a=1)

        @w.do(environment="collections")
        def allowed():
            import collections
            return collections.OrderedDict(a=1)

        @w.do(environment="strict")
        def plain():
            return {"numbers": [1, 2.5], "text": "x", "raw": b"y"}

    from collections import OrderedDict
    assert w.result.allowed == OrderedDict(a=1)
    assert w.result.plain == {"numbers": [1, 2.5], "text": "x", "raw": b"y"}
    error = w.result.refused
    assert isinstance(error, Exception)
    assert "collections.OrderedDict" in str(error) and "unpickle_allow" in str(error)


@pytest.mark.parametrize("bad", ["numpy", ["numpy", ""], ["os;rm"], [1]])
def test_unpickle_allow_is_validated(bad):
    from dispatch_helpers import SubprocessAdapter

    import wove
    from wove import BackendAdapterEnvironmentExecutor

    executor = BackendAdapterEnvironmentExecutor("sub", adapter_class=SubprocessAdapter)
    with pytest.raises(ValueError, match="unpickle_allow must be a list of module names"):
        wove.config(environments={"x": {"executor": executor, "executor_config": {"unpickle_allow": bad}}})
