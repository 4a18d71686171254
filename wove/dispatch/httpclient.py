"""The job's HTTP/1.1 client: one keep-alive connection that POSTs a body and reads the status back.

Runs once per remote job, so it sits on the standard library's C ``_socket`` module; ``http.client`` would
add ~30 ms to every job's start-up (it loads the ``email`` package). ``ssl`` is imported only for ``https``
callback URLs.
"""

from __future__ import annotations

import _socket as socket

from . import protocol

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Optional


class Connection:
    """A keep-alive HTTP/1.1 connection that can POST one body and read the status back."""

    def __init__(self, url: str):
        scheme, _, rest = url.partition("://")
        if scheme not in ("http", "https") or not rest:
            raise ValueError(f"callback_url must start with http:// or https://, got {protocol.redact(url)!r}")
        hostport, slash, path = rest.partition("/")
        self.path = slash + path
        self.tls = scheme == "https"
        if hostport.startswith("["):
            host, _, port = hostport[1:].partition("]")
            port = port.lstrip(":")
        else:
            host, _, port = hostport.rpartition(":") if ":" in hostport else (hostport, "", "")
        self.host = host
        self.port = int(port) if port else (443 if self.tls else 80)
        self.hostport = hostport
        self._sock: Any = None
        self._buffer = b""

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock, self._buffer = None, b""

    def post(self, headers: dict[str, str], body: bytes, timeout: float) -> int:
        for reused in (True, False):
            fresh = self._sock is None
            if fresh:
                self._connect(timeout)
            try:
                return self._exchange(headers, body, timeout)
            except OSError:
                self.close()
                if fresh or not reused:
                    raise
        raise OSError("unreachable")

    def _connect(self, timeout: float) -> None:
        if self.tls:
            import socket as socket_module
            import ssl
            plain = socket_module.create_connection((self.host, self.port), timeout=timeout)
            self._sock = ssl.create_default_context().wrap_socket(plain, server_hostname=self.host)
            return
        last: Optional[OSError] = None
        # bytes host: getaddrinfo then needs no IDNA codec (one import less per job)
        host = self.host.encode("ascii") if self.host.isascii() else self.host
        for family, kind, proto, _, address in socket.getaddrinfo(host, self.port, 0, socket.SOCK_STREAM):
            sock = socket.socket(family, kind, proto)
            try:
                sock.settimeout(timeout)
                sock.connect(address)
            except OSError as exc:
                sock.close()
                last = exc
                continue
            self._sock = sock
            return
        raise last or OSError(f"cannot resolve {self.host}")

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self._buffer:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise ConnectionResetError("callback receiver closed the connection")
            self._buffer += chunk
            if len(self._buffer) > 1 << 20:
                raise OSError("callback receiver sent an oversized response header")
        head, _, self._buffer = self._buffer.partition(marker)
        return head

    def _read_exactly(self, count: int) -> None:
        while len(self._buffer) < count:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise ConnectionResetError("callback receiver closed the connection")
            self._buffer += chunk
        self._buffer = self._buffer[count:]

    def _exchange(self, headers: dict[str, str], body: bytes, timeout: float) -> int:
        self._sock.settimeout(timeout)
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self._sock.sendall(
            f"POST {self.path} HTTP/1.1\r\nHost: {self.hostport}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{head}\r\n".encode("latin-1") + body)
        lines = self._read_until(b"\r\n\r\n").decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length, close = 0, False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value.strip())
            elif name == "connection" and value.strip().lower() == "close":
                close = True
        self._read_exactly(length)
        if close:
            self.close()
        return status
