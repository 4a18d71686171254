"""Slurm resources as data: validated once, turned into ``sbatch`` options in one place.

The same keys work in an environment's ``executor_config`` and per task with
``@w.do(environment="slurm", resources={...})``; the task's values win, and ``sbatch_args`` / ``setup`` lines
add to the environment's. Every key is checked before anything is submitted, with the valid forms in the
error, so a typo never becomes a job that fails in the queue.

A task's ``resources`` may also say how its calls are submitted (:data:`SUBMIT_KEYS`, never sbatch flags):
``items_per_job`` and ``arrays`` replace the environment's for that task, and ``max_queued_jobs`` caps the
task's own queued jobs (the environment's ``max_queued_jobs`` still caps them all together). So one task can
be packed and another not in the same environment.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from typing import Any, Callable, Optional

from ..errors import InvalidValueError

_TIME = re.compile(r"^(?:(\d+)-)?(\d+)((?::\d{1,2}){0,2})$")
_MEM = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT]?)B?$", re.IGNORECASE)
_NODES = re.compile(r"^\d+(-\d+)?$")
_GPUS = re.compile(r"^([A-Za-z0-9_.-]+:)?\d+$")
_UNITS = {"": 1, "K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}


def _text(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or any(c in value for c in "\n\r"):
        raise InvalidValueError(f"resources[{key!r}] must be a non-empty single-line string, got {value!r}")
    return value.strip()


def _positive_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidValueError(f"resources[{key!r}] must be a positive integer, got {value!r}")
    return value


def _time(key: str, value: Any) -> str:
    """A Slurm time limit, in the forms sbatch documents for ``--time``.

    Slurm counts time limits in whole minutes and rounds seconds *up*, so ``"0:10"`` would silently become a
    one-minute limit and a job meant to time out would complete: a limit under a minute is refused (use a
    whole minute, or the task's ``timeout=`` option for a limit in seconds). A limit above a minute with
    leftover seconds (``"1:30"``) is accepted with a ``UserWarning`` naming the minutes Slurm will use.
    ``0`` (``"0"``, ``"0:00"``) is Slurm's "no time limit" (up to the partition's) and is passed on as is.
    """
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return str(value)  # minutes, as sbatch reads a bare number
    text = value.strip() if isinstance(value, str) else None
    seconds = time_seconds(text) if text is not None else None
    if text is None or seconds is None:
        raise InvalidValueError(
            f"resources[{key!r}] must be minutes (int) or a Slurm time string: 'M' ('30'), 'M:SS' ('10:00'), "
            f"'H:MM:SS' ('2:00:00'), 'D-H' ('1-12'), 'D-H:MM' ('1-12:30') or 'D-H:MM:SS' ('1-12:00:00'); "
            f"got {value!r}")
    if 0 < seconds < 60:
        raise InvalidValueError(
            f"resources[{key!r}]={value!r} is {seconds} s, under a minute: Slurm counts time limits in whole "
            "minutes and rounds seconds up, so the job would get a 1-minute limit and could run past the "
            f"{seconds} s you meant. Use a whole minute ('1' or '1:00'), or the task's timeout={seconds} option "
            "for a limit in seconds")
    if seconds % 60:
        minutes = -(-seconds // 60)
        warnings.warn(
            f"resources[{key!r}]={value!r} has {seconds % 60} s beyond whole minutes: Slurm counts time limits "
            f"in whole minutes and rounds up, so the job gets {minutes} minutes ({_clock(minutes)}); use a "
            "whole minute, or the task's timeout= option for a limit in seconds", UserWarning, stacklevel=2)
    return text


def time_seconds(text: str) -> Optional[int]:
    """Seconds in a Slurm time string, or None if it is not one (``"M"``, ``"M:S"``, ``"H:M:S"``, ``"D-H"``,
    ``"D-H:M"``, ``"D-H:M:S"``: with a day, the first number after the dash is hours)."""
    match = _TIME.match(text.strip())
    if match is None:
        return None
    days, first, rest = match.group(1), int(match.group(2)), [int(p) for p in match.group(3).split(":")[1:]]
    if days is not None:   # D-H, D-H:M, D-H:M:S
        minutes, seconds = [*rest, 0, 0][:2]
        hours = first
        return ((int(days) * 24 + hours) * 60 + minutes) * 60 + seconds
    if len(rest) == 2:     # H:M:S
        return (first * 60 + rest[0]) * 60 + rest[1]
    return first * 60 + (rest[0] if rest else 0)   # M, M:S


def _clock(minutes: int) -> str:
    days, rest = divmod(minutes, 24 * 60)
    clock = f"{rest // 60}:{rest % 60:02d}:00"
    return f"{days}-{clock}" if days else clock


def _mem(key: str, value: Any) -> str:
    """Megabytes (int) or a size; ``0`` is Slurm's "all of the node's memory" (passed on as ``0``)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return f"{value}M" if value else "0"
    if isinstance(value, str):
        match = _MEM.match(value.strip())
        if match and float(match.group(1)) == 0:
            return "0"
        if match:
            number, unit = match.group(1), match.group(2).upper()
            if "." in number:  # sbatch wants integers: express fractions in the next smaller unit
                return f"{max(1, round(mem_mb(value)))}M"
            return f"{number}{unit or 'M'}"
    raise InvalidValueError(f"resources[{key!r}] must be megabytes (int) or a size such as '500M', '4G', '1T' "
                            f"(0: all of the node's memory); got {value!r}")


