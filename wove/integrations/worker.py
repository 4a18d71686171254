"""Run a wove payload from inside another worker (a queue consumer, a serverless handler, ...).

``run(payload)`` executes the task and delivers its signed events exactly like
``python -m wove.backend_worker``; ``await arun(payload)`` does the same without blocking the caller's event
loop. Neither installs signal handlers or exits the process: the host worker owns those.
"""

from __future__ import annotations

import asyncio
from typing import Any, Union

from ..dispatch import protocol
from ..dispatch.worker import run_payloads
from ..errors import InvalidTypeError


def _payloads(payload: Union[dict[str, Any], str]) -> list[dict[str, Any]]:
    if isinstance(payload, dict):
        return [payload]
    if isinstance(payload, str):
        return protocol.read_payload(payload)
    raise InvalidTypeError(f"payload must be a dict or the encoded payload string, got {type(payload).__name__}")


def run(payload: Union[dict[str, Any], str]) -> int:
    """Run the task described by ``payload``; returns the worker exit code (0 ok, 1 raised, 2 undelivered)."""
    return run_payloads(_payloads(payload), trap_signals=False)


async def arun(payload: Union[dict[str, Any], str]) -> int:
    """Async ``run``: the task runs in a worker thread, so the caller's loop stays responsive."""
    payloads = _payloads(payload)
    return await asyncio.get_running_loop().run_in_executor(
        None, lambda: run_payloads(payloads, trap_signals=False))
