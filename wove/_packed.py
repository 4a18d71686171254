"""Packed maps: a mapped task whose environment runs many items per job sends one run per *element*.

With ``items_per_job=K`` a map of N items is N/K runs, not N: each element's payload carries the function
once and its K items' arguments as one list, and the job reports its items' outcomes in batches
(``wove.dispatch.batch``). The driver keeps per item only its outcome slot and a small ``ItemRecord``, so a
million-item sweep costs microseconds and about a hundred bytes of bookkeeping per item.

Per-item semantics stay those of ``_mapping.call_each``: an item that raised is retried (up to ``retries``)
in a new run of its own failed items; an element that dies (out of memory, time limit, node failure...) keeps
the items it reported and fails or retries the rest with the real cause (with more memory for
``oom_retry_factor``); ``item_errors`` decides whether a final failure cancels the map (``"raise"``) or is
kept at its index. Maps this path cannot honour item by item (a per-item ``timeout``, ``workers``,
``limit_per_minute``, ``delivery_timeout``...) take the per-item path (``eligible``).

In a journaled weave every item is keyed as on the per-item path; an element is journaled as one line when
it is submitted (its items' keys in element order, for a later driver to reattach to it) and one line per
flush of finished items (the job's own pickles of their results, no pickling again).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, Callable, Optional

from ._call import RemoteCall
from ._mapping import _Failed, settle_packed
from ._packed_items import Calls, attach_logs, eligible, rebuild, unpicklable_items, unreadable
from ._progress import outcome_bucket
from .errors import EnvironmentExecutionError, ReattachError, TaskPicklingError
from .executors.records import ItemRecord, RunRecord

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._scheduler import Runtime
    from .executors.runtime import RemoteEnvironment

_PENDING = object()
#: Results of one flush larger than this are unpickled in a thread, not on the event loop.
_DECODE_IN_THREAD_BYTES = 1 << 20

__all__ = ["eligible", "run_packed"]


class _Map:
    """One packed map's state: each item's outcome slot and record, the element runs in flight."""

    def __init__(self, runtime: Runtime, remote: RemoteEnvironment, name: str, func: Callable[..., Any],
                 items: Sequence[Any], bind: Callable[[Any], tuple[tuple[Any, ...], dict[str, Any]]],
                 settings: dict[str, Any], per_job: int, group: str):
        self.runtime, self.remote, self.name, self.func = runtime, remote, name, func
        self.items, self.bind, self.settings, self.per_job, self.group = items, bind, settings, per_job, group
        self.outcomes: list[Any] = [_PENDING] * len(items)
        self.job_ids: dict[int, Optional[str]] = {}   # failed items: their last attempt's job
        self.records = runtime.result._records(name)
        from ._progress import RecordList, Tally

        assert isinstance(self.records, RecordList)
        self.tally = Tally(self.records)
        self.raise_first = (settings.get("item_errors") or "raise") == "raise"
        self.failure: Optional[tuple[int, BaseException, RunRecord]] = None
        self.tasks: list[asyncio.Task[None]] = []
        self.journal = runtime.journal if settings.get("journal", True) else None
        self.keys: list[Optional[str]] = []
        self.now = time.time()

    async def run(self, resources: Optional[dict[str, Any]]) -> list[Any]:
        loop = asyncio.get_running_loop()
        fresh: Any = range(len(self.items))
        adopted: dict[str, tuple[dict[str, Any], dict[int, int]]] = {}
        if self.journal is not None:
            fresh, adopted = await self._read_journal(resources)
        for info, positions in adopted.values():   # elements an earlier driver submitted, still queued or running
            slots: list[Optional[int]] = [None] * (max(positions) + 1)
            for position, index in positions.items():
                slots[position] = index
            self.tasks.append(loop.create_task(self.element(slots, 0, resources, adopt=info)))
        for start in range(0, len(fresh), self.per_job):
            chunk: Sequence[Optional[int]] = fresh[start:start + self.per_job]   # a range, without a journal
            self.tasks.append(loop.create_task(self.element(chunk, 0, resources)))
        try:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        except BaseException:   # the map itself was cancelled: stop every element, then go
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            raise
        if self.failure is not None:
            _, exc, record = self.failure
            await attach_logs([exc], record)
            raise exc
        for task in self.tasks:   # an element task that failed outside its items (a bug) must not be lost
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        return self.outcomes

    async def _read_journal(self, resources: Optional[dict[str, Any]]
                            ) -> tuple[list[int], dict[str, tuple[dict[str, Any], dict[int, int]]]]:
        """Key every item; read back the done ones; group those whose element is still queued or running by
        that element (to reattach). Returns the items to submit and the elements to reattach."""
        from ._call import _note_reused

        journal = self.journal
        assert journal is not None
        calls = [self.bind(item) for item in self.items]
        self.keys = await journal.keys(self.name, self.func, calls, self.remote.name, resources)
        del calls
        fresh: list[int] = []
        adopted: dict[str, tuple[dict[str, Any], dict[int, int]]] = {}
        for index, key in enumerate(self.keys):
            entry = journal.lookup(key) if key else None
            if entry is not None and entry.state == "done":
                value = journal.value_now(entry)
                if journal.is_missing(value):
                    value = await journal.finished_value(entry)
                if not journal.is_missing(value):
                    self.outcomes[index] = value
                    _note_reused(self.runtime, self.name, self.remote.name, index, entry)
                    self.tally.done_already()
                    continue
            if entry is not None and entry.state == "submitted" and entry.position is not None:
                run_id = str(entry.info.get("run_id") or "")
                group = adopted.get(run_id)
                if group is None and run_id:
                    info = {**entry.info, "job_id": entry.job_id}
                    if self.remote.can_adopt(info):
                        group = adopted[run_id] = (info, {})
                if group is not None:
                    group[1][entry.position] = index
                    continue
            fresh.append(index)
        return fresh, adopted

    def stop(self, index: int, exc: BaseException, record: RunRecord) -> None:
        """``item_errors="raise"``: the first final failure cancels the rest of the map."""
        if self.failure is None:
            self.failure = (index, exc, record)
            from ._mapping import _note_failure

            _note_failure(self.runtime, self.name, index, self.items[index], exc, job_id=self.job_ids.get(index))
            for task in self.tasks:
                task.cancel()

    async def element(self, indices: Sequence[Optional[int]], attempt: int, resources: Optional[dict[str, Any]],
                      adopt: Optional[dict[str, Any]] = None, superseded: Optional[str] = None,
                      charged: Optional[int] = None, free: int = 0) -> None:
        """One element run of ``indices`` (and, after it, the run of its items to retry). With ``adopt`` (a
        journal's record of an element an earlier driver submitted) the element is collected, not submitted;
        its positions this run does not need are ``None``."""
        name, remote, journal = self.name, self.remote, self.journal
        record = RunRecord(task=name, run_id="", environment=remote.name, attempt=attempt,
                           submitted_at=time.time())
        item_records = [ItemRecord(record, index, attempt) if index is not None else None for index in indices]
        self.records.extend(r for r in item_records if r is not None)
        # counted as they change: the items' earlier attempts (``superseded``: how they ended) no longer count
        tally = self.tally.element(record, sum(r is not None for r in item_records), attempt, superseded)

        def settle(item: ItemRecord, outcome: str, state: str, when: float) -> None:
            item.settle(outcome, state, when)
            self.tally.settle(tally, outcome)
        reported = bytearray(index is None for index in indices)   # 1 byte per item, not a list of bools
        journal_done: list[tuple[Optional[str], Optional[int], Optional[bytes]]] = []
        again: list[Optional[int]] = []   # items that raised, to retry with the same resources
        failures: list[BaseException] = []   # their exceptions, which get the job's logs
        decoding: list[asyncio.Future[Any]] = []
        decode_errors: list[BaseException] = []
        retries = self.settings["retries"]
        charged = attempt if charged is None else charged   # attempts that used up a retry (not a lost node's)

        def done(position: int, ok: bool, value: Any, error: Optional[BaseException], data: Any) -> None:
            if not isinstance(position, int) or position < 0 or position >= len(indices) or reported[position]:
                return
            reported[position] = 1
            index = indices[position]
            item = item_records[position]
            assert index is not None and item is not None
            now = self.now
            if ok:
                self.outcomes[index] = value
                settle(item, "result", "COMPLETED", now)
                if journal is not None and self.keys[index]:   # the job's own pickle is what the journal keeps
                    journal_done.append((self.keys[index], index, data))
                return
            assert error is not None
            failures.append(error)
            settle(item, "error", "FAILED", now)
            self.job_ids[index] = record.job_id
            if charged < retries and isinstance(error, Exception):   # SystemExit, KeyboardInterrupt: no retry
                again.append(index)
            else:
                self.final(index, error, record)

        def decode(outcomes: Any) -> list[tuple[int, bool, Any, Optional[BaseException], Any]]:
            decoded: list[tuple[int, bool, Any, Optional[BaseException], Any]] = []
            for position, ok, data in outcomes:
                if ok:
                    try:
                        decoded.append((position, True, remote.load_value(data), None, data))
                    except Exception as exc:
                        decoded.append((position, False, None, unreadable(name, exc), None))
                else:
                    decoded.append((position, False, None, rebuild(data, record, remote), None))
            return decoded

        def journal_flush() -> None:
            if journal is not None and journal_done:
                journal.record_many(name, "done", list(journal_done), job_id=record.job_id)
                journal_done.clear()

        def on_items(outcomes: Any) -> None:
            self.now = time.time()   # one end time for the items of a flush (one float, not one per item)
            if not isinstance(outcomes, list):
                raise ValueError(f"an element's outcomes must be a list, not {type(outcomes).__name__}")
            size = sum(len(entry[2]) for entry in outcomes if entry[1] and isinstance(entry[2], (bytes, bytearray)))
            if size > _DECODE_IN_THREAD_BYTES:   # large results: unpickle them off the event loop
                future = asyncio.ensure_future(asyncio.to_thread(decode, outcomes))

                def apply(task: asyncio.Future[Any]) -> None:
                    self.now = time.time()
                    if task.cancelled():
                        return
                    if task.exception() is not None:   # those items count as lost (below), never dropped
                        decode_errors.append(task.exception())  # type: ignore[arg-type]
                        return
                    for entry in task.result():
                        done(*entry)
                    journal_flush()
                future.add_done_callback(apply)
                decoding.append(future)
                return
            for entry in decode(outcomes):
                done(*entry)
            journal_flush()

        keys = None
        if journal is not None and adopt is None:
            keys = [self.keys[index] if index is not None else None for index in indices]
        call = RemoteCall(name, self.func, (), {}, self.settings, attempt=attempt, records=None,
                          resources=resources, group=self.group,
                          batch=None if adopt is not None else Calls(self.bind, self.items, indices),
                          record=record, on_items=on_items, journal_keys=keys or None,
                          map_indices=list(indices) if keys else None)
        element_error: Optional[BaseException] = None
        try:
            await remote.run(call, adopt=adopt)
        except asyncio.CancelledError:
            for position, item in enumerate(item_records):
                if item is not None and not reported[position]:
                    reported[position] = 1   # a flush decoded later must not settle it again
                    settle(item, "cancelled", "CANCELLED", time.time())
            raise
        except ReattachError:
            # Its run directory went away: submit the items afresh (positions compacted: a new element).
            fresh: list[Optional[int]] = []
            for position, item in enumerate(item_records):
                if item is not None and not reported[position]:
                    reported[position] = 1
                    settle(item, "cancelled", "CANCELLED", time.time())
                    fresh.append(indices[position])
            await self.element(fresh, attempt, resources, superseded="cancelled")
            return
        except TaskPicklingError as exc:   # some item's arguments cannot travel: fail those, send the rest
            if record.job_id or adopt is not None:
                element_error = exc
            else:
                await self._split_unpicklable(indices, item_records, reported, settle, record, exc, attempt,
                                              resources, charged, free)
                return
        except Exception as exc:
            element_error = exc
        if decoding:
            await asyncio.gather(*decoding, return_exceptions=True)
        if element_error is None and not all(reported):
            # The element ended without a word about some items (a flush that could not be read, or lost
            # between two drivers): they did not succeed, so they fail or retry like any lost item.
            cause = f": {decode_errors[0]}" if decode_errors else ""
            element_error = EnvironmentExecutionError(
                f"an element of task {name!r} (job {record.job_id}) ended without reporting "
                f"{len(reported) - sum(reported)} of its items{cause}")
        await attach_logs(failures if element_error is None else [*failures, element_error], record)
        retry_lost: list[Optional[int]] = []
        lost_outcome = "error"
        lost_free = element_error is not None and free < remote.free_retries(element_error)
        if element_error is not None:   # the element ended without reporting these: the real cause
            lost = [position for position in range(len(indices)) if not reported[position]]
            lost_outcome = record.outcome if record.outcome and record.outcome != "result" else "error"
            for position in lost:
                reported[position] = 1
                index, item = indices[position], item_records[position]
                assert index is not None and item is not None
                settle(item, lost_outcome, record.state or "FAILED", time.time())
                self.job_ids[index] = record.job_id
                if lost_free or charged < retries:
                    retry_lost.append(index)
                else:
                    self.final(index, element_error, record)
        retry_runs = []
        if element_error is not None and retry_lost:
            bigger = remote.adjust_for_retry(element_error, resources, self.settings)
            retry_runs.append(self.element(retry_lost, attempt + 1, bigger, superseded=outcome_bucket(lost_outcome),
                                           charged=charged + (0 if lost_free else 1), free=free + lost_free))
        if again:
            retry_runs.append(self.element(again, attempt + 1, resources, superseded="failed", charged=charged + 1,
                                           free=free))
        if retry_runs:   # both at once: items that raised do not wait for an out-of-memory retry to run
            await asyncio.gather(*retry_runs)

    async def _split_unpicklable(self, indices: Sequence[Optional[int]], item_records: list[Optional[ItemRecord]],
                                 reported: bytearray, settle: Callable[[ItemRecord, str, str, float], None],
                                 record: RunRecord, error: TaskPicklingError, attempt: int,
                                 resources: Optional[dict[str, Any]], charged: int, free: int) -> None:
        """The element was not submitted because an item's arguments cannot be pickled: those items fail
        with their own ``TaskPicklingError`` (not retried: it would fail again), the others go as a new element."""
        bad = await asyncio.to_thread(unpicklable_items, self.func, self.bind, self.items, indices, self.name)
        rest: list[Optional[int]] = []
        for position, item in enumerate(item_records):
            index = indices[position]
            if item is None or index is None or reported[position]:
                continue
            reported[position] = 1
            if index in bad or not bad:   # (none alone: together they do not pickle; all fail with that)
                settle(item, "error", "FAILED", time.time())
                self.final(index, bad.get(index, error), record)
            else:
                settle(item, "cancelled", "CANCELLED", time.time())
                rest.append(index)
        if rest and self.failure is None:   # (item_errors="raise": the map already stopped at the first)
            await self.element(rest, attempt, resources, superseded="cancelled", charged=charged, free=free)

    def final(self, index: int, error: BaseException, record: RunRecord) -> None:
        key = self.keys[index] if self.journal is not None and self.keys else None
        if key and self.journal is not None:   # shown by `wove journal`; a rerun runs the call again
            self.journal.record(key, self.name, "failed", index=index, error=f"{type(error).__name__}: {error}"[:500])
        if self.raise_first or not isinstance(error, Exception):   # an item's SystemExit stops the map, as
            self.stop(index, error, record)                        # it does one item per job or locally
        else:
            self.outcomes[index] = _Failed(error)


async def run_packed(runtime: Runtime, remote: RemoteEnvironment, name: str, func: Callable[..., Any],
                     items: Sequence[Any], bind: Callable[[Any], tuple[tuple[Any, ...], dict[str, Any]]],
                     settings: dict[str, Any], resources: Optional[dict[str, Any]], per_job: int,
                     group: Optional[str] = None) -> list[Any]:
    """Run a mapped task's items as packed elements of ``per_job`` items; results in input order, settled
    per ``item_errors``."""
    packed = _Map(runtime, remote, name, func, items, bind, settings, per_job, group or name)
    outcomes = await packed.run(resources)
    return settle_packed(runtime, name, items, outcomes, settings, packed.job_ids)
