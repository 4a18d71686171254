"""Shared inputs: a large argument is pickled and written once per run directory, whoever passes it.

A mapped task whose items all take the same 100 MB init value would otherwise pickle and spool it once per
item. Here every top-level argument of a remote call that is not a scalar or a short string is pickled on
its own; when that pickle (with its buffers) is larger than ``SHARED_MIN_BYTES`` it becomes a buffer file,
named by the SHA-256 of its contents, and the payload names the argument slot and the file instead
(``"shared": [[slot, "spool:<path>"], ...]``, and ``[slot, reference, first_slot]`` for the same object
passed again; the job loads it into the slot). A smaller one rides inline in
the same list, as base64. The file is deleted when the last call that uses it ends (``release``).

Reuse without pickling again is by identity, and only among the calls of one task (the items of a map, its
retries): those take the object as it was when the first of them was sent, as local items would share it.
Another task passing the same object pickles it again (it may have changed meanwhile) and reuses the file
only if the contents are the same.

Pickled apart, two arguments would no longer share what they shared in the weave (``f(x, {"k": x})``, or
two lists holding the same dict): when the pickles of a call's arguments have a mutable object in common,
that call is not split at all (its arguments travel in one pickle, as without sharing).

Used by ``PayloadBuilder`` from its thread (``split``) and from the loop (``release``), hence the lock.
"""

from __future__ import annotations

import functools
import threading
import types
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field as _field
from typing import Any, Callable, Optional, Union

from . import bufferfile, pickling, protocol
from .rundir import RunDir

#: An argument whose pickle (with its buffers) is larger than this is shared: written once, referenced.
SHARED_MIN_BYTES = 64 * 1024

Slot = Union[int, str]
_NOT_STATE = (type, types.FunctionType, types.BuiltinFunctionType, types.ModuleType, types.MethodType)


def _mutable(obj: Any) -> bool:
    """Whether sharing ``obj`` between two arguments matters (a change through one is seen through the other).

    Containers, arrays and objects with attributes; not the atoms, tuples, classes and functions a pickle
    also records (nor the temporaries made while pickling, which would make calls that share nothing look
    as if they did).
    """
    if isinstance(obj, (list, dict, set, bytearray)):
        return True
    if isinstance(obj, _NOT_STATE):
        return False
    return type(obj).__name__ == "ndarray" or hasattr(obj, "__dict__")


@dataclass
class _Input:
    value: Any          # held so that its id is not reused while the file is in use
    task: Optional[str]
    digest: str         # SHA-256 of the file's contents
    name: str           # the file's name in the run directory
    reference: str      # ``spool:<path>``, what payloads carry
    size: int
    mutable: frozenset[int]   # ids of the mutable objects its pickle holds (to find what two arguments share)
    users: set[str] = _field(default_factory=set)


