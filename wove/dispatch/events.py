"""The event gate: authenticate a signed event, reject replays, and only then decode it into a frame.

Both result channels (HTTP callbacks and event files on a shared filesystem) feed the same gate, so the
security rules live in one place. Nothing is parsed, let alone unpickled, before the signature checks out.
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import io
import json
import mmap
import os
import pickle
import stat
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Optional

from . import bufferfile, protocol, spool

MAX_FINISHED = 10_000   # finished runs remembered, so their late events are recognized and ignored
OK, BAD_REQUEST, UNAUTHORIZED, FORBIDDEN, NOT_FOUND, CONFLICT, TOO_LARGE = 200, 400, 401, 403, 404, 409, 413
UNAVAILABLE = 503   # authentic, but not readable yet (a spooled result not visible): the worker retries


@dataclass
class _RunState:
    key: str
    incarnation: int = -1
    seq: int = 0
    finished: bool = False


def loads(data: Any, buffers: Optional[list[memoryview]] = None) -> Any:
    """Unpickle a value that passed authentication (cloudpickle output loads with plain pickle)."""
    return pickle.loads(data, buffers=buffers)


#: Names of ``builtins`` a restricted unpickler may rebuild: plain data types and exception classes only
#: (never ``eval``, ``exec``, ``getattr``, ``__import__``, ``open``...).
SAFE_BUILTINS = frozenset({
    "bool", "int", "float", "complex", "str", "bytes", "bytearray", "list", "tuple", "dict", "set",
    "frozenset", "slice", "range", "NoneType", "Ellipsis", "NotImplemented",
} | {name for name, value in vars(builtins).items() if isinstance(value, type) and issubclass(value, BaseException)})


class RefusedGlobal(pickle.UnpicklingError):
    """A restricted unpickler met a global outside the allow-list."""

    def __init__(self, module: str, name: str, allowed: tuple[str, ...]):
        self.module, self.name, self.allowed = module, name, allowed
        shown = ", ".join(repr(m) for m in allowed) or "none"
        super().__init__(
            f"it references {module}.{name}, which executor_config['unpickle_allow'] does not allow "
            f"(allowed modules: {shown}; builtin data and exception types are always allowed); add its module "
            f"to unpickle_allow only if you trust every job of this environment")


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, data: io.BytesIO, allowed: tuple[str, ...], buffers: Optional[list[memoryview]] = None):
        super().__init__(data, buffers=buffers)
        self._allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        if module == "builtins":
            allowed = name in SAFE_BUILTINS
        elif module == "copyreg":
            allowed = name in ("_reconstructor", "__newobj__", "__newobj_ex__")
        else:
            allowed = any(module == prefix or module.startswith(prefix + ".") for prefix in self._allowed)
        if not allowed:
            raise RefusedGlobal(module, name, self._allowed)
        return super().find_class(module, name)


def restricted_loads(data: Any, allowed: tuple[str, ...], buffers: Optional[list[memoryview]] = None) -> Any:
    """Unpickle resolving only globals of the ``allowed`` modules (and safe builtins): defence in depth
    against a signed but malicious result, for users who opt in with ``unpickle_allow``."""
    return _RestrictedUnpickler(io.BytesIO(data), allowed, buffers).load()


class EventGate:
    """Knows every run's signing key and replay state; turns verified events into frames."""

    def __init__(self, spool_dir: Optional[str] = None, *, allowed_modules: Optional[tuple[str, ...]] = None):
        #: With ``allowed_modules`` (``executor_config['unpickle_allow']``) results and exceptions are rebuilt
        #: by a restricted unpickler; ``None`` trusts whatever a correctly signed event carries.
        self.allowed_modules = tuple(allowed_modules) if allowed_modules is not None else None
        self._runs: dict[str, _RunState] = {}
        self._finished: deque[str] = deque()
        self.spool_dir = spool_dir
        self.adopted_dirs: list[str] = []   # run directories of an earlier driver whose runs we reattached
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

    def authenticate(self, run_id: Optional[str], event: Optional[str], incarnation: Optional[str],
                     seq: Optional[str], signature: Optional[str], *, body_digest: str) -> int:
        """Headers and signature (constant time) over the body's SHA-256: OK, or the status to answer."""
        status = self.precheck(run_id, event, incarnation, seq, signature)
        if status != OK:
            return status
        assert run_id is not None and event is not None and signature is not None
        state = self._runs[run_id]
        if not protocol.verify_digest(state.key, run_id, event, int(incarnation), int(seq),  # type: ignore[arg-type]
                                      body_digest, signature):
            self.count_rejection(UNAUTHORIZED)
            return UNAUTHORIZED
        return OK

    def parse(self, run_id: str, event: str, incarnation: int, seq: int, body: bytes | bytearray | None,
              decoded: Any = None) -> tuple[int, Optional[dict[str, Any]]]:
        """Turn an authenticated body into a frame whose pickles are still encoded (nothing unpickled).

        ``decoded`` is the body's JSON already parsed (in a thread, after ``authenticate``) when ``body`` is
        ``None``. A finished run's late event is acknowledged and never decoded: the result is ``(OK, None)``,
        or for ``task_cancelled`` (the acknowledgement of our own cancel) a frame made from the signed
        envelope alone, marked ``late``.
        """
        state = self._runs.get(run_id)
        if state is not None and (incarnation < state.incarnation
                                  or (incarnation == state.incarnation and seq <= state.seq)):
            self.count_rejection(CONFLICT)   # the same event twice, authenticated before either was applied
            return CONFLICT, None
        if state is None or state.finished:
            self.commit(run_id, incarnation, seq)
            if event == "task_cancelled":
                return OK, {"type": event, "run_id": run_id, "incarnation": incarnation, "late": True}
            return OK, None
        frame = decoded
        if body is not None:
            try:
                frame = json.loads(body)
            except (ValueError, UnicodeDecodeError):
                frame = None
        if not isinstance(frame, dict) or frame.get("type") != event or frame.get("run_id") != run_id \
                or event not in protocol.EVENT_TYPES:
            self.count_rejection(BAD_REQUEST)
            self.commit(run_id, incarnation, seq)
            return BAD_REQUEST, None
        frame["incarnation"] = incarnation
        return OK, frame

    def unpack(self, frame: dict[str, Any]) -> dict[str, Any]:
        """Read a spooled result and unpickle (the heavy part; safe to run in a thread).

        Raises ``OSError`` when a spooled result cannot be read (yet), ``ValueError`` for malformed fields.
        """
        return unpack(frame, self._read_ref, self.allowed_modules)

    def commit(self, run_id: str, incarnation: int, seq: int) -> None:
        """Consume the event's sequence number: the same event is a replay from now on."""
        state = self._runs.get(run_id)
        if state is not None:
            state.incarnation, state.seq = incarnation, seq

    def accept(self, run_id: Optional[str], event: Optional[str], incarnation: Optional[str],
               seq: Optional[str], signature: Optional[str], body: bytes) -> tuple[int, Optional[dict[str, Any]]]:
        """Authenticate one event and decode it: ``(status, frame)``; ``frame`` is ``None`` unless it is new.

        Order: headers, signature (constant time), replay, and only then parsing and unpickling. The
        sequence number is consumed only once the event is decoded, so an event that could not be read
        yet (503: a spooled result not visible on a shared filesystem) can be delivered again.
        """
        status = self.authenticate(run_id, event, incarnation, seq, signature,
                                   body_digest=protocol.sha256(body).hexdigest())
        if status != OK:
            return status, None
        assert run_id is not None and event is not None
        inc_n, seq_n = int(incarnation), int(seq)  # type: ignore[arg-type]
        status, frame = self.parse(run_id, event, inc_n, seq_n, body)
        if frame is None or status != OK or frame.get("late"):
            return status, frame
        try:
            frame = self.unpack(frame)
        except OSError:
            self.count_rejection(UNAVAILABLE)
            return UNAVAILABLE, None
        except (ValueError, TypeError):
            self.count_rejection(BAD_REQUEST)
            self.commit(run_id, inc_n, seq_n)
            return BAD_REQUEST, None
        self.commit(run_id, inc_n, seq_n)
        return OK, frame

    def is_finished(self, run_id: str) -> bool:
        state = self._runs.get(run_id)
        return state is None or state.finished

    def _read_ref(self, ref: Any) -> tuple[Any, Optional[list[memoryview]]]:
        """A spooled result's pickle (and out-of-band buffers), checked against its signed digest.

        The file is read once, into memory of our own (never mapped: what was checked is what the user
        gets, and a file cut short cannot crash the weave), and deleted. A buffer file's arrays are views of
        that memory, so they are not copied again.
        """
        if not isinstance(ref, dict) or not isinstance(ref.get("path"), str):
            raise ValueError("bad result_ref")
        path = ref["path"]
        if not any(_inside(path, d) for d in ([self.spool_dir] if self.spool_dir else []) + self.adopted_dirs):
            raise ValueError(f"result_ref {path!r} is outside the spool directory")
        kind = ref.get("format", "pickle")
        if kind not in ("pickle", "buffers", "bytes", "bytearray"):
            raise ValueError(f"result_ref format {kind!r} is not one this weave reads")
        data = _read_spooled(path, ref, kind)
        if kind in ("bytes", "bytearray"):
            return _Raw(data), None
        if kind == "buffers":
            return bufferfile.parts(data, path)
        return data, None


