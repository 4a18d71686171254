"""Process-wide configuration: ``wove.config(...)``, ``wove_config.py`` and environment resolution.

A setting for a task is looked up in this order (first one set wins): the task's own option, the
weave's argument, the task's selected environment, the global ``wove.config`` value, the built-in default.
Every value is validated where it enters, so a typo fails at ``config()`` time with the list of valid
choices, not deep inside a running weave.
"""

from __future__ import annotations

import difflib
import math
import os
import runpy
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Optional

from .errors import (
    ConfigFileNotFoundError,
    EnvironmentDefinitionError,
    InvalidTypeError,
    InvalidValueError,
    UnknownEnvironmentError,
    WoveError,
)

# Executors by name live beside the executors; these two names stay importable from here.
from .executors.registry import EXECUTORS, executor_class

DEFAULT_ENVIRONMENT = "default"
CONFIG_FILE_NAME = "wove_config.py"

# --------------------------------------------------------------------------- value validators


def _int_at_least(minimum: int) -> Callable[[str, Any], Any]:
    def check(key: str, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise InvalidValueError(f"{key} must be an integer >= {minimum} (or None), got {value!r}")
        return value
    return check


def _positive_number(key: str, value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or math.isinf(value):
        raise InvalidValueError(f"{key} must be a positive number of seconds (or None), got {value!r}")
    return value


def _positive_rate(key: str, value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise InvalidValueError(f"{key} must be a positive number of launches per minute (or None), got {value!r}")
    return value


def _choice(*valid: str) -> Callable[[str, Any], Any]:
    def check(key: str, value: Any) -> Any:
        if value is None:
            return None
        if value not in valid:
            # "must be one of: ..." with the choices sorted: the words wove 2.0.3 used
            raise InvalidValueError(f"{key} must be one of: {', '.join(map(repr, sorted(valid)))}; got {value!r}")
        return value
    return check


def _boolean(key: str, value: Any) -> Any:
    if value is None or isinstance(value, bool):
        return value
    raise InvalidValueError(f"{key} must be True or False, got {value!r}")


def _journal_path(key: str, value: Any) -> Any:
    if value is None or value is False or (isinstance(value, (str, os.PathLike)) and os.fspath(value)):
        return value
    raise InvalidValueError(f"{key} must be the path of a directory for the weave's journal (wove creates it, "
                            f"mode 0700), or None/False for none; got {value!r}")


def _idempotency_key(key: str, value: Any) -> Any:
    if value is None or isinstance(value, str) or callable(value):
        return value
    raise InvalidValueError(f"{key} must be a format string like 'order-{{order_id}}' or a callable, got {value!r}")


def _environment_name(key: str, value: Any) -> Any:
    if value is None or (isinstance(value, str) and value):
        return value
    raise InvalidValueError(f"{key} must be the name of an environment (a non-empty string), got {value!r}")


_CHOICES = {
    "delivery_cancel_mode": ("best_effort", "require_ack"),
    "delivery_orphan_policy": ("fail", "cancel", "requeue", "detach"),
    "error_mode": ("raise", "return"),
    "item_errors": ("raise", "return", "skip"),
}

# Settings that tasks, weaves, environments and the global config can all carry.
TASK_SETTINGS: dict[str, Callable[[str, Any], Any]] = {
    "retries": _int_at_least(0),
    "timeout": _positive_number,
    "workers": _int_at_least(1),
    "limit_per_minute": _positive_rate,
    "delivery_timeout": _positive_number,
    "delivery_idempotency_key": _idempotency_key,
    "delivery_cancel_mode": _choice(*_CHOICES["delivery_cancel_mode"]),
    "delivery_heartbeat_seconds": _positive_number,
    "delivery_max_in_flight": _int_at_least(1),
    "delivery_orphan_policy": _choice(*_CHOICES["delivery_orphan_policy"]),
    # What a failed item of a mapped task does to its siblings and dependents (mapped tasks only).
    "item_errors": _choice(*_CHOICES["item_errors"]),
}
# Settings that belong to a whole weave.
WEAVE_SETTINGS: dict[str, Callable[[str, Any], Any]] = {
    "max_workers": _int_at_least(1),
    "max_pending": _int_at_least(1),
    "error_mode": _choice(*_CHOICES["error_mode"]),
    "background": _boolean,
    "fork": _boolean,
    "progress": _boolean,
    "journal": _journal_path,   # a durable weave: see wove/journal
}
SETTINGS = {**TASK_SETTINGS, **WEAVE_SETTINGS}

DEFAULTS: dict[str, Any] = {
    "retries": 0,
    "timeout": None,
    "workers": None,
    "limit_per_minute": None,
    "item_errors": "raise",
    "max_pending": None,
    "error_mode": "raise",
    "max_workers": 256,
    "background": False,
    "fork": False,
    "progress": False,
    "journal": None,
    "delivery_timeout": None,
    "delivery_idempotency_key": None,
    "delivery_cancel_mode": "best_effort",
    "delivery_heartbeat_seconds": None,
    "delivery_max_in_flight": None,
    "delivery_orphan_policy": "cancel",
}

GLOBAL_KEYS = ("config_file", "default_environment", "environments", *SETTINGS)
ENVIRONMENT_KEYS = ("executor", "executor_config", "config", *SETTINGS)


def unknown_key_message(kind: str, key: str, valid: Any) -> str:
    valid = sorted(valid)
    close = difflib.get_close_matches(key, valid, n=3)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    return f"unknown {kind} {key!r}.{hint} Valid: {', '.join(valid)}"


def validate_setting(key: str, value: Any) -> Any:
    return SETTINGS[key](key, value)


def normalize_environment(name: str, spec: Any) -> dict[str, Any]:
    """Validate one environment dict and return it in canonical form."""
    from .executors.base import EnvironmentExecutor

    if not isinstance(name, str) or not name:
        raise InvalidValueError(f"environment names must be non-empty strings, got {name!r}")
    if not isinstance(spec, Mapping):
        raise EnvironmentDefinitionError(f"Environment '{name}' must be a dict. Got {spec!r}; an environment "
                                         "looks like {'executor': 'local'}")
    for key in spec:
        if key not in ENVIRONMENT_KEYS:
            raise InvalidValueError(unknown_key_message(f"key in environment {name!r}:", key, ENVIRONMENT_KEYS))
    if "config" in spec and "executor_config" in spec:
        raise InvalidValueError(f"environment {name!r} sets both 'executor_config' and its alias 'config'; keep one")
    executor = spec.get("executor", "local")
    executor_config = spec.get("executor_config", spec.get("config")) or {}
    if not isinstance(executor_config, Mapping):
        raise InvalidValueError(f"executor_config of environment {name!r} must be a dict, got {executor_config!r}")
    if isinstance(executor, str):
        if executor not in EXECUTORS:
            raise InvalidValueError(
                f"Unknown executor '{executor}'. Environment {name!r} names it, but the valid executors are "
                f"{', '.join(map(repr, EXECUTORS))} or an EnvironmentExecutor instance")
        executor_config = _executor_config(executor_class(executor), executor_config, name)
    elif isinstance(executor, EnvironmentExecutor):
        executor_config = _executor_config(executor, executor_config, name)
    else:
        raise EnvironmentDefinitionError(
            f"Environment 'executor' must be a string or EnvironmentExecutor instance. Environment {name!r} "
            f"has {executor!r}; use one of {', '.join(map(repr, EXECUTORS))} or an EnvironmentExecutor instance")
    normalized: dict[str, Any] = {"executor": executor, "executor_config": executor_config}
    for key, value in spec.items():
        if key in SETTINGS:
            try:
                normalized[key] = validate_setting(key, value)
            except InvalidValueError:
                if key not in ("delivery_cancel_mode", "delivery_orphan_policy"):
                    raise
                # wove 2.0.3's words for these two
                choices = " or ".join(map(repr, sorted(_CHOICES[key]))) if key == "delivery_cancel_mode" \
                    else "one of: " + ", ".join(map(repr, sorted(_CHOICES[key])))
                raise InvalidValueError(f"Environment '{name}' has invalid {key}. Expected {choices}. "
                                        f"Got {value!r}.") from None
    return normalized


def _executor_config(executor: Any, executor_config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The executor's own check of its ``executor_config``; its plain ValueError/TypeError become wove's."""
    try:
        return executor.validate_config(dict(executor_config), environment=name)
    except WoveError:
        raise
    except ValueError as exc:
        raise InvalidValueError(str(exc)) from exc
    except TypeError as exc:
        raise InvalidTypeError(str(exc)) from exc


# --------------------------------------------------------------------------- global state

_lock = threading.RLock()
_state: dict[str, Any] = {}


def _fresh_state() -> dict[str, Any]:
    return {
        "default_environment": None,
        "environments": {DEFAULT_ENVIRONMENT: {"executor": "local", "executor_config": {}}},
        "settings": {},
    }


_state.update(_fresh_state())


def reset() -> None:
    """Forget every configured value (used by tests and by long-lived processes that reconfigure)."""
    with _lock:
        _state.clear()
        _state.update(_fresh_state())


def find_config_file(start: Optional[Path] = None) -> Optional[Path]:
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        candidate = directory / CONFIG_FILE_NAME
        if candidate.is_file():
            return candidate
    return None


def _load_file(path: Path) -> dict[str, Any]:
    namespace = runpy.run_path(str(path))
    if "WOVE_CONFIG" in namespace:
        loaded = namespace["WOVE_CONFIG"]
        if not isinstance(loaded, Mapping):
            raise EnvironmentDefinitionError(f"WOVE_CONFIG in config file must be a dictionary. {path} sets it to "
                                             f"a {type(loaded).__name__}")
        return dict(loaded)
    return {key: namespace[key] for key in GLOBAL_KEYS if key in namespace and key != "config_file"}


def config(config_file: Optional[os.PathLike[str] | str] = None, **keys: Any) -> dict[str, Any]:
    """Set process-wide wove settings; calls accumulate.

    With no argument, load ``wove_config.py`` from the working directory or its nearest parent (a
    ``WOVE_CONFIG`` dict, or module-level names). Returns a snapshot of the resulting configuration.
    """
    for key in keys:
        if key not in GLOBAL_KEYS:
            # Python's words for an unknown keyword (wove 2.0.3's config() had explicit keywords)
            raise InvalidTypeError(f"config() got an unexpected keyword argument '{key}': "
                                   + unknown_key_message("wove.config() key", key, GLOBAL_KEYS))
    with _lock:
        if config_file is not None:
            path = Path(config_file)
            if not path.is_file():
                raise ConfigFileNotFoundError(f"Config file not found: {path} (wove.config(config_file=...))")
            _apply(_load_file(path), source=str(path))
        elif not keys:
            found = find_config_file()
            if found is not None:
                _apply(_load_file(found), source=str(found))
        _apply(keys, source="wove.config()")
        return snapshot()


def _apply(keys: Mapping[str, Any], source: str) -> None:
    # Validate everything first so a bad key leaves the previous configuration untouched.
    staged_envs: dict[str, Optional[dict[str, Any]]] = {}
    staged_settings: dict[str, Any] = {}
    default_env = _state["default_environment"]
    for key, value in keys.items():
        if key not in GLOBAL_KEYS or key == "config_file":
            raise InvalidValueError(f"{source}: " + unknown_key_message("config key", key, GLOBAL_KEYS))
        if key == "environments":
            if not isinstance(value, Mapping):
                raise EnvironmentDefinitionError(f"environments must be a dict[str, dict] (environment name -> "
                                                 f"environment dict), got {value!r}")
            for name, spec in value.items():
                if spec is None:
                    if name == DEFAULT_ENVIRONMENT:
                        raise InvalidValueError("the 'default' environment always exists and cannot be removed")
                    staged_envs[name] = None
                else:
                    staged_envs[name] = normalize_environment(name, spec)
        elif key == "default_environment":
            default_env = _environment_name(key, value)
        else:
            staged_settings[key] = validate_setting(key, value)
    envs = _state["environments"]
    for name, spec in staged_envs.items():
        if spec is None:
            envs.pop(name, None)
        else:
            envs[name] = spec
    _state["default_environment"] = default_env
    _state["settings"].update(staged_settings)


def snapshot() -> dict[str, Any]:
    """A copy of the current configuration, safe to keep while others reconfigure."""
    with _lock:
        return {
            "default_environment": _state["default_environment"],
            "environments": {name: dict(spec) for name, spec in _state["environments"].items()},
            **{key: _state["settings"].get(key, DEFAULTS[key]) for key in SETTINGS},
            "_explicit": dict(_state["settings"]),
        }


class Resolver:
    """Answers "which value applies to this task?" for one weave, from a frozen configuration snapshot."""

    def __init__(self, weave_options: Mapping[str, Any]):
        snap = snapshot()
        self.environments: dict[str, dict[str, Any]] = snap["environments"]
        self.global_settings: dict[str, Any] = snap["_explicit"]
        self.weave_options = {k: v for k, v in weave_options.items() if v is not None}
        self.default_environment = snap["default_environment"]
        weave_env = self.weave_options.get("environment")
        for name in (weave_env, self.default_environment):
            if name is not None:
                self.check_environment(name, "weave(environment=...)" if name == weave_env
                                       else "default_environment")

    def check_environment(self, name: str, where: str, task: Optional[str] = None) -> None:
        """Raise ``UnknownEnvironmentError`` unless ``name`` is configured; ``task`` names the task using it."""
        if name not in self.environments:
            lead = (f"Task '{task}' references unknown environment '{name}'." if task is not None
                    else f"Environment '{name}' is not configured.")   # wove 2.0.3's words
            raise UnknownEnvironmentError(
                f"{lead} ({where}) Configured environments: {', '.join(sorted(self.environments))}; "
                "add it with wove.config(environments={...})")

    def environment_name(self, task_environment: Optional[str]) -> str:
        return (task_environment or self.weave_options.get("environment")
                or self.default_environment or DEFAULT_ENVIRONMENT)

    def weave_value(self, key: str) -> Any:
        """A weave-wide setting: weave argument, the weave's environment, global config, default."""
        if key in self.weave_options:
            return self.weave_options[key]
        env = self.environments[self.environment_name(None)]
        if key in env:
            return env[key]
        return self.global_settings.get(key, DEFAULTS[key])

    def task_value(self, key: str, task_options: Mapping[str, Any], environment: str) -> Any:
        if key in task_options:
            return task_options[key]
        if key in self.weave_options:
            return self.weave_options[key]
        env = self.environments[environment]
        if key in env:
            return env[key]
        return self.global_settings.get(key, DEFAULTS[key])
