"""What unauthenticated or junk-signing clients can do to a weave through its callback receiver (loopback only).

    .venv/bin/python benchmarks/receiver_attacks.py [--attacks control,idle,junk,flood]

Each attack gets its own fresh weave process, so the numbers are independent. That process runs a real
``weave()`` with three tasks: a local async *ticker* (sleeps 5 ms in a loop and records the largest gap
between its wake-ups), and two remote tasks in an environment whose ``BackendAdapter`` records the payloads
instead of submitting jobs. Once both payloads exist the adapter starts the attacker: this same script in
a separate process (``--client``), so the attacker's CPU and memory are not counted. The attacker gets the
port, the callback token and a live run id, as a client that read a leaked callback URL would have, plus
(through its environment, never ``argv``) that run's signing key, which it uses only for the genuine probes.

Measured in the weave process, over the attack window:

* RSS growth: ``VmRSS``/``VmHWM`` from ``/proc/self/status``, against ``VmRSS`` just before the attack.
  "peak" is the high-water mark (or the largest 50 ms sample), "end" what is still resident one second
  after the attacker has gone.
* max stall: the ticker's largest gap between wake-ups, minus the 5 ms it asked to sleep.
* CPU: user + system seconds the weave process used during the attack (for context; no target).
* genuine events: (a) the attacker process also sends a correctly signed ``heartbeat`` for the live run
  about once a second, each on a fresh connection with a 5 s limit, and counts the HTTP 200s; (b) a few
  seconds into the attack the adapter starts a real ``python -m wove.backend_worker`` for the other remote
  task; its ``task_result`` must arrive (be accepted) before the attack ends.

The attacks (every one bounded in time and in count):

* idle: 400 connections send ``POST /x`` with ``Content-Length: 1000`` and 10 bytes of body, and 100 send a
  request line for the real path and then one header line every 2 s; all are held, and re-opened when the
  weave drops them. The weave runs with its soft ``RLIMIT_NOFILE`` lowered to 256 (hard limit unchanged).
* junk: 20 connections with the token and the live run id post ``task_result`` bodies with a junk signature,
  each declaring 200 MB (or the receiver's limit, if lower), streamed as fast as loopback allows and repeated
  on the same or a new connection, at most 2 GiB in all; bodies left unfinished are held to the end.
* flood: requests with 6,000 ``X-a: b`` headers, back to back on 5 keep-alive connections, to a wrong path
  and to the real path (unsigned, and junk-signed with an empty body), at most 20,000; plus 300 ``POST /x``
  with 1 MiB bodies, from 150 connections at once.
* control: no attack, only the probes and the worker (the noise floor of the measurement).

Targets: RSS growth under 32 MB, stall under 50 ms, genuine events always accepted. This is a benchmark,
not a test: it prints a table and exits 0 whatever it finds.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

KEY_ENV = "WOVE_ATTACK_KEY"
HOST = "127.0.0.1"

# targets
RSS_TARGET_MB = 32.0
STALL_TARGET_MS = 50.0

# measurement
TICK_SECONDS = 0.005
RSS_SAMPLE_SECONDS = 0.05
RSS_CEILING_MB = 4096.0        # safety: the weave kills the attacker if it grows beyond this
PROBE_START, PROBE_EVERY, PROBE_TIMEOUT = 1.0, 1.0, 5.0
WORKER_AT = 4.0                # seconds into the attack when the real worker starts
RESULT_GRACE = 10.0            # how long after the attack the worker's result is still waited for
CONNECT_TIMEOUT = 3.0
SETTLE_SECONDS = 1.0           # "end" RSS is read this long after the attacker has exited

# attacks: seconds each, and their bounds
SECONDS = {"control": 8.0, "idle": 25.0, "junk": 20.0, "flood": 20.0}
LABELS = {"control": "control (no attack)", "idle": "idle connections", "junk": "junk bodies",
          "flood": "header flood"}
WEAVE_NOFILE = 256
IDLE_BODY_CONNECTIONS, IDLE_SLOW_CONNECTIONS, IDLE_MAX_OPENS = 400, 100, 5000
SLOW_HEADER_EVERY = 2.0
JUNK_CONNECTIONS, JUNK_DECLARED, JUNK_BUDGET, JUNK_MAX_REQUESTS = 20, 200 * 1000 * 1000, 2 << 30, 5000
JUNK_CHUNK = 256 * 1024
FLOOD_HEADERS, FLOOD_MAX_REQUESTS, FLOOD_MAX_BIG, FLOOD_BIG_CONNECTIONS = 6000, 20000, 300, 150
BIG_BODY = 1 << 20


# ============================================================================ shared
class ProcStatus:
    """``VmRSS`` and ``VmHWM`` of this process, in MB, read through a descriptor opened in advance (an
    attack that exhausts descriptors must not blind the measurement)."""

    def __init__(self) -> None:
        self.fd = os.open("/proc/self/status", os.O_RDONLY)

    def read(self) -> tuple[float, float]:
        text = os.pread(self.fd, 1 << 16, 0).decode("ascii", "replace")
        values = {}
        for line in text.splitlines():
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0]) / 1024.0
        return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def raise_nofile(soft: Optional[int] = None) -> tuple[int, int]:
    """Set the soft descriptor limit (to the hard limit when ``soft`` is None); returns the new limits."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if soft is None else soft
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    if wanted == resource.RLIM_INFINITY:
        wanted = 1 << 16
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


