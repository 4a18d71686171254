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
from typing import Any, Optional

from . import protocol, spool

MAX_FINISHED = 10_000   # finished runs remembered, so their late events are recognized and ignored
OK, BAD_REQUEST, UNAUTHORIZED, FORBIDDEN, NOT_FOUND, CONFLICT, TOO_LARGE = 200, 400, 401, 403, 404, 409, 413


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

    def check(self, run_id: Optional[str], event: Optional[str], incarnation: Optional[str],
              seq: Optional[str], signature: Optional[str], body: bytes) -> int:
        """HTTP-style status for an event envelope. Pure checks: the body is only hashed, never parsed."""
        status = self._check(run_id, event, incarnation, seq, signature, body)
        if status != OK:
            self.rejected[status] = self.rejected.get(status, 0) + 1
        return status

    def _check(self, run_id, event, incarnation, seq, signature, body) -> int:
        if not (run_id and event and signature and seq is not None and incarnation is not None):
            return UNAUTHORIZED
        state = self._runs.get(run_id)
        if state is None:
            return FORBIDDEN
        try:
            seq_n, inc_n = int(seq), int(incarnation)
        except ValueError:
            return UNAUTHORIZED
        if not protocol.verify(state.key, run_id, event, inc_n, seq_n, body, signature):
            return UNAUTHORIZED
        if inc_n < state.incarnation or (inc_n == state.incarnation and seq_n <= state.seq):
            return CONFLICT
        state.incarnation, state.seq = inc_n, seq_n
        return OK

    def is_finished(self, run_id: str) -> bool:
        state = self._runs.get(run_id)
        return state is None or state.finished

    def decode(self, run_id: str, event: str, incarnation: int, body: bytes) -> Optional[dict[str, Any]]:
        """Parse an authenticated body into an event frame; ``None`` if it is malformed."""
        try:
            frame = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return None
        if not isinstance(frame, dict) or frame.get("type") != event or frame.get("run_id") != run_id \
                or event not in protocol.EVENT_TYPES:
            return None
        frame["incarnation"] = incarnation
        try:
            self._unpack(frame)
        except ValueError:
            return None
        return frame

    def _unpack(self, frame: dict[str, Any]) -> None:
        if "result_pickle" in frame or "result_ref" in frame:
            data = (base64.b64decode(frame.pop("result_pickle")) if "result_pickle" in frame
                    else self._read_ref(frame.pop("result_ref")))
            try:
                frame["result"] = loads(data)
            except Exception as exc:  # e.g. the result's class is not importable in the weave process
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

    def _read_ref(self, ref: Any) -> bytes:
        if not isinstance(ref, dict) or not isinstance(ref.get("path"), str):
            raise ValueError("bad result_ref")
        path = ref["path"]
        if self.spool_dir is None or not _inside(path, self.spool_dir):
            raise ValueError(f"result_ref {path!r} is outside the spool directory")
        with open(path, "rb") as handle:
            data = handle.read()
        spool.remove(path)
        if hashlib.sha256(data).hexdigest() != ref.get("sha256"):
            raise ValueError("spooled result does not match its signed digest")
        return data


def _inside(path: str, directory: str) -> bool:
    import os

    real, base = os.path.realpath(path), os.path.realpath(directory)
    return os.path.commonpath([real, base]) == base
