"""Dependency inference and planning: from registered functions to an executable graph.

A parameter named like a task, an init value or ``data`` is a dependency. Planning checks every name,
finds cycles (and names the tasks on them), and computes the dependency levels for introspection. The
scheduler does not run level by level: it only needs each task's dependencies and dependents.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterable
from dataclasses import dataclass
from inspect import CO_COROUTINE
from types import FunctionType, MethodType
from typing import Any, Callable, Optional

from .errors import DependencyCycleError, TaskDefinitionError, UnresolvedSignatureError

DATA_NAME = "data"



# (name, kind, has_default); kind is POSITIONAL_ONLY, POSITIONAL_OR_KEYWORD or KEYWORD_ONLY
Param = tuple[str, str, bool]
POSITIONAL_ONLY, POSITIONAL_OR_KEYWORD, KEYWORD_ONLY = "positional_only", "positional_or_keyword", "keyword_only"


class TaskSpec:
    """One registered task: the function, how it is mapped, and the options it set explicitly."""

    __slots__ = (
        "dependencies",
        "func",
        "inputs",
        "is_async",
        "item_first",
        "item_param",
        "map_source",
        "name",
        "options",
        "params",
        "positional",
    )
    # Set by plan() (see __init__): annotated here so type checkers know them.
    dependencies: list[str]
    inputs: list[str]
    positional: list[str]
    item_param: Optional[str]
    item_first: bool

    def __init__(self, name: str, func: Callable[..., Any], options: dict[str, Any], map_source: Any = None,
                 is_async: bool = False, params: Optional[list[Param]] = None):
        self.name = name
        self.func = func
        self.options = options
        self.map_source = map_source          # None, an iterable, or MapFrom(name)
        self.is_async = is_async
        self.params = params
        # Set by plan(): dependencies (tasks this one waits for), inputs (parameters filled by keyword),
        # positional (positional-only parameters, in order, the item's included), item_param and
        # item_first (the item parameter of a mapped task; whether it can go first by position).

    @property
    def mapped(self) -> bool:
        return self.map_source is not None

    def __repr__(self) -> str:
        return f"<TaskSpec {self.name}{' (mapped)' if self.mapped else ''}>"




def parameters(func: Callable[..., Any]) -> list[Param]:
    """The named parameters of ``func`` (no ``*args``/``**kwargs``), read cheaply when possible.

    Reading a plain function's code object directly is about ten times faster than
    ``inspect.signature``, which matters for weaves with hundreds of tasks.
    """
    target, skip = func, 0
    if type(func) is MethodType:
        target, skip = func.__func__, 1
    if type(target) is not FunctionType or "__wrapped__" in target.__dict__ \
            or "__signature__" in target.__dict__:
        return _parameters_from_signature(func)
    code = target.__code__
    names = code.co_varnames
    positional = code.co_argcount
    posonly = code.co_posonlyargcount
    kwonly = code.co_kwonlyargcount
    first_default = positional - len(target.__defaults__ or ())
    result: list[Param] = [
        (names[i], POSITIONAL_ONLY if i < posonly else POSITIONAL_OR_KEYWORD, i >= first_default)
        for i in range(skip, positional)]
    if kwonly:
        kwdefaults = target.__kwdefaults__ or {}
        result += [(name, KEYWORD_ONLY, name in kwdefaults) for name in names[positional:positional + kwonly]]
    return result


def _parameters_from_signature(func: Callable[..., Any]) -> list[Param]:
    kinds: dict[inspect._ParameterKind, str] = {inspect.Parameter.POSITIONAL_ONLY: POSITIONAL_ONLY,
             inspect.Parameter.POSITIONAL_OR_KEYWORD: POSITIONAL_OR_KEYWORD,
             inspect.Parameter.KEYWORD_ONLY: KEYWORD_ONLY}
    return [(p.name, kinds[p.kind], p.default is not p.empty)
            for p in inspect.signature(func).parameters.values() if p.kind in kinds]


@dataclass(frozen=True)
class MapFrom:
    """Marks a mapped task whose items come from another task's result or an init value."""

    name: str


@dataclass
class Plan:
    tasks: dict[str, TaskSpec]            # definition order
    dependencies: dict[str, list[str]]
    dependents: dict[str, list[str]]
    tiers: list[list[str]]
    sorted_tasks: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {
            "dependencies": {k: list(v) for k, v in self.dependencies.items()},
            "dependents": {k: list(v) for k, v in self.dependents.items()},
            "tiers": [list(t) for t in self.tiers],
            "sorted_tasks": list(self.sorted_tasks),
        }


def is_async_callable(func: Callable[..., Any]) -> bool:
    """True for ``async def`` functions, bound methods, partials of them and objects with ``async __call__``."""
    if type(func) is MethodType:
        func = func.__func__
    if type(func) is FunctionType and "__wrapped__" not in func.__dict__:
        return bool(func.__code__.co_flags & CO_COROUTINE)
    target = func
    while hasattr(target, "func") and not inspect.isfunction(target):  # functools.partial
        target = target.func
    return inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(
        getattr(type(target), "__call__", None))  # noqa: B004 (async __call__)


def _resolve_parameters(spec: TaskSpec, available: set[str]) -> tuple[list[str], list[str], list[str]]:
    """Split parameters into (dependencies, free parameters without default, positional-only names)."""
    params = spec.params if spec.params is not None else parameters(spec.func)
    deps = [p[0] for p in params if p[0] in available]
    free = [] if len(deps) == len(params) else [p[0] for p in params if p[0] not in available and not p[2]]
    # positional-only parameters always come first, so one look tells whether there are any
    positional = [p[0] for p in params if p[1] is POSITIONAL_ONLY] if params and params[0][1] is POSITIONAL_ONLY \
        else []
    spec.item_first = False
    spec.item_param = None
    return deps, free, positional


