"""Helpers shared by the dispatch tests.

This module is also imported by worker processes (``tests/dispatch`` is put on their ``PYTHONPATH`` by
``conftest.py``), so exception classes defined here keep their identity across the process boundary.
It must stay cheap to import.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from typing import Any, Callable, Optional

from wove.dispatch import protocol
from wove.executors.adapter import BackendAdapter

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


# --------------------------------------------------------------------------------------------- errors
class MyError(Exception):
    """A user exception type that both sides can import: it must come back as itself."""


class CreatesFile:
    """Unpickling this creates a file: proof of whether anything was unpickled, without any patching."""

    def __init__(self, path: Any):
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


class Unloadable(Exception):
    """Pickles fine, but cannot be unpickled (``__init__`` needs two arguments): tests the fallback."""

    def __init__(self, a: Any, b: Any):
        super().__init__(f"{a}/{b}")


# --------------------------------------------------------------------------------------------- leaks
def children() -> set[int]:
    pids: set[int] = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/children") as handle:
                pids.update(int(p) for p in handle.read().split())
        except OSError:
            pass
    return pids


def listening_sockets() -> set[str]:
    """``host:port`` of every TCP socket in LISTEN state that this process holds open."""
    listening: dict[str, str] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as handle:
                lines = handle.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A":
                listening[fields[9]] = fields[1]
    mine: set[str] = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inode = target[8:-1]
            if inode in listening:
                mine.add(listening[inode])
    return mine


def threads() -> dict[int, str]:
    return {t.ident or 0: t.name for t in threading.enumerate()}


def spool_files(root: str) -> list[str]:
    found = []
    for dirpath, _dirnames, filenames in os.walk(root):
        found.extend(os.path.join(dirpath, name) for name in filenames)
    return found


# --------------------------------------------------------------------------------------------- waiting
def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        time.sleep(interval)


# --------------------------------------------------------------------------------------------- adapter
class AdapterLog:
    """What a ``SubprocessAdapter`` saw; shared with the test through ``adapter_options``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.starts = 0
        self.closes = 0
        self.payloads: list[dict[str, Any]] = []
        self.encoded: list[str] = []
        self.frames: list[dict[str, Any]] = []
        self.spool_at_submit: list[tuple[str, int, int]] = []   # (path, file mode, dir mode)
        self.args_at_submit: list[tuple[str, int, int, int]] = []   # spooled arguments: (path, modes, size)
        self.procs: dict[str, subprocess.Popen] = {}
        self.cancels: list[str] = []
        self.events: list[tuple[str, str, float]] = []         # (run_id, type, monotonic)
        self.in_flight = 0
        self.max_in_flight = 0
        self.on_event_hook: Optional[Callable[[BackendAdapter, dict[str, Any]], None]] = None

    def events_of(self, run_id: str) -> list[str]:
        return [kind for rid, kind, _ in self.events if rid == run_id]

    def reap(self, timeout: float = 20.0) -> dict[str, Optional[int]]:
        codes = {}
        for run_id, proc in self.procs.items():
            try:
                codes[run_id] = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[run_id] = proc.wait()
        return codes


