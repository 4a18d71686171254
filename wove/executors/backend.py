"""``BackendAdapter``: the two methods a job system needs (``submit``, ``cancel``), and the services wove
gives an adapter (its spool directory, payload encoding, ``emit``, ``record_submission``).

``BackendAdapterEnvironmentExecutor`` (``executors/adapter.py``) does everything else.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Optional

from ..dispatch import spool

if TYPE_CHECKING:
    from .adapter import BackendAdapterEnvironmentExecutor


class BackendAdapter:
    """Base class for adapters. Subclasses implement ``submit`` and usually ``cancel``.

    ``submit(payload, frame)`` receives the payload dict (what ``python -m wove.backend_worker`` runs) and
    the ``run_task`` frame, and returns a *submission* handle (a job id, an object...) that ``cancel``
    gets back. Both may be sync or async. ``encode_payload(payload)`` gives the string to hand the worker
    (inline base64 JSON, or a spool reference for large payloads); ``emit(frame)`` reports an event the
    adapter observed itself (for example a job that died without reporting).
    """

    #: Modules the adapter needs at runtime; checked when the environment starts.
    required_modules: tuple[str, ...] = ()
    #: What to tell the user when a required module is missing.
    install_hint: str = ""
    #: Adapter-specific ``executor_config`` keys (besides the dispatch keys); ``None`` accepts any.
    config_keys: Optional[frozenset[str]] = None

    def __init__(self, *, name: str, config: Mapping[str, Any], callback_url: str,
                 run_config: Mapping[str, Any]):
        self.name = name
        self.config = config
        self.callback_url = callback_url
        self.run_config = run_config
        self._executor: Optional[BackendAdapterEnvironmentExecutor] = None
        self.closed = False   # set (before close() runs) by the executor that owns this adapter

    async def start(self) -> None:
        """Prepare (check credentials, find commands...). Failing here fails the environment cleanly."""

    async def submit(self, payload: dict[str, Any], frame: Mapping[str, Any]) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement submit(payload, frame)")

    async def cancel(self, run_id: str, submission: Any, frame: Mapping[str, Any]) -> None:
        """Stop a submitted run; called with whatever ``submit`` returned."""

    async def close(self) -> None:
        """Release what ``start`` acquired."""

    # ---------------------------------------------------------------- services for subclasses
    @property
    def spool_dir(self) -> str:
        assert self._executor is not None, "adapter is not attached to an executor"
        return self._executor.spool_dir

    @property
    def run_dir(self) -> spool.RunDir:
        """This environment run's private spool directory; write files with ``run_dir.write_atomic(name, data)``."""
        assert self._executor is not None and self._executor.run_dir is not None, \
            "adapter is not attached to a started executor"
        return self._executor.run_dir

    @property
    def spool_root(self) -> spool.RunDir:
        """The spool root (``spool_dir``) the run directory was made in, checked at start."""
        assert self._executor is not None and self._executor.spool_root is not None, \
            "adapter is not attached to a started executor"
        return self._executor.spool_root

    def encode_payload(self, payload: dict[str, Any]) -> str:
        """The worker's argument for ``payload``: inline, or ``spool:<path>`` above the spool threshold."""
        assert self._executor is not None, "adapter is not attached to an executor"
        return self._executor.encode_payload(payload)

    def record_submission(self, run_id: str, submission: Any) -> None:
        """Report that ``run_id``'s job exists, when ``submit`` is cancelled after it went in (the runtime then
        cancels it); a ``submit`` that returns needs no call: its return value is the submission."""
        assert self._executor is not None, "adapter is not attached to an executor"
        self._executor.record_submission(run_id, submission)

    def emit(self, frame: dict[str, Any]) -> None:
        """Deliver an event frame to the weave as if the worker had sent it."""
        assert self._executor is not None, "adapter is not attached to an executor"
        self._executor.deliver(frame)

    def on_event(self, frame: dict[str, Any]) -> Optional[dict[str, Any]]:
        """Inspect (or hold back, by returning ``None``) each verified event from workers."""
        return frame