def plan(tasks: dict[str, TaskSpec], init_names: Iterable[str]) -> Plan:
    """Check every task's inputs and order the graph; raise a precise error when it cannot run."""
    init_names = set(init_names)
    non_task_names = init_names | {DATA_NAME}
    available = set(tasks) | non_task_names
    dependencies: dict[str, list[str]] = {}
    for spec in tasks.values():
        deps, free, positional = _resolve_parameters(spec, available)
        source = spec.map_source
        if isinstance(source, MapFrom):
            if source.name not in available:
                raise UnresolvedSignatureError(_missing_source_message(spec.name, source.name, available))
            if source.name == spec.name:
                raise DependencyCycleError(
                    f"Circular dependency detected. Mapped task '{spec.name}' maps over its own result, "
                    "which it can only have once it has run; map over another task or an init value.",
                    [spec.name, spec.name])
        if source is not None:
            if len(free) != 1:
                raise TaskDefinitionError(_map_param_message(spec, deps, free))
            spec.item_param = item = free[0]
            params = spec.params or []
            # fast call path func(item, **deps): the item is the first parameter and nothing is positional-only
            spec.item_first = bool(params) and params[0][0] == item and not positional \
                and params[0][1] is not KEYWORD_ONLY
        elif free:
            raise UnresolvedSignatureError(_unresolved_message(spec.name, free, available))
        if positional:   # positional-only dependencies (and item) go in by position, in order
            spec.positional = [p for p in positional if p in deps or p == spec.item_param]
            spec.inputs = [d for d in deps if d not in spec.positional]
        else:
            spec.positional, spec.inputs = [], deps
        task_deps = list(deps) if non_task_names.isdisjoint(deps) else [d for d in deps if d in tasks]
        if isinstance(source, MapFrom) and source.name in tasks and source.name not in task_deps:
            task_deps.append(source.name)
        spec.dependencies = task_deps
        dependencies[spec.name] = task_deps

    dependents: dict[str, list[str]] = {name: [] for name in tasks}
    for name, deps in dependencies.items():
        for dep in deps:
            dependents[dep].append(name)

    # Kahn's algorithm, level by level, for the (introspection-only) tiers and a cycle check.
    remaining = {name: len(deps) for name, deps in dependencies.items()}
    tier = [name for name, count in remaining.items() if count == 0]
    tiers: list[list[str]] = []
    ordered: list[str] = []
    while tier:
        tiers.append(tier)
        ordered.extend(tier)
        following = []
        for name in tier:
            for child in dependents[name]:
                left = remaining[child] - 1
                remaining[child] = left
                if not left:
                    following.append(child)
        tier = following
    if len(ordered) != len(tasks):
        stuck = [name for name in tasks if remaining[name] > 0]
        cycle = _find_cycle(stuck, dependencies)
        raise DependencyCycleError(
            "Circular dependency detected. The tasks " + " -> ".join(cycle)
            + " each wait for the next, so none of them can start; rename a parameter "
            "or split a task to break the cycle.", cycle)
    return Plan(tasks=tasks, dependencies=dependencies, dependents=dependents, tiers=tiers,
                sorted_tasks=ordered)


def _find_cycle(stuck: list[str], dependencies: dict[str, list[str]]) -> list[str]:
    stuck_set = set(stuck)
    # Walk dependency edges from any stuck node; every stuck node has a stuck dependency, so we loop.
    path: list[str] = []
    seen: dict[str, int] = {}
    node = stuck[0]
    while node not in seen:
        seen[node] = len(path)
        path.append(node)
        node = next(d for d in dependencies[node] if d in stuck_set)
    cycle = [*path[seen[node]:], node]
    cycle.reverse()  # read as "a feeds b feeds c"
    return cycle


def _suggestions(names: list[str], available: set[str]) -> str:
    hints = []
    for name in names:
        close = difflib.get_close_matches(name, sorted(available), n=3, cutoff=0.6)
        if close:
            hints.append(f"did you mean {' or '.join(map(repr, close))} for {name!r}?")
    return (" " + " ".join(hints)) if hints else ""


def _unresolved_message(task: str, params: list[str], available: set[str]) -> str:
    # Leading words as in wove 2.0.3, then which names would have worked.
    return (f"Task '{task}' has unresolved dependencies: {', '.join(params)}. "
            f"Available dependencies: {', '.join(sorted(available))}. Each parameter without a default must "
            f"name a task, an init value or 'data'.{_suggestions(params, available)}")


def _missing_source_message(task: str, source: str, available: set[str]) -> str:
    return (f"Mapped task '{task}' depends on '{source}', but no task with that name was found. "
            f"@w.do({source!r}) maps over the result of a task or an init value of that name; "
            f"available: {', '.join(sorted(available))}.{_suggestions([source], available)}")


def _map_param_message(spec: TaskSpec, deps: list[str], free: list[str]) -> str:
    lead = f"Mapped task '{spec.name}' must have exactly one parameter that is not a dependency."
    if not free:
        return (f"{lead} It has none: every parameter ({', '.join(deps) or 'none'}) names a dependency, "
                "so nothing is left to receive each item. Add one parameter for the item.")
    return (f"{lead} It has {len(free)} ({', '.join(free)}), so wove cannot tell which one receives each item. "
            "Rename the others after tasks or init values, or give them defaults.")
