"""Exceptions across process boundaries: the normalized error dict and rebuilding the original type."""

from __future__ import annotations

import traceback
from typing import Any, Optional

from ..errors import EnvironmentExecutionError


class RemoteTraceback(Exception):
    """Attached as ``__cause__`` of a rebuilt exception so the remote traceback shows up locally."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return "\n\n--- remote traceback ---\n" + self.text


def normalize_error(exc: BaseException, *, source: str = "task", retryable: bool = False) -> dict[str, Any]:
    """``{kind, message, traceback, retryable, source}`` with source task|executor|transport|config."""
    kind = type(exc)
    return {
        "kind": kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}",
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(kind, exc, exc.__traceback__)),
        "retryable": retryable,
        "source": source,
    }


def error_dict(kind: str, message: str, *, source: str, retryable: bool = False) -> dict[str, Any]:
    return {"kind": kind, "message": message, "traceback": "", "retryable": retryable, "source": source}


def rebuild_exception(exception: Optional[Any], error: dict[str, Any]) -> BaseException:
    """The original exception when it survived the trip, else an ``EnvironmentExecutionError``."""
    if isinstance(exception, BaseException):
        rebuilt = exception
    else:
        rebuilt = EnvironmentExecutionError(
            f"{error.get('kind', 'Error')}: {error.get('message', '')}".rstrip(": "), payload=dict(error))
    text = error.get("traceback")
    if text and rebuilt.__cause__ is None:
        rebuilt.__cause__ = RemoteTraceback(text)
    return rebuilt
