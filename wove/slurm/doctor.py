"""``python -m wove.slurm doctor`` (or ``wove doctor``): can a task make the round trip through Slurm?

Checks, in order: the Slurm tools exist and the controller answers; accounting (``sacct``) works; a probe
task submitted through a real weave runs on a compute node, imports wove and cloudpickle there with
versions matching this side, and reports back over the callback URL; if that fails, the filesystem
result channel is tried. Each check prints pass/fail, what was measured, and the exact fix. The exit code
is 0 only when a task made the round trip.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import time
from dataclasses import dataclass
from typing import Any, Optional

from .. import _config
from ..errors import SlurmJobError, WoveError
from . import commands, limits


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    fatal: bool = True


def wove_probe() -> dict[str, Any]:
    import platform
    import socket

    import cloudpickle

    import wove

    return {"host": socket.gethostname(), "python": platform.python_version(),
            "cloudpickle": cloudpickle.__version__, "wove": wove.__version__,
            "job": os.environ.get("SLURM_JOB_ID", "")}


async def _tool(name: str, argv: list[str]) -> Check:
    if shutil.which(argv[0]) is None:
        return Check(name, False, f"{argv[0]} is not on PATH",
                     f"install the Slurm client tools (Debian: apt-get install slurm-client) or add them to PATH; "
                     f"set executor_config['{argv[0]}'] if they have another name")
    try:
        await commands.run(argv, timeout=20)
    except WoveError as exc:
        return Check(name, False, str(exc).splitlines()[0],
                     "check SLURM_CONF / /etc/slurm/slurm.conf and that slurmctld is running (scontrol ping)")
    return Check(name, True, "answers")


async def _limits_check(executor_config: dict[str, Any]) -> Check:
    """Not fatal: wove paces submissions under a limit, but a limit used up by other jobs blocks it."""
    try:
        limit = await limits.read_submit_limit(executor_config.get("scontrol") or ["scontrol"],
                                               qos=str(executor_config.get("qos") or ""),
                                               account=str(executor_config.get("account") or ""))
    except WoveError as exc:
        return Check("submit limits", False, f"cannot be read: {str(exc).splitlines()[0]}",
                     "optional: wove then learns them from sbatch refusals; set max_queued_jobs if you know "
                     "your limit", fatal=False)
    if limit is None:
        return Check("submit limits", True, "none that wove can read (MaxSubmitJobs and kin)", fatal=False)
    detail = f"{limit.source} is {limit.limit}, {limit.used} in use, room for {limit.free} more job(s)"
    if limit.free:
        return Check("submit limits", True, detail + "; larger maps are paced", fatal=False)
    return Check("submit limits", False, detail, "wait for your queued jobs to end (squeue --me), or ask your "
                 "admin to raise the limit; wove waits up to submit_retry_seconds for room", fatal=False)


def _environment_spec(args: argparse.Namespace) -> dict[str, Any]:
    snap = _config.snapshot()
    name = args.environment
    if name is None:
        candidates = [n for n, spec in snap["environments"].items() if spec["executor"] == "slurm"]
        name = snap["default_environment"] if snap["default_environment"] in candidates else (
            candidates[0] if candidates else None)
    spec = dict(snap["environments"][name]["executor_config"]) if name else {}
    if args.command:
        spec["command"] = args.command
    if args.partition:
        spec["partition"] = args.partition
    spec.setdefault("job_name_prefix", "wove-doctor")
    return spec


def _run_probe(executor_config: dict[str, Any], timeout: float) -> tuple[Optional[dict[str, Any]], float, str]:
    """Run the probe through a real weave; return (probe result or None, seconds, error text)."""
    from .._weave import weave

    name = "__wove_doctor__"
    _config.config(environments={name: {"executor": "slurm", "executor_config": executor_config}})
    started = time.perf_counter()
    try:
        with weave(error_mode="return") as w:
            w.do(environment=name, delivery_timeout=timeout)(wove_probe)
        value = w.result.wove_probe
    except Exception as exc:  # the weave itself could not run (e.g. sbatch failed)
        value = exc
    finally:
        _config.config(environments={name: None})
    elapsed = time.perf_counter() - started
    if isinstance(value, BaseException):
        return None, elapsed, f"{type(value).__name__}: {value}"
    return value, elapsed, ""


def _versions_check(remote: dict[str, Any]) -> Check:
    """Python minor and cloudpickle must match (the job refuses otherwise); wove should match too."""
    import platform

    import cloudpickle

    from .._version import __version__

    here = {"python": ".".join(platform.python_version().split(".")[:2]), "cloudpickle": cloudpickle.__version__,
            "wove": __version__}
    there = {**remote, "python": ".".join(str(remote.get("python", "")).split(".")[:2])}
    differ = [f"{name} {here[name]} here, {there.get(name)} on the node" for name in here
              if str(there.get(name)) != here[name]]
    if not differ:
        return Check("versions (python, cloudpickle, wove)", True, "same on both sides")
    return Check("versions (python, cloudpickle, wove)", False, "; ".join(differ),
                 "install the same versions in the job environment (pip install \"wove[dispatch]==...\")",
                 fatal=False)


def _fix_for(error: str) -> str:
    lowered = error.lower()
    if "versionmismatch" in lowered or "job runs python" in lowered:
        return "install the same Python minor version and cloudpickle version in the job environment"
    if "bad environment" in lowered or "command not found" in lowered or "cannot import wove" in lowered:
        return ("make `python -m wove.backend_worker` work on compute nodes: set executor_config['command'] to an "
                "interpreter with wove installed, or add setup lines (executor_config['setup'] = "
                "['module load python', 'source /path/venv/bin/activate'])")
    if "could not deliver" in lowered or "callback" in lowered:
        return ("compute nodes cannot reach the callback URL: set callback_host/callback_url to an address they "
                "can reach, or use executor_config['result_channel'] = 'filesystem' with a shared spool_dir")
    if "submit limit" in lowered or "submitjob" in lowered or "no room to submit" in lowered:
        return "wait for your queued jobs to end (squeue --me), or ask your admin to raise the submit limit"
    if "invalid partition" in lowered or "invalid account" in lowered:
        return "pass a valid --partition / --account (executor_config['partition'] / ['account'])"
    if "spool" in lowered or "payload" in lowered:
        return "set executor_config['spool_dir'] to a directory on a filesystem the compute nodes share"
    return "see the error above; run with a longer --timeout if the queue is busy"


def run(args: argparse.Namespace) -> int:
    if args.config:
        _config.config(config_file=args.config)
    else:
        _config.config()
    checks: list[Check] = []

    async def tools() -> list[Check]:
        found = await asyncio.gather(
            _tool("sbatch", ["sbatch", "--version"]), _tool("scancel", ["scancel", "--version"]),
            _tool("squeue (controller answers)", ["squeue", "-h", "-o", "%i", "--states=all", "--jobs=1"]),
            _tool("sinfo", ["sinfo", "-h"]))
        sacct = await _tool("sacct (accounting)", ["sacct", "-n", "-X", "--starttime=now"])
        if not sacct.ok:
            sacct.fatal = False
            sacct.fix = ("optional: without accounting wove relies on squeue/scontrol, so failure details are "
                         "only available while jobs stay in the controller (MinJobAge)")
        return [*found, sacct]

    checks.extend(asyncio.run(tools()))
    # squeue exits 1 for an unknown job id; that still means the controller answered.
    for check in checks:
        if check.name.startswith("squeue") and "invalid job id" in check.detail.lower():
            check.ok, check.detail, check.fix = True, "answers", ""
    executor_config = _environment_spec(args)
    result = None
    if all(c.ok for c in checks if c.fatal):
        checks.append(asyncio.run(_limits_check(executor_config)))
        result, seconds, error = _run_probe(executor_config, args.timeout)
        if result is not None:
            checks.append(Check("probe task round trip", True,
                                f"ran on {result['host']} as job {result['job']} in {seconds:.2f}s "
                                f"(python {result['python']}, cloudpickle {result['cloudpickle']}, "
                                f"wove {result['wove']})"))
            checks.append(_versions_check(result))
        else:
            checks.append(Check("probe task round trip", False, error.splitlines()[0][:300], _fix_for(error)))
            if executor_config.get("result_channel", "http") == "http" and "could not deliver" in error.lower():
                fs_result, fs_seconds, fs_error = _run_probe({**executor_config, "result_channel": "filesystem"},
                                                             args.timeout)
                if fs_result is not None:
                    checks.append(Check("filesystem result channel", True,
                                        f"round trip in {fs_seconds:.2f}s",
                                        "use executor_config['result_channel'] = 'filesystem'", fatal=False))
                    result = fs_result
                else:
                    checks.append(Check("filesystem result channel", False, fs_error.splitlines()[0][:300],
                                        _fix_for(fs_error), fatal=False))
    else:
        checks.append(Check("probe task round trip", False, "skipped: Slurm tools are not usable",
                            "fix the checks above first"))
    print("wove slurm doctor")
    for check in checks:
        mark = "PASS" if check.ok else ("FAIL" if check.fatal else "WARN")
        print(f"  [{mark}] {check.name}: {check.detail}")
        if not check.ok and check.fix:
            print(f"         fix: {check.fix}")
    ok = result is not None
    print("result: a task can make the round trip" if ok else "result: tasks cannot run on this Slurm setup yet")
    return 0 if ok else 1


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="wove doctor", description=__doc__.splitlines()[0])
    parser.add_argument("--environment", help="Slurm environment from wove_config.py to test (default: the "
                        "default environment if it is a Slurm one, else the first Slurm environment)")
    parser.add_argument("--config", help="path of a wove_config.py to load (default: search from cwd)")
    parser.add_argument("--command", help="override executor_config['command'] for the probe")
    parser.add_argument("--partition", help="submit the probe to this partition")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the probe (default 120)")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except KeyboardInterrupt:
        return 130
    except SlurmJobError as exc:  # pragma: no cover - reported through the probe check normally
        print(f"wove doctor: {exc}", file=sys.stderr)
        return 1
