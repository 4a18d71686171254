"""What a job loads and what it sends back: payload pickles in (inline, raw files, buffer files, shared
inputs), a result's event fields out (inline, or a file in the run's spool referenced by its digest).

Job side, like ``worker``: only cheap standard-library modules at import (``bufferfile`` and cloudpickle
only when a value needs them).
"""

from __future__ import annotations

import _pickle as pickle

from . import protocol, spool, unpickle

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .sender import EventSender

_PICKLE_PROTOCOL = 5


def _dumps(value: Any) -> bytes:
    try:
        return pickle.dumps(value, protocol=_PICKLE_PROTOCOL)
    except Exception:
        import cloudpickle  # lambdas, local classes, objects defined in __main__
        return cloudpickle.dumps(value, protocol=_PICKLE_PROTOCOL)


def _b64(data: bytes) -> str:
    return protocol.b64encode(data)


class _SpoolRefused(Exception):
    """A large result could not be written to the spool (``error``) and is too large to send inline."""

    def __init__(self, error: OSError):
        super().__init__(str(error))
        self.error = error


def _result_fields(value: Any, sender: EventSender) -> dict[str, Any]:
    """A result's event fields: inline when small, else a file in the run's spool, referenced by its digest.

    Pickled once with protocol 5: a result with large buffers (arrays) goes to a buffer file with those
    buffers as they are, a large ``bytes``/``bytearray`` to a file of its own; a plain pickle rides inline up to
    the receiver's body limit (1 MiB at most). When the spool refuses a file (full, or not private) the result
    still goes inline if it fits; otherwise ``_SpoolRefused``.
    """
    inline_limit = min(int(sender.payload.get("max_body") or _INLINE_RESULT), _INLINE_LIMIT)
    can_spool = bool(sender.payload.get("spool_dir"))
    if type(value) in (bytes, bytearray) and len(value) > max(inline_limit, _INLINE_RESULT) and can_spool:
        # as they are: the weave reads them back with one read (no pickle, no copy holding its GIL)
        return _spooled(sender, [value], type(value).__name__, value, inline_limit)
    main, buffers = _dumps_buffers(value)
    if buffers:
        from . import bufferfile

        if bufferfile.size(main, buffers) > _INLINE_RESULT and can_spool:
            return _spooled(sender, bufferfile.chunks(main, buffers), "buffers", value, inline_limit)
        main = _dumps(value)   # small after all (or nowhere to spool it): in-band, like any small result
    if len(main) > inline_limit and can_spool:
        return _spooled(sender, [main], "pickle", value, inline_limit)
    return {"result_pickle": _b64(main)}


_INLINE_RESULT = 64 * 1024     # a result with buffers (arrays) larger than this goes to a buffer file
_INLINE_LIMIT = 1024 * 1024    # a plain pickle larger than this (or than the body limit) goes to a file


def _spooled(sender: EventSender, chunks: list[Any], kind: str, value: Any, inline_limit: int) -> dict[str, Any]:
    try:
        return {"result_ref": sender.spool_buffers(chunks, kind)}
    except OSError as exc:
        main = _dumps(value)
        if len(main) <= inline_limit:   # the spool would not take it, but the event can carry it
            return {"result_pickle": _b64(main)}
        raise _SpoolRefused(exc) from exc


def _dumps_buffers(value: Any) -> tuple[bytes, list[Any]]:
    """``value`` pickled with its large buffers (arrays, bytearrays) kept out of band."""
    buffers: list[Any] = []
    try:
        main = pickle.dumps(value, protocol=_PICKLE_PROTOCOL, buffer_callback=buffers.append)
    except Exception:
        import cloudpickle  # lambdas, local classes, objects defined in __main__
        buffers.clear()
        main = cloudpickle.dumps(value, protocol=_PICKLE_PROTOCOL, buffer_callback=buffers.append)
    return main, [buffer.raw() for buffer in buffers]


def _load_field(field: str, what: str, version: str) -> Any:
    """Unpickle a payload's pickle: base64 inline, or ``spool:<path>`` of a raw pickle or a buffer file
    (checked to be this user's alone; a buffer file is mapped, not read, so arrays are not copied)."""
    if not field.startswith(protocol.SPOOL_PREFIX):
        return unpickle.loads(protocol.b64decode(field), version)
    path = field[len(protocol.SPOOL_PREFIX):]
    with open(spool.open_private(path, f"spooled {what}"), "rb") as handle:
        head = handle.read(8)
        if head != b"WOVEBUF1":
            return unpickle.loads(head + handle.read(), version)
        from . import bufferfile

        return bufferfile.load(handle.fileno(), path, lambda main, buffers: unpickle.loads(main, version, buffers))


def _with_shared(args: Any, kwargs: Any, shared: Any, version: str) -> tuple[Any, Any]:
    """Put the shared inputs (spool files, or small inline pickles) into their argument slots.

    Each call loads its own copy (a buffer file is mapped copy-on-write again: its arrays cost nothing until
    written), so the items of one job never see each other's changes; the same object in two slots of one
    call (``f(x, x)``, marked by the weave) is loaded once, so both slots hold one object, as in the weave,
    while two equal but distinct objects stay two.
    """
    args, kwargs = list(args), dict(kwargs)
    loaded: dict[Any, Any] = {}   # slot -> value; an entry naming a first slot is that same object
    for entry in shared:
        slot, field = entry[0], entry[1]
        if len(entry) > 2:
            value = loaded[entry[2]]
        else:
            what = "shared input" if field.startswith(protocol.SPOOL_PREFIX) else "argument"
            value = _load_field(field, what, version)
        loaded[slot] = value
        if isinstance(slot, int):
            args[slot] = value
        else:
            kwargs[slot] = value
    return tuple(args), kwargs
