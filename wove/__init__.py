"""wove: inline task orchestration, from a thread pool up to a Slurm cluster.

Public names are loaded lazily (PEP 562) so that ``python -m wove.backend_worker``, which runs once per
remote job, does not pay for the scheduler, the graph planner or asyncio at start-up.
"""

from __future__ import annotations

import importlib

from ._version import __version__

TYPE_CHECKING = False  # `typing` costs ~10 ms to import; remote jobs import this file and need none of it

_EXPORTS = {
    "weave": "wove._weave",
    "Weave": "wove._weave",
    "WeaveContext": "wove._weave",
    "WoveResult": "wove._result",
    "ItemError": "wove._result",
    "RunRecord": "wove.executors.records",
    "config": "wove._config",
    "merge": "wove._merge",
    "sync_to_async": "wove._merge",
    "flatten": "wove.helpers",
    "fold": "wove.helpers",
    "batch": "wove.helpers",
    "undict": "wove.helpers",
    "redict": "wove.helpers",
    "denone": "wove.helpers",
    "EnvironmentExecutor": "wove.executors.base",
    "BackendAdapter": "wove.executors.adapter",
    "BackendAdapterEnvironmentExecutor": "wove.executors.adapter",
    "WoveError": "wove.errors",
    "MissingDispatchFeatureError": "wove.errors",
    "DeliveryTimeoutError": "wove.errors",
    "DeliveryOrphanedError": "wove.errors",
    "EnvironmentExecutionError": "wove.errors",
    "SpoolFullError": "wove.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'wove' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # static type checkers see the real names
    from ._config import config as config
    from ._merge import merge as merge
    from ._merge import sync_to_async as sync_to_async
    from ._result import ItemError as ItemError
    from ._result import WoveResult as WoveResult
    from ._weave import Weave as Weave
    from ._weave import WeaveContext as WeaveContext
    from ._weave import weave as weave
    from .errors import DeliveryOrphanedError as DeliveryOrphanedError
    from .errors import DeliveryTimeoutError as DeliveryTimeoutError
    from .errors import EnvironmentExecutionError as EnvironmentExecutionError
    from .errors import MissingDispatchFeatureError as MissingDispatchFeatureError
    from .errors import SpoolFullError as SpoolFullError
    from .errors import WoveError as WoveError
    from .executors.adapter import BackendAdapter as BackendAdapter
    from .executors.adapter import BackendAdapterEnvironmentExecutor as BackendAdapterEnvironmentExecutor
    from .executors.base import EnvironmentExecutor as EnvironmentExecutor
    from .executors.records import RunRecord as RunRecord
    from .helpers import batch as batch
    from .helpers import denone as denone
    from .helpers import flatten as flatten
    from .helpers import fold as fold
    from .helpers import redict as redict
    from .helpers import undict as undict
