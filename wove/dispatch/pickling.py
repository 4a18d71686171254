"""Pickling a task for another process: real file names in by-value code, and errors that say what failed.

cloudpickle pickles a function it cannot import by reference (one defined in ``__main__``, a lambda, a
closure) by value, and writes ``"<dynamic-code>"`` as the file name of its code, so a remote traceback
shows ``File "<dynamic-code>", line 8`` and no source. ``dumps`` keeps the real ``co_filename`` (line
numbers already survive), so the job's traceback names the script, and shows its lines where the job can
read the file (``error_payload.fill_source_lines`` adds them on the driver otherwise).

When a pickle fails, the whole object is pickled again part by part to find which argument (and which part
of it) is at fault: that happens only after the failure, so the normal path costs nothing extra.

The driver imports this for every remote task; a job only when its return value cannot be pickled.
"""

from __future__ import annotations

import functools
import io
import itertools
import os
import pickle
import re
import sys
import types
import warnings
from collections.abc import Mapping
from typing import Any, Callable, Optional

from ..errors import TaskPicklingError

_DYNAMIC = "<dynamic-code>"
_PARTS_LIMIT = 10_000     # elements looked at per container while hunting for the culprit
_FILE_SCAN_LIMIT = 1_000  # elements of a list/tuple/dict argument checked for open files (on the loop)
_DEPTH_LIMIT = 6
_LOCAL_FIX = 'or run the task locally (environment="default")'
_pickler_class: Optional[type] = None


def _keeping_filenames() -> type:
    """A cloudpickle ``Pickler`` whose by-value code objects keep their real file name."""
    global _pickler_class
    if _pickler_class is not None:
        return _pickler_class
    import copyreg
    from collections import ChainMap

    import cloudpickle

    base = cloudpickle.Pickler
    reduce_code = getattr(getattr(cloudpickle, "cloudpickle", None), "_code_reduce", None)
    if reduce_code is None:   # another cloudpickle layout: its own behaviour, file names and all
        _pickler_class = base
        return base

    def code_reduce(code: types.CodeType) -> Any:
        reduced = reduce_code(code)
        if not (isinstance(reduced, tuple) and len(reduced) == 2 and isinstance(reduced[1], tuple)):
            return reduced
        return reduced[0], tuple(code.co_filename if arg == _DYNAMIC else arg for arg in reduced[1])

    table = getattr(base, "dispatch_table", copyreg.dispatch_table)
    reduce_memoryview = table.get(memoryview)


    def memoryview_reduce(view: memoryview) -> Any:
        # it arrives as ``bytes``, as cloudpickle sends a memoryview; a large one without a copy on this side
        if view.nbytes > OUT_OF_BAND_BYTES and view.contiguous:
            return bytes, (pickle.PickleBuffer(view),)
        return reduce_memoryview(view) if reduce_memoryview is not None else (bytes, (view.tobytes(),))

    _pickler_class = type("FilenamePickler", (base,), {
        "dispatch_table": ChainMap({types.CodeType: code_reduce, memoryview: memoryview_reduce}, table)})
    return _pickler_class


#: A bytes, bytearray or memoryview larger than this travels out of band (pickle protocol 5) in a buffer file.
OUT_OF_BAND_BYTES = 64 * 1024


class OutOfBandBytes:
    """Pickles as the ``bytes`` or ``bytearray`` it wraps, with its contents out of band: a large one is
    written to its buffer file as it is, not copied into a pickle first (the job makes the one copy a
    ``bytes`` needs). Only for a whole argument: pickle saves ``bytes`` and ``bytearray`` found inside other
    objects in-band, before any hook could send them elsewhere.
    """

    __slots__ = ("data",)

    def __init__(self, data: bytes | bytearray):
        self.data = data

    def __reduce__(self) -> Any:
        return type(self.data), (pickle.PickleBuffer(self.data),)


def dumps(obj: Any) -> bytes:
    """``cloudpickle.dumps(obj)``, but code pickled by value keeps its file name (for remote tracebacks)."""
    with io.BytesIO() as file:
        _keeping_filenames()(file).dump(obj)
        return file.getvalue()


