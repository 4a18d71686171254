"""The key of one call in a journal: the same key means the same work, so its recorded outcome stands.

A key hashes the task's name, the function's identity (module, qualified name, and a hash of its code,
constants, defaults, closure and the module globals it reads: editing the body, or ``factor = 2`` at the
top of the script, changes it), the call's arguments as pickled bytes, and the settings that change the
outcome (environment and resources). Of the globals, data values count by their pickle and functions by
their own identity (one level down); modules and classes count by name only (their contents are code,
like an imported library's), and a value that cannot be pickled by its type alone.
"""

from __future__ import annotations

import functools
import hashlib
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


def function_identity(func: Callable[..., Any], dumps: Callable[[Any], bytes], depth: int = 0) -> str:
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
    if code is not None and depth < _GLOBALS_DEPTH:
        _globals_digest(code, getattr(target, "__globals__", None) or {}, dumps, digest, depth)
    module = getattr(target, "__module__", "") or ""
    name = getattr(target, "__qualname__", None) or getattr(target, "__name__", "") or type(target).__name__
    return f"{module}:{name}:{digest.hexdigest()[:32]}"


_GLOBALS_DEPTH = 2   # the task's function, and the functions it calls by global name


def _names(code: types.CodeType) -> set[str]:
    """Every global name ``code`` (and the code nested in it: comprehensions, inner functions) may read."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names(const)
    return names


def _globals_digest(code: types.CodeType, namespace: dict[str, Any], dumps: Callable[[Any], bytes], digest: Any,
                    depth: int) -> None:
    """Feed the values of the module globals ``code`` reads into ``digest`` (see the module's docstring)."""
    for name in sorted(_names(code)):
        if name not in namespace or name.startswith("__"):
            continue
        value = namespace[name]
        digest.update(name.encode() + b"=")
        if isinstance(value, (types.ModuleType, type)):
            digest.update(f"{getattr(value, '__name__', '')}".encode())
        elif isinstance(value, (types.FunctionType, functools.partial, types.MethodType)):
            digest.update(function_identity(value, dumps, depth + 1).encode())
        elif callable(value) and not hasattr(value, "__dict__"):   # builtins and C functions: by name
            digest.update(repr(value).encode())
        else:
            try:
                canonical = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
                digest.update(hashlib.sha256(dumps(canonical)).digest())
            except Exception:   # a lock, a connection: what it is, not what it holds
                digest.update(f"{type(value).__module__}.{type(value).__qualname__}".encode())


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
