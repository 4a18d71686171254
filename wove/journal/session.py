"""A weave's use of its journal: key each call, read back what an earlier run finished, record what ends.

Everything that pickles, hashes or touches the disk runs in a thread, so a journaled weave's event loop
stays as free as any other's. A call that cannot be keyed (unpicklable function or arguments) or whose
result cannot be pickled still runs; it is just not journaled, and a warning says so once per task.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import pickle
import warnings
from typing import Any, Callable, Optional

from .keys import UnkeyableCallError, call_key, function_identity
from .store import Entry, Journal

log = logging.getLogger("wove.journal")

_MISSING = object()


class JournalSession:
    """One weave run's journal (opened at the start of the run, closed at its end)."""

    def __init__(self, journal: Journal, cloudpickle: Any):
        self.journal = journal
        self._pickle = cloudpickle
        self._warned: set[str] = set()
        # Per object, for this weave: the function's identity and each argument's pickle digest, so an input
        # every item of a map shares is pickled once (objects are kept alive here, so ids stay theirs).
        self._identities: dict[int, tuple[Any, str]] = {}
        self._digests: dict[int, tuple[Any, bytes]] = {}
        self._seen: dict[str, int] = {}
        self.last_job: dict[str, Optional[str]] = {}   # key -> job of its latest remote attempt
        self.reused = 0      # calls read back instead of run
        self.recorded = 0    # calls whose outcome this run recorded

    @classmethod
    def open(cls, path: str) -> JournalSession:
        from ..dispatch.payload import cloudpickle_module

        pickler = cloudpickle_module("weave(journal=...)")   # before the journal is locked
        return cls(Journal.open(path), pickler)

    def _dumps(self, value: Any) -> bytes:
        # Plain data pickles to the same bytes with the C pickler, without a cloudpickle Pickler to build
        # (most of a small map item's keying time); anything else goes through cloudpickle.
        if _plain(value):
            return pickle.dumps(value, protocol=5)
        return self._pickle.dumps(value, protocol=5)

    async def key(self, task: str, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                  environment: str, resources: Optional[dict[str, Any]]) -> Optional[str]:
        """The call's key, or None (with a warning, once per task) when it cannot be journaled."""
        known = self._identities.get(id(func))
        identity = known[1] if known is not None and known[0] is func else None

        def compute() -> str:
            nonlocal identity
            if identity is None:
                identity = function_identity(func, self._dumps)
                self._identities[id(func)] = (func, identity)
            return call_key(task, func, args, kwargs, environment=environment, resources=resources,
                            dumps=self._dumps, identity=identity, digest_of=self._digest)

        try:
            # Small inputs (the items of most maps) are keyed right here: a thread hop costs more than that.
            if identity is not None and all(map(_small, args)) and all(map(_small, kwargs.values())):
                key = compute()
            else:
                key = await asyncio.to_thread(compute)
        except UnkeyableCallError as exc:
            self._warn(task, str(exc))
            return None
        except Exception as exc:   # the function itself could not be pickled for its identity
            self._warn(task, f"task {task!r} cannot be journaled: {type(exc).__name__}: {exc}; set "
                             "journal=False on the task, or make its function picklable")
            return None
        # Identical calls (a map over [1, 1, 2]) are distinct calls: the n-th of them gets key#n. Which one
        # is which does not matter, their inputs being the same.
        seen = self._seen.get(key, 0)
        self._seen[key] = seen + 1
        return key if not seen else f"{key}#{seen}"

    async def keys(self, task: str, func: Callable[..., Any], calls: list[tuple[tuple[Any, ...], dict[str, Any]]],
                   environment: str, resources: Optional[dict[str, Any]]) -> list[Optional[str]]:
        """The keys of many calls of one function (a packed map's items), computed in one thread hop; None
        for a call that cannot be journaled (warned once per task)."""
        known = self._identities.get(id(func))
        identity = known[1] if known is not None and known[0] is func else None

        def compute() -> list[Any]:
            nonlocal identity
            if identity is None:
                identity = function_identity(func, self._dumps)
            out: list[Any] = []
            for args, kwargs in calls:
                try:
                    out.append(call_key(task, func, args, kwargs, environment=environment, resources=resources,
                                        dumps=self._dumps, identity=identity, digest_of=self._digest))
                except UnkeyableCallError as exc:
                    out.append(exc)
            return out

        try:
            raw = await asyncio.to_thread(compute)
        except Exception as exc:   # the function itself could not be pickled for its identity
            self._warn(task, f"task {task!r} cannot be journaled: {type(exc).__name__}: {exc}; set "
                             "journal=False on the task, or make its function picklable")
            return [None] * len(calls)
        if identity is not None:
            self._identities[id(func)] = (func, identity)
        keys: list[Optional[str]] = []
        for key in raw:
            if isinstance(key, Exception):
                self._warn(task, str(key))
                keys.append(None)
                continue
            seen = self._seen.get(key, 0)
            self._seen[key] = seen + 1
            keys.append(key if not seen else f"{key}#{seen}")
        return keys

    def value_now(self, entry: Entry) -> Any:
        """A done call's small inline value read without a thread hop; ``_MISSING`` when it needs one (or
        must run again: ``finished_value`` says which)."""
        if entry.state == "done" and entry.inline is not None and len(entry.inline) <= _SMALL_TEXT:
            data = self.journal.result_bytes(entry)
            if data is not None:
                try:
                    return self._pickle.loads(data)
                except Exception:
                    pass
        return _MISSING

    def record_many(self, task: str, state: str, calls: list[tuple[Optional[str], Optional[int], Optional[bytes]]],
                    **fields: Any) -> None:
        """One line for many calls (see ``Journal.record_many``); a call without a key keeps its place."""
        self.journal.record_many(task, state, calls, **fields)
        if state == "done":
            self.recorded += sum(1 for key, _, _ in calls if key)

    def _digest(self, value: Any) -> bytes:
        known = self._digests.get(id(value))
        if known is not None and known[0] is value:
            return known[1]
        # A set pickles in hash-seed order, which differs between processes: key it by its sorted items.
        # (Sets nested inside other values still do; such calls are then recomputed by a rerun.)
        canonical = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        digest = hashlib.sha256(self._dumps(canonical)).digest()
        self._digests[id(value)] = (value, digest)
        return digest

    def lookup(self, key: str) -> Optional[Entry]:
        return self.journal.lookup(key)

    async def finished_value(self, entry: Entry) -> Any:
        """The recorded value of a done call, or ``_MISSING`` when it must run again (damaged or gone)."""
        if entry.state != "done":
            return _MISSING
        if entry.inline is not None and len(entry.inline) <= _SMALL_TEXT:   # in memory already: no thread hop
            data = self.journal.result_bytes(entry)   # (verified against its digest)
            if data is not None:
                try:
                    return self._pickle.loads(data)
                except Exception:
                    pass   # the thread's path below says why, and runs the call again

        def load() -> Any:
            data = self.journal.result_bytes(entry)
            if data is None:
                return _MISSING
            try:
                return self._pickle.loads(data)
            except Exception as exc:   # e.g. a class that no longer exists: run the call again
                log.warning("wove: journal %s: the recorded result of task %r cannot be loaded (%s: %s); "
                            "running the call again", self.journal.path, entry.task, type(exc).__name__, exc)
                return _MISSING

        return await asyncio.to_thread(load)

    async def record_done(self, key: str, task: str, index: Optional[int], value: Any,
                          job_id: Optional[str] = None) -> None:
        try:
            data, digest = self._pickled(value) if _small(value) else await asyncio.to_thread(self._pickled, value)
        except Exception as exc:
            self._warn(task, f"the result of task {task!r} cannot be pickled ({type(exc).__name__}: {exc}), "
                             "so it is not journaled and a rerun computes it again")
            return
        self.journal.record(key, task, "done", index=index, job_id=job_id, result=data, digest=digest)
        self.recorded += 1

    def _pickled(self, value: Any) -> tuple[bytes, str]:
        data = self._dumps(value)
        return data, hashlib.sha256(data).hexdigest()

    def record(self, key: str, task: str, state: str, **fields: Any) -> None:
        if state == "submitted":
            self.last_job[key] = fields.get("job_id")
        self.journal.record(key, task, state, **fields)

    def submitted(self, call: Any, run_id: str, job_id: str, environment: str, stderr: str,
                  info: dict[str, Any]) -> None:
        """A remote call's job went in: note it, with what a later driver needs to collect its outcome
        (``info``: the run's spool and signing key). A packed element is one line for all its items, their
        keys in element order (``call.journal_keys``)."""
        fields = {"run_id": run_id, "environment": environment, "stderr": stderr, **info}
        if call.journal_keys:
            indices = call.map_indices or [None] * len(call.journal_keys)
            self.record_many(call.task_name, "submitted", [(key, index, None) for key, index in
                                                           zip(call.journal_keys, indices)], job_id=job_id, **fields)
        elif call.journal_key is not None:
            self.record(call.journal_key, call.task_name, "submitted", index=call.map_index, job_id=job_id, **fields)

    def _warn(self, task: str, message: str) -> None:
        if task not in self._warned:
            self._warned.add(task)
            warnings.warn(message, stacklevel=2)

    @staticmethod
    def is_missing(value: Any) -> bool:
        """True for ``finished_value``'s answer "run the call again"."""
        return value is _MISSING

    def close(self) -> None:
        self.journal.close()


_SMALL_TEXT = 4096


def _plain(value: Any, depth: int = 0) -> bool:
    """Scalars, strings and bytes, and short tuples/lists of them: what the C pickler pickles as cloudpickle
    does."""
    if value is None or type(value) in (bool, int, float, complex, str, bytes):   # exact types: not an IntEnum
        return True
    if type(value) in (tuple, list) and depth < 2 and len(value) <= 64:
        return all(_plain(item, depth + 1) for item in value)
    return False


def _small(value: Any) -> bool:
    """A value pickled and hashed in microseconds, cheaper on the loop than a trip to a thread."""
    if value is None or isinstance(value, (bool, int, float, complex)):
        return True
    return isinstance(value, (str, bytes)) and len(value) <= _SMALL_TEXT
