"""The ``weave`` context manager, ``@w.do`` and ``Weave`` templates.

The body of a ``with weave()`` block only registers tasks. At block exit the graph is planned and handed
to the scheduler; if the body raised, nothing runs and that exception propagates untouched. A sync block
runs the scheduler through ``_runner``; options are checked by ``_options``; ``debug=True`` prints the
reports of ``_report``.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import sys
import threading
import time
from typing import Any, Callable, Optional, TypeVar, Union

from . import _config, _signals
from ._graph import DATA_NAME, MapFrom, Plan, TaskSpec, is_async_callable, parameters, plan
from ._options import validate_resources, validate_task_options
from ._report import debug_report, jobs_report
from ._result import RESERVED_NAMES, WoveResult
from ._runner import call_on_done, run_sync
from ._scheduler import Runtime
from .errors import (
    InvalidTypeError,
    MapSourceError,
    ReservedNameError,
    TaskDefinitionError,
    TemplateError,
    WaitTimeoutError,
    WeaveStateError,
)

F = TypeVar("F", bound=Callable[..., Any])

_building_template: contextvars.ContextVar[bool] = contextvars.ContextVar("wove_template", default=False)


def _split_do_arguments(args: tuple[Any, ...]) -> tuple[Any, Optional[Callable[..., Any]]]:
    """Return (map_source, function-if-bare-decorator) from ``do``'s positional arguments."""
    if len(args) > 1:
        raise TaskDefinitionError(f"do() takes at most one positional argument (an iterable, a task name or "
                                  f"a function), got {len(args)}")
    if not args:
        return None, None
    arg = args[0]
    if isinstance(arg, str):
        return MapFrom(arg), None
    if callable(arg) and not hasattr(arg, "__iter__"):
        return None, arg
    if hasattr(arg, "__iter__"):
        return arg, None
    # leading words as in wove 2.0.3 (which failed the task when it ran; we fail at decoration)
    raise MapSourceError(f"result of type '{type(arg).__name__}' is not iterable: do() expects an iterable to "
                         f"map over, the name of a task or init value to map over, or a function; got {arg!r}")


def _make_spec(func: Callable[..., Any], map_source: Any, options: dict[str, Any],
               name: Optional[str] = None) -> TaskSpec:
    if not callable(func):
        raise TaskDefinitionError(f"a task must be a function, got {type(func).__name__} {func!r}")
    name = name or getattr(func, "__name__", None)
    if not name:
        raise TaskDefinitionError(f"cannot name task {func!r}: it has no __name__; name it with "
                                  f"w.do(func, name='my_task')")
    try:
        params = parameters(func)
    except (TypeError, ValueError) as exc:
        raise TaskDefinitionError(f"cannot read the parameters of task {name!r}: {exc}") from exc
    return TaskSpec(name, func, options, map_source, is_async_callable(func), params)


