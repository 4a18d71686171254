"""The wire format between a weave and its remote workers: payloads, event signatures, spool references.

This module is imported on every remote job, so it uses only cheap standard-library modules.

Security model: each run gets its own random signing key, carried inside its payload (which reaches the job
through the environment of the submitting process or a mode-0600 spool file, never a command line). The
worker signs every event with HMAC-SHA256 over ``wove1 / run id / event type / incarnation / sequence /
SHA-256 of the body``; the receiver checks the URL token, the run, the signature (in constant time) and the
sequence before it parses the body, and only then unpickles anything. A leaked callback token alone lets
someone reach the endpoint but not forge, replay or alter any event.
"""

from __future__ import annotations

import binascii
import os
import sys
from _operator import _compare_digest as compare_digest  # what hmac.compare_digest uses, without hashlib

from . import compactjson

try:   # the interpreter's built-in SHA-256: no OpenSSL start-up on every job (hashlib costs ~3 ms here)
    from _sha2 import sha256 as sha256  # Python 3.12+
except ImportError:
    try:
        from _sha256 import sha256 as sha256  # Python 3.9-3.11
    except ImportError:  # a build without built-in hashes
        from hashlib import sha256 as sha256

TYPE_CHECKING = False
if TYPE_CHECKING:  # keep remote jobs from importing typing at start-up
    from typing import Any, Optional

PAYLOAD_VERSION = 1
#: A payload with shared inputs (``"shared"``) or buffer files: a job that knows only version 1 would run
#: such a task with ``None`` arguments, so it is marked 2, which such a job refuses with a clear error.
PAYLOAD_VERSION_BUFFERS = 2
_READABLE_VERSIONS = (PAYLOAD_VERSION, PAYLOAD_VERSION_BUFFERS)
PAYLOAD_ENV = "WOVE_BACKEND_PAYLOAD"
SPOOL_PREFIX = "spool:"
SIGNATURE_SCHEME = "wove1"

# HTTP headers carrying the signed envelope of an event.
H_RUN, H_EVENT, H_SEQ, H_INCARNATION, H_SIGNATURE = (
    "x-wove-run", "x-wove-event", "x-wove-seq", "x-wove-incarnation", "x-wove-signature")

EVENT_TYPES = ("task_started", "task_result", "task_error", "task_cancelled", "heartbeat",
               "items_done",        # some items of a packed element finished (dispatch.batch)
               "task_checkpoint")   # the task ended its attempt with a state to go on from (dispatch.checkpoint)
OUTCOME_TYPES = ("task_result", "task_error", "task_cancelled", "task_checkpoint")


class PayloadError(ValueError):
    """A payload is missing, truncated, not base64 JSON, or lacks a required field."""


_IPAD = bytes(b ^ 0x36 for b in range(256))
_OPAD = bytes(b ^ 0x5C for b in range(256))


# The worker's exit status when it could not reach its weave and left the outcome in the run's spool.
EXIT_SPOOLED = 4

def hmac_sha256(key: bytes, message: bytes) -> str:
    """HMAC-SHA256 (RFC 2104) over the built-in SHA-256; ``tests`` check it against the ``hmac`` module."""
    if len(key) > 64:
        key = sha256(key).digest()
    key = key.ljust(64, b"\0")
    inner = sha256(key.translate(_IPAD) + message).digest()
    return sha256(key.translate(_OPAD) + inner).hexdigest()


