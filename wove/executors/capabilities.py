"""What a remote environment's executor can do, asked on the runtime's behalf: pack items, rebuild results,
enforce ``workers``, reattach, and choose the next attempt by the cause of the last failure.

Each question goes to the executor when it has the method (Slurm's, through its adapter) and has a plain
answer otherwise, so executors that know nothing of these keep working.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from .._scheduler import Runtime
    from .base import EnvironmentExecutor


class Capabilities:
    """Mixed into ``RemoteEnvironment`` (which sets ``executor``, ``runtime`` and ``name``)."""

    executor: EnvironmentExecutor
    runtime: Runtime
    name: str

    def can_adopt(self, info: Mapping[str, Any]) -> bool:
        check = getattr(self.executor, "can_adopt", None)
        return bool(check is not None and check(info))

    def batch_size(self, resources: Optional[dict[str, Any]]) -> int:
        """How many items of a mapped task go to one job here (``items_per_job``): above 1, the map can go
        out as packed elements (``wove._packed``)."""
        size = getattr(self.executor, "items_per_job", None)
        return int(size(resources)) if size is not None else 1

    def load_value(self, data: bytes) -> Any:
        """Unpickle one packed item's result the way this environment rebuilds results (``unpickle_allow``)."""
        load = getattr(self.executor, "load_value", None)
        if load is not None:
            return load(data)
        import pickle

        return pickle.loads(data)

    def handles_workers(self, items: int, settings: dict[str, Any]) -> bool:
        """True when the executor can enforce a mapped task's ``workers`` itself (Slurm's array ``%N``).

        Only when all items go out together: a launch-rate limit or an in-flight cap would trickle them
        out as separate jobs that no array throttle covers.
        """
        if not getattr(self.executor, "handles_workers", False) or settings["limit_per_minute"]:
            return False
        cap = self.runtime.resolver.task_value("delivery_max_in_flight", {}, self.name)
        return cap is None or cap >= items

    def requeue_limit(self, resources: Optional[dict[str, Any]]) -> int:
        """Checkpoints one call may make here (``max_requeues``), 0 where the executor cannot requeue."""
        check = getattr(self.executor, "requeue_limit", None)
        return int(check(resources)) if check is not None else 0

    def free_retries(self, exc: BaseException) -> int:
        """Resubmissions a failure like ``exc`` gets without using up ``retries`` (a lost node, a preemption)."""
        check = getattr(self.executor, "free_retries", None)
        return int(check(exc)) if check is not None else 0

    def adjust_for_retry(self, exc: BaseException, resources: Optional[dict[str, Any]],
                         settings: dict[str, Any]) -> Optional[dict[str, Any]]:
        adjust = getattr(self.executor, "adjust_for_retry", None)
        return adjust(exc, resources, settings) if adjust is not None else resources
