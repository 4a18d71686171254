"""Payloads: what one remote run needs (function, arguments, where to report), built off the event loop.

A payload is the JSON object ``python -m wove.backend_worker`` executes. Small ones travel inline (base64
JSON in ``WOVE_BACKEND_PAYLOAD``); large ones as a private spool file referenced by ``spool:<path>``. A
large function or argument pickle is written (no base64) to a file of its own in the run's directory,
and the payload's ``callable_pickle`` / ``args_pickle`` field holds ``spool:<path>`` instead of base64, so
the payload itself stays small. Those files are buffer files (``bufferfile``): pickle protocol 5 with the
out-of-band buffers of arrays and bytearrays written as they are, never copied or base64-encoded. A large
top-level argument is a shared input (``shared``): written once per run directory, however many calls pass
it. Pickling, hashing and writing happen in a thread: a 200 MB argument never stalls the weave's event loop
(only small map items, whose function is pickled once for all of them, are built on the loop, where a thread
hop would cost more than the work).
"""

from __future__ import annotations

import _pickle
import asyncio
import concurrent.futures
import functools
import json
import os
import sys
from collections.abc import Collection, Mapping
from typing import Any, Callable, Optional

from ..errors import MissingDispatchFeatureError
from . import bufferfile, pickling, protocol, spool
from .shared import SharedInputs

DEFAULT_SPOOL_THRESHOLD = 64 * 1024
#: Raw pickles above this size get a spool file of their own instead of riding in the payload.
SEPARATE_PICKLE_BYTES = 64 * 1024
_SMALL_VALUE = 4096   # a str/bytes argument this short keeps a map item on the loop
_SCALARS = (type(None), bool, int, float, complex)


def cloudpickle_module(feature: str = "sending tasks to another process") -> Any:
    try:
        import cloudpickle
    except ImportError:
        raise MissingDispatchFeatureError(feature) from None
    return cloudpickle


def import_path() -> list[str]:
    """The submitter's import path as absolute directories (the job appends those it can see)."""
    return [os.path.abspath(entry or os.getcwd()) for entry in sys.path if isinstance(entry, str)]


def args_name(run_id: str) -> str:
    return f"{run_id}.args"


def callable_name(run_id: str) -> str:
    return f"{run_id}.callable"


def _small_value(value: Any) -> bool:
    return isinstance(value, _SCALARS) or (isinstance(value, (str, bytes)) and len(value) <= _SMALL_VALUE)


_PLAIN = (type(None), bool, int, float, complex, str, bytes)