def b64encode(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def b64decode(text: str | bytes) -> bytes:
    return binascii.a2b_base64(text)


def new_key() -> str:
    return binascii.b2a_base64(os.urandom(32), newline=False).decode("ascii").rstrip("=\n")


def canonical(run_id: str, event: str, incarnation: int, seq: int, body_digest: str) -> bytes:
    return f"{SIGNATURE_SCHEME}\n{run_id}\n{event}\n{incarnation}\n{seq}\n{body_digest}".encode()


def sign(key: str, run_id: str, event: str, incarnation: int, seq: int, body: bytes) -> str:
    digest = sha256(body).hexdigest()
    return hmac_sha256(key.encode(), canonical(run_id, event, incarnation, seq, digest))


def verify(key: str, run_id: str, event: str, incarnation: int, seq: int, body: bytes, signature: str) -> bool:
    """Constant-time check of an event signature (no parsing of ``body`` happens here)."""
    return verify_digest(key, run_id, event, incarnation, seq, sha256(body).hexdigest(), signature)


def verify_digest(key: str, run_id: str, event: str, incarnation: int, seq: int, body_digest: str,
                  signature: str) -> bool:
    """``verify`` for a body whose SHA-256 was computed as it streamed in."""
    expected = hmac_sha256(key.encode(), canonical(run_id, event, incarnation, seq, body_digest))
    return compare_digest(expected.encode(), signature.encode("ascii", "replace"))


EVENTS_PATH = "/wove/events/"
_TOKEN_END = frozenset(" \t\r\n/?#'\"<>()[]{},;:`")


def redact(text: str) -> str:
    """``text`` with every callback token hidden: ``.../wove/events/<token>`` becomes ``.../wove/events/…``."""
    start = text.find(EVENTS_PATH)
    if start < 0:
        return text
    parts, position = [], 0
    while start >= 0:
        begin = end = start + len(EVENTS_PATH)
        while end < len(text) and text[end] not in _TOKEN_END:
            end += 1
        parts.append(text[position:begin])
        if end > begin:
            parts.append("\u2026")
        position = end
        start = text.find(EVENTS_PATH, end)
    parts.append(text[position:])
    return "".join(parts)


def version_info() -> dict[str, str]:
    """Python ``major.minor``, cloudpickle and wove versions of this process (for mismatch reports)."""
    from .._version import __version__

    try:
        import cloudpickle
        cp_version = getattr(cloudpickle, "__version__", "unknown")
    except ImportError:
        cp_version = "missing"
    return {"python": f"{sys.version_info[0]}.{sys.version_info[1]}", "cloudpickle": cp_version,
            "wove": __version__}


def encode_inline(payload: dict[str, Any]) -> str:
    return b64encode(compactjson.dumps(payload).encode())


def decode_inline(text: str) -> dict[str, Any]:
    """Decode base64 JSON (what goes in the environment) or plain JSON (what spool files hold)."""
    try:
        text = text.strip()
        raw = text if text.startswith("{") else b64decode(text)
        payload = compactjson.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PayloadError(
            f"payload is not base64-encoded JSON ({exc.__class__.__name__}: {exc}); expected the value wove "
            f"puts in {PAYLOAD_ENV}: base64 JSON, or '{SPOOL_PREFIX}<path>'") from None
    if not isinstance(payload, dict):
        raise PayloadError(f"payload must be a JSON object, got {type(payload).__name__}")
    return payload


def read_payload(reference: Optional[str], array_index: Optional[int] = None) -> list[dict[str, Any]]:
    """Turn the worker's argument (inline base64 JSON or ``spool:<path>``) into payload dicts.

    An array spool holds one payload per item; ``array_index`` picks this job's share.
    """
    if reference is None or not reference.strip():
        raise PayloadError(f"no payload: pass it as the first argument or in {PAYLOAD_ENV} "
                           f"(base64 JSON, or '{SPOOL_PREFIX}<path>')")
    reference = reference.strip()
    if not reference.startswith(SPOOL_PREFIX):
        payload = decode_inline(reference)
        _check_fields(payload)
        return [payload]
    from . import spool

    path = reference[len(SPOOL_PREFIX):]
    try:
        texts = spool.read_payload_texts(path, array_index)
    except spool.UnsafeSpoolError as exc:   # someone else could have written it: never load it
        raise PayloadError(str(exc)) from None
    except OSError as exc:
        raise PayloadError(f"cannot read spooled payload {path}: {exc.strerror or exc}; the spool directory "
                           "must be on a filesystem the job can read (executor_config.spool_dir)") from None
    payloads = [decode_inline(text) for text in texts]
    for payload in payloads:
        _check_fields(payload)
    return payloads


_REQUIRED = ("version", "run_id", "callable_pickle", "args_pickle")


def _check_fields(payload: dict[str, Any]) -> None:
    missing = [key for key in _REQUIRED if key not in payload]
    if missing:
        raise PayloadError(f"payload lacks {', '.join(missing)}; it was not made by wove's dispatch "
                           f"(expected fields: {', '.join(_REQUIRED)}, ...)")
    if payload["version"] not in _READABLE_VERSIONS:
        raise PayloadError(f"payload version {payload['version']!r} is not supported by this wove "
                           f"(expects {' or '.join(map(str, _READABLE_VERSIONS))}); install the same wove "
                           "version on both sides")