class SubprocessAdapter(BackendAdapter):
    """Runs each payload as ``python -m wove.backend_worker`` in a child process of the weave.

    ``mode`` is ``"env"`` (payload in ``WOVE_BACKEND_PAYLOAD``) or ``"argv"`` (payload as ``argv[1]``).
    """

    def __init__(self, *, log: Optional[AdapterLog] = None, mode: str = "env", kill_on_cancel: bool = True,
                 kill_on_close: bool = True, extra_env: Optional[dict[str, str]] = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.log = log if log is not None else AdapterLog()
        self.mode = mode
        self.kill_on_cancel = kill_on_cancel
        self.kill_on_close = kill_on_close
        self.extra_env = extra_env or {}

    async def start(self) -> None:
        self.log.starts += 1

    def submit(self, payload: dict[str, Any], frame: dict[str, Any]) -> int:   # sync submit is allowed
        encoded = self.encode_payload(payload)
        log = self.log
        with log.lock:
            log.payloads.append(payload)
            log.encoded.append(encoded)
            log.frames.append(frame)
            if encoded.startswith(protocol.SPOOL_PREFIX):
                path = encoded[len(protocol.SPOOL_PREFIX):]
                log.spool_at_submit.append((path, os.stat(path).st_mode & 0o777,
                                            os.stat(os.path.dirname(path)).st_mode & 0o777))
            fields = [payload.get("args_pickle") or "", *(field for _, field in payload.get("shared") or ())]
            for args_field in fields:
                if args_field.startswith(protocol.SPOOL_PREFIX):
                    path = args_field[len(protocol.SPOOL_PREFIX):]
                    st = os.stat(path)
                    log.args_at_submit.append((path, st.st_mode & 0o777,
                                               os.stat(os.path.dirname(path)).st_mode & 0o777, st.st_size))
            log.in_flight += 1
            log.max_in_flight = max(log.max_in_flight, log.in_flight)
        env = {k: v for k, v in os.environ.items() if k != protocol.PAYLOAD_ENV}
        env.update(self.extra_env)
        env["WOVE_TEST_ATTEMPT"] = str(frame.get("attempt") or 0)
        argv = [sys.executable, "-m", "wove.backend_worker"]
        if self.mode == "argv":
            argv.append(encoded)
        else:
            env[protocol.PAYLOAD_ENV] = encoded
        proc = subprocess.Popen(argv, env=env, cwd=REPO, stdin=subprocess.DEVNULL)
        log.procs[payload["run_id"]] = proc
        return proc.pid

    async def cancel(self, run_id: str, submission: Any, frame: dict[str, Any]) -> None:
        with self.log.lock:
            self.log.cancels.append(run_id)
            self.log.in_flight -= 1
        proc = self.log.procs.get(run_id)
        if self.kill_on_cancel and proc is not None and proc.poll() is None:
            proc.terminate()
            proc.send_signal(signal.SIGCONT)   # in case a test froze it

    async def close(self, grace: float = 10.0) -> None:
        """Give workers that already reported a moment to exit on their own, then kill the rest."""
        self.log.closes += 1
        if not self.kill_on_close:
            return
        deadline = time.monotonic() + grace
        while any(p.poll() is None for p in self.log.procs.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for proc in self.log.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def on_event(self, frame: dict[str, Any]) -> Optional[dict[str, Any]]:
        with self.log.lock:
            self.log.events.append((frame.get("run_id", ""), frame.get("type", ""), time.monotonic()))
            if frame.get("type") in protocol.OUTCOME_TYPES and frame.get("run_id") not in self.log.cancels:
                self.log.in_flight -= 1
        if self.log.on_event_hook is not None:
            self.log.on_event_hook(self, frame)
        return frame


# --------------------------------------------------------------------------------------------- receiver
def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def make_payload(callback_url: str, run_id: str, key: str, func: Callable[..., Any], args: tuple = (),
                 kwargs: Optional[dict[str, Any]] = None, **extra: Any) -> dict[str, Any]:
    """A payload like the one ``BackendAdapterEnvironmentExecutor.build_payload`` makes."""
    import cloudpickle

    payload = {
        "version": protocol.PAYLOAD_VERSION, "adapter": "test", "callback_url": callback_url,
        "run_id": run_id, "task_id": "t", "task_name": "t",
        "callable_pickle": b64(cloudpickle.dumps(func)),
        "args_pickle": b64(cloudpickle.dumps((tuple(args), dict(kwargs or {})))),
        "delivery": {}, "signing": {"alg": "hmac-sha256", "key": key},
        **protocol.version_info(), "max_body": 0, "spool_dir": "", "result_channel": "http",
    }
    payload.update(extra)
    return payload


class LiveReceiver:
    """An ``EventGate`` + ``CallbackReceiver`` on an event loop in a background thread."""

    def __init__(self, *, max_body: Optional[int] = None, port: int = 0, spool_dir: Optional[str] = None,
                 token: str = "tok-en_123"):
        from wove.dispatch.events import EventGate
        from wove.dispatch.receiver import DEFAULT_MAX_BODY, CallbackReceiver

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-receiver-loop", daemon=True)
        self.gate = EventGate(spool_dir)
        self.frames: list[dict[str, Any]] = []
        self.receiver = CallbackReceiver(self.gate, self.frames.append, token=token, port=port,
                                         max_body=max_body or DEFAULT_MAX_BODY)
        self.started = False

    def call(self, coro: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> LiveReceiver:
        self.thread.start()
        self.call(self.receiver.start())
        self.started = True
        return self

    def stop(self) -> None:
        if self.started:
            self.call(self.receiver.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    @property
    def port(self) -> int:
        return self.receiver.port

    @property
    def url(self) -> str:
        return self.receiver.url()

    @property
    def path(self) -> str:
        return self.receiver.path

    def register(self) -> tuple[str, str]:
        run_id, key = uuid.uuid4().hex, protocol.new_key()
        self.gate.register(run_id, key)
        return run_id, key

    def payload(self, func: Callable[..., Any], args: tuple = (), kwargs: Optional[dict[str, Any]] = None,
                **extra: Any) -> dict[str, Any]:
        run_id, key = self.register()
        return make_payload(self.url, run_id, key, func, args, kwargs, **extra)

    def frames_of(self, run_id: str) -> list[dict[str, Any]]:
        return [f for f in list(self.frames) if f.get("run_id") == run_id]

    def types_of(self, run_id: str) -> list[str]:
        return [f["type"] for f in self.frames_of(run_id)]

    def wait_for(self, run_id: str, kind: str, timeout: float = 15.0) -> dict[str, Any]:
        return wait_until(lambda: next((f for f in self.frames_of(run_id) if f["type"] == kind), None),
                          timeout)


def signed_headers(run_id: str, key: str, event: str, seq: int, body: bytes,
                   incarnation: int = 0) -> dict[str, str]:
    return {protocol.H_RUN: run_id, protocol.H_EVENT: event, protocol.H_SEQ: str(seq),
            protocol.H_INCARNATION: str(incarnation),
            protocol.H_SIGNATURE: protocol.sign(key, run_id, event, incarnation, seq, body)}


def event_body(run_id: str, event: str, **fields: Any) -> bytes:
    return json.dumps({"type": event, "run_id": run_id, "task_id": "t", **fields}).encode()


def post(port: int, path: str, body: bytes, headers: Optional[dict[str, str]] = None,
         method: str = "POST", host: str = "127.0.0.1") -> int:
    """One HTTP request on a fresh connection; returns the status."""
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def raw_request(port: int, head: bytes, body: bytes = b"", host: str = "127.0.0.1") -> int:
    """Send raw bytes (headers, maybe a partial body) and parse the status line of the answer."""
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(head + body)
        data = b""
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1]) if data else 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_worker(payload: Optional[Any], *, via: str = "env", env: Optional[dict[str, str]] = None,
               timeout: float = 60.0, **popen: Any) -> subprocess.CompletedProcess:
    """Run ``python -m wove.backend_worker`` on an (encoded or dict) payload and wait for it."""
    proc = start_worker(payload, via=via, env=env, **popen)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def start_worker(payload: Optional[Any], *, via: str = "env", env: Optional[dict[str, str]] = None,
                 **popen: Any) -> subprocess.Popen:
    encoded = protocol.encode_inline(payload) if isinstance(payload, dict) else payload
    full_env = {k: v for k, v in os.environ.items() if k != protocol.PAYLOAD_ENV}
    full_env.update(env or {})
    argv = [sys.executable, "-m", "wove.backend_worker"]
    if encoded is not None:
        if via == "argv":
            argv.append(encoded)
        else:
            full_env[protocol.PAYLOAD_ENV] = encoded
    popen.setdefault("stdout", subprocess.PIPE)
    popen.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen(argv, env=full_env, cwd=REPO, stdin=subprocess.DEVNULL, text=True, **popen)


SIGNALS = {"SIGTERM": signal.SIGTERM, "SIGUSR1": signal.SIGUSR1}