# ============================================================================ attacker (its own process)
class Ctx:
    def __init__(self, args: argparse.Namespace, key: str):
        self.attack = args.client
        self.port = args.port
        self.path = "/wove/events/" + args.token
        self.run = args.run
        self.key = key
        self.max_body = args.max_body
        self.start = time.monotonic()
        self.deadline = self.start + args.seconds
        self.stats: collections.Counter[str] = collections.Counter()
        self.held = 0
        self.budget = JUNK_BUDGET
        self.probes: list[dict[str, Any]] = []

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def hold(self, delta: int) -> None:
        self.held += delta
        self.stats["max held at once"] = max(self.stats["max held at once"], self.held)

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.wait_for(asyncio.open_connection(HOST, self.port),
                                      max(0.05, min(CONNECT_TIMEOUT, self.left())))


async def read_response(reader: asyncio.StreamReader, timeout: float) -> tuple[int, bool]:
    """``(status, server closes)`` of one HTTP response, its body read and dropped."""
    async def read() -> tuple[int, bool]:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length, close = 0, False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection":
                close = value.strip().lower() == "close"
        if length:
            await reader.readexactly(length)
        return status, close

    return await asyncio.wait_for(read(), max(0.05, timeout))


def close(writer: Optional[asyncio.StreamWriter]) -> None:
    if writer is not None:
        try:
            writer.close()
        except Exception:
            pass


