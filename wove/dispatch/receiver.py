"""The callback receiver: a small asyncio HTTP/1.1 server for ``POST /wove/events/{token}``.

One per running remote environment, started lazily and always stopped with it. Anyone who can reach the
port can connect, so the server gives unauthenticated clients as little as possible:

- every read has a deadline (headers ``HEAD_SECONDS``, bodies ``BODY_SECONDS`` plus a minimum rate);
- a request head is at most ``MAX_HEAD_BYTES`` and ``MAX_HEADERS`` lines, parsed strictly (no
  ``Transfer-Encoding``, exactly one all-digit ``Content-Length``), else 400/431 and close (``http``);
- 404 (wrong path), 413 (over the body limit), 401/403/409 (unsigned, unknown run, replay) are answered
  from the head alone and the connection closed: their bodies are never read;
- bodies are small (``DEFAULT_MAX_BODY``; larger results travel through the spool), hashed as they
  stream in, one at a time per run, and within a total budget (``MAX_BUFFERED``; ``limits``);
- connections are capped below the process's descriptor limit (``limits``) and per peer; at the cap the
  oldest idle connection is dropped instead of refusing the new one; accept errors are logged once a second
  at most.

Authentic events are decoded (unpickled) only after their signature checks out, large ones in a thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import functools
import hmac
import logging
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from . import protocol
from .events import BAD_REQUEST, NOT_FOUND, OK, TOO_LARGE, UNAVAILABLE, EventGate
from .http import MAX_HEAD_BYTES, REASONS, BadRequest, parse_head, read_body, respond
from .limits import ByteBudget, RunSlot, descriptor_budget

log = logging.getLogger("wove.dispatch")

DEFAULT_MAX_BODY = 4 * 1024 * 1024   # larger results are written to the spool and referenced (signed digest)
MAX_BUFFERED = 16 * 1024 * 1024      # bodies of all connections held in memory at once
HEAD_SECONDS = 30.0                  # a client silent this long (between or inside request heads) is dropped
BODY_SECONDS = 10.0                  # plus the time the body needs at BODY_BYTES_PER_SECOND
BODY_BYTES_PER_SECOND = 1024 * 1024
SLOT_WAIT_SECONDS = 10.0             # longest wait for a run's body slot or the memory budget, then 503
OFFLOAD_BYTES = 256 * 1024           # bodies above this (and spooled results) are decoded in a thread
PATH_PREFIX = "/wove/events/"


@dataclass(eq=False)
class _Connection:
    peer: str
    writer: asyncio.StreamWriter
    task: Optional[asyncio.Task[None]] = None
    idle_since: Optional[float] = None   # monotonic time it began waiting for a request head; None while busy


class CallbackReceiver:
    """Accepts signed events over HTTP and hands verified frames to ``on_frame``."""

    def __init__(self, gate: EventGate, on_frame: Callable[[dict[str, Any]], None], *, token: str,
                 host: str = "127.0.0.1", port: int = 0, max_body: int = DEFAULT_MAX_BODY,
                 max_connections: Optional[int] = None, max_per_peer: Optional[int] = None):
        self.gate = gate
        self.on_frame = on_frame
        self.token = token
        self.host = host
        self.port = port
        self.max_body = max_body
        self.max_connections = max_connections
        self.max_per_peer = max_per_peer
        self._sock: Optional[socket.socket] = None
        self._acceptor: Optional[asyncio.Task[None]] = None
        self._connections: set[_Connection] = set()
        self._per_peer: dict[str, int] = {}
        self._slots: dict[str, RunSlot] = {}
        self._budget = ByteBudget(MAX_BUFFERED)
        self._decoder: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._last_accept_log = 0.0
        self.accepted = 0
        self.evicted = 0

    @property
    def path(self) -> str:
        return PATH_PREFIX + self.token

    async def start(self) -> None:
        if self.max_connections is None:
            self.max_connections = descriptor_budget()
        if self.max_per_peer is None:
            self.max_per_peer = max(8, self.max_connections // 2)
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(self.host or None, self.port, type=socket.SOCK_STREAM,
                                           flags=socket.AI_PASSIVE)
            family, kind, proto, _, address = infos[0]
            sock = socket.socket(family, kind, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(address)
                sock.listen(256)
                sock.setblocking(False)
            except BaseException:
                sock.close()
                raise
        except OSError as exc:
            from ..errors import ExecutorStartError
            raise ExecutorStartError(
                f"cannot start the callback receiver on {self.host}:{self.port}: {exc.strerror or exc}; "
                "set executor_config.callback_port to a free port (0 picks one) or callback_host to a "
                "local address") from exc
        self._sock = sock
        self.port = sock.getsockname()[1]
        self._acceptor = loop.create_task(self._accept_loop(sock))

    def url(self, advertise_host: Optional[str] = None) -> str:
        host = advertise_host or self.host
        if host in ("0.0.0.0", "", "::"):
            host = socket.getfqdn()
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.port}{self.path}"

    async def stop(self) -> None:
        acceptor, self._acceptor = self._acceptor, None
        if acceptor is not None:
            acceptor.cancel()
            await asyncio.gather(acceptor, return_exceptions=True)
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
        tasks = [conn.task for conn in self._connections if conn.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for conn in list(self._connections):
            conn.writer.close()
        self._connections.clear()
        decoder, self._decoder = self._decoder, None
        if decoder is not None:
            decoder.shutdown(wait=True)

    # ------------------------------------------------------------------ connections
    async def _accept_loop(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn_sock, address = await loop.sock_accept(sock)
            except (asyncio.CancelledError, GeneratorExit):
                raise
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._log_accept_error(exc)
                    self._evict_oldest_idle(None)   # frees a descriptor if an idle client holds one
                    await asyncio.sleep(0.05)
                continue   # ECONNABORTED and the like: the client went away
            peer = str(address[0]) if isinstance(address, tuple) and address else "local"
            if not self._make_room(peer):
                conn_sock.close()
                continue
            try:
                conn_sock.setblocking(False)
                reader = asyncio.StreamReader(limit=MAX_HEAD_BYTES)
                proto = asyncio.StreamReaderProtocol(reader)
                transport, _ = await loop.connect_accepted_socket(functools.partial(_same, proto), sock=conn_sock)
            except OSError:
                conn_sock.close()
                continue
            writer = asyncio.StreamWriter(transport, proto, reader, loop)
            conn = _Connection(peer, writer, idle_since=time.monotonic())
            self._connections.add(conn)
            self._per_peer[peer] = self._per_peer.get(peer, 0) + 1
            conn.task = loop.create_task(self._serve(conn, reader))

    def _make_room(self, peer: str) -> bool:
        """At a cap, drop the oldest idle connection (of this peer at its cap); False if none is idle."""
        assert self.max_connections is not None and self.max_per_peer is not None
        if self._per_peer.get(peer, 0) >= self.max_per_peer:
            return self._evict_oldest_idle(peer)
        if len(self._connections) >= self.max_connections:
            return self._evict_oldest_idle(None)
        return True

    def _evict_oldest_idle(self, peer: Optional[str]) -> bool:
        idle = [c for c in self._connections if c.idle_since is not None and (peer is None or c.peer == peer)]
        if not idle:
            return False
        oldest = min(idle, key=lambda c: c.idle_since or 0.0)
        self._drop(oldest)
        self.evicted += 1
        if oldest.task is not None:
            oldest.task.cancel()
        return True

    def _drop(self, conn: _Connection) -> None:
        if conn in self._connections:
            self._connections.discard(conn)
            left = self._per_peer.get(conn.peer, 1) - 1
            if left > 0:
                self._per_peer[conn.peer] = left
            else:
                self._per_peer.pop(conn.peer, None)
        conn.writer.close()

    def _log_accept_error(self, exc: OSError) -> None:
        now = time.monotonic()
        if now - self._last_accept_log >= 1.0:
            self._last_accept_log = now
            log.warning("wove: callback receiver cannot accept connections: %s (%d open); logged at most "
                        "once a second", exc.strerror or exc, len(self._connections))

    async def _serve(self, conn: _Connection, reader: asyncio.StreamReader) -> None:
        try:
            while await self._one_request(conn, reader):
                pass
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.TimeoutError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            self._drop(conn)

    # ------------------------------------------------------------------ HTTP
    async def _one_request(self, conn: _Connection, reader: asyncio.StreamReader) -> bool:
        conn.idle_since = time.monotonic()
        writer = conn.writer
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_SECONDS)
        except asyncio.IncompleteReadError:
            return False
        except asyncio.LimitOverrunError:
            await respond(writer, 431, f"request head larger than {MAX_HEAD_BYTES} bytes", close=True)
            return False
        conn.idle_since = None
        try:
            request = parse_head(head)
        except BadRequest as bad:
            self.gate.count_rejection(bad.status)
            await respond(writer, bad.status, str(bad), close=True)
            return False
        if request.method != "POST" or not request.target.startswith(PATH_PREFIX) or not hmac.compare_digest(
                request.target[len(PATH_PREFIX):].encode("latin-1"), self.token.encode()):
            self.gate.count_rejection(NOT_FOUND)
            await respond(writer, NOT_FOUND, "not found", close=True)   # body never read
            return False
        length = request.length
        if length > self.max_body:
            self.gate.count_rejection(TOO_LARGE)
            await respond(writer, TOO_LARGE, f"body of {length} bytes exceeds the limit of "
                                f"{self.max_body}", close=True)
            return False
        headers = request.headers
        envelope = (headers.get(protocol.H_RUN), headers.get(protocol.H_EVENT), headers.get(protocol.H_INCARNATION),
                    headers.get(protocol.H_SEQ), headers.get(protocol.H_SIGNATURE))
        status = self.gate.precheck(*envelope)
        if status != OK:   # decided from the head: the body is never read
            await respond(writer, status, REASONS.get(status, "rejected"), close=True)
            return False
        run_id = envelope[0]
        assert run_id is not None
        # One body per run in memory at a time, and all bodies within a budget. Waiters queue in arrival
        # order, so junk from someone who knows a run id delays its genuine events but cannot starve them.
        slot = self._slots.get(run_id)
        if slot is None:
            slot = self._slots[run_id] = RunSlot()
        slot.users += 1
        try:
            if not await slot.turn.acquire(1, SLOT_WAIT_SECONDS):
                self.gate.count_rejection(UNAVAILABLE)
                await respond(writer, UNAVAILABLE, "busy; retry", close=True)
                return False
            try:
                if not await self._budget.acquire(length, SLOT_WAIT_SECONDS):
                    self.gate.count_rejection(UNAVAILABLE)
                    await respond(writer, UNAVAILABLE, "busy; retry", close=True)
                    return False
                try:
                    body, digest = await asyncio.wait_for(read_body(reader, length),
                                                          BODY_SECONDS + length / BODY_BYTES_PER_SECOND)
                    status = await self._accept(envelope, body, digest)
                    del body
                finally:
                    self._budget.release(length)
            finally:
                slot.turn.release(1)
        finally:
            slot.users -= 1
            if not slot.users:
                self._slots.pop(run_id, None)
        await respond(writer, status, REASONS.get(status, "rejected"), close=not request.keep_alive)
        return request.keep_alive

    async def _accept(self, envelope: tuple[Optional[str], ...], body: bytearray, digest: str) -> int:
        """Verify, parse and decode one event (large ones off the loop); hand the frame on. Returns a status."""
        gate = self.gate
        status = gate.authenticate(*envelope, body_digest=digest)
        if status != OK:
            return status
        run_id, event, incarnation, seq, _ = envelope
        assert run_id is not None and event is not None and incarnation is not None and seq is not None
        inc_n, seq_n = int(incarnation), int(seq)
        status, frame = gate.parse(run_id, event, inc_n, seq_n, body)
        if frame is None or status != OK or frame.get("late"):
            if frame is not None:
                self._hand_on(frame, envelope)
            return status
        try:
            if len(body) > OFFLOAD_BYTES or "result_ref" in frame:
                if self._decoder is None:
                    self._decoder = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="wove-decode")
                frame = await asyncio.get_running_loop().run_in_executor(self._decoder, gate.unpack, frame)
            else:
                frame = gate.unpack(frame)
        except OSError:
            gate.count_rejection(UNAVAILABLE)
            return UNAVAILABLE
        except (ValueError, TypeError):
            gate.count_rejection(BAD_REQUEST)
            gate.commit(run_id, inc_n, seq_n)
            return BAD_REQUEST
        gate.commit(run_id, inc_n, seq_n)
        self._hand_on(frame, envelope)
        return OK

    def _hand_on(self, frame: dict[str, Any], envelope: tuple[Optional[str], ...]) -> None:
        self.accepted += 1
        try:
            self.on_frame(frame)
        except Exception:  # a consumer bug must not kill the server
            log.exception("wove: error while handling event %s for run %s", envelope[1], envelope[0])


def _same(protocol: asyncio.StreamReaderProtocol) -> asyncio.StreamReaderProtocol:
    return protocol
