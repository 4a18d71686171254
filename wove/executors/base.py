"""The executor protocol every environment speaks.

An executor is a small message pipe: ``start``, ``send(message)``, ``recv() -> frame``, ``stop``. Commands
go out as ``RunTask`` / ``CancelTask`` / ``Shutdown`` (``wove.dispatch.messages``: frozen, and read-only
mappings with the published ``run_task`` / ``cancel_task`` / ``shutdown`` frame keys); events come back as
``task_started``, ``task_result``, ``task_error``, ``task_cancelled`` and ``heartbeat`` frames (dicts or
``Event``s), which the runtime reads as ``Event``. Keeping the interface this small lets the remote runtime
(retries, timeouts, heartbeats, in-flight caps) be written once for every executor.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import InvalidValueError


class EnvironmentExecutor:
    """Base class for executors. Subclasses implement the four async methods.

    ``validate_config`` checks an environment's ``executor_config`` when ``wove.config`` is called, so a
    typo fails early with the list of valid keys.
    """

    #: Keys accepted in ``executor_config``; ``None`` means "anything" (validated by the subclass).
    config_keys: frozenset[str] | None = frozenset()

    async def start(self, *, environment_name: str, environment_config: Mapping[str, Any],
                    run_config: Mapping[str, Any]) -> None:
        """Prepare to accept frames (start a process, a server, a connection...)."""

    async def send(self, frame: Mapping[str, Any]) -> None:
        raise NotImplementedError

    async def recv(self) -> dict[str, Any]:
        raise NotImplementedError

    async def stop(self) -> None:
        """Release everything ``start`` acquired. Must be safe to call more than once."""

    @classmethod
    def validate_config(cls, config: dict[str, Any], *, environment: str) -> dict[str, Any]:
        if cls.config_keys is not None:
            from .._config import unknown_key_message
            for key in config:
                if key not in cls.config_keys:
                    raise InvalidValueError(unknown_key_message(
                        f"executor_config key for environment {environment!r} ({cls.__name__}):",
                        key, cls.config_keys or ["(none)"]))
        return config