class _Raw:
    """A result that is not a pickle: the ``bytes`` or ``bytearray`` read from its spool file."""

    __slots__ = ("value",)

    def __init__(self, value: bytes | bytearray):
        self.value = value


def _read_spooled(path: str, ref: dict[str, Any], kind: str) -> Any:
    """Read a spooled result in one go and check its size and digest (the read and the hash run without the
    GIL). A buffer file is read into memory of its own (a writable view), anything else into ``bytes``
    (``bytearray`` for a ``bytearray`` result)."""
    # O_NONBLOCK: a FIFO planted under that name cannot block the decode thread (it is refused below)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    with open(fd, "rb", buffering=0) as handle:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            raise ValueError(f"spooled result {path} is not a regular file of this user")
        size = st.st_size
        if size != ref.get("size"):
            raise ValueError(f"spooled result {path} has {size} bytes, its event says {ref.get('size')}")
        data: Any
        if kind == "buffers":
            # anonymous memory, zeroed by the kernel as it is used (a bytearray would be zero-filled first,
            # holding the GIL for ~0.1 s per 200 MB): writable, for the arrays that become views of it
            data = mmap.mmap(-1, max(size, 1))
            view = memoryview(data)[:size]
            while view:
                count = handle.readinto(view)
                if not count:
                    raise ValueError(f"spooled result {path} is shorter than its event says")
                view = view[count:]
            del view
            data = memoryview(data)[:size]
        else:
            data = handle.read()
            if len(data) != size:
                raise ValueError(f"spooled result {path} is shorter than its event says")
            if kind == "bytearray":
                data = bytearray(data)
    if hashlib.sha256(data).hexdigest() != ref.get("sha256"):
        raise ValueError("spooled result does not match its signed digest")
    spool.remove(path)
    return data


