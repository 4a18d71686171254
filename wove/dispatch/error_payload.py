"""Exceptions across process boundaries: the normalized error dict and rebuilding the original type."""

from __future__ import annotations

import linecache
import os
import re
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
    """The original exception when it survived the trip, else an ``EnvironmentExecutionError``.

    Either way the remote traceback (with the source lines the job could not show filled in from this
    machine's files) is its ``__cause__``.
    """
    text = error.get("traceback")
    if text:
        error = {**error, "traceback": fill_source_lines(text)}
    if isinstance(exception, BaseException):
        rebuilt = exception
    else:
        rebuilt = EnvironmentExecutionError(
            f"{error.get('kind', 'Error')}: {error.get('message', '')}".rstrip(": "), payload=dict(error))
    if text and rebuilt.__cause__ is None:
        rebuilt.__cause__ = RemoteTraceback(error["traceback"])
    return rebuilt


_FRAME = re.compile(r'^( *)File "([^"\n]+)", line (\d+), in ')


def fill_source_lines(text: str) -> str:
    """A remote traceback with the source line added under each frame the job could not show.

    A job often cannot read the submitting script (another machine, no shared filesystem), so its frames
    come without source lines. The driver usually can: each such line is read with ``linecache`` here.
    Only ``.py`` files that exist are read; a line the job did show is kept as it is.
    """
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    for index, line in enumerate(lines):
        out.append(line)
        match = _FRAME.match(line)
        if match is None:
            continue
        indent = match.group(1)
        following = lines[index + 1] if index + 1 < len(lines) else ""
        if following.startswith(indent + "  ") and not _FRAME.match(following):
            continue   # the job showed this frame's source
        path, number = match.group(2), int(match.group(3))
        if not path.endswith(".py") or not os.path.isfile(path):
            continue
        source = linecache.getline(path, number).strip()
        if source:
            if not line.endswith("\n"):
                out[-1] += "\n"
            out.append(f"{indent}  {source}\n")
    return "".join(out)