def _plain(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> bool:
    """Arguments the C pickler writes exactly as cloudpickle would (no class or function references)."""
    return all(type(value) in _PLAIN for value in args) and all(type(value) in _PLAIN for value in kwargs.values())


def _small(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> bool:
    """Arguments cheap enough to pickle on the event loop (no thread hop), and never shared inputs."""
    return all(_small_value(value) for value in (*args, *kwargs.values()))


class PayloadBuilder:
    """Builds the payloads of one environment run; owns the thread that pickles large ones."""

    def __init__(self, static: dict[str, Any], run_dir: spool.RunDir, *, post_timeout: Optional[float] = None):
        self.static = static
        self.run_dir = run_dir
        self.post_timeout = post_timeout
        self._callables: dict[int, tuple[Callable[..., Any], str]] = {}
        self._pending: dict[int, tuple[Callable[..., Any], asyncio.Future[str]]] = {}
        self._thread: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self.shared_inputs = SharedInputs(run_dir, _small_value, self._later)
        self._inputs_pending: dict[tuple[Any, ...], asyncio.Future[dict[str, Any]]] = {}

    async def build(self, *, run_id: str, task_id: Optional[str], task_name: Optional[str],
                    func: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any],
                    delivery: Mapping[str, Any], mapped: bool,
                    batch: Optional[Collection[tuple[tuple[Any, ...], dict[str, Any]]]] = None,
                    restore: Optional[tuple[Any]] = None) -> dict[str, Any]:
        """The payload for one run: pickled on the loop when tiny, else in this builder's thread.

        The items of one mapped task share their function's pickle, made once: every item waits for that
        one pickle and then all are ready together (so they can still go out as one job array). A packed
        element (``batch``: each item's arguments) is one payload whose arguments are the list of them.
        """
        if self._thread is None:
            self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="wove-payload")
        if batch is not None:
            shared_fn = await self._shared_callable(func, task_name)
            return await self._owned(run_id, asyncio.get_running_loop().run_in_executor(
                self._thread, self._assemble_batch, run_id, task_id, task_name, func, shared_fn, batch, delivery))
        pickling.warn_open_files(func, args, kwargs, task_name, task_id)
        if restore is not None:   # a checkpointed call: its state rides like an argument (a file when large)
            payload = await self.build(run_id=run_id, task_id=task_id, task_name=task_name, func=func, args=args,
                                       kwargs=kwargs, delivery=delivery, mapped=mapped)
            payload["restored_state"] = await asyncio.get_running_loop().run_in_executor(
                self._thread, lambda: self._field(pickling.dumps_buffers(restore[0]), f"{run_id}.restore",
                                                  lambda: pickling.dumps(restore[0])))
            if payload["restored_state"].startswith(protocol.SPOOL_PREFIX):
                payload["version"] = protocol.PAYLOAD_VERSION_BUFFERS
            return payload
        shared: Optional[str] = None
        if mapped:
            shared = await self._shared_callable(func, task_name)
            if _small(args, kwargs):
                return self._assemble(run_id, task_id, task_name, func, shared, args, kwargs, delivery)
            unknown = self.shared_inputs.unknown(task_name, args, kwargs)
            if not unknown:   # its large arguments are written already (an init value every item takes)
                return self._assemble(run_id, task_id, task_name, func, shared, args, kwargs, delivery)
            key = (task_name, *map(id, unknown))
            pending = self._inputs_pending.get(key)
            if pending is not None:   # another item is writing the same inputs: wait, then reuse them
                try:
                    await asyncio.shield(pending)
                except Exception:
                    pass   # that item's own failure: this one builds itself below (and fails on its own)
                if not self.shared_inputs.unknown(task_name, args, kwargs):
                    return self._assemble(run_id, task_id, task_name, func, shared, args, kwargs, delivery)
            else:
                future = self._inputs_pending[key] = self._in_thread(
                    run_id, task_id, task_name, func, shared, args, kwargs, delivery)
                try:
                    return await self._owned(run_id, future)
                finally:
                    # on the loop, once written: every item that waited resumes in the same turn of the
                    # loop, so the items of a map that share an input still go out together (one job array)
                    if self._inputs_pending.get(key) is future:
                        del self._inputs_pending[key]
        return await self._owned(run_id, self._in_thread(run_id, task_id, task_name, func, shared, args, kwargs,
                                                         delivery))

    def _in_thread(self, run_id: str, *arguments: Any) -> asyncio.Future[dict[str, Any]]:
        assert self._thread is not None
        return asyncio.get_running_loop().run_in_executor(
            self._thread, functools.partial(self._assemble, run_id, *arguments))

    async def _owned(self, run_id: str, future: asyncio.Future[dict[str, Any]]) -> dict[str, Any]:
        """The payload being built for ``run_id``. Cancelled before it is done, this releases whatever the
        build registered for ``run_id`` once it finishes: nobody will ``forget`` a run that never went out."""
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            future.add_done_callback(lambda _: self.shared_inputs.release(run_id))
            raise

    async def _shared_callable(self, func: Callable[..., Any], task_name: Optional[str]) -> str:
        pending = self._pending.get(id(func))
        if pending is None or pending[0] is not func:
            cached = self._callables.get(id(func))
            if cached is not None and cached[0] is func:
                return cached[1]
            assert self._thread is not None
            future = asyncio.get_running_loop().run_in_executor(self._thread, self._pickle_callable, func,
                                                                task_name)
            pending = self._pending[id(func)] = (func, future)
        field = await asyncio.shield(pending[1])
        # Cached on the loop, once the pickle is delivered: every item that waited for it resumes in the
        # same turn of the loop (none overtakes another, so items ready together stay together).
        if self._pending.get(id(func)) is pending:
            del self._pending[id(func)]
            self._callables[id(func)] = (func, field)
        return field

    def _pickle_callable(self, func: Callable[..., Any], task_name: Optional[str]) -> str:
        cloudpickle_module()
        return self._field(pickling.pickle_function(func, task_name, dump=pickling.dumps_buffers), f"{id(func)}.fn",
                           lambda: pickling.dumps(func))

    def _assemble(self, run_id: str, task_id: Optional[str], task_name: Optional[str],
                  func: Callable[..., Any], shared: Optional[str], args: tuple[Any, ...],
                  kwargs: Mapping[str, Any], delivery: Mapping[str, Any]) -> dict[str, Any]:
        """The payload dict; ``shared`` is a mapped task's function pickle, made once for all its items."""
        cloudpickle_module()
        if shared is None:
            shared = self._field(pickling.pickle_function(func, task_name, task_id, dump=pickling.dumps_buffers),
                                 callable_name(run_id), lambda: pickling.dumps(func))
        inputs: list[Any] = []
        if not _small(args, kwargs):   # large arguments: written once per run directory, by content
            args, kwargs, inputs = self.shared_inputs.split(run_id, func, tuple(args), kwargs, task_name, task_id)
        try:
            payload = self._envelope(run_id, task_id, task_name, shared, self._field(
                pickling.pickle_arguments(func, tuple(args), dict(kwargs), task_name, task_id,
                                          dump=pickling.dumps_buffers),
                args_name(run_id), lambda: pickling.dumps((tuple(args), dict(kwargs)))), delivery)
        except BaseException:   # no payload, so no run to ``forget`` later: let go of its inputs now
            self.shared_inputs.release(run_id)
            raise
        if inputs:
            payload["shared"] = inputs
        if inputs or protocol.SPOOL_PREFIX in (payload["callable_pickle"][:6], payload["args_pickle"][:6]):
            payload["version"] = protocol.PAYLOAD_VERSION_BUFFERS   # a job that cannot read them refuses it
        return payload

    def _assemble_batch(self, run_id: str, task_id: Optional[str], task_name: Optional[str],
                        func: Callable[..., Any], shared: str,
                        batch: Collection[tuple[tuple[Any, ...], dict[str, Any]]],
                        delivery: Mapping[str, Any]) -> dict[str, Any]:
        """A packed element's payload: the function's shared pickle and one list of every item's arguments
        (the C pickler when every argument is a plain number or string, cloudpickle otherwise)."""
        calls = list(batch)
        try:
            if all(_plain(args, kwargs) for args, kwargs in calls):
                buffers: list[Any] = []
                main = _pickle.dumps(calls, protocol=5, buffer_callback=buffers.append)
                pickled: tuple[bytes, list[memoryview]] = (main, [b.raw() for b in buffers])
            else:
                pickled = pickling.dumps_buffers(calls)
        except Exception:   # name the item and argument that cannot be pickled
            for args, kwargs in calls:
                pickling.pickle_arguments(func, args, kwargs, task_name, task_id)
            raise
        payload = self._envelope(run_id, task_id, task_name, shared,
                                 self._field(pickled, args_name(run_id), lambda: pickling.dumps(calls)), delivery)
        payload["batch"] = len(calls)
        # A job of an older wove would run the list as one item's arguments: it must refuse the payload.
        payload["version"] = protocol.PAYLOAD_VERSION_BUFFERS
        return payload

    def _envelope(self, run_id: str, task_id: Optional[str], task_name: Optional[str], callable_field: str,
                  args_field: str, delivery: Mapping[str, Any]) -> dict[str, Any]:
        """The payload around its two pickles: the static fields, the run, delivery and a fresh signing key."""
        delivery = dict(delivery)
        if self.post_timeout:
            delivery["post_timeout"] = self.post_timeout
        return {**self.static, "run_id": run_id, "task_id": task_id, "task_name": task_name,
                "callable_pickle": callable_field, "args_pickle": args_field, "delivery": delivery,
                "signing": {"alg": "hmac-sha256", "key": protocol.new_key()}}

    def _field(self, pickled: tuple[bytes, list[memoryview]], name: str, in_band: Callable[[], bytes]) -> str:
        """Base64 of a small pickle, or ``spool:<path>`` of a private buffer file holding a large one (its
        out-of-band buffers written as they are, never copied into the pickle). ``in_band`` pickles the same
        object with its buffers inside, for a small one that has some."""
        main, buffers = pickled
        if bufferfile.size(main, buffers) <= SEPARATE_PICKLE_BYTES:
            return protocol.b64encode(in_band() if buffers else main)
        return protocol.SPOOL_PREFIX + self.run_dir.write_atomic(name, bufferfile.chunks(main, buffers))

    def forget(self, run_id: str) -> None:
        """A run ended: delete its separate pickle files (a shared map function's file stays until close)
        and the shared inputs no other call still uses."""
        for name in (args_name(run_id), callable_name(run_id)):
            self.run_dir.remove(name)
        self.shared_inputs.release(run_id)

    def _later(self, job: Callable[[], None]) -> None:
        """Run a deletion in this builder's thread (a large file takes a while), or now if it is closed."""
        thread = self._thread
        if thread is None:
            job()
        else:
            try:
                thread.submit(job)
            except RuntimeError:   # shut down meanwhile
                job()

    def close(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.shutdown(wait=True)
        self._callables.clear()
        self._pending.clear()
        self.shared_inputs.close()


def encode_payload(payload: dict[str, Any], spool_dir: str | spool.RunDir,
                   threshold: int = DEFAULT_SPOOL_THRESHOLD) -> str:
    """Inline base64 JSON when small; otherwise a private spool file and its ``spool:`` reference.

    ``spool_dir`` is the run's ``RunDir`` or its path: the open directory of the live environment at that
    path, else a directory that must be this user's alone. The file is written relative to the directory's
    descriptor, never through a symlink.
    """
    inline = protocol.encode_inline(payload)
    if len(inline) <= threshold:
        return inline
    data = json.dumps(payload, separators=(",", ":")).encode()
    name = spool.payload_name(payload["run_id"])
    if isinstance(spool_dir, spool.RunDir):
        return protocol.SPOOL_PREFIX + spool_dir.write_atomic(name, data)
    run_dir = spool.RunDir.find(os.path.abspath(spool_dir))
    if run_dir is not None:
        return protocol.SPOOL_PREFIX + run_dir.write_atomic(name, data)
    with spool.RunDir.open_private(spool_dir) as checked:
        return protocol.SPOOL_PREFIX + checked.write_atomic(name, data)
