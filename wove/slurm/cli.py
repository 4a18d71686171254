"""Every Slurm command line wove runs, built in one place from ``executor_config``.

``SlurmCli(executor_config)`` holds the configured tools (``sbatch``, ``scancel``, ``squeue``, ``sacct``,
``scontrol`` and ``sinfo``, which lists partitions for the doctor and after sbatch refused one: each a base
argv such as ``["sbatch", "--parsable"]``) and the options that shape a job's command line (``command``,
``job_name_prefix``, ``signal_before_timeout``). The
adapter, the monitor, the submit-limit reader, the executor and ``wove doctor`` all ask it, so a tool
configured as ``["ssh", "login", "sbatch"]`` is used everywhere, and nothing else in wove names a Slurm tool.

Each call runs through :func:`commands.run` (asyncio subprocess, timeout, ``SlurmCommandError`` with exit code
and stderr); what the tools print is read by ``parse.py``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import re
from collections.abc import Mapping, Sequence
from typing import Any, Optional

from ..dispatch.protocol import PAYLOAD_ENV
from . import commands, parse, resources
from .errors import SlurmCommandError
from .parse import SubmitLimit
from .states import JobInfo

log = logging.getLogger("wove.slurm")

#: Configurable tools and their defaults; each is an ``executor_config`` key holding a non-empty argv list.
TOOLS: dict[str, tuple[str, ...]] = {
    "sbatch": ("sbatch", "--parsable"),
    "scancel": ("scancel",),
    "squeue": ("squeue",),
    "sacct": ("sacct",),
    "scontrol": ("scontrol",),
    "sinfo": ("sinfo",),   # ``wove doctor``, and listing partitions after an invalid one
}
DEFAULT_COMMAND = "python -m wove.backend_worker"
DEFAULT_MAX_ARRAY_SIZE = 1001
SUBMIT_TIMEOUT = 60.0
QUERY_TIMEOUT = 30.0

#: MaxArraySize per scontrol command: read once per process (it changes only with the cluster's config).
_max_array_cache: dict[tuple[str, ...], int] = {}


class SlurmCli:
    """The Slurm tools of one environment, and every command line wove runs with them."""

    def __init__(self, config: Optional[Mapping[str, Any]] = None):
        config = config or {}
        self.sbatch = list(config.get("sbatch") or TOOLS["sbatch"])
        self.scancel = list(config.get("scancel") or TOOLS["scancel"])
        self.squeue = list(config.get("squeue") or TOOLS["squeue"])
        self.sacct = list(config.get("sacct") or TOOLS["sacct"])
        self.scontrol = list(config.get("scontrol") or TOOLS["scontrol"])
        self.sinfo = list(config.get("sinfo") or TOOLS["sinfo"])
        self.command: str = config.get("command") or DEFAULT_COMMAND
        self.prefix: str = config.get("job_name_prefix", "wove")
        self.signal_seconds: Optional[float] = config.get("signal_before_timeout")
        self.max_array_setting: Optional[int] = config.get("max_array_size")
        self._partitions: Optional[tuple[list[str], Optional[str]]] = None   # read once, when first needed

    # ------------------------------------------------------------------ sbatch
    def job_name(self, task: str) -> str:
        """``<job_name_prefix>-<task>``, with characters Slurm would mangle replaced."""
        return f"{self.prefix}-{safe_job_name(task)}"

    def sbatch_argv(self, task: str, task_resources: Mapping[str, Any], log_dir: str, *,
                    elements: Optional[int] = None, throttle: Optional[int] = None
                    ) -> tuple[list[str], Optional[bytes]]:
        """The sbatch command line for one job, or an array of ``elements`` (at most ``throttle`` running).

        Returns ``(argv, stdin)``: with ``setup`` lines the job script goes to sbatch's stdin, otherwise the
        worker command is passed with ``--wrap`` and stdin is ``None``. The payload is never on the command
        line: :meth:`run_sbatch` passes it in sbatch's environment (``--export=ALL`` carries it to the job).
        """
        argv = [*self.sbatch, f"--job-name={self.job_name(task)}", *resources.sbatch_options(task_resources)]
        if self.signal_seconds:
            argv.append(f"--signal=B:USR1@{int(self.signal_seconds)}")
        if elements is None:
            argv += [f"--output={log_dir}/%j.out", f"--error={log_dir}/%j.err"]
        else:
            limit = f"%{throttle}" if throttle else ""
            argv += [f"--array=0-{elements - 1}{limit}", f"--output={log_dir}/%A_%a.out",
                     f"--error={log_dir}/%A_%a.err"]
        setup = task_resources.get("setup") or []
        if setup:
            return argv, resources.batch_script(self.command, setup).encode()
        return [*argv, "--wrap", resources.exec_command(self.command)], None

    def custom_sbatch_argv(self, job_name: str, output: Sequence[str], extra: Sequence[str]) -> list[str]:
        """The command line of ``wove.slurm.submit_job``: the caller's extra options, the plain worker command."""
        return [*self.sbatch, f"--job-name={job_name}", *output, *extra, "--wrap", self.command]

    async def run_sbatch(self, argv: Sequence[str], payload: str, stdin: Optional[bytes] = None) -> str:
        """Run an sbatch command line with ``payload`` in its environment; return what it printed.

        An invalid partition's error also lists the cluster's partitions (when ``sinfo`` can say).
        """
        try:
            _, out, _ = await commands.run(argv, env=commands.environment_with({PAYLOAD_ENV: payload}),
                                           stdin=stdin, timeout=SUBMIT_TIMEOUT)
        except SlurmCommandError as exc:
            if "invalid partition" not in (exc.stderr or str(exc)).lower():
                raise
            raise await self._with_partitions(exc) from exc
        return out

    async def partitions(self) -> tuple[list[str], Optional[str]]:
        """The cluster's partitions (``sinfo -h -o %P``) and the default one; raises ``SlurmCommandError``."""
        if self._partitions is None:
            _, out, _ = await commands.run([*self.sinfo, "-h", "-o", "%P"], timeout=QUERY_TIMEOUT)
            self._partitions = parse_partitions(out)
        return self._partitions

    async def _with_partitions(self, exc: SlurmCommandError) -> SlurmCommandError:
        """``exc`` with the valid partitions added, or ``exc`` itself when sinfo cannot list them."""
        try:
            names, default = await self.partitions()
        except SlurmCommandError as failed:
            log.debug("wove: cannot list partitions: %s", failed)
            return exc
        if not names:
            return exc
        listed = ", ".join(f"{name} (the default)" if name == default else name for name in names)
        return SlurmCommandError(f"{str(exc).rstrip().rstrip('.')}. Valid partitions: {listed}", exc.command,
                                 exc.returncode, exc.stderr)

    # ------------------------------------------------------------------ scancel
    async def cancel(self, keys: Sequence[str]) -> None:
        """``scancel`` jobs, array elements (``123_4``) or whole arrays; raises ``SlurmCommandError``."""
        await commands.run([*self.scancel, *keys], timeout=QUERY_TIMEOUT)

    # ------------------------------------------------------------------ job states
    async def squeue_jobs(self, base_ids: Sequence[str]) -> dict[str, JobInfo]:
        """The jobs (and array elements) still known to the controller; raises when it does not answer."""
        code, out, err = await commands.run(
            [*self.squeue, "--noheader", "--array", "--states=all", f"--jobs={','.join(base_ids)}",
             f"--Format={parse.SQUEUE_FORMAT}"], timeout=QUERY_TIMEOUT, check=False)
        if code != 0:
            if "Invalid job id" in err:
                return {}  # every job already left the controller: sacct will know
            raise SlurmCommandError(f"squeue failed with exit code {code}: {err.strip()}", self.squeue, code, err)
        return parse.squeue_jobs(out)

    async def sacct_jobs(self, base_ids: Sequence[str]) -> tuple[Optional[bool], dict[str, JobInfo]]:
        """``(accounting, jobs)`` from accounting: ``accounting`` is False when the cluster has none, None
        when sacct failed for another reason (no jobs then), True when it answered."""
        try:
            code, out, err = await commands.run(
                [*self.sacct, "--noheader", "--parsable2", "--allocations", f"--jobs={','.join(base_ids)}",
                 f"--format={parse.SACCT_FORMAT}"], timeout=QUERY_TIMEOUT, check=False)
        except SlurmCommandError:  # sacct not installed
            return False, {}
        if code != 0:
            return (False if parse.accounting_disabled(err) else None), {}
        # Parsed in a thread: "CANCELLED by <uid>" rows look the uid up (NSS may ask a directory server).
        return True, await asyncio.get_running_loop().run_in_executor(None, parse.sacct_jobs, out)

    async def scontrol_job(self, job_id: str) -> dict[str, JobInfo]:
        """``scontrol show job`` for a job that left ``squeue``'s view (clusters without accounting)."""
        try:
            code, out, _ = await commands.run([*self.scontrol, "--oneliner", "show", "job", job_id],
                                              timeout=QUERY_TIMEOUT, check=False)
        except SlurmCommandError:
            return {}
        return parse.scontrol_jobs(out) if code == 0 else {}

    # ------------------------------------------------------------------ cluster facts
    async def max_array_size(self) -> int:
        """``executor_config['max_array_size']``, else the cluster's ``MaxArraySize`` (read once)."""
        if self.max_array_setting:
            return int(self.max_array_setting)
        key = tuple(self.scontrol)
        if key not in _max_array_cache:
            size = DEFAULT_MAX_ARRAY_SIZE
            try:
                _, out, _ = await commands.run([*self.scontrol, "show", "config"], timeout=QUERY_TIMEOUT)
                found = parse.max_array_size(out)
                if found is not None:
                    size = found
            except SlurmCommandError as exc:
                log.warning("wove: could not read MaxArraySize (%s); assuming %d", exc, size)
            _max_array_cache[key] = max(1, size)
        return _max_array_cache[key]

    async def controller_address(self) -> Optional[str]:
        """The address of the Slurm controller (``SlurmctldHost``), or None if it cannot be read."""
        try:
            _, out, _ = await commands.run([*self.scontrol, "show", "config"], timeout=15)
        except Exception:
            return None
        return parse.controller_address(out)

    async def submit_limit(self, qos: str = "", account: str = "") -> Optional[SubmitLimit]:
        """The user's tightest submit limit (``scontrol show assoc_mgr``); ``None`` when none applies.

        Raises :class:`SlurmCommandError` when the controller cannot be asked (no accounting, ``PrivateData``,
        controller away): the caller decides what an unknown limit means.
        """
        uid = os.getuid()
        # a user lookup may go to LDAP/NIS: off the event loop
        user = await asyncio.get_running_loop().run_in_executor(None, _user_name, uid)
        _, out, _ = await commands.run([*self.scontrol, "show", "assoc_mgr", f"users={user}", "flags=assoc,qos"],
                                       timeout=QUERY_TIMEOUT)
        return parse.parse_assoc_mgr(out, uid, qos or "normal", account)

    # ------------------------------------------------------------------ wove doctor
    def doctor_argvs(self) -> dict[str, list[str]]:
        """Cheap commands that show each tool runs (and, for squeue, that the controller answers)."""
        return {
            "sbatch": [*self.sbatch, "--version"],
            "scancel": [*self.scancel, "--version"],
            "squeue": [*self.squeue, "-h", "-o", "%i", "--states=all", "--jobs=1"],
            "sinfo": [*self.sinfo, "-h"],
            "sacct": [*self.sacct, "-n", "-X", "--starttime=now"],
        }


def parse_partitions(out: str) -> tuple[list[str], Optional[str]]:
    """``sinfo -h -o %P`` output: partition names in order, and the default (marked ``*``), if any."""
    names: list[str] = []
    default = None
    for word in out.split():
        name = word.rstrip("*")
        if word.endswith("*") and default is None:
            default = name
        if name and name not in names:
            names.append(name)
    return names, default


def safe_job_name(task: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", task)[:100] or "task"


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
