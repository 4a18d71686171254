"""The HTTP/1.1 wire of the callback receiver: strict request heads, streamed bodies, small JSON answers.

Heads are parsed strictly (RFC 9112): anything a proxy in front of the receiver could read differently
(``Transfer-Encoding``, a repeated or non-numeric ``Content-Length``, obs-fold, a space before the colon)
is refused with ``BadRequest``, never guessed at.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass

from . import protocol
from .events import BAD_REQUEST

MAX_HEAD_BYTES = 8 * 1024
MAX_HEADERS = 100
REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           409: "Conflict", 413: "Payload Too Large", 431: "Request Header Fields Too Large",
           503: "Service Unavailable"}
_TOKEN_CHARS = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_DIGITS = frozenset(b"0123456789")


class BadRequest(Exception):
    """A request head that is malformed or ambiguous; answered with ``status`` and the connection closed."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Request:
    method: str
    target: str
    keep_alive: bool
    length: int
    headers: dict[str, str]


def parse_head(head: bytes) -> Request:
    """Parse a request head strictly (RFC 9112): anything a proxy could read differently is refused."""
    lines = head[:-4].split(b"\r\n") if head.endswith(b"\r\n\r\n") else head.split(b"\r\n")
    if len(lines) - 1 > MAX_HEADERS:
        raise BadRequest(431, f"more than {MAX_HEADERS} header lines")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[0] or not parts[1] or parts[2] not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise BadRequest(BAD_REQUEST, "malformed request line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or not set(name) <= _TOKEN_CHARS:   # also refuses obs-fold and "Name :"
            raise BadRequest(BAD_REQUEST, "malformed header line")
        key = name.decode("ascii").lower()
        if key in headers and key in ("content-length", "host", protocol.H_RUN, protocol.H_EVENT, protocol.H_SEQ,
                                      protocol.H_INCARNATION, protocol.H_SIGNATURE):
            raise BadRequest(BAD_REQUEST, f"duplicate {key} header")
        headers[key] = value.strip(b" \t").decode("latin-1")
    if "transfer-encoding" in headers:
        raise BadRequest(BAD_REQUEST, "transfer-encoding is not supported; send a content-length")
    text = headers.get("content-length", "0")
    if not text or not set(text.encode("latin-1")) <= _DIGITS or len(text) > 18:
        raise BadRequest(BAD_REQUEST, "content-length must be one decimal number")
    version = parts[2].decode()
    connection = headers.get("connection", "").lower()
    keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
    return Request(parts[0].decode("latin-1"), parts[1].decode("latin-1"), keep_alive, int(text), headers)


async def read_body(reader: asyncio.StreamReader, length: int) -> tuple[bytearray, str]:
    """Read exactly ``length`` bytes into one buffer, hashing as they arrive (no second pass, no copies)."""
    body = bytearray(length)
    hasher = hashlib.sha256()
    view = memoryview(body)
    filled = 0
    while filled < length:
        chunk = await reader.read(min(length - filled, 256 * 1024))
        if not chunk:
            raise asyncio.IncompleteReadError(bytes(view[:filled]), length)
        size = len(chunk)
        view[filled:filled + size] = chunk
        hasher.update(chunk)
        filled += size
    view.release()
    return body, hasher.hexdigest()


async def respond(writer: asyncio.StreamWriter, status: int, message: str, *, close: bool) -> None:
    """Answer with ``status`` and a small JSON body ``{"status", "message"}``."""
    body = json.dumps({"status": status, "message": message}).encode()
    writer.write(
        f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: {'close' if close else 'keep-alive'}\r\n\r\n"
        .encode("latin-1") + body)
    await writer.drain()