def error_name(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "closed early"
    return type(exc).__name__


# ----------------------------------------------------------------------------- genuine probes
async def probe_once(ctx: Ctx, seq: int) -> dict[str, Any]:
    from wove.dispatch import protocol

    body = json.dumps({"type": "heartbeat", "run_id": ctx.run, "task_id": "probe_target"}).encode()
    signature = protocol.sign(ctx.key, ctx.run, "heartbeat", 0, seq, body)
    head = (f"POST {ctx.path} HTTP/1.1\r\nHost: {HOST}:{ctx.port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n{protocol.H_RUN}: {ctx.run}\r\n"
            f"{protocol.H_EVENT}: heartbeat\r\n{protocol.H_INCARNATION}: 0\r\n{protocol.H_SEQ}: {seq}\r\n"
            f"{protocol.H_SIGNATURE}: {signature}\r\n\r\n").encode("latin-1")
    started = time.monotonic()
    writer = None

    async def exchange() -> int:
        nonlocal writer
        reader, writer = await asyncio.open_connection(HOST, ctx.port)
        writer.write(head + body)
        await writer.drain()
        return (await read_response(reader, PROBE_TIMEOUT))[0]

    try:
        status: Any = await asyncio.wait_for(exchange(), PROBE_TIMEOUT)
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
        status = error_name(exc)
    finally:
        close(writer)
    return {"at": round(started - ctx.start, 2), "status": status, "seconds": round(time.monotonic() - started, 3)}


async def prober(ctx: Ctx) -> None:
    """One signed heartbeat about every second, in sequence order (a later one never overtakes)."""
    seq, when = 0, ctx.start + PROBE_START
    while when < ctx.deadline - 0.2:
        await asyncio.sleep(max(0.0, when - time.monotonic()))
        seq += 1
        ctx.probes.append(await probe_once(ctx, seq))
        when = max(when + PROBE_EVERY, time.monotonic())


# ----------------------------------------------------------------------------- attacks
async def idle_attack(ctx: Ctx) -> None:
    partial_body = (f"POST /x HTTP/1.1\r\nHost: {HOST}:{ctx.port}\r\nContent-Length: 1000\r\n\r\n"
                    .encode() + b"0123456789")
    slow_line = f"POST {ctx.path} HTTP/1.1\r\n".encode()

    async def hold(kind: str) -> None:
        while ctx.left() > 0.1 and ctx.stats["connections opened"] < IDLE_MAX_OPENS:
            try:
                reader, writer = await ctx.connect()
            except (OSError, asyncio.TimeoutError) as exc:
                ctx.stats[f"connect failed: {error_name(exc)}"] += 1
                await asyncio.sleep(0.2)
                continue
            ctx.stats["connections opened"] += 1
            ctx.hold(1)
            dropped = False
            try:
                writer.write(partial_body if kind == "body" else slow_line)
                await writer.drain()
                while ctx.left() > 0:
                    wait = ctx.left() if kind == "body" else min(SLOW_HEADER_EVERY, ctx.left())
                    try:
                        await asyncio.wait_for(reader.read(1), wait)  # data or EOF: the weave dropped us
                        dropped = True
                        break
                    except asyncio.TimeoutError:
                        if kind == "slow" and ctx.left() > 0:
                            writer.write(b"X-a: b\r\n")
                            await writer.drain()
            except OSError:
                dropped = True
            finally:
                ctx.hold(-1)
                close(writer)
            if dropped:
                ctx.stats[f"{kind} connections dropped by the weave"] += 1
                await asyncio.sleep(0.05)

    await asyncio.gather(*[hold("body") for _ in range(IDLE_BODY_CONNECTIONS)],
                         *[hold("slow") for _ in range(IDLE_SLOW_CONNECTIONS)])


async def junk_attack(ctx: Ctx) -> None:
    from wove.dispatch import protocol

    declared = min(JUNK_DECLARED, ctx.max_body) if ctx.max_body > 0 else JUNK_DECLARED
    ctx.stats["declared body bytes"] = declared
    chunk = memoryview(os.urandom(JUNK_CHUNK))

    async def stream(index: int) -> None:
        seq = 10**9 + index * 10**6
        while ctx.left() > 0.1 and ctx.budget > 0 and ctx.stats["requests"] < JUNK_MAX_REQUESTS:
            try:
                reader, writer = await ctx.connect()
            except (OSError, asyncio.TimeoutError) as exc:
                ctx.stats[f"connect failed: {error_name(exc)}"] += 1
                await asyncio.sleep(0.2)
                continue
            ctx.hold(1)
            try:
                while ctx.left() > 0.1 and ctx.budget > 0 and ctx.stats["requests"] < JUNK_MAX_REQUESTS:
                    seq += 1
                    ctx.stats["requests"] += 1
                    writer.write((
                        f"POST {ctx.path} HTTP/1.1\r\nHost: {HOST}:{ctx.port}\r\nContent-Length: {declared}\r\n"
                        f"{protocol.H_RUN}: {ctx.run}\r\n{protocol.H_EVENT}: task_result\r\n"
                        f"{protocol.H_INCARNATION}: 0\r\n{protocol.H_SEQ}: {seq}\r\n"
                        f"{protocol.H_SIGNATURE}: {'0' * 64}\r\n\r\n").encode("latin-1"))
                    left = declared
                    try:
                        while left > 0 and ctx.budget > 0 and ctx.left() > 0:
                            n = min(left, len(chunk), ctx.budget)
                            writer.write(chunk[:n])
                            left -= n
                            ctx.budget -= n
                            ctx.stats["body bytes sent"] += n
                            await asyncio.wait_for(writer.drain(), max(0.05, ctx.left()))
                    except (OSError, asyncio.TimeoutError) as exc:
                        ctx.stats[f"while streaming: {error_name(exc)}"] += 1
                        try:   # the weave may have answered (and closed) before the body was in
                            status, _ = await read_response(reader, 0.5)
                            ctx.stats[f"HTTP {status} (before the body was in)"] += 1
                        except Exception:
                            pass
                        break
                    if left > 0:   # out of budget or time: hold the unfinished body until the end
                        ctx.stats["bodies left unfinished and held"] += 1
                        await asyncio.sleep(max(0.0, ctx.left()))
                        break
                    ctx.stats["bodies sent in full"] += 1
                    status, closes = await read_response(reader, ctx.left())
                    ctx.stats[f"HTTP {status}"] += 1
                    if closes:
                        break
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
                ctx.stats[f"response: {error_name(exc)}"] += 1
            finally:
                ctx.hold(-1)
                close(writer)

    await asyncio.gather(*[stream(index) for index in range(JUNK_CONNECTIONS)])


async def flood_attack(ctx: Ctx) -> None:
    from wove.dispatch import protocol

    host = f"Host: {HOST}:{ctx.port}\r\n".encode()
    many = b"X-a: b\r\n" * FLOOD_HEADERS
    wrong = b"POST /x HTTP/1.1\r\n" + host + many + b"Content-Length: 0\r\n\r\n"
    right = f"POST {ctx.path} HTTP/1.1\r\n".encode() + host + many
    unsigned = right + b"Content-Length: 0\r\n\r\n"
    big = b"POST /x HTTP/1.1\r\n" + host + f"Content-Length: {BIG_BODY}\r\n\r\n".encode() + b"0" * BIG_BODY
    seqs = iter(range(2 * 10**9, 3 * 10**9))

    def junk_signed() -> bytes:
        return right + (f"{protocol.H_RUN}: {ctx.run}\r\n{protocol.H_EVENT}: heartbeat\r\n"
                        f"{protocol.H_INCARNATION}: 0\r\n{protocol.H_SEQ}: {next(seqs)}\r\n"
                        f"{protocol.H_SIGNATURE}: {'0' * 64}\r\nContent-Length: 2\r\n\r\n{{}}").encode()

    def limit_reached(kind: str) -> bool:
        if kind == "1 MiB body to /x":
            return ctx.stats["1 MiB body to /x: sent"] >= FLOOD_MAX_BIG
        return ctx.stats["header-flood requests sent"] >= FLOOD_MAX_REQUESTS

    async def hammer(kinds: list[str]) -> None:
        turn = 0
        while ctx.left() > 0.1:
            try:
                reader, writer = await ctx.connect()
            except (OSError, asyncio.TimeoutError) as exc:
                ctx.stats[f"connect failed: {error_name(exc)}"] += 1
                await asyncio.sleep(0.2)
                continue
            ctx.hold(1)
            try:
                while ctx.left() > 0.1:
                    kind = kinds[turn % len(kinds)]
                    turn += 1
                    if limit_reached(kind):
                        if all(limit_reached(k) for k in kinds):
                            return
                        continue
                    request = {"wrong path": wrong, "real path, unsigned": unsigned,
                               "real path, junk signature": junk_signed(), "1 MiB body to /x": big}[kind]
                    ctx.stats[f"{kind}: sent"] += 1
                    if kind != "1 MiB body to /x":
                        ctx.stats["header-flood requests sent"] += 1
                    writer.write(request)
                    await asyncio.wait_for(writer.drain(), max(0.05, ctx.left()))
                    status, closes = await read_response(reader, ctx.left())
                    ctx.stats[f"{kind}: HTTP {status}"] += 1
                    if closes:
                        break
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
                ctx.stats[f"error: {error_name(exc)}"] += 1
            finally:
                ctx.hold(-1)
                close(writer)

    await asyncio.gather(*[hammer(["wrong path"]) for _ in range(3)],
                         *[hammer(["real path, unsigned", "real path, junk signature"]) for _ in range(2)],
                         *[hammer(["1 MiB body to /x"]) for _ in range(FLOOD_BIG_CONNECTIONS)])


async def no_attack(ctx: Ctx) -> None:
    await asyncio.sleep(max(0.0, ctx.left()))


ATTACKS = {"control": no_attack, "idle": idle_attack, "junk": junk_attack, "flood": flood_attack}


async def run_client(ctx: Ctx) -> None:
    tasks = [asyncio.ensure_future(ATTACKS[ctx.attack](ctx)), asyncio.ensure_future(prober(ctx))]
    done, pending = await asyncio.wait(tasks, timeout=ctx.left() + 5.0)
    for task in pending:
        task.cancel()
        ctx.stats["attack task cancelled at its time limit"] += 1
    await asyncio.gather(*pending, return_exceptions=True)
    for task in done:
        if task.exception() is not None:
            ctx.stats[f"attack crashed: {task.exception()!r}"] += 1


def client_main(args: argparse.Namespace) -> int:
    raise_nofile()
    ctx = Ctx(args, os.environ.pop(KEY_ENV, ""))
    asyncio.run(run_client(ctx))
    ctx.stats["connections still open at the end"] = ctx.held
    with open(args.out, "w") as handle:
        json.dump({"stats": dict(ctx.stats), "probes": ctx.probes}, handle)
    return 0


# ============================================================================ the measured weave process
class WeaveState:
    def __init__(self, attack: str, seconds: float, workdir: str):
        self.attack, self.seconds, self.workdir = attack, seconds, workdir
        self.status = ProcStatus()
        self.payloads: dict[str, tuple[dict[str, Any], str]] = {}
        self.measuring = False
        self.done = False
        self.max_gap = self.max_gap_at = self.measure_from = 0.0
        self.ticks = 0
        self.rss_max = 0.0
        self.rss_base = self.hwm_base = self.rss_end = self.hwm_end = 0.0
        self.ticker_loop: Any = None
        self.same_loop: Optional[bool] = None
        self.client: Optional[subprocess.Popen] = None
        self.worker: Optional[subprocess.Popen] = None
        self.worker_error = ""
        self.worker_launched: Optional[float] = None
        self.worker_result_at: Optional[float] = None
        self.attack_started: Optional[float] = None
        self.attack_ended: Optional[float] = None
        self.coordinator: Optional[asyncio.Task[None]] = None
        self.notes: list[str] = []
        self.nofile_before: list[int] = []
        self.cpu_base = self.cpu_used = 0.0

    def sample(self) -> None:
        rss, _ = self.status.read()
        self.rss_max = max(self.rss_max, rss)
        if rss > self.rss_base + RSS_CEILING_MB and self.client is not None and self.client.poll() is None:
            self.client.kill()
            self.notes.append(f"attacker killed at the {RSS_CEILING_MB:.0f} MB safety ceiling")

    def kill(self, proc: Optional[subprocess.Popen]) -> None:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def result(self) -> dict[str, Any]:
        worker_seconds = worker_during = None
        if self.worker_result_at is not None and self.worker_launched is not None:
            worker_seconds = self.worker_result_at - self.worker_launched
            worker_during = self.attack_ended is None or self.worker_result_at <= self.attack_ended
        return {
            "rss_base": self.rss_base, "hwm_base": self.hwm_base, "rss_max": self.rss_max,
            "rss_end": self.rss_end, "hwm_end": self.hwm_end, "max_gap": self.max_gap,
            "max_gap_at": self.max_gap_at, "ticks": self.ticks,
            "same_loop": self.same_loop, "worker_error": self.worker_error, "worker_seconds": worker_seconds,
            "worker_during": worker_during, "worker_launched": self.worker_launched is not None,
            "nofile_before": self.nofile_before, "cpu": self.cpu_used,
            "nofile": list(resource.getrlimit(resource.RLIMIT_NOFILE)), "notes": self.notes,
            "window": (self.attack_ended or 0) - (self.attack_started or 0),
        }


def weave_main(attack: str, seconds: float, workdir: str) -> int:
    if attack == "idle":
        raise_nofile(WEAVE_NOFILE)   # before the weave (and its receiver) starts; the hard limit is kept
    st = WeaveState(attack, seconds, workdir)
    st.nofile_before = list(resource.getrlimit(resource.RLIMIT_NOFILE))

    import wove
    from wove import BackendAdapter, BackendAdapterEnvironmentExecutor, weave

    async def coordinate(adapter: BackendAdapter) -> None:
        loop = asyncio.get_running_loop()
        st.same_loop = loop is st.ticker_loop
        probe_payload, _ = st.payloads["probe_target"]
        work_payload, work_encoded = st.payloads["genuine_work"]
        url = urlsplit(probe_payload["callback_url"])
        assert url.hostname == HOST, f"not loopback: {probe_payload['callback_url']}"
        argv = [sys.executable, os.path.abspath(__file__), "--client", attack, "--port", str(url.port),
                "--token", url.path.rsplit("/", 1)[1], "--run", probe_payload["run_id"],
                "--max-body", str(probe_payload.get("max_body") or 0), "--seconds", str(seconds),
                "--out", os.path.join(workdir, "client.json")]
        # the logs are opened before the attack, so descriptor trouble cannot stop them
        with open(os.path.join(workdir, "client.log"), "wb") as client_log, \
                open(os.path.join(workdir, "worker.log"), "wb") as worker_log:
            env = {**os.environ, KEY_ENV: probe_payload["signing"]["key"]}
            st.rss_base, st.hwm_base = st.status.read()
            st.rss_max = st.rss_base
            st.client = await loop.run_in_executor(None, functools.partial(
                subprocess.Popen, argv, env=env, cwd=str(ROOT), stdin=subprocess.DEVNULL, stdout=client_log,
                stderr=client_log))
            st.attack_started = time.monotonic()
            st.cpu_base = cpu_seconds()
            st.measure_from = time.perf_counter()
            st.measuring = True

            await asyncio.sleep(WORKER_AT)
            worker_env = {k: v for k, v in os.environ.items() if k != KEY_ENV}
            worker_env["WOVE_BACKEND_PAYLOAD"] = work_encoded
            try:
                st.worker = await loop.run_in_executor(None, functools.partial(
                    subprocess.Popen, [sys.executable, "-m", "wove.backend_worker"], env=worker_env, cwd=str(ROOT),
                    stdin=subprocess.DEVNULL, stdout=worker_log, stderr=worker_log))
                st.worker_launched = time.monotonic()
            except OSError as exc:
                st.worker_error = f"{type(exc).__name__}: {exc}"

            limit = st.attack_started + seconds + 15.0
            while st.client.poll() is None and time.monotonic() < limit:
                await asyncio.sleep(0.05)
            if st.client.poll() is None:
                st.notes.append("attacker overran its time and was killed")
                st.kill(st.client)
            st.attack_ended = time.monotonic()
            st.cpu_used = cpu_seconds() - st.cpu_base
            st.measuring = False
            await asyncio.sleep(SETTLE_SECONDS)   # let the receiver see the attacker's connections close
            st.rss_end, st.hwm_end = st.status.read()

            limit = st.attack_ended + RESULT_GRACE
            while st.worker is not None and st.worker_result_at is None and time.monotonic() < limit:
                await asyncio.sleep(0.05)
            st.kill(st.worker)
        for payload, value in ((work_payload, "no genuine result"), (probe_payload, "probes done")):
            adapter.emit({"type": "task_result", "run_id": payload["run_id"], "task_id": payload["task_id"],
                          "result": value})
        st.done = True

    class AttackAdapter(BackendAdapter):
        """Records each payload instead of submitting it; the second one starts the attack."""

        def submit(self, payload: dict[str, Any], frame: dict[str, Any]) -> str:
            st.payloads[payload["task_name"]] = (payload, self.encode_payload(payload))
            if len(st.payloads) == 2:
                st.coordinator = asyncio.get_running_loop().create_task(coordinate(self))
            return payload["run_id"]

        async def cancel(self, run_id: str, submission: Any, frame: dict[str, Any]) -> None:
            st.kill(st.worker)

        async def close(self) -> None:
            st.kill(st.client)
            st.kill(st.worker)
            if st.coordinator is not None and not st.coordinator.done():
                st.coordinator.cancel()
                await asyncio.gather(st.coordinator, return_exceptions=True)

        def on_event(self, frame: dict[str, Any]) -> Optional[dict[str, Any]]:
            work = st.payloads.get("genuine_work")
            if frame.get("type") == "task_result" and work is not None and frame.get("run_id") == \
                    work[0]["run_id"] and "result" in frame and frame["result"] == "genuine":
                st.worker_result_at = time.monotonic()
            return frame

    wove.config(environments={"attack": {
        "executor": BackendAdapterEnvironmentExecutor("attack", adapter_class=AttackAdapter),
        "executor_config": {"callback_host": HOST, "post_timeout": int(seconds + RESULT_GRACE)}}})
    safety = seconds + 60.0
    try:
        with weave() as w:
            @w.do
            async def ticker() -> int:
                st.ticker_loop = asyncio.get_running_loop()
                stop_at = time.monotonic() + safety
                last = next_sample = time.perf_counter()
                while not st.done and time.monotonic() < stop_at:
                    await asyncio.sleep(TICK_SECONDS)
                    now = time.perf_counter()
                    if st.measuring and last >= st.measure_from:   # gaps that began inside the window
                        if now - last > st.max_gap:
                            st.max_gap, st.max_gap_at = now - last, time.monotonic() - (st.attack_started or 0)
                        st.ticks += 1
                        if now >= next_sample:
                            st.sample()
                            next_sample = now + RSS_SAMPLE_SECONDS
                    last = now
                return st.ticks

            @w.do(environment="attack", delivery_timeout=safety)
            def probe_target() -> str:   # never runs: the attacker's genuine heartbeats are sent for this run
                return "unused"

            @w.do(environment="attack", delivery_timeout=safety)
            def genuine_work() -> str:    # run by a real backend_worker during the attack
                return "genuine"
    except Exception as exc:
        st.notes.append(f"weave raised {type(exc).__name__}: {exc}"[:300])
    print("RESULT " + json.dumps(st.result()), flush=True)
    return 0


# ============================================================================ driver
def run_one(attack: str) -> dict[str, Any]:
    seconds = SECONDS[attack]
    workdir = tempfile.mkdtemp(prefix=f"wove-attack-{attack}-")
    err_path = os.path.join(workdir, "weave.err")
    started = time.monotonic()
    out = ""
    try:
        with open(err_path, "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--weave", attack, "--seconds", str(seconds),
                 "--workdir", workdir], cwd=str(ROOT), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=err, text=True, start_new_session=True)
            try:
                out, _ = proc.communicate(timeout=seconds + 60.0)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)   # the weave, its attacker and its worker: all ours
                out, _ = proc.communicate()
        line = next((x for x in out.splitlines() if x.startswith("RESULT ")), None)
        result: dict[str, Any] = json.loads(line[7:]) if line else {"notes": ["the weave process printed no result"]}
        try:
            with open(os.path.join(workdir, "client.json")) as handle:
                result.update(json.load(handle))
        except (OSError, ValueError):
            result.setdefault("notes", []).append("the attacker left no report")
        with open(err_path, "rb") as handle:
            errors = handle.read().decode("utf-8", "replace").splitlines()
        result["stderr_lines"] = len(errors)
        result["stderr_messages"] = collections.Counter(
            x for x in errors if x and not x.startswith((" ", "Traceback"))).most_common(3)
        result["elapsed"] = time.monotonic() - started
        result["attack"] = attack
        result["seconds"] = seconds
        return result
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def summarize(r: dict[str, Any]) -> dict[str, Any]:
    base = r.get("rss_base", 0.0)
    rose = r.get("hwm_end", 0.0) > r.get("hwm_base", 0.0)
    peak = max(r.get("rss_max", base), r.get("hwm_end", 0.0) if rose else 0.0) - base
    probes = r.get("probes", [])
    ok = [p for p in probes if p["status"] == 200]
    slowest = max((p["seconds"] for p in ok), default=0.0)
    if r.get("worker_error"):
        worker = "not started"
    elif r.get("worker_seconds") is None:
        worker = "never arrived"
    elif r.get("worker_during"):
        worker = f"yes, {r['worker_seconds']:.2f} s"
    else:
        worker = f"late, {r['worker_seconds']:.2f} s"
    stall = max(0.0, r.get("max_gap", 0.0) - TICK_SECONDS) * 1000
    genuine = bool(probes) and len(ok) == len(probes) and bool(r.get("worker_during"))
    misses = [name for name, bad in (("RSS", peak >= RSS_TARGET_MB), ("stall", stall >= STALL_TARGET_MS),
                                     ("genuine", not genuine)) if bad]
    return {"base": base, "peak": peak, "end": r.get("rss_end", base) - base, "stall": stall,
            "probes": f"{len(ok)}/{len(probes)}" + (f" ({slowest:.2f} s)" if ok else ""), "worker": worker,
            "verdict": "meets targets" if not misses else "misses " + ", ".join(misses)}