def unpack(frame: dict[str, Any],
           read_ref: Optional[Callable[[Any], tuple[Any, Optional[list[memoryview]]]]] = None,
           allowed_modules: Optional[tuple[str, ...]] = None) -> dict[str, Any]:
    """Unpickle a frame's result and exception (after authentication, or from a private pipe).

    A result that cannot be rebuilt here (its class is not importable in the weave process, or the
    restricted unpickler refuses it) turns the frame into a ``task_error`` from the transport; an exception
    that cannot be rebuilt is replaced by the normalized error dict. Malformed fields raise ``ValueError``.
    """
    def load(data: Any, buffers: Optional[list[memoryview]] = None) -> Any:
        if allowed_modules is None:
            return loads(data, buffers)
        return restricted_loads(data, allowed_modules, buffers)

    if "result_pickle" in frame or "result_ref" in frame:
        buffers = None
        if "result_pickle" in frame:
            encoded = frame.pop("result_pickle")
            if not isinstance(encoded, str):
                raise ValueError("result_pickle must be a base64 string")
            data: Any = base64.b64decode(encoded)
        elif read_ref is not None:
            data, buffers = read_ref(frame.pop("result_ref"))
        else:
            raise ValueError("result_ref is not supported on this channel")
        try:
            frame["result"] = data.value if isinstance(data, _Raw) else load(data, buffers)
        except Exception as exc:
            frame["type"] = "task_error"
            refused = isinstance(exc, RefusedGlobal)
            frame["error"] = {
                "kind": "RefusedResult" if refused else type(exc).__name__, "retryable": False,
                "source": "transport", "traceback": "",
                "message": (f"the task finished but its result was refused: {exc}" if refused else
                            f"the task finished but its result could not be unpickled in the weave "
                            f"process: {type(exc).__name__}: {exc}")}
    if "exception_pickle" in frame:
        try:
            frame["exception"] = load(base64.b64decode(frame.pop("exception_pickle")))
        except Exception:  # the type may not exist here (or is not allowed): fall back to the error dict
            frame["exception"] = None
    return frame


def _inside(path: str, directory: str) -> bool:
    real, base = os.path.realpath(path), os.path.realpath(directory)
    return os.path.commonpath([real, base]) == base
