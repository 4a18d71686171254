"""Load a task's pickles in a job without importing cloudpickle when the pickle does not need it.

A function defined in ``__main__`` (or a lambda, or a closure) is pickled by value with cloudpickle, and
loading it calls a few small reconstructors from ``cloudpickle.cloudpickle``. Importing that module costs
about 20 ms (it pulls in ``typing``, ``inspect``, ``dataclasses``, ``platform``), a large share of a short
job's life. The reconstructors of plain functions and closures need nothing but ``types``, so this module
supplies them; anything else (a class or an enum defined in ``__main__``) is resolved from the real
cloudpickle as usual. Only used for cloudpickle 3.0 and 3.1 pickles, whose reconstructors these match.
"""

from __future__ import annotations

import _pickle as pickle  # the C module: ``pickle`` itself is not needed here (see worker.py on start-up)
import builtins
import io
import sys
import types

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class _EmptyCell:
    """Stands for the contents of a closure cell that was empty when pickled."""


_EMPTY = _EmptyCell()


def _builtin_type(name: str) -> Any:
    return type if name == "ClassType" else getattr(types, name)


def _make_function(code: types.CodeType, globals_: dict[str, Any], name: str, argdefs: Any, closure: Any) -> Any:
    globals_["__builtins__"] = builtins.__dict__
    return types.FunctionType(code, globals_, name, argdefs, closure)


def _make_empty_cell() -> Any:
    return types.CellType()


def _make_cell(value: Any = _EMPTY) -> Any:
    cell = types.CellType()
    if value is not _EMPTY:
        cell.cell_contents = value
    return cell


def _subimport(name: str) -> types.ModuleType:
    __import__(name)
    return sys.modules[name]


def _function_setstate(func: Any, state: tuple[dict[str, Any], dict[str, Any]]) -> None:
    """Fill in a by-value function: ``__globals__`` and ``__closure__`` are read-only, so update them in place."""
    attributes, slots = state
    func.__dict__.update(attributes)
    slots = dict(slots)
    func_globals = slots.pop("__globals__")
    closure = slots.pop("__closure__")
    slots.pop("_cloudpickle_submodules", None)   # only there to import submodules before this call
    func.__globals__.update(func_globals)
    func.__globals__["__builtins__"] = builtins.__dict__
    if closure is not None:
        for index, cell in enumerate(closure):
            try:
                value = cell.cell_contents
            except ValueError:   # an empty cell stays empty
                continue
            func.__closure__[index].cell_contents = value
    for name, value in slots.items():
        setattr(func, name, value)


_LIGHT = {
    "_builtin_type": _builtin_type,
    "_make_function": _make_function,
    "_make_empty_cell": _make_empty_cell,
    "_make_cell": _make_cell,
    "_empty_cell_value": _EMPTY,
    "subimport": _subimport,
    "_function_setstate": _function_setstate,
}


# cloudpickle releases whose reconstructors these match; others load through cloudpickle itself.
_TESTED = ("3.0.", "3.1.")


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "cloudpickle.cloudpickle" and name in _LIGHT:
            return _LIGHT[name]
        return super().find_class(module, name)


def loads(data: Any, cloudpickle_version: str = "", buffers: Any = None) -> Any:
    """``pickle.loads``, with cloudpickle's function reconstructors supplied for cloudpickle 3.0/3.1 pickles.

    ``buffers`` are the pickle's out-of-band buffers (protocol 5), from a buffer file.
    """
    if not cloudpickle_version.startswith(_TESTED) or not _mentions_cloudpickle(data):
        return pickle.loads(data, buffers=buffers)
    return _Unpickler(io.BytesIO(data), buffers=buffers).load()


def _mentions_cloudpickle(data: Any) -> bool:
    """``b"cloudpickle" in data``, also for a (large) memoryview of a mapped file, scanned a MB at a time."""
    if isinstance(data, bytes):
        return b"cloudpickle" in data
    view, step = memoryview(data), 1 << 20
    return any(b"cloudpickle" in bytes(view[start:start + step + 16]) for start in range(0, view.nbytes, step))
