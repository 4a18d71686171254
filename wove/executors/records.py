"""``RunRecord``: what wove knows about one remote run, as ``w.result.jobs`` shows it.

Executors fill in what they know (a Slurm job id, array index, node, state and pending reason); the runtime
adds timings and the outcome. Importable from ``wove`` and, as before, from ``wove.executors.runtime``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class RunRecord:
    """What wove knows about one remote run (one attempt of one task or item); see ``WoveResult.jobs``."""

    task: str
    run_id: str
    environment: str
    attempt: int = 0
    map_index: Optional[int] = None
    submission: Any = None
    job_id: Optional[str] = None
    array_job_id: Optional[str] = None
    array_index: Optional[int] = None
    state: str = "SUBMITTING"
    reason: str = ""
    node: str = ""
    submitted_at: Optional[float] = None
    started_at: Optional[float] = None
    finished_at: Optional[float] = None
    outcome: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def stderr_path(self) -> str:
        """The job's stderr file, where the executor knows it ("" otherwise); kept when the task failed."""
        return str(self.details.get("stderr") or "")

    @property
    def stdout_path(self) -> str:
        """The job's stdout file, where the executor knows it ("" otherwise)."""
        out = self.details.get("stdout")
        if out:
            return str(out)
        err = self.stderr_path
        return err[:-4] + ".out" if err.endswith(".err") else ""

    @property
    def queue_wait(self) -> Optional[float]:
        """Seconds from submission until the task started running (``None`` until it started)."""
        if self.submitted_at is None or self.started_at is None:
            return None
        return max(0.0, self.started_at - self.submitted_at)

    @property
    def run_time(self) -> Optional[float]:
        """Seconds the task ran (``None`` until it finished)."""
        if self.started_at is None or self.finished_at is None:
            return None
        return max(0.0, self.finished_at - self.started_at)


class ItemRecord:
    """One item of a packed element (many items in one job), as ``w.result.jobs`` shows it: reads like a
    ``RunRecord`` (same attributes), but keeps only what differs per item and takes the rest (job id, node,
    pending reason, times...) from the element's record. About 100 bytes instead of a RunRecord's ~1 KB, so
    a million-item sweep's records stay small."""

    __slots__ = ("_finished_at", "_outcome", "_state", "attempt", "element", "map_index")

    def __init__(self, element: RunRecord, map_index: int, attempt: int = 0):
        self.element = element
        self.map_index = map_index
        self.attempt = attempt
        self._outcome = ""
        self._state = ""
        self._finished_at: Optional[float] = None

    def settle(self, outcome: str, state: str, finished_at: Optional[float]) -> None:
        """This item's own outcome (``result``, ``error``, ``cancelled``), state and end time."""
        self._outcome, self._state, self._finished_at = outcome, state, finished_at

    @property
    def outcome(self) -> str:
        return self._outcome

    @property
    def state(self) -> str:
        return self._state or self.element.state

    @property
    def finished_at(self) -> Optional[float]:
        return self._finished_at

    def __getattr__(self, name: str) -> Any:   # task, run_id, job_id, node, reason, details, stderr_path...
        if name.startswith("_") or name == "element":   # never recurse (e.g. while being unpickled)
            raise AttributeError(name)
        return getattr(self.element, name)

    def __repr__(self) -> str:
        return (f"ItemRecord(task={self.element.task!r}, map_index={self.map_index}, attempt={self.attempt}, "
                f"job_id={self.element.job_id!r}, state={self.state!r}, outcome={self.outcome!r})")
