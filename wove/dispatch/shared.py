"""Shared inputs: a large argument is pickled and written once per run directory, whoever passes it.

A mapped task whose items all take the same 100 MB init value would otherwise pickle and spool it once per
item. Here every top-level argument of a remote call that is not a scalar or a short string is pickled on
its own; when that pickle (with its buffers) is larger than ``SHARED_MIN_BYTES`` it becomes a buffer file of
its own, named by the SHA-256 of its contents, and the payload names the argument slot and the file instead
(``"shared": [[slot, "spool:<path>"], ...]``; the job puts the value back in the slot, loading each file
once per job). A smaller one rides inline in the same list, as base64. Another call passing the same object
(same ``id``, kept alive while in use) reuses the file without pickling it again; another object with the
same contents reuses it after pickling.
The file is deleted when the last call that uses it ends (``release``).

A shared input is pickled when its first call is sent: a later change to the same object, made while
calls that use it are still out, does not reach them (as with any argument of a call already sent).

Used by ``PayloadBuilder`` from its thread (``split``) and from the loop (``release``), hence the lock.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field as _field
from typing import Any, Callable, Optional, Union

from . import bufferfile, pickling, protocol
from .rundir import RunDir

#: An argument whose pickle (with its buffers) is larger than this is shared: written once, referenced.
SHARED_MIN_BYTES = 64 * 1024

Slot = Union[int, str]


@dataclass
class _Input:
    value: Any          # held so that its id is not reused while the file is in use
    digest: str         # SHA-256 of the file's contents
    name: str           # the file's name in the run directory
    reference: str      # ``spool:<path>``, what payloads carry
    size: int
    users: set[str] = _field(default_factory=set)


class SharedInputs:
    """The shared-input files of one run directory, with the calls that use each one."""

    def __init__(self, run_dir: RunDir, is_small: Callable[[Any], bool]):
        self.run_dir = run_dir
        self._is_small = is_small
        self._lock = threading.Lock()
        self._by_id: dict[int, _Input] = {}
        self._by_digest: dict[str, _Input] = {}
        self._by_run: dict[str, list[_Input]] = {}
        self.bytes_written = 0   # what this run directory received for shared inputs (tests and benchmarks)

    def split(self, run_id: str, func: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any],
              task: Optional[str], task_id: Optional[str]) -> tuple[tuple[Any, ...], dict[str, Any], list[Any]]:
        """``(args, kwargs, shared)``: the large arguments replaced by ``None`` and listed in ``shared``."""
        self.release(run_id)   # a retry of the same run builds its payload again
        new_args, new_kwargs = list(args), dict(kwargs)
        shared: list[Any] = []
        slots: list[tuple[Slot, Any]] = [*enumerate(args), *kwargs.items()]
        for slot, value in slots:
            if self._is_small(value):
                continue
            entry = self._reuse(value, run_id)
            reference = entry.reference if entry is not None else self._write(value, run_id, func, args, kwargs,
                                                                              slot, task, task_id)
            shared.append([slot, reference])
            if isinstance(slot, int):
                new_args[slot] = None
            else:
                new_kwargs[slot] = None
        return tuple(new_args), new_kwargs, shared

    def unknown(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> list[Any]:
        """The arguments that are neither small nor an input already written (``split`` would pickle them)."""
        with self._lock:
            return [value for value in (*args, *kwargs.values()) if not self._is_small(value)
                    and (id(value) not in self._by_id or self._by_id[id(value)].value is not value)]

    def _reuse(self, value: Any, run_id: str) -> Optional[_Input]:
        with self._lock:
            entry = self._by_id.get(id(value))
            if entry is None or entry.value is not value:
                return None
            entry.users.add(run_id)
            self._by_run.setdefault(run_id, []).append(entry)
            return entry

    def _write(self, value: Any, run_id: str, func: Callable[..., Any], args: tuple[Any, ...],
               kwargs: Mapping[str, Any], slot: Slot, task: Optional[str], task_id: Optional[str]) -> str:
        """Pickle ``value`` (once): the reference of its file, or its base64 pickle when it is small."""
        try:
            main, buffers = pickling.dumps_buffers(value)
        except Exception as exc:
            names = pickling.named_arguments(func, args, kwargs)
            index = slot if isinstance(slot, int) else len(args) + list(kwargs).index(slot)
            name = names[index][0]
            where, culprit = pickling.find_unpicklable(value, name, pickling.dumps)
            raise pickling.argument_error(task, task_id, name, value, where, culprit, exc) from exc
        size = bufferfile.size(main, buffers)
        if size <= SHARED_MIN_BYTES:   # small once pickled: it rides inline (not cached: it is cheap)
            return protocol.b64encode(pickling.dumps(value) if buffers else main)
        chunks = bufferfile.chunks(main, buffers)
        hasher = hashlib.sha256()
        for chunk in chunks:
            hasher.update(chunk)
        digest = hasher.hexdigest()
        with self._lock:
            entry = self._by_digest.get(digest)
            if entry is not None:   # the same contents as an input already written
                self._use(entry, value, run_id)
                return entry.reference
        file_name = f"{digest[:40]}.shared"
        path = self.run_dir.write_atomic(file_name, chunks)
        entry = _Input(value, digest, file_name, protocol.SPOOL_PREFIX + path, size)
        with self._lock:
            self.bytes_written += size
            self._by_digest[digest] = entry
            self._use(entry, value, run_id)
        return entry.reference

    def _use(self, entry: _Input, value: Any, run_id: str) -> None:
        entry.users.add(run_id)
        if entry.value is value:   # only the object held by the entry: another one's id may be reused
            self._by_id[id(value)] = entry
        self._by_run.setdefault(run_id, []).append(entry)

    def release(self, run_id: str) -> None:
        """The call ``run_id`` ended (or is built again): delete the inputs nobody uses any more."""
        with self._lock:
            entries = self._by_run.pop(run_id, ())
            unused = []
            for entry in entries:
                entry.users.discard(run_id)
                if not entry.users:
                    unused.append(entry)
                    self._forget(entry)
        for entry in unused:
            self.run_dir.remove(entry.name)

    def _forget(self, entry: _Input) -> None:
        if self._by_id.get(id(entry.value)) is entry:
            del self._by_id[id(entry.value)]
        if self._by_digest.get(entry.digest) is entry:
            del self._by_digest[entry.digest]

    def close(self) -> None:
        with self._lock:
            self._by_id.clear()
            self._by_digest.clear()
            self._by_run.clear()