def dumps_buffers(obj: Any) -> tuple[bytes, list[memoryview]]:
    """``dumps`` with protocol 5's out-of-band buffers: arrays (and a whole large ``bytes``, ``bytearray`` or
    memoryview) are left out of the pickle, as views of their memory, to be written beside it in a buffer
    file (``dispatch.bufferfile``)."""
    main, buffers, _ = dumps_buffers_memo(obj)
    return main, buffers


def dumps_buffers_memo(obj: Any) -> tuple[bytes, list[memoryview], dict[int, Any]]:
    """``dumps_buffers``, and the objects the pickle recorded (by id), to tell what two pickles share."""
    buffers: list[Any] = []
    if type(obj) in (bytes, bytearray) and len(obj) > OUT_OF_BAND_BYTES:
        obj = OutOfBandBytes(obj)
    with io.BytesIO() as file:
        pickler = _keeping_filenames()(file, protocol=5, buffer_callback=buffers.append)
        pickler.dump(obj)
        memo = {key: value[1] for key, value in pickler.memo.copy().items()}
        return file.getvalue(), [buffer.raw() for buffer in buffers], memo


# ---------------------------------------------------------------------------------------------- driver
def pickle_function(func: Callable[..., Any], task: Optional[str], task_id: Optional[str] = None,
                    dump: Callable[[Any], Any] = dumps) -> Any:
    """The function's pickle (``dump(func)``), or a ``TaskPicklingError`` naming what in it failed."""
    try:
        return dump(func)
    except Exception as exc:
        where, culprit = find_unpicklable(func, "the function", dumps)
        error: Exception = exc
    detail = "" if culprit is func else f": {where} is {_a(culprit)}"
    raise TaskPicklingError(
        f"{describe_task(task, task_id)} cannot be sent to another process: the function itself cannot be "
        f"pickled{detail} ({_brief(error)}). Create or open that object inside the task, pass what it is made "
        f"from as an argument, {_LOCAL_FIX}", task=task, what="the function itself",
        type_name=_unpicklable_type(func, culprit, error)) from error


def pickle_arguments(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                     task: Optional[str], task_id: Optional[str] = None, dump: Callable[[Any], Any] = dumps) -> Any:
    """The pickle of ``(args, kwargs)`` (``dump`` of it), or a ``TaskPicklingError`` naming the argument that
    failed."""
    try:
        return dump((args, kwargs))
    except Exception as exc:
        error: Exception = exc
    for name, value in named_arguments(func, args, kwargs):
        try:
            dumps(value)
        except Exception as exc:
            where, culprit = find_unpicklable(value, name, dumps)
            raise argument_error(task, task_id, name, value, where, culprit, exc) from exc
    raise TaskPicklingError(   # each one pickles alone: together they do not (e.g. too deep)
        f"{describe_task(task, task_id)} cannot be sent to another process: its arguments cannot be pickled "
        f"together ({_brief(error)}). Pass smaller or simpler values, {_LOCAL_FIX}",
        task=task, what="arguments", type_name=None) from error


def argument_error(task: Optional[str], task_id: Optional[str], name: str, value: Any, where: str, culprit: Any,
                   error: BaseException) -> TaskPicklingError:
    """The error for argument ``name``, whose part ``where`` (``culprit``) is what pickle refused."""
    inside = "" if culprit is value else f": {where} is {_a(culprit)}"
    fix = "Pass something picklable (for example what it is made from), open or create it inside the task"
    if isinstance(culprit, io.IOBase):
        fix = f"Pass the file's path{_file_name(culprit)} and open it inside the task"
    return TaskPicklingError(
        f"{describe_task(task, task_id)} cannot be sent to another process: its argument {name!r} "
        f"({_a(value)}) cannot be pickled{inside} ({_brief(error)}). {fix}, {_LOCAL_FIX}",
        task=task, what=f"argument {name!r}", type_name=_unpicklable_type(value, culprit, error))


