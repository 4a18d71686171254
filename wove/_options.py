"""Checking the options of ``@w.do`` / ``Weave.do`` / ``merge`` before anything runs.

Unknown names, bad values and map-only options on unmapped tasks are refused with the valid names or forms;
``resources=`` is checked by the executor of the environment the task runs in.
"""

from __future__ import annotations

import keyword
from typing import Any

from . import _config
from .errors import InvalidTypeError, InvalidValueError, WoveError

#: Options ``@w.do`` accepts besides the map source (``name`` names the task: ``@w.do`` only, not merge).
TASK_OPTIONS = (*_config.TASK_SETTINGS, "environment", "resources", "journal", "name")


# wove 2.0.3's words for `workers` / `limit_per_minute` on a task that is not mapped (from @w.do, from merge)
_MAPPED_ONLY = ("The 'workers' and 'limit_per_minute' parameters can only be used with mapped tasks "
                "(e.g., @w.do(iterable, ...)).")
_MAPPED_ONLY_MERGE = ("The 'workers' and 'limit_per_minute' parameters can only be used with mapped tasks "
                      "(e.g., @w.do(iterable, ...) or merge(func, iterable, ...)).")


def validate_task_options(options: dict[str, Any], *, mapped: bool, name: str = "",
                          caller: str = "do") -> dict[str, Any]:
    """Check ``@w.do`` / ``merge`` options; raise with the valid names or forms.

    ``caller`` is ``"do"`` or ``"merge"``: the function whose keyword arguments these are.
    """
    where = f"task {name!r}: " if name else ""
    for key, value in options.items():
        if key not in TASK_OPTIONS:
            # Python's words for an unknown keyword (wove 2.0.3's do() and merge() had explicit keywords)
            raise InvalidTypeError(f"{caller}() got an unexpected keyword argument '{key}': {where}"
                                   + _config.unknown_key_message("task option", key, TASK_OPTIONS))
        if key == "name":
            validate_task_name(value, caller)
        elif key == "environment":
            _config._environment_name(key, value)
        elif key == "journal":
            if not isinstance(value, bool):
                raise InvalidValueError(f"{where}journal must be True or False on a task (False: never journal "
                                        f"its calls, e.g. for side effects); the journal's path is set on the "
                                        f"weave, an environment or wove.config(); got {value!r}")
        elif key == "resources":
            if value is not None and not isinstance(value, dict):
                raise InvalidValueError(f"{where}resources must be a dict such as {{'mem': '2G', 'time': '10:00'}}, "
                                        f"got {value!r}")
        else:
            _config.validate_setting(key, value)
    if options.get("delivery_max_in_flight") is not None:
        raise InvalidValueError(f"{where}delivery_max_in_flight caps an environment's remote runs as a whole; set "
                                "it on the environment, the weave or wove.config(), not on one task")
    if not mapped:
        for key in ("workers", "limit_per_minute"):
            if options.get(key) is not None:
                lead = _MAPPED_ONLY_MERGE if caller == "merge" else _MAPPED_ONLY
                raise InvalidValueError(f"{lead} {where}{key}={options[key]!r} is set on a task that is not "
                                        "mapped (@w.do(iterable) or @w.do('upstream')); remove it or map the task")
        if options.get("item_errors") is not None:
            raise InvalidValueError(f"{where}item_errors={options['item_errors']!r} says what a failed item of a "
                                    "mapped task does, but this task is not mapped (@w.do(iterable) or "
                                    "@w.do('upstream')); remove it, or use error_mode for a whole task")
    return options


def validate_task_name(value: Any, caller: str = "do") -> str:
    """``name=``: the task's name instead of its function's ``__name__`` (a lambda's is ``<lambda>``).

    Parameters name their dependencies, so a task name must be a Python identifier to be usable at all;
    reserved names and clashes with init values are refused where every task name is (at registration).
    """
    if caller == "merge":
        raise InvalidTypeError(f"merge() got an unexpected keyword argument 'name': a merged call is not a task "
                               f"of the weave (nothing can depend on it by name); got name={value!r}")
    if not isinstance(value, str):
        raise InvalidTypeError(f"name must be a string (the task's name, a Python identifier such as "
                               f"'add_one'), got {type(value).__name__} {value!r}")
    if not value.isidentifier() or keyword.iskeyword(value):
        raise InvalidValueError(f"name={value!r} is not a usable task name: other tasks take a task's value "
                                f"through a parameter of that name, so it must be a Python identifier that is "
                                f"not a keyword, such as 'add_one'")
    return value


def validate_resources(resolver: _config.Resolver, options: dict[str, Any], where: str) -> dict[str, Any]:
    """Check ``resources=`` against the executor of the environment the task runs in, before anything runs."""
    environment = resolver.environment_name(options.get("environment"))
    resolver.check_environment(environment, where)   # an unknown name is a NameError here, not a KeyError
    executor = resolver.environments[environment]["executor"]
    if isinstance(executor, str):
        executor = _config.executor_class(executor)
    check = getattr(executor, "validate_resources", None)
    if check is None:
        raise InvalidValueError(f"{where}: resources={options['resources']!r} only apply to environments whose "
                                f"executor schedules resources (such as 'slurm'); environment {environment!r} "
                                f"runs tasks with "
                                f"{executor if isinstance(executor, str) else type(executor).__name__}")
    try:
        return check(options["resources"], where)
    except WoveError:
        raise
    except ValueError as exc:   # the executor's own check: make it one of wove's errors, same words
        raise InvalidValueError(str(exc)) from exc
    except TypeError as exc:
        raise InvalidTypeError(str(exc)) from exc
