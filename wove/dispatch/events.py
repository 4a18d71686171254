"""The event gate: authenticate a signed event, reject replays, and only then decode it into a frame.

Both result channels (HTTP callbacks and event files on a shared filesystem) feed the same gate, so the
security rules live in one place. Nothing is parsed, let alone unpickled, before the signature checks out.
"""

from __future__ import annotations

import base64
import hashlib
import json
import pickle
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Optional

from . import protocol, spool

MAX_FINISHED = 10_000   # finished runs remembered, so their late events are recognized and ignored
OK, BAD_REQUEST, UNAUTHORIZED, FORBIDDEN, NOT_FOUND, CONFLICT, TOO_LARGE = 200, 400, 401, 403, 404, 409, 413
UNAVAILABLE = 503   # authentic, but not readable yet (a spooled result not visible): the worker retries


@dataclass
class _RunState:
    key: str
    incarnation: int = -1
    seq: int = 0
    finished: bool = False


def loads(data: bytes) -> Any:
    """Unpickle a value that passed authentication (cloudpickle output loads with plain pickle)."""
    return pickle.loads(data)


class EventGate:
    """Knows every run's signing key and replay state; turns verified events into frames."""

    def __init__(self, spool_dir: Optional[str] = None):
        self._runs: dict[str, _RunState] = {}
        self._finished: deque[str] = deque()
        self.spool_dir = spool_dir
        self.rejected: dict[int, int] = {}

    def count_rejection(self, status: int) -> None:
        self.rejected[status] = self.rejected.get(status, 0) + 1

    def register(self, run_id: str, key: str) -> None:
        self._runs[run_id] = _RunState(key)

    def finish(self, run_id: str) -> None:
        """The run's outcome is known: keep verifying its late events (to ignore them), for a while."""
        state = self._runs.get(run_id)
        if state is not None and not state.finished:
            state.finished = True
            self._finished.append(run_id)
            while len(self._finished) > MAX_FINISHED:
                self._runs.pop(self._finished.popleft(), None)

    def forget(self, run_id: str) -> None:
        self._runs.pop(run_id, None)

    def precheck(self, run_id: Optional[str], event: Optional[str], incarnation: Optional[str],
                 seq: Optional[str], signature: Optional[str]) -> int:
        """What the headers alone allow: 401 (unsigned), 403 (unknown run), 409 (replay) or OK.

        Runs before the body is read, so nobody can make the weave read a large body for a run it does not
        know or an event it has already seen.
        """
        status = self._precheck(run_id, event, incarnation, seq, signature)
        if status != OK:
            self.count_rejection(status)
        return status

    def _precheck(self, run_id, event, incarnation, seq, signature) -> int:
        if not (run_id and event and signature and seq is not None and incarnation is not None):
            return UNAUTHORIZED
        state = self._runs.get(run_id)
        if state is None:
            return FORBIDDEN
        try:
            seq_n, inc_n = int(seq), int(incarnation)
        except ValueError:
            return UNAUTHORIZED
        if inc_n < state.incarnation or (inc_n == state.incarnation and seq_n <= state.seq):
            return CONFLICT
        return OK

    def accept(self, run_id: Optional[str], event: Optional[str], incarnation: Optional[str],
               seq: Optional[str], signature: Optional[str], body: bytes) -> tuple[int, Optional[dict[str, Any]]]:
        """Authenticate one event and decode it: ``(status, frame)``; ``frame`` is ``None`` unless it is new.

        Order: headers, signature (constant time), replay, and only then parsing and unpickling. The
        sequence number is consumed only once the event is decoded, so an event that could not be read
        yet (503: a spooled result not visible on a shared filesystem) can be delivered again.
        """
        status = self.precheck(run_id, event, incarnation, seq, signature)
        if status != OK:
            return status, None
        assert run_id is not None and event is not None and signature is not None
        state = self._runs[run_id]
        seq_n, inc_n = int(seq), int(incarnation)  # type: ignore[arg-type]
        if not protocol.verify(state.key, run_id, event, inc_n, seq_n, body, signature):
            self.count_rejection(UNAUTHORIZED)
            return UNAUTHORIZED, None
        if state.finished and event != "task_cancelled":
            state.incarnation, state.seq = inc_n, seq_n   # authentic but late: acknowledged, never decoded
            return OK, None
        try:
            frame = self.decode(run_id, event, inc_n, body)
        except OSError:
            self.count_rejection(UNAVAILABLE)
            return UNAVAILABLE, None
        state.incarnation, state.seq = inc_n, seq_n
        if frame is None:
            self.count_rejection(BAD_REQUEST)
            return BAD_REQUEST, None
        return OK, frame

    def is_finished(self, run_id: str) -> bool:
        state = self._runs.get(run_id)
        return state is None or state.finished

    def decode(self, run_id: str, event: str, incarnation: int, body: bytes) -> Optional[dict[str, Any]]:
        """Parse an authenticated body into an event frame; ``None`` if it is malformed.

        Raises ``OSError`` when a spooled result cannot be read (yet).
        """
        try:
            frame = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return None
        if not isinstance(frame, dict) or frame.get("type") != event or frame.get("run_id") != run_id \
                or event not in protocol.EVENT_TYPES:
            return None
        frame["incarnation"] = incarnation
        try:
            return unpack(frame, self._read_ref)
        except (ValueError, TypeError):
            return None

    def _read_ref(self, ref: Any) -> bytes:
        if not isinstance(ref, dict) or not isinstance(ref.get("path"), str):
            raise ValueError("bad result_ref")
        path = ref["path"]
        if self.spool_dir is None or not _inside(path, self.spool_dir):
            raise ValueError(f"result_ref {path!r} is outside the spool directory")
        with open(path, "rb") as handle:
            data = handle.read()
        if hashlib.sha256(data).hexdigest() != ref.get("sha256"):
            raise ValueError("spooled result does not match its signed digest")
        spool.remove(path)
        return data


def unpack(frame: dict[str, Any], read_ref: Optional[Callable[[Any], bytes]] = None) -> dict[str, Any]:
    """Unpickle a frame's result and exception (after authentication, or from a private pipe).

    A result that cannot be rebuilt here (its class is not importable in the weave process) turns the
    frame into a ``task_error`` from the transport; an exception that cannot be rebuilt is replaced by the
    normalized error dict. Malformed fields raise ``ValueError``.
    """
    if "result_pickle" in frame or "result_ref" in frame:
        if "result_pickle" in frame:
            encoded = frame.pop("result_pickle")
            if not isinstance(encoded, str):
                raise ValueError("result_pickle must be a base64 string")
            data = base64.b64decode(encoded)
        elif read_ref is not None:
            data = read_ref(frame.pop("result_ref"))
        else:
            raise ValueError("result_ref is not supported on this channel")
        try:
            frame["result"] = loads(data)
        except Exception as exc:
            frame["type"] = "task_error"
            frame["error"] = {
                "kind": type(exc).__name__, "retryable": False, "source": "transport", "traceback": "",
                "message": f"the task finished but its result could not be unpickled in the weave "
                           f"process: {type(exc).__name__}: {exc}"}
    if "exception_pickle" in frame:
        try:
            frame["exception"] = loads(base64.b64decode(frame.pop("exception_pickle")))
        except Exception:  # the type may not exist here: fall back to the error dict
            frame["exception"] = None
    return frame


def _inside(path: str, directory: str) -> bool:
    import os

    real, base = os.path.realpath(path), os.path.realpath(directory)
    return os.path.commonpath([real, base]) == base
