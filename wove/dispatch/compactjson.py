"""Compact JSON for the job side, straight from the standard library's C accelerator ``_json``.

``import json`` costs about 8 ms per job here (``json.decoder`` compiles regular expressions, which imports
``re``, ``enum`` and ``functools``) while ``_json`` itself costs nothing: every job parses its payload and
writes its events, so this module builds the encoder and scanner from ``_json`` directly, with the same
output as ``json.dumps(obj, separators=(",", ":"))``. Where ``_json`` is missing or differs, it falls back to
``json``.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_NUMBERS = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}


def _default(obj: Any) -> Any:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


class _ScanContext:
    """The settings ``_json.make_scanner`` reads from a ``json.JSONDecoder``, with the default values."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = staticmethod(_NUMBERS.__getitem__)


def _c_encode(obj: Any) -> str:
    # a fresh encoder per call, as json does: its markers dict detects circular references
    encoder = _json.make_encoder({}, _default, _json.encode_basestring_ascii, None, ":", ",", False, False, True)
    return "".join(encoder(obj, 0))


try:
    import _json

    _scan = _json.make_scanner(_ScanContext())  # type: ignore[arg-type]  # duck-typed like json's decoder
    if _c_encode({"a": [1, 2.5, None, True, "\u00e9"]}) != '{"a":[1,2.5,null,true,"\\u00e9"]}':
        raise ImportError("unexpected _json behaviour")
    _encode = _c_encode
except (ImportError, AttributeError, TypeError):   # another Python: the plain json module
    _encode = _scan = None  # type: ignore[assignment]


def dumps(obj: Any) -> str:
    """``json.dumps(obj, separators=(",", ":"))``."""
    if _encode is None:
        import json

        return json.dumps(obj, separators=(",", ":"))
    return _encode(obj)


def loads(text: str | bytes) -> Any:
    """``json.loads(text)``."""
    original = text
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            text = "\ufeff"   # not UTF-8: json detects UTF-16/32 itself
    if _scan is None or text.startswith("\ufeff"):
        import json

        return json.loads(original)
    stripped = text.strip(" \t\n\r")
    try:
        value, end = _scan(stripped, 0)
    except (StopIteration, ValueError, SystemError):   # (3.11's scanner can fail without an exception)
        value, end = None, -1
    if end != len(stripped):   # not one JSON document: json says exactly what is wrong (or decodes it)
        import json

        return json.loads(original)
    return value
