"""The key of one call in a journal: the same key means the same work, so its recorded outcome stands.

A key hashes the task's name, the function's identity (module, qualified name, and a hash of its code,
constants, defaults, closure and the module-level constants it reads: editing the body, or ``FACTOR = 2``
at the top of the script, changes it), the call's arguments as pickled bytes, and the settings that change
the outcome (environment and resources). Of the globals only constants count (numbers, strings, bytes and
tuples of them); a global list, dict or object, and the functions it calls, do not: a change there needs a
new journal, or ``journal=False`` on the task.
"""

from __future__ import annotations

import functools
import hashlib
import pickle
import types
from typing import Any, Callable, Optional

from ..errors import WoveError


class UnkeyableCallError(WoveError, TypeError):
    """A call whose function or arguments cannot be pickled, so no stable key exists for it."""


def _code_digest(code: types.CodeType, digest: Any) -> None:
    digest.update(code.co_code)
    digest.update(repr((code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars, code.co_argcount,
                        code.co_kwonlyargcount, code.co_flags)).encode())
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _code_digest(const, digest)
        elif isinstance(const, frozenset):   # `x in {"a", "b"}`: its repr follows the hash seed
            digest.update(repr(sorted(map(repr, const))).encode())
        else:
            digest.update(repr(const).encode())


def function_identity(func: Callable[..., Any], dumps: Callable[[Any], bytes]) -> str:
    """Module, qualified name and a digest of code, defaults and closure (``dumps`` pickles values)."""
    target = getattr(func, "__func__", func)           # bound methods: the function
    while isinstance(target, functools.partial):
        target = target.func
    digest = hashlib.sha256()
    code = getattr(target, "__code__", None)
    if code is not None:
        _code_digest(code, digest)
    closure = tuple(cell.cell_contents for cell in (getattr(target, "__closure__", None) or ())
                    if _has_contents(cell))
    extras: tuple[Any, ...] = (getattr(target, "__defaults__", None), getattr(target, "__kwdefaults__", None), closure)
    if func is not target:   # partial arguments and bound instances are part of what runs
        extras += (getattr(func, "args", None), getattr(func, "keywords", None), getattr(func, "__self__", None))
    if any(value for value in extras):
        digest.update(dumps(extras))
    if code is not None:
        _globals_digest(code, getattr(target, "__globals__", None) or {}, digest)
    module = getattr(target, "__module__", "") or ""
    name = getattr(target, "__qualname__", None) or getattr(target, "__name__", "") or type(target).__name__
    return f"{module}:{name}:{digest.hexdigest()[:32]}"


def _names(code: types.CodeType) -> set[str]:
    """Every global name ``code`` (and the code nested in it: comprehensions, inner functions) may read."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names(const)
    return names


def _constant(value: Any, depth: int = 0) -> bool:
    """An immutable plain value (exact ``int``, ``float``, ``str``... or a tuple of them), whose pickle is the
    same in every process: what a script's ``FACTOR = 2`` or ``MODEL = "resnet"`` is."""
    if value is None or type(value) in _CONSTANT_TYPES:
        return True
    return type(value) is tuple and depth < 3 and len(value) <= 1000 and all(_constant(v, depth + 1) for v in value)


_CONSTANT_TYPES = (bool, int, float, complex, str, bytes)


def _globals_digest(code: types.CodeType, namespace: dict[str, Any], digest: Any) -> None:
    """Feed the module globals ``code`` reads that are constants (``_constant``) into ``digest``.

    Only constants: anything else (objects, lists and dicts, functions, modules) may differ between two runs
    of the same script without meaning different work (a cache filled at run time, an object's address or
    random id in its pickle), and recomputing every call on each run would be worse than not noticing it.
    """
    for name in sorted(_names(code)):
        value = namespace.get(name, _ABSENT)
        if value is not _ABSENT and not name.startswith("__") and _constant(value):
            digest.update(name.encode() + b"=" + pickle.dumps(value, protocol=5))


_ABSENT = object()


def _has_contents(cell: Any) -> bool:
    try:
        _ = cell.cell_contents
    except ValueError:   # an empty cell
        return False
    return True


def call_key(task: str, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], *,
             environment: str, resources: Optional[dict[str, Any]], dumps: Callable[[Any], bytes],
             identity: Optional[str] = None, digest_of: Optional[Callable[[Any], bytes]] = None) -> str:
    """The journal key of one call; raises ``UnkeyableCallError`` when its inputs cannot be pickled.

    ``identity`` (the function's, when already known) and ``digest_of`` (a value's pickle digest, e.g. cached
    by object so an input shared by a whole map is pickled once) save work on the calls of one weave.
    """
    digest_of = digest_of or (lambda value: hashlib.sha256(dumps(value)).digest())
    try:
        identity = identity or function_identity(func, dumps)
        parts = [task.encode(), identity.encode()]
        parts += [digest_of(value) for value in args]
        parts += [name.encode() + b"=" + digest_of(kwargs[name]) for name in sorted(kwargs)]
        parts.append(dumps((environment, sorted((resources or {}).items()))))
    except Exception as exc:
        raise UnkeyableCallError(
            f"task {task!r} cannot be journaled: its function or arguments cannot be pickled "
            f"({type(exc).__name__}: {exc}); pass picklable arguments, or set journal=False on the task") from exc
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.hexdigest()
