"""The callback receiver: a small asyncio HTTP/1.1 server for ``POST /wove/events/{token}``.

One per running remote environment, started lazily and always stopped with it. It answers 404 for any
other path, 413 above the body limit (without reading the body), 401/403 for missing or bad signatures or
unknown runs, 409 for replays, 400 for malformed JSON, and 200 once an event is accepted. Rejected requests
never reach unpickling and never disturb the weave.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import socket
from typing import Any, Callable, Optional

from . import protocol
from .events import BAD_REQUEST, NOT_FOUND, OK, TOO_LARGE, EventGate

log = logging.getLogger("wove.dispatch")

DEFAULT_MAX_BODY = 512 * 1024 * 1024   # results up to hundreds of MB ride in the body; larger ones spool
_MAX_HEADER = 64 * 1024
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 409: "Conflict", 413: "Payload Too Large", 431: "Header Too Large",
            503: "Service Unavailable"}
PATH_PREFIX = "/wove/events/"
IDLE_SECONDS = 30.0                       # a client silent this long (between or inside requests) is dropped
BODY_BYTES_PER_SECOND = 10 * 1024 * 1024  # slowest upload rate allowed for large bodies
MAX_CONNECTIONS = 1024


class CallbackReceiver:
    """Accepts signed events over HTTP and hands verified frames to ``on_frame``."""

    def __init__(self, gate: EventGate, on_frame: Callable[[dict[str, Any]], None], *, token: str,
                 host: str = "127.0.0.1", port: int = 0, max_body: int = DEFAULT_MAX_BODY):
        self.gate = gate
        self.on_frame = on_frame
        self.token = token
        self.host = host
        self.port = port
        self.max_body = max_body
        self._server: Optional[asyncio.AbstractServer] = None
        self._connections: set[asyncio.Task[Any]] = set()
        self.accepted = 0

    @property
    def path(self) -> str:
        return PATH_PREFIX + self.token

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self.port, limit=_MAX_HEADER,
                                                      reuse_address=True)
        except OSError as exc:
            from ..errors import ExecutorStartError
            raise ExecutorStartError(
                f"cannot start the callback receiver on {self.host}:{self.port}: {exc.strerror or exc}; "
                "set executor_config.callback_port to a free port (0 picks one) or callback_host to a "
                "local address") from exc
        self.port = self._server.sockets[0].getsockname()[1]

    def url(self, advertise_host: Optional[str] = None) -> str:
        host = advertise_host or self.host
        if host in ("0.0.0.0", "", "::"):
            host = socket.getfqdn()
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.port}{self.path}"

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    # ------------------------------------------------------------------ HTTP
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._connections) >= MAX_CONNECTIONS:   # never let idle clients exhaust descriptors
            writer.close()
            return
        self._connections.add(task)
        try:
            while await self._one_request(reader, writer):
                pass
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, asyncio.TimeoutError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            self._connections.discard(task)
            writer.close()

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_SECONDS)
        except asyncio.IncompleteReadError:
            return False
        except asyncio.LimitOverrunError:
            await self._respond(writer, 431, "request header too large", close=True)
            return False
        lines = head.decode("latin-1").split("\r\n")
        try:
            method, target, version = lines[0].split(" ", 2)
        except ValueError:
            await self._respond(writer, BAD_REQUEST, "malformed request line", close=True)
            return False
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        keep_alive = headers.get("connection", "").lower() != "close" and version == "HTTP/1.1"
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            await self._respond(writer, BAD_REQUEST, "bad content-length", close=True)
            return False
        if method != "POST" or not target.startswith(PATH_PREFIX) or not hmac.compare_digest(
                target[len(PATH_PREFIX):].encode(), self.token.encode()):
            self.gate.count_rejection(NOT_FOUND)
            return await self._discard_and_respond(reader, writer, length, NOT_FOUND, "not found", keep_alive)
        if length > self.max_body or length < 0:
            self.gate.count_rejection(TOO_LARGE)
            await self._respond(writer, TOO_LARGE, f"body of {length} bytes exceeds the limit of "
                                f"{self.max_body}", close=True)
            return False
        envelope = (headers.get(protocol.H_RUN), headers.get(protocol.H_EVENT), headers.get(protocol.H_INCARNATION),
                    headers.get(protocol.H_SEQ), headers.get(protocol.H_SIGNATURE))
        status = self.gate.precheck(*envelope)
        if status != OK:   # decided from the headers: the body is never read
            await self._respond(writer, status, _REASONS.get(status, "rejected"), close=True)
            return False
        body = await asyncio.wait_for(reader.readexactly(length), IDLE_SECONDS + length / BODY_BYTES_PER_SECOND)
        status, frame = self.gate.accept(*envelope, body)
        if frame is not None:
            self.accepted += 1
            try:
                self.on_frame(frame)
            except Exception:  # a consumer bug must not kill the server
                log.exception("wove: error while handling event %s for run %s", envelope[1], envelope[0])
        await self._respond(writer, status, _REASONS.get(status, "rejected"), close=not keep_alive)
        return keep_alive

    async def _discard_and_respond(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                                   length: int, status: int, message: str, keep_alive: bool) -> bool:
        if 0 < length <= 1024 * 1024 and keep_alive:
            await reader.readexactly(length)
        else:
            keep_alive = keep_alive and length == 0
        await self._respond(writer, status, message, close=not keep_alive)
        return keep_alive

    @staticmethod
    async def _respond(writer: asyncio.StreamWriter, status: int, message: str, *, close: bool) -> None:
        body = json.dumps({"status": status, "message": message}).encode()
        writer.write(
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: {'close' if close else 'keep-alive'}\r\n\r\n"
            .encode("latin-1") + body)
        await writer.drain()
