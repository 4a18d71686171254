"""Signing and delivering one run's events, in order, over HTTP or as files on a shared filesystem.

Job side: imports only cheap standard-library modules. Large results are written to a raw spool file and
referenced by their signed digest; an event the receiver refuses as too large is trimmed (``shrink``).
"""

from __future__ import annotations

import os
import threading
import time

from . import compactjson, protocol, spool
from .httpclient import Connection

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Optional

DEFAULT_POST_SECONDS = 60.0
# A receiver that refuses connections this long is gone (nothing listens on its port: the driver died);
# the events go to the spool.
FALLBACK_AFTER_SECONDS = 3.0
FILE_EVENT_INLINE_BYTES = 4 * 1024 * 1024   # filesystem channel: larger results get a file of their own
_RESULT_EVENTS = ("task_result", "items_done", "task_checkpoint")   # events whose result may be spooled


class EventSender:
    """Signs and delivers one run's events, in order, over HTTP or as files on a shared filesystem."""

    def __init__(self, payload: dict[str, Any], connection: Optional[Connection] = None,
                 lock: Optional[threading.Lock] = None):
        self.payload = payload
        self.run_id = payload["run_id"]
        self.task_id = payload.get("task_id")
        self.key = (payload.get("signing") or {}).get("key", "")
        self.incarnation = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
        self.seq = 0
        self.channel = payload.get("result_channel") or "http"
        self.max_body = int(payload.get("max_body") or 0)
        self.post_seconds = float((payload.get("delivery") or {}).get("post_timeout") or DEFAULT_POST_SECONDS)
        self._lock = lock or threading.Lock()
        self._connection = connection
        self.undelivered: Optional[str] = None
        self.spooled: Optional[str] = None   # why events went to the spool instead of over HTTP
        self.parts = 0   # flushes of a packed element (dispatch.batch): each spooled one needs its own file

    def _conn(self) -> Connection:
        if self._connection is None:
            self._connection = Connection(self.payload["callback_url"])
        return self._connection

    def send(self, event: str, fields: Optional[dict[str, Any]] = None) -> bool:
        """Deliver one event; retry with backoff for up to ``post_seconds``. False if it never arrived."""
        fields = dict(fields or {})
        with self._lock:
            self.seq += 1
            frame = {"type": event, "run_id": self.run_id, "task_id": self.task_id, **fields}
            body = compactjson.dumps(frame).encode()
            # Large results go to a raw file of their own (HTTP: above the receiver's body limit); the event
            # then carries its signed digest, so the weave never parses megabytes of JSON to get them.
            limit = self.max_body if self.channel == "http" else FILE_EVENT_INLINE_BYTES
            if event in _RESULT_EVENTS and limit and len(body) > limit:
                spooled = self._spool_result(frame)
                if spooled is None:
                    return False
                body = spooled
            if self.channel == "filesystem":
                return self._write_event_file(event, body)
            return self._post(event, body, frame)

    def _headers(self, event: str, body: bytes) -> dict[str, str]:
        signature = protocol.sign(self.key, self.run_id, event, self.incarnation, self.seq, body)
        return {protocol.H_RUN: self.run_id, protocol.H_EVENT: event, protocol.H_SEQ: str(self.seq),
                protocol.H_INCARNATION: str(self.incarnation), protocol.H_SIGNATURE: signature}

    def _post(self, event: str, body: bytes, frame: dict[str, Any]) -> bool:
        start = time.monotonic()
        deadline = start + self.post_seconds
        delay, last_error = 0.1, ""
        refused_since: Optional[float] = None
        while True:
            try:
                status = self._conn().post(self._headers(event, body), body, timeout=30.0)
            except (OSError, ValueError) as exc:
                status, last_error = 0, f"{type(exc).__name__}: {exc}"
                if isinstance(exc, (ConnectionRefusedError, ConnectionResetError)):
                    refused_since = refused_since if refused_since is not None else time.monotonic()
            if status:
                refused_since = None
            now = time.monotonic()
            if not status and self.payload.get("events_dir") and (
                    now + delay > deadline
                    or (refused_since is not None and now - refused_since >= FALLBACK_AFTER_SECONDS)):
                # Nobody listens (the driver died, or cannot be reached from here): keep the event in the
                # run's spool, signed as always, for this weave or the next driver of its journal.
                url = protocol.redact(str(self.payload.get("callback_url")))
                self.spooled = protocol.redact(f"could not reach {url} for {now - start:.0f}s ({last_error})")
                self.channel = "filesystem"
                return self._write_event_file(event, body)
            if status in (200, 409):        # 409: an earlier attempt of this very event already arrived
                return True
            if status == 413 and "result_pickle" in frame:
                spooled = self._spool_result(frame)
                if spooled is None:
                    return False
                body = spooled
                self.seq += 1
                continue
            if status == 413 and frame.get("type") != "task_result" and not frame.get("truncated"):
                # e.g. a huge exception: send its description, trimmed to fit, without the pickle
                body = shrink(frame, max(256, (self.max_body - 1024) // 3) if self.max_body else 16 * 1024)
                self.seq += 1
                continue
            if status in (401, 403, 404) and self.payload.get("events_dir"):
                # Not this run's receiver (its driver died and another process now has the port): the
                # event waits in the spool for the next driver of the journal, as when nobody listens.
                self.spooled = f"the receiver at its callback URL answered HTTP {status} (not this run's weave)"
                self.channel = "filesystem"
                return self._write_event_file(event, body)
            if status in (401, 403, 404, 400):
                self.undelivered = f"callback receiver rejected {event} with HTTP {status}"
                return False
            if status:
                last_error = f"HTTP {status}"
            if time.monotonic() + delay > deadline:
                # The token in the URL is a secret: job logs and error messages show /wove/events/…
                url = protocol.redact(str(self.payload.get("callback_url")))
                self.undelivered = protocol.redact(f"could not deliver {event} to {url} within "
                                                   f"{self.post_seconds:.0f}s: {last_error}")
                return False
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def limit_retries(self, seconds: float) -> None:
        """Shorten the delivery window (after SIGTERM, Slurm's SIGKILL follows within KillWait)."""
        self.post_seconds = min(self.post_seconds, seconds)

    def spool_buffers(self, chunks: list[Any], kind: str = "buffers") -> dict[str, Any]:
        """Write a large result to the run's spool; the reference its event carries. ``kind`` says what the
        chunks are: a buffer file's (``"buffers"``), a plain pickle (``"pickle"``), or the contents of a
        ``bytes`` or ``bytearray`` result.

        Raises ``OSError``: ``SpoolFullError`` when it does not fit (nothing is left behind), or
        ``UnsafeSpoolError`` for a spool directory that is not this user's alone.
        """
        spool_dir = str(self.payload.get("spool_dir") or "")
        path, digest = spool.write_private_digest(spool_dir, self._result_name(),
                                                  chunks, digest=True)
        size = sum(memoryview(chunk).nbytes for chunk in chunks)
        ref = {"path": path, "sha256": digest, "size": size}
        if kind != "pickle":   # a plain pickle's reference reads as it always did
            ref["format"] = kind
        return ref

    def _result_name(self) -> str:
        name = spool.result_name(self.run_id, self.incarnation)
        return name if self.parts <= 1 else f"{name[:-len('.result')]}.{self.parts}.result"

    def _spool_result(self, frame: dict[str, Any]) -> Optional[bytes]:
        """Move the result pickle into a spool file; ``None`` (and ``undelivered`` set) if that is refused."""
        spool_dir = self.payload.get("spool_dir")
        data = protocol.b64decode(frame.pop("result_pickle"))
        if not spool_dir:
            raise RuntimeError("the result is larger than the callback body limit and no spool_dir is set")
        try:
            # Into the run's own directory only, checked to be this user's alone (never through a symlink).
            path = spool.write_private(spool_dir, self._result_name(), data)
        except spool.UnsafeSpoolError as exc:
            self.undelivered = f"could not spool the result of {self.run_id}: {exc}"
            return None
        frame["result_ref"] = {"path": path, "sha256": protocol.sha256(data).hexdigest(), "size": len(data)}
        return compactjson.dumps(frame).encode()

    def _write_event_file(self, event: str, body: bytes) -> bool:
        events_dir = self.payload.get("events_dir") or ""
        envelope = {"run": self.run_id, "event": event, "incarnation": self.incarnation, "seq": self.seq,
                    "signature": protocol.sign(self.key, self.run_id, event, self.incarnation, self.seq, body)}
        name = f"{self.run_id}.{self.incarnation}.{self.seq:06d}.{event}.event"
        try:
            spool.write_private(events_dir, name, compactjson.dumps(envelope).encode() + b"\n" + body,
                                "events directory")
        except OSError as exc:
            self.undelivered = f"could not write event file in {events_dir}: {exc}"
            return False
        return True


def shrink(frame: dict[str, Any], limit: int = 16 * 1024) -> bytes:
    """Drop pickles and trim long texts so an event fits any sane body limit."""
    frame.pop("exception_pickle", None)
    frame["truncated"] = True
    error = frame.get("error")
    if isinstance(error, dict):
        for key in ("message", "traceback"):
            text = error.get(key)
            if isinstance(text, str) and len(text) > limit:
                error[key] = text[:limit] + f"... [{len(text) - limit} characters cut]"
    return compactjson.dumps(frame).encode()