class SharedInputs:
    """The shared-input files of one run directory, with the calls that use each one."""

    def __init__(self, run_dir: RunDir, is_small: Callable[[Any], bool],
                 remove: Optional[Callable[[Callable[[], None]], None]] = None):
        self.run_dir = run_dir
        self._is_small = is_small
        #: Runs a deletion; the builder passes one that runs it in its thread (deleting 200 MB takes ~0.1 s,
        #: too long for the event loop, where ``release`` is called).
        self._later = remove or (lambda job: job())
        self._lock = threading.Lock()
        self._by_id: dict[tuple[Optional[str], int], _Input] = {}
        self._by_digest: dict[str, _Input] = {}
        self._by_run: dict[str, list[_Input]] = {}
        self._names: set[str] = set()   # files of live entries
        self.bytes_written = 0   # what this run directory received for shared inputs (tests and benchmarks)

    def unknown(self, task: Optional[str], args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> list[Any]:
        """The arguments that are neither small nor already written for ``task`` (``split`` would pickle
        them)."""
        with self._lock:
            return [value for value in (*args, *kwargs.values()) if not self._is_small(value)
                    and self._known(task, value) is None]

    def _known(self, task: Optional[str], value: Any) -> Optional[_Input]:
        entry = self._by_id.get((task, id(value)))
        return entry if entry is not None and entry.value is value else None

    def split(self, run_id: str, func: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any],
              task: Optional[str], task_id: Optional[str]) -> tuple[tuple[Any, ...], dict[str, Any], list[Any]]:
        """``(args, kwargs, shared)``: the large arguments replaced by ``None`` and listed in ``shared``.

        On any failure nothing stays registered for ``run_id``.
        """
        self.release(run_id)   # a call built again (the same run id) starts afresh
        every: list[tuple[Slot, Any]] = [*enumerate(args), *kwargs.items()]
        slots = [(slot, value) for slot, value in every if not self._is_small(value)]
        try:
            references: dict[int, str] = {}
            mutable: list[frozenset[int]] = []
            for slot, value in slots:
                if id(value) in references:   # f(x, x): one object, one reference (the job loads it once)
                    continue
                entry = self._reuse(task, value, run_id)
                if entry is None:
                    reference, held = self._write(value, run_id, func, args, kwargs, slot, task, task_id)
                else:
                    reference, held = entry.reference, entry.mutable
                references[id(value)] = reference
                mutable.append(held)
            if _overlap(mutable):   # they share an object: pickled apart, they would not any more
                self.release(run_id)
                return tuple(args), dict(kwargs), []
        except BaseException:
            self.release(run_id)
            raise
        new_args, new_kwargs = list(args), dict(kwargs)
        shared: list[Any] = []
        first: dict[int, Slot] = {}
        for slot, value in slots:
            if id(value) in first:   # the same object again (f(x, x)): the job gives this slot that one
                shared.append([slot, references[id(value)], first[id(value)]])
            else:
                first[id(value)] = slot
                shared.append([slot, references[id(value)]])
            if isinstance(slot, int):
                new_args[slot] = None
            else:
                new_kwargs[slot] = None
        return tuple(new_args), new_kwargs, shared

    def _reuse(self, task: Optional[str], value: Any, run_id: str) -> Optional[_Input]:
        with self._lock:
            entry = self._known(task, value)
            if entry is not None:
                entry.users.add(run_id)
                self._by_run.setdefault(run_id, []).append(entry)
            return entry

    def _write(self, value: Any, run_id: str, func: Callable[..., Any], args: tuple[Any, ...],
               kwargs: Mapping[str, Any], slot: Slot, task: Optional[str],
               task_id: Optional[str]) -> tuple[str, frozenset[int]]:
        """Pickle ``value`` (once): the reference of its file (or its base64 pickle, when small) and the ids
        of the mutable objects in it."""
        try:
            main, buffers, memo = pickling.dumps_buffers_memo(value)
        except Exception as exc:
            names = pickling.named_arguments(func, args, kwargs)
            index = slot if isinstance(slot, int) else len(args) + list(kwargs).index(slot)
            name = names[index][0]
            where, culprit = pickling.find_unpicklable(value, name, pickling.dumps)
            raise pickling.argument_error(task, task_id, name, value, where, culprit, exc) from exc
        mutable = frozenset(key for key, obj in memo.items() if _mutable(obj))
        size = bufferfile.size(main, buffers)
        if size <= SHARED_MIN_BYTES:   # small once pickled: it rides inline (not kept: it is cheap)
            return protocol.b64encode(pickling.dumps(value) if buffers else main), mutable
        # Hashed while it is written (under a name of its own), then named by the hash.
        provisional = f"{uuid.uuid4().hex}.writing"
        digest = self.run_dir.write_hashed(provisional, bufferfile.chunks(main, buffers))
        with self._lock:
            entry = self._by_digest.get(digest)
            if entry is not None:   # the same contents as an input already written
                self._use(entry, value, run_id)
        if entry is not None:
            self.run_dir.remove(provisional)
            return entry.reference, mutable   # (this object's own contents, not the first one's)
        file_name = f"{digest[:40]}.shared"
        with self._lock:   # (a deletion of an earlier file of that name checks ``_names`` under this lock)
            path = self.run_dir.rename(provisional, file_name)
            entry = _Input(value, task, digest, file_name, protocol.SPOOL_PREFIX + path, size, mutable)
            self.bytes_written += size
            self._by_digest[digest] = entry
            self._names.add(file_name)
            self._use(entry, value, run_id)
        return entry.reference, mutable

    def _use(self, entry: _Input, value: Any, run_id: str) -> None:
        entry.users.add(run_id)
        if entry.value is value:   # only the object held by the entry: another one's id may be reused
            self._by_id[(entry.task, id(value))] = entry
        self._by_run.setdefault(run_id, []).append(entry)

    def release(self, run_id: str) -> None:
        """The call ``run_id`` ended (or is built again): delete the inputs nobody uses any more."""
        with self._lock:
            entries = self._by_run.pop(run_id, ())
            unused = []
            for entry in entries:
                entry.users.discard(run_id)
                if not entry.users and self._by_digest.get(entry.digest) is entry:
                    unused.append(entry)
                    self._forget(entry)
        for entry in unused:
            self._later(functools.partial(self._delete, entry.name))

    def _delete(self, name: str) -> None:
        with self._lock:   # the same contents may have been written again under this name meanwhile
            if name not in self._names:
                self.run_dir.remove(name)

    def _forget(self, entry: _Input) -> None:
        key = (entry.task, id(entry.value))
        if self._by_id.get(key) is entry:
            del self._by_id[key]
        del self._by_digest[entry.digest]
        self._names.discard(entry.name)

    def close(self) -> None:
        with self._lock:
            self._by_id.clear()
            self._by_digest.clear()
            self._by_run.clear()
            self._names.clear()


def _overlap(sets: list[frozenset[int]]) -> bool:
    """Whether any two of these id sets have an id in common."""
    seen: set[int] = set()
    for ids in sets:
        if not seen.isdisjoint(ids):
            return True
        seen |= ids
    return False