def named_arguments(func: Callable[..., Any], args: tuple[Any, ...],
                    kwargs: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """``(name, value)`` for each argument: positional ones named from the signature where possible."""
    names: list[str] = []
    try:
        import inspect

        names = [p.name for p in inspect.signature(func).parameters.values()
                 if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        pass
    named = [(names[i] if i < len(names) else f"positional argument {i}", value) for i, value in enumerate(args)]
    return named + list(kwargs.items())


def describe_task(task_name: Optional[str], task_id: Optional[str] = None) -> str:
    """``task 'score'`` or, for a mapped item, ``task 'score' item 3`` (from the task id ``score[3]``)."""
    match = re.search(r"\[(\d+)\]$", task_id or "")
    name = task_name or (task_id[:match.start()] if match and task_id else task_id) or "?"
    return f"task {name!r} item {match.group(1)}" if match else f"task {name!r}"


_FILE_NOTE = ("the job gets a read-only copy of its contents (a StringIO), not the open file: writes, its "
              "position and later changes are not shared. Pass the path instead and open it in the task")


def warn_open_files(func: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any],
                    task_name: Optional[str], task_id: Optional[str] = None) -> None:
    """Warn about each open text file among the arguments (and one level into lists, tuples and dicts,
    their first ``_FILE_SCAN_LIMIT`` entries: this runs on the event loop for every run).

    cloudpickle sends an open text file as a ``StringIO`` copy of its contents, silently. The warning
    names the task, not the item, so a file shared by every item of a map warns once.
    """
    names: Optional[dict[int, str]] = None
    for key, suffix, handle in _open_files(args, kwargs):
        if isinstance(key, int):   # a positional argument: named from the signature (only now, it costs)
            names = names if names is not None else dict(enumerate(n for n, _ in named_arguments(func, args, {})))
            key = names.get(key, f"positional argument {key}")
        _warn_at_user_code(f"{describe_task(task_name or task_id)}: argument {key!r}{suffix} is the open "
                           f"file{_file_name(handle)}; {_FILE_NOTE}", func)


def _open_files(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> list[tuple[int | str, str, Any]]:
    """``(argument index or name, "[key]" or "", file)`` for each copied file, one level deep."""
    found: list[tuple[int | str, str, Any]] = []
    entries: list[tuple[int | str, Any]] = [*enumerate(args), *kwargs.items()]
    for key, value in entries:
        if isinstance(value, (list, tuple)):
            inner: Any = enumerate(value[:_FILE_SCAN_LIMIT])
        elif isinstance(value, dict):
            inner = itertools.islice(value.items(), _FILE_SCAN_LIMIT)
        else:
            if _is_copied_file(value):
                found.append((key, "", value))
            continue
        found.extend((key, f"[{index!r}]", item) for index, item in inner if _is_copied_file(item))
    return found


def _is_copied_file(value: Any) -> bool:
    """An open, readable text file that cloudpickle would turn into a ``StringIO`` copy."""
    return (isinstance(value, io.TextIOWrapper) and not value.closed and value not in (sys.stdout, sys.stderr)
            and value.readable())


def _warn_at_user_code(message: str, func: Callable[..., Any]) -> None:
    """``warnings.warn`` at the first caller outside wove and asyncio (the user's ``with`` block) or, when
    no such frame is on this stack (``async with``, a helper thread), at the task's ``def`` line."""
    wove_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
    stdlib_dir = os.path.dirname(os.path.abspath(warnings.__file__)) + os.sep
    frame, level = sys._getframe(1), 2
    while frame is not None:
        filename = frame.f_code.co_filename
        if not filename.startswith("<frozen "):
            filename = os.path.abspath(filename)
            if not filename.startswith(wove_dir) and not (
                    filename.startswith(stdlib_dir) and "site-packages" not in filename):
                warnings.warn(message, UserWarning, stacklevel=level)
                return
        frame, level = frame.f_back, level + 1   # type: ignore[assignment]
    code = getattr(func, "__code__", None)
    module_globals = getattr(func, "__globals__", None)
    if code is None or module_globals is None:
        warnings.warn(message, UserWarning, stacklevel=2)
        return
    warnings.warn_explicit(message, UserWarning, code.co_filename, code.co_firstlineno,
                           module=module_globals.get("__name__"),
                           registry=module_globals.setdefault("__warningregistry__", {}),
                           module_globals=module_globals)


# ---------------------------------------------------------------------------------------------- job side
def return_value_error(task: Optional[str], task_id: Optional[str], value: Any, error: BaseException,
                       dump: Callable[[Any], bytes]) -> TaskPicklingError:
    """The error a job reports when the task's return value cannot be pickled back."""
    where, culprit = find_unpicklable(value, "the return value", dump)
    inside = "" if culprit is value else f": {where} is {_a(culprit)}"
    return TaskPicklingError(
        f"{describe_task(task, task_id)} ran, but its return value ({_a(value)}) cannot be pickled to send it "
        f"back{inside} ({_brief(error)}). Return plain data (or write the result to a file and return its path), "
        f"{_LOCAL_FIX}", task=task, what="return value", type_name=_unpicklable_type(value, culprit, error))


# ---------------------------------------------------------------------------------------------- culprit
def find_unpicklable(value: Any, where: str, dump: Callable[[Any], bytes]) -> tuple[str, Any]:
    """``(path, object)``: the innermost part of ``value`` that fails to pickle (``value`` itself if none)."""
    for _ in range(_DEPTH_LIMIT):
        for sub_where, part in _parts(value, where):
            try:
                dump(part)
            except Exception:
                value, where = part, sub_where
                break
        else:
            return where, value
    return where, value


def _parts(value: Any, where: str) -> Any:
    """The pieces pickle would save separately: elements, dict entries, attributes, closure and globals."""
    if isinstance(value, (list, tuple)):
        items: Any = ((f"{where}[{i}]", v) for i, v in enumerate(value))
    elif isinstance(value, dict):
        items = ((f"{where}[{k!r}]", v) for k, v in value.items())
    elif isinstance(value, (set, frozenset)):
        items = ((f"an element of {where}", v) for v in value)
    elif isinstance(value, types.FunctionType):
        items = _function_parts(value, where)
    elif isinstance(value, types.MethodType):
        items = iter(((f"{where}.__self__", value.__self__), (f"{where}.__func__", value.__func__)))
    elif isinstance(value, functools.partial):
        items = itertools.chain([(f"{where}.func", value.func)],
                                ((f"{where}.args[{i}]", v) for i, v in enumerate(value.args)),
                                ((f"{where}.keywords[{k!r}]", v) for k, v in value.keywords.items()))
    elif isinstance(value, type) or not isinstance(getattr(value, "__dict__", None), dict):
        return
    else:
        items = ((f"{where}.{k}", v) for k, v in vars(value).items())
    yield from itertools.islice(items, _PARTS_LIMIT)


def _function_parts(func: types.FunctionType, where: str) -> Any:
    code = func.__code__
    for name, cell in zip(code.co_freevars, func.__closure__ or ()):
        try:
            yield f"its closure variable {name!r}", cell.cell_contents
        except ValueError:   # an empty cell
            continue
    for name in _global_names(code):
        if name in func.__globals__:
            yield f"the global {name!r} it uses", func.__globals__[name]
    for index, default in enumerate(func.__defaults__ or ()):
        yield f"its default value {index}", default
    for name, default in (func.__kwdefaults__ or {}).items():
        yield f"its default for {name!r}", default


def _global_names(code: types.CodeType) -> list[str]:
    names = list(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names.extend(_global_names(const))
    return names


# ---------------------------------------------------------------------------------------------- wording
_NAMED = re.compile(r"cannot pickle '([^']+)' object")


def _unpicklable_type(value: Any, culprit: Any, error: BaseException) -> str:
    """The type pickle could not handle: the culprit's, or the one pickle's message names when the search
    could not narrow the value down (a C object holding it, say)."""
    named = _NAMED.search(str(error)) if culprit is value else None
    return named.group(1) if named else _type_name(culprit)


def _type_name(value: Any) -> str:
    kind = type(value)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def _a(value: Any) -> str:
    return f"a {_type_name(value)}"


def _brief(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _file_name(value: Any) -> str:
    name = getattr(value, "name", None)
    return f" {name!r}" if isinstance(name, (str, bytes)) else ""