class Weave:
    """Base class for reusable task templates.

    Decorate methods with ``@Weave.do(...)`` (same forms and options as ``@w.do``) and run them with
    ``with weave(MyTemplate) as w:``. Inline ``@w.do`` tasks of the same name override template tasks.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Weave:
        if not _building_template.get():
            # leading words as in wove 2.0.3
            raise TemplateError(f"'{cls.__name__}' cannot be instantiated directly. It is a Weave template: run "
                                f"its tasks with `with weave({cls.__name__}) as w:` (or `async with`)")
        return super().__new__(cls)

    def __reduce__(self) -> Any:
        # Template tasks are bound methods; pickling them (fork=True, remote environments) must rebuild
        # the instance without tripping the "do not instantiate" guard above.
        return (_rebuild_template, (type(self), self.__dict__))

    @staticmethod
    def do(*args: Any, **options: Any) -> Any:
        map_source, func = _split_do_arguments(args)

        def mark(f: F) -> F:
            validate_task_options(options, mapped=map_source is not None, name=getattr(f, "__name__", ""))
            f.__wove_task__ = (map_source, dict(options))  # type: ignore[attr-defined]
            return f

        return mark(func) if func is not None else mark

    @classmethod
    def _template_tasks(cls) -> list[str]:
        names: dict[str, None] = {}
        for klass in reversed(cls.__mro__):
            for name, value in vars(klass).items():
                if hasattr(value, "__wove_task__"):
                    names[name] = None
        return list(names)


def _rebuild_template(cls: type[Weave], state: dict[str, Any]) -> Weave:
    token = _building_template.set(True)
    try:
        instance = cls.__new__(cls)
    finally:
        _building_template.reset(token)
    instance.__dict__.update(state)
    return instance


class WeaveContext:
    """The ``w`` in ``with weave() as w``: registers tasks, then runs them at block exit."""

    def __init__(self, parent: Optional[type[Weave]], options: dict[str, Any], init_data: dict[str, Any]):
        for key in init_data:
            if key == DATA_NAME:
                # leading words as in wove 2.0.3
                raise ReservedNameError("'data' is a reserved name. Tasks receive every init value as the dict "
                                        "'data', so pick another name for this init value.")
            if key in RESERVED_NAMES:
                raise ReservedNameError(f"Initial value name '{key}' conflicts with a built-in attribute. "
                                        f"w.result.{key} is a result attribute; reserved names: "
                                        f"{', '.join(sorted(RESERVED_NAMES))}")
        for key in ("max_workers", "max_pending", "error_mode", "background", "fork", "progress", "journal",
                    *[k for k in _config.TASK_SETTINGS if k.startswith("delivery_")]):
            if options.get(key) is not None:
                _config.validate_setting(key, options[key])
        if options.get("on_done") is not None and not callable(options["on_done"]):
            raise InvalidTypeError(f"on_done must be callable, got {options['on_done']!r}")
        self._options = options
        self._init = init_data
        self._tasks: dict[str, TaskSpec] = {}
        self._resolver = _config.Resolver(options)  # validates environment names now, not at exit
        self._debug = bool(options.get("debug"))
        self._plan: Optional[Plan] = None
        self.result = WoveResult([], init_data, self._resolver.weave_value("error_mode"))
        self._thread: Optional[threading.Thread] = None
        self._forked: Any = None   # a _fork.ForkedWeave once fork=True started
        if parent is not None:
            self._add_template(parent)

    @property
    def execution_plan(self) -> Optional[dict[str, Any]]:
        """``{"dependencies", "dependents", "tiers", "sorted_tasks"}`` once the weave is planned."""
        return None if self._plan is None else self._plan.as_dict()

    # ---------------------------------------------------------------- registration
    def _add_template(self, parent: Any) -> None:
        if not (isinstance(parent, type) and issubclass(parent, Weave)):
            raise TemplateError(f"weave(parent) expects a Weave subclass, got {parent!r}")
        token = _building_template.set(True)
        try:
            instance = parent()
        finally:
            _building_template.reset(token)
        for name in parent._template_tasks():
            bound = getattr(instance, name)
            map_source, options = bound.__wove_task__
            options = dict(options)
            self._register(_make_spec(bound, map_source, options, name=options.pop("name", None) or name))

    def do(self, *args: Any, **options: Any) -> Any:
        """Register a task: ``@w.do``, ``@w.do(**opts)``, ``@w.do(iterable)``, ``@w.do("upstream")``, or
        ``w.do(func, **opts)`` (a lambda with options); ``name=`` names the task instead of ``__name__``."""
        map_source, func = _split_do_arguments(args)

        def decorator(f: F) -> F:
            opts = dict(options)
            name = opts.pop("name", None)
            if name is not None:   # checked here, before the spec, so a bad name is named as the fault
                validate_task_options({"name": name}, mapped=False)
            elif getattr(f, "__name__", None) == "<lambda>" and "<lambda>" in self._tasks:
                raise TaskDefinitionError("a second lambda task was registered without a name: both would be "
                                          "called '<lambda>' and the second would silently replace the first; "
                                          "name each one, e.g. w.do(lambda x: x + 1, name='add_one')")
            spec = _make_spec(f, map_source, opts, name=name)
            self._register(spec, explicit_source=map_source is not None)
            return f

        return decorator(func) if func is not None else decorator

    def _register(self, spec: TaskSpec, explicit_source: bool = True) -> None:
        name = spec.name
        if name == DATA_NAME or name in RESERVED_NAMES:
            # leading words as in wove 2.0.3
            raise ReservedNameError(f"Task name '{name}' conflicts with a built-in attribute of the WoveResult "
                                    f"object and is not allowed. w.result.{name} is a result attribute; reserved "
                                    f"names: {', '.join(sorted(RESERVED_NAMES | {DATA_NAME}))}")
        if name in self._init:
            raise ReservedNameError(f"task {name!r} has the same name as an init value; rename one of them")
        earlier = self._tasks.get(name)
        if earlier is not None:
            # A re-registration replaces the task but inherits what it does not set itself.
            spec.options = {**earlier.options, **spec.options}
            if not explicit_source and spec.map_source is None:
                spec.map_source = earlier.map_source
        if spec.options:
            validate_task_options(spec.options, mapped=spec.map_source is not None, name=name)
            env = spec.options.get("environment")
            if env is not None:
                self._resolver.check_environment(env, f"task {name!r}", task=name)
            if spec.options.get("resources") is not None:
                spec.options["resources"] = validate_resources(self._resolver, spec.options, f"task {name!r}")
        if earlier is not None:
            del self._tasks[name]   # a re-registered task moves to the end of the definition order
        self._tasks[name] = spec

    # ---------------------------------------------------------------- running
    def _prepare(self) -> Runtime:
        started = time.perf_counter()
        planned = plan(self._tasks, self._init)
        self._plan = planned
        result = self.result
        result._order = list(self._tasks)
        result.timings["planning"] = time.perf_counter() - started
        if self._debug:
            print(debug_report(planned, self._resolver, self._init), file=sys.stdout, flush=True)
        runtime = Runtime(planned, self._init, self._resolver, result,
                          max_workers=self._resolver.weave_value("max_workers"),
                          error_mode=self._resolver.weave_value("error_mode"),
                          max_pending=self._resolver.weave_value("max_pending"),
                          progress=self._wants_progress(planned))
        return runtime

    def _wants_progress(self, planned: Plan) -> bool:
        """``progress`` from the weave (or config), or set on an environment one of the tasks uses."""
        if self._resolver.weave_value("progress"):
            return True
        if self._options.get("progress") is False:
            return False
        used = {self._resolver.environment_name(spec.options.get("environment")) for spec in planned.tasks.values()}
        return any(self._resolver.environments[name].get("progress") for name in used)

    def _remote_work(self, runtime: Runtime) -> bool:
        """Whether a task is routed to a non-local environment: only then do signals cancel remote runs."""
        names = {spec.options.get("environment") if spec.options else None for spec in runtime.plan.tasks.values()}
        return any(not runtime.is_local(self._resolver.environment_name(name)) for name in names)

    def _report_jobs(self) -> None:
        if self._debug and self.result._jobs:
            print(jobs_report(self.result), file=sys.stdout, flush=True)

    def _raise_if_failed(self) -> None:
        if self.result._error_mode == "raise" and self.result.exception is not None:
            raise self.result.exception

    def wait(self, timeout: Optional[float] = None) -> WoveResult:
        """Block until the weave has finished; return ``w.result``, or raise its first failure in raise mode.

        Meant for ``background=True`` and ``fork=True`` weaves, whose block returns at once. It returns once
        the weave and its ``on_done`` have finished (for ``fork=True``: once the child process has exited).
        A weave that ran in the foreground finished when its block exited, so ``wait()`` returns at once.

        With ``fork=True`` the tasks ran in another process: afterwards the parent's ``w.result`` has the
        child's ``exception``, each failed task's exception, ``cancelled`` and ``timings``, but not the task
        values (they may be large or unpicklable); read those in ``on_done``, which runs in the child.

        ``timeout`` is in seconds; when it passes first, ``WaitTimeoutError`` is raised, the weave keeps
        running and ``wait()`` may be called again. This blocks the calling thread: from async code use
        ``await asyncio.to_thread(w.wait)``.
        """
        if self._plan is None:
            raise WeaveStateError("wait() was called but the weave has not run: call it after the `with weave() "
                                  "as w:` block has exited (the block only registers tasks, and runs nothing if "
                                  "its body or the planning raised)")
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise WaitTimeoutError(f"the background weave was still running after {timeout}s; it keeps "
                                       "running, and wait() can be called again")
        elif self._forked is not None:
            self._forked.wait(timeout)
        self._raise_if_failed()
        return self.result

    def __enter__(self) -> WeaveContext:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            return None
        runtime = self._prepare()
        if self._start_background(runtime):
            return None
        try:
            if self._remote_work(runtime):   # SIGTERM/SIGHUP/SIGINT cancel its remote runs (see _signals)
                with _signals.Guard() as guard:
                    run_sync(_signals.watch(runtime, guard))
            else:
                run_sync(runtime.run())
        finally:
            self._report_jobs()
        self._raise_if_failed()
        return None

    async def __aenter__(self) -> WeaveContext:
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            return None
        runtime = self._prepare()
        if self._start_background(runtime):
            return None
        try:
            if self._remote_work(runtime):
                with _signals.Guard() as guard:
                    await _signals.watch(runtime, guard)
            else:
                await runtime.run()
        finally:
            self._report_jobs()
        self._raise_if_failed()
        return None

    # ---------------------------------------------------------------- background / fork
    def _start_background(self, runtime: Runtime) -> bool:
        background = self._resolver.weave_value("background")
        fork = self._resolver.weave_value("fork")
        if not background and not fork:
            return False
        on_done = self._options.get("on_done")
        if fork:
            from ._fork import start_forked
            self._forked = start_forked(self._tasks, self._init, self._options, on_done, self.result)
            return True

        remote = self._remote_work(runtime)

        def target() -> None:
            try:   # (a weave off the main thread installs no handlers: see _signals)
                asyncio.run(_signals.watch(runtime) if remote else runtime.run())
            except BaseException as exc:  # the thread must still call on_done, with the failure on the result
                if self.result.exception is None:
                    self.result._first_error = exc
            call_on_done(on_done, self.result)

        self._thread = threading.Thread(target=target, name="wove-background", daemon=False)
        self._thread.start()
        return True


def weave(parent: Optional[type[Weave]] = None, *, debug: bool = False, environment: Optional[str] = None,
          max_workers: Optional[int] = None, background: Optional[bool] = None, fork: Optional[bool] = None,
          on_done: Optional[Callable[[WoveResult], Any]] = None, max_pending: Optional[int] = None,
          error_mode: Optional[str] = None, delivery_timeout: Optional[float] = None,
          delivery_idempotency_key: Union[str, Callable[..., str], None] = None,
          delivery_cancel_mode: Optional[str] = None, delivery_heartbeat_seconds: Optional[float] = None,
          delivery_max_in_flight: Optional[int] = None, delivery_orphan_policy: Optional[str] = None,
          progress: Optional[bool] = None, journal: Union[str, os.PathLike[str], None] = None,
          **init_data: Any) -> WeaveContext:
    """Start a weave: ``with weave() as w:`` or ``async with weave() as w:``.

    Keyword arguments not listed here become init values that tasks take by parameter name.

    While a weave with a task in a non-local environment runs in the main thread, SIGINT, SIGTERM and SIGHUP
    first cancel its remote runs (Slurm: scancel and a bounded drain), then do what they did before (see
    ``wove._signals``). ``background=True`` weaves install no handlers.

    ``journal=PATH`` makes the weave durable: running the same block again with the same journal reads back
    the calls that finished and reattaches to Slurm jobs still pending or running (see ``wove.journal``).
    """
    options = {
        "debug": debug, "environment": environment, "max_workers": max_workers, "background": background,
        "fork": fork, "on_done": on_done, "max_pending": max_pending, "error_mode": error_mode,
        "delivery_timeout": delivery_timeout, "delivery_idempotency_key": delivery_idempotency_key,
        "delivery_cancel_mode": delivery_cancel_mode, "delivery_heartbeat_seconds": delivery_heartbeat_seconds,
        "delivery_max_in_flight": delivery_max_in_flight, "delivery_orphan_policy": delivery_orphan_policy,
        "progress": progress, "journal": journal,
    }
    return WeaveContext(parent, options, init_data)

