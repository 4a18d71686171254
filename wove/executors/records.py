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
