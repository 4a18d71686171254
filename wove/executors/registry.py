"""Built-in executors by name (``executor: "local"``, ``"stdio"``, ``"slurm"``), imported on first use.

Each entry names ``module:Class``; the module is imported only when an environment uses that name, so
``import wove`` stays light and the core never imports (or names) an executor's package itself.
"""

from __future__ import annotations

import importlib

EXECUTORS = {
    "local": "wove.executors.local:LocalExecutor",
    "stdio": "wove.executors.stdio:StdioExecutor",
    "slurm": "wove.slurm.executor:SlurmExecutor",
}


def executor_class(name: str) -> type:
    """The executor class registered as ``name`` (a ``KeyError`` for a name that is not in ``EXECUTORS``)."""
    module_name, _, attr = EXECUTORS[name].partition(":")
    return getattr(importlib.import_module(module_name), attr)
