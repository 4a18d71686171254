"""WoveResult: the values a weave produced, readable by attribute, by key, in order, or as ``.final``."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Optional

from .errors import TaskCancelledError, UnknownResultError, WeaveStateError

# Attribute names of WoveResult itself: tasks and init values may not use them.
RESERVED_NAMES = frozenset({"final", "exception", "cancelled", "timings", "jobs", "data"})


@dataclass(frozen=True)
class ItemError:
    """One failed item of a mapped task (after its retries): see ``WoveResult.errors``."""

    task: str
    index: int                    # the item's position in the task's input
    item: Any
    exception: BaseException
    job_id: Optional[str] = None  # the Slurm job (``123`` or ``123_4``) of its last attempt, for remote items

    def __repr__(self) -> str:
        item = repr(self.item)
        item = item if len(item) <= 40 else item[:37] + "..."
        job = f", job {self.job_id}" if self.job_id else ""
        return (f"<ItemError {self.task}[{self.index}] item={item}{job}: "
                f"{type(self.exception).__name__}: {self.exception}>")


class WoveResult:
    """Results of one weave.

    ``result.name`` / ``result["name"]`` read a task's value (or an init value). In ``raise`` mode reading a
    failed task raises its exception; in ``return`` mode it returns it. ``final`` is the last task in
    definition order, ``exception`` the first failure, ``cancelled`` the names of tasks that did not
    finish, ``timings`` seconds per task plus ``planning``, ``jobs`` the remote runs behind each task,
    ``errors`` the failed items of mapped tasks. Iterating yields task results in definition order, so
    ``a, b = w.result`` unpacks.
    """

    def __init__(self, task_names: list[str], init_data: dict[str, Any], error_mode: str = "raise"):
        self._order = list(task_names)
        self._init = dict(init_data)
        self._values: dict[str, Any] = {}
        self._errors: dict[str, BaseException] = {}
        self._cancel_reasons: dict[str, str] = {}
        self._first_error: Optional[BaseException] = None
        self._jobs: dict[str, list[Any]] = {}
        self._item_errors: dict[str, list[ItemError]] = {}
        self._error_mode = error_mode
        self._values_elsewhere: Optional[str] = None   # why task values are not here (fork=True: in the child)
        self.timings: dict[str, float] = {}

    # ---------------------------------------------------------------- recording (used by the scheduler)
    def _set_value(self, name: str, value: Any) -> None:
        self._values[name] = value

    def _set_error(self, name: str, error: BaseException) -> None:
        self._errors[name] = error
        if self._first_error is None:
            self._first_error = error

    def _add_item_error(self, error: ItemError) -> None:
        failed = self._item_errors.setdefault(error.task, [])
        failed.append(error)
        if len(failed) > 1 and failed[-2].index > error.index:
            failed.sort(key=lambda e: e.index)

    def _set_cancelled(self, name: str, reason: str) -> None:
        if name not in self._values and name not in self._errors:
            self._cancel_reasons[name] = reason

    # ---------------------------------------------------------------- public reading
    @property
    def exception(self) -> Optional[BaseException]:
        """The first exception raised by a task, or ``None``."""
        return self._first_error

    @property
    def cancelled(self) -> set[str]:
        """Names of tasks that were cancelled or never started."""
        return set(self._cancel_reasons)

    @property
    def final(self) -> Any:
        """The result of the last task in definition order."""
        if not self._order:
            return None
        return self._read(self._order[-1])

    @property
    def jobs(self) -> dict[str, list[Any]]:
        """Remote runs per task (for Slurm: job id, array index, state, node, queue wait, run time)."""
        return {name: list(records) for name, records in self._jobs.items()}

    def _records(self, name: str) -> list[Any]:
        """Task ``name``'s record list (made on first use), where its remote runs are noted."""
        records = self._jobs.get(name)
        if records is None:
            from ._progress import RecordList

            records = self._jobs[name] = RecordList()
        return records

    def item_errors(self) -> dict[str, list[ItemError]]:
        """The failed items of each mapped task, in input order: ``{task: [ItemError(index, item, exception,
        job_id), ...]}``; tasks without failed items are absent. Also readable as ``w.result.errors`` (unless a
        task or init value is itself named ``errors``, which wins: wove 2.0.3 allowed that name)."""
        return {name: list(failed) for name, failed in self._item_errors.items()}

    @property
    def data(self) -> dict[str, Any]:
        """The init values the weave was started with."""
        return dict(self._init)

    def _read(self, name: str) -> Any:
        if name in self._values:
            return self._values[name]
        if name in self._errors:
            error = self._errors[name]
            if self._error_mode == "return":
                return error
            raise error
        if name in self._cancel_reasons:
            error = TaskCancelledError(f"task {name!r} did not finish: {self._cancel_reasons[name]}")
            if self._error_mode == "return":
                return error
            raise error
        if name in self._init:
            return self._init[name]
        if name in self._order:
            if self._values_elsewhere is not None:
                raise WeaveStateError(f"the value of task {name!r} is not available here: {self._values_elsewhere}")
            raise TaskCancelledError(f"task {name!r} has not run yet (is the weave still running?)")
        raise UnknownResultError(self._unknown(name))

    def _unknown(self, name: str) -> str:
        return (f"{name!r} is not a task or init value of this weave; "
                f"tasks: {', '.join(self._order) or 'none'}")

    def __getitem__(self, name: str) -> Any:
        if name not in self._order and name not in self._init:
            raise UnknownResultError(self._unknown(name))
        return self._read(name)

    def __getattr__(self, name: str) -> Any:
        state = self.__dict__
        if name.startswith("__") or "_order" not in state:  # internals (copy, pickle) and half-built objects
            raise UnknownResultError(f"'{type(self).__name__}' object has no attribute '{name}'")
        if name == "errors" and name not in state["_order"] and name not in state["_init"]:
            return self.item_errors()
        if name not in state["_order"] and name not in state["_init"]:
            # leading words as in wove 2.0.3 (and Python's own AttributeError)
            raise UnknownResultError(f"'{type(self).__name__}' object has no attribute '{name}': "
                                     + self._unknown(name))
        return self._read(name)

    def __contains__(self, name: object) -> bool:
        return name in self._order or name in self._init

    def __iter__(self) -> Iterator[Any]:
        for name in self._order:
            yield self._read(name)

    def __len__(self) -> int:
        return len(self._order)

    def __repr__(self) -> str:
        done = sum(1 for n in self._order if n in self._values)
        return (f"<WoveResult tasks={len(self._order)} done={done} failed={len(self._errors)} "
                f"cancelled={len(self._cancel_reasons)}>")
