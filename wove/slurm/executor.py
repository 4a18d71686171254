"""``executor: "slurm"``: the backend-adapter executor wired to the Slurm adapter, with its options checked.

When ``callback_url`` is not set, the receiver binds per ``callback_host`` (default: all interfaces) and
tells jobs to call back on the address this host uses to reach the Slurm controller, which compute nodes
can normally reach too. Binding beyond loopback is safe because every event is signed per run.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any, Optional

from ..errors import InvalidValueError
from ..executors.adapter import BackendAdapterEnvironmentExecutor, validate_dispatch_config
from . import resources
from .adapter import SlurmAdapter
from .cli import TOOLS, SlurmCli

SLURM_KEYS = frozenset({
    # the user's page
    "submit", "command", "sbatch", "scancel", "job_name_prefix",
    # ours: the other Slurm tools (sinfo: `wove doctor`, and the partitions listed after an invalid one), logs,
    # monitoring
    "squeue", "sacct", "scontrol", "sinfo", "log_dir", "keep_logs", "poll_interval", "poll_max", "queue_timeout",
    "signal_before_timeout", "submit_retry_seconds", "drain_timeout",
    # ours: scale
    "arrays", "items_per_job", "max_array_size", "max_queued_jobs", "oom_retry_factor", "oom_max_mem",
    # ours: retries by cause
    "time_retry_factor", "time_max", "max_requeues",
    # resources (also accepted per task as resources={...})
    *resources.RESOURCE_KEYS,
})


class SlurmExecutor(BackendAdapterEnvironmentExecutor):
    """Runs tasks as Slurm jobs; see ``wove.slurm`` for the options."""

    def __init__(self) -> None:
        super().__init__("slurm", adapter_class=SlurmAdapter)

    @property
    def handles_workers(self) -> bool:
        adapter = self.adapter
        return isinstance(adapter, SlurmAdapter) and bool(adapter.arrays) and adapter.custom_submit is None

    @classmethod
    def validate_config(cls, config: dict[str, Any], *, environment: str) -> dict[str, Any]:
        config = validate_dispatch_config(config, environment=environment, label="slurm", extra_keys=SLURM_KEYS,
                                          adapter_class=None)
        where = f"environment {environment!r}: executor_config"
        submit = config.get("submit")
        if submit is not None and not callable(submit):
            raise InvalidValueError(
                f"{where}.submit must be a callable (payload, frame, config) -> job id, got {submit!r}")
        for key in ("command", "job_name_prefix", "log_dir", "oom_max_mem"):
            value = config.get(key)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise InvalidValueError(f"{where}.{key} must be a non-empty string, got {value!r}")
        for key in TOOLS:
            value = config.get(key)
            if value is not None and not (isinstance(value, (list, tuple)) and value
                                          and all(isinstance(v, str) and v for v in value)):
                raise InvalidValueError(f"{where}.{key} must be a non-empty list of strings such as "
                                 f"['{key}'], got {value!r}")
        for key, minimum in (("poll_interval", 0.05), ("poll_max", 0.05), ("queue_timeout", 0.1),
                             ("signal_before_timeout", 1), ("submit_retry_seconds", 0), ("drain_timeout", 0),
                             ("oom_retry_factor", 1.01), ("time_retry_factor", 1.01)):
            value = config.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or value < minimum):
                raise InvalidValueError(f"{where}.{key} must be a number >= {minimum}, got {value!r}")
        requeues = config.get("max_requeues")
        if requeues is not None and (isinstance(requeues, bool) or not isinstance(requeues, int) or requeues < 0):
            raise InvalidValueError(f"{where}.max_requeues must be an integer >= 0, got {requeues!r}")
        if config.get("time_max") is not None:
            resources.validate({"time": config["time_max"]}, f"{where}.time_max")
        for key in ("items_per_job", "max_array_size", "max_queued_jobs"):
            value = config.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise InvalidValueError(f"{where}.{key} must be an integer >= 1, got {value!r}")
        if "arrays" in config and not isinstance(config["arrays"], bool):
            raise InvalidValueError(f"{where}.arrays must be True or False, got {config['arrays']!r}")
        if config.get("keep_logs", "on_failure") not in (True, False, "on_failure"):
            raise InvalidValueError(
                f"{where}.keep_logs must be True, False or 'on_failure', got {config['keep_logs']!r}")
        if config.get("oom_max_mem") is not None:
            cap = resources.validate({"mem": config["oom_max_mem"]}, f"{where}.oom_max_mem")["mem"]
            if resources.mem_mb(cap) == 0:
                raise InvalidValueError(f"{where}.oom_max_mem must be a size above 0 such as '64G' (mem=0 already "
                                        f"asks for all of a node's memory), got {config['oom_max_mem']!r}")
        resources.validate({k: v for k, v in config.items() if k in resources.RESOURCE_KEYS}, where)
        return config

    @staticmethod
    def validate_resources(task_resources: Any, where: str) -> dict[str, Any]:
        """Per-task ``resources={...}``: the same keys and forms as the environment's."""
        return resources.validate(task_resources, where)

    def default_callback_host(self) -> str:
        return "0.0.0.0"

    async def advertise_host(self, bind_host: str) -> str:
        if bind_host not in ("0.0.0.0", "::", ""):
            return bind_host
        controller = await SlurmCli(self._config).controller_address()
        loop = asyncio.get_running_loop()   # name lookups can take seconds: never on the event loop
        if controller:
            route = await loop.run_in_executor(None, _route_address, controller)
            if route:
                return route
        return await loop.run_in_executor(None, socket.getfqdn)


def _route_address(host: str) -> Optional[str]:
    """The local address the kernel would use to reach ``host`` (no packet is sent)."""
    try:
        family, _, _, _, address = socket.getaddrinfo(host, 6817, type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect(address)
            return probe.getsockname()[0]
    except OSError:
        return None


__all__ = ["SlurmExecutor"]