def print_report(results: list[dict[str, Any]]) -> None:
    print()
    header = (f"{'attack':<20} {'secs':>4} {'CPU s':>5} {'RSS MB':>7} {'peak +MB':>9} {'end +MB':>8} "
              f"{'stall ms':>9}  {'probes 200':<16} {'worker result':<15} verdict")
    print(header)
    print("-" * len(header))
    for r in results:
        s = summarize(r)
        print(f"{LABELS[r['attack']]:<20} {r['seconds']:>4.0f} {r.get('cpu', 0.0):>5.1f} {s['base']:>7.1f} "
              f"{s['peak']:>9.1f} {s['end']:>8.1f} {s['stall']:>9.1f}  {s['probes']:<16} {s['worker']:<15} "
              f"{s['verdict']}")
    print(f"{'target':<20} {'':>4} {'':>5} {'':>7} {'< ' + format(RSS_TARGET_MB, '.0f'):>9} {'':>8} "
          f"{'< ' + format(STALL_TARGET_MS, '.0f'):>9}  {'all':<16} {'yes (in attack)':<15}")
    print()
    print("CPU s: CPU time of the weave process during the attack. RSS MB: its RSS just before the attack.")
    print("peak / end +MB: RSS growth over that (peak: VmHWM or 50 ms samples; end: "
          f"{SETTLE_SECONDS:.0f} s after the attacker exited).")
    print("stall ms: longest gap between the local ticker's 5 ms sleeps, minus 5 ms.")
    print(f"probes 200: signed heartbeats answered 200 within {PROBE_TIMEOUT:.0f} s (slowest of them).")
    print(f"worker result: a real backend_worker started {WORKER_AT:.0f} s into the attack; time from its start to "
          "its accepted task_result ('late': after the attack ended).")
    for r in results:
        print()
        print(f"{LABELS[r['attack']]}: weave soft/hard RLIMIT_NOFILE {r.get('nofile_before')} before the weave, "
              f"{r.get('nofile')} after, ticks {r.get('ticks')} (longest gap ended {r.get('max_gap_at', 0):.2f} s "
              f"into the attack), "
              f"ticker on the receiver's loop: {r.get('same_loop')}, weave stderr lines {r.get('stderr_lines')}, "
              f"run took {r.get('elapsed', 0):.1f} s")
        for name, count in sorted(r.get("stats", {}).items()):
            print(f"    {name}: {count}")
        bad = [p for p in r.get("probes", []) if p["status"] != 200]
        if bad:
            shown = ", ".join(f"t={p['at']}s {p['status']}" for p in bad[:8])
            print(f"    probes not accepted: {shown}{' ...' if len(bad) > 8 else ''}")
        if r.get("worker_error"):
            print(f"    worker could not start in the weave process: {r['worker_error']}")
        for message, count in r.get("stderr_messages", []):
            print(f"    weave stderr x{count}: {message[:150]}")
        for note in r.get("notes", []):
            print(f"    note: {note}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--attacks", default="control,idle,junk,flood",
                        help="comma-separated, from: " + ", ".join(SECONDS))
    parser.add_argument("--client", choices=sorted(ATTACKS), help=argparse.SUPPRESS)
    parser.add_argument("--weave", choices=sorted(ATTACKS), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--token", help=argparse.SUPPRESS)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--max-body", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=10.0, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        return client_main(args)
    if args.weave:
        return weave_main(args.weave, args.seconds, args.workdir)

    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    unknown = [a for a in attacks if a not in SECONDS]
    if unknown:
        parser.error(f"unknown attack(s) {', '.join(unknown)}; choose from {', '.join(SECONDS)}")
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=str(ROOT), capture_output=True,
                                text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    commit = commit or "? (not a git checkout)"
    dirty = ""
    try:
        if subprocess.run(["git", "status", "--porcelain", "--", "wove"], cwd=str(ROOT), capture_output=True,
                          text=True, timeout=5).stdout.strip():
            dirty = " + uncommitted changes in wove/"
    except (OSError, subprocess.SubprocessError):
        pass
    import wove

    print(f"wove callback receiver under attack, loopback only (Python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f})")
    print(f"wove from {Path(wove.__file__).parent}, commit {commit}{dirty}")
    print(f"targets: RSS growth < {RSS_TARGET_MB:.0f} MB, stall < {STALL_TARGET_MS:.0f} ms, "
          "genuine events always accepted")
    results = []
    for attack in attacks:
        print(f"  running {LABELS[attack]} ({SECONDS[attack]:.0f} s) ...", flush=True)
        results.append(run_one(attack))
    print_report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