def _nodes(key: str, value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return str(value)
    if isinstance(value, str) and _NODES.match(value.strip()):
        return value.strip()
    raise InvalidValueError(f"resources[{key!r}] must be a positive integer or a range such as '2-4', got {value!r}")


def _gpus(key: str, value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return str(value)
    if isinstance(value, str) and _GPUS.match(value.strip()):
        return value.strip()
    raise InvalidValueError(f"resources[{key!r}] must be a count (int) or 'type:count' such as 'a100:2', got {value!r}")


def _names(key: str, value: Any) -> str:
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) and v for v in value):
        return ",".join(value)
    return _text(key, value)


def _count(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidValueError(f"resources[{key!r}] must be an integer >= 0, got {value!r}")
    return value


def _flag(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidValueError(f"resources[{key!r}] must be True or False, got {value!r}")
    return value


def _lines(key: str, value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise InvalidValueError(f"resources[{key!r}] must be a list of strings, got {value!r}")
    return list(value)


#: key -> (validator, sbatch option or None for keys handled specially)
RESOURCE_KEYS: dict[str, tuple[Callable[[str, Any], Any], Optional[str]]] = {
    "partition": (_text, "--partition"),
    "account": (_text, "--account"),
    "qos": (_text, "--qos"),
    "time": (_time, "--time"),
    "cpus_per_task": (_positive_int, "--cpus-per-task"),
    "mem": (_mem, "--mem"),
    "gpus": (_gpus, "--gpus"),
    "gres": (_text, "--gres"),
    "nodes": (_nodes, "--nodes"),
    "ntasks": (_positive_int, "--ntasks"),
    "constraint": (_text, "--constraint"),
    "exclude": (_names, "--exclude"),
    "reservation": (_text, "--reservation"),
    "sbatch_args": (_lines, None),
    "setup": (_lines, None),
}
#: How a task's calls are submitted: accepted in a task's resources, never passed to sbatch.
SUBMIT_KEYS: dict[str, Callable[[str, Any], Any]] = {
    "items_per_job": _positive_int,
    "arrays": _flag,
    "max_queued_jobs": _positive_int,
    "max_requeues": _count,
}
_ADDITIVE = ("sbatch_args", "setup")
_RESERVED_ARGS = ("--wrap", "--array", "--parsable", "--output", "--error", "-o", "-e", "-a")


def validate(resources: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Normalize a resources dict; unknown keys and bad values raise ``ValueError`` naming the valid forms."""
    from .._config import unknown_key_message

    if not isinstance(resources, Mapping):
        raise InvalidValueError(f"{where}: resources must be a dict such as {{'mem': '4G', 'time': '30:00'}}, "
                         f"got {resources!r}")
    clean: dict[str, Any] = {}
    for key, value in resources.items():
        if key.startswith("_"):  # internal bookkeeping (e.g. memory sizes tried), not user input
            clean[key] = value
            continue
        check = RESOURCE_KEYS[key][0] if key in RESOURCE_KEYS else SUBMIT_KEYS.get(key)
        if check is None:
            raise InvalidValueError(f"{where}: " + unknown_key_message("Slurm resource", key,
                                                                       [*RESOURCE_KEYS, *SUBMIT_KEYS]))
        if value is None:
            continue
        try:
            clean[key] = check(key, value)
        except ValueError as exc:
            raise InvalidValueError(f"{where}: {exc}") from None
    for arg in clean.get("sbatch_args", []):
        option = arg.split("=", 1)[0]
        if option in _RESERVED_ARGS:
            raise InvalidValueError(f"{where}: sbatch_args may not contain {option}: wove sets it itself "
                             "(use log_dir for output files, and map a task to get job arrays)")
        if option == "--export" and not any(v in arg for v in ("ALL", "WOVE_BACKEND_PAYLOAD")):
            raise InvalidValueError(f"{where}: {arg!r} would keep WOVE_BACKEND_PAYLOAD from reaching the job; use "
                             "--export=ALL or list WOVE_BACKEND_PAYLOAD in it")
    return clean


def merge(base: Mapping[str, Any], override: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    """Environment resources overlaid with a task's (a new dict: nothing leaks between tasks)."""
    merged = {key: (list(value) if isinstance(value, list) else value) for key, value in base.items()
              if key in RESOURCE_KEYS or key in SUBMIT_KEYS}
    for key, value in (override or {}).items():
        if key in _ADDITIVE:
            merged[key] = [*merged.get(key, []), *value]
        else:
            merged[key] = value
    return merged


def sbatch_options(resources: Mapping[str, Any]) -> list[str]:
    """``--option=value`` arguments for everything except ``setup``."""
    args = []
    for key, (_, option) in RESOURCE_KEYS.items():
        if option is not None and key in resources:
            args.append(f"{option}={resources[key]}")
    args.extend(resources.get("sbatch_args", []))
    return args


def batch_script(command: str, setup: list[str]) -> str:
    """The job script used when ``setup`` lines must run before the worker (sbatch reads it on stdin)."""
    lines = ["#!/bin/bash", "set -e", *setup, exec_command(command)]
    return "\n".join(lines) + "\n"


def exec_command(command: str) -> str:
    """``exec <command>`` for a simple command, so the worker *is* the batch shell and receives the
    ``--signal=B:...`` warning itself; compound shell commands are left as they are."""
    if any(char in command for char in ";&|<>()$`\n") or command.startswith("exec "):
        return command
    return f"exec {command}"


def signature(resources: Mapping[str, Any]) -> str:
    """A stable key: calls with equal resources can share one array job."""
    return repr(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in resources.items()
                       if not k.startswith("_")))


def mem_mb(text: str) -> float:
    match = _MEM.match(str(text).strip())
    if not match:
        raise InvalidValueError(f"not a memory size: {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2).upper()]


def scale_mem(text: str, factor: float) -> str:
    """``text`` times ``factor`` in megabytes; ``0`` (all of a node's memory) stays ``0``."""
    size = mem_mb(text)
    return "0" if size == 0 else f"{max(1, int(size * factor))}M"
