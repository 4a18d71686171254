"""``python -m wove.slurm doctor`` (or ``wove doctor``): can a task make the round trip through Slurm?

Checks, in order: the Slurm tools exist and the controller answers; accounting (``sacct``) works; a probe
task submitted through a real weave runs on a compute node, imports wove and cloudpickle there with
versions matching this side, and reports back over the callback URL; if that fails, the filesystem
result channel is tried. Each check prints pass/fail, what was measured, and the exact fix. The exit code
is 0 only when a task made the round trip with the environment's configuration as it is (a round trip that
only worked over the filesystem channel says to set ``result_channel='filesystem'``, and exits 1); 2 when
the command line names no usable environment or configuration.

Every Slurm command comes from the environment's ``SlurmCli`` (cli.py), so the tools set in its
``executor_config`` (``sbatch``, ``scancel``, ``squeue``, ``sacct``, ``scontrol``, ``sinfo``) are the ones checked.
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
from ..dispatch import protocol
from ..errors import UsageError, WoveError
from . import commands
from .cli import SlurmCli
from .errors import SlurmJobError

DETAIL_LIMIT = 1000   # characters of a failure shown on its check's line (cut at a word, never inside one)


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


class DoctorUsageError(Exception):
    """The command line names no environment the doctor can check (exit code 2)."""


async def _tool(name: str, key: str, argv: list[str]) -> Check:
    """``argv`` runs (``key``: the executor_config key that configures this tool)."""
    if shutil.which(argv[0]) is None:
        return Check(name, False, f"{argv[0]} is not on PATH",
                     f"install the Slurm client tools (Debian: apt-get install slurm-client) or add them to PATH; "
                     f"set executor_config['{key}'] (a command list such as ['/opt/slurm/bin/{key}']) if it has "
                     "another name or path")
    try:
        await commands.run(argv, timeout=20)
    except WoveError as exc:
        return Check(name, False, _first_line(str(exc)),
                     "check SLURM_CONF / /etc/slurm/slurm.conf and that slurmctld is running (scontrol ping)")
    return Check(name, True, "answers")


async def _tool_checks(cli: SlurmCli) -> list[Check]:
    argvs = cli.doctor_argvs()
    found = await asyncio.gather(
        _tool("sbatch", "sbatch", argvs["sbatch"]), _tool("scancel", "scancel", argvs["scancel"]),
        _tool("squeue (controller answers)", "squeue", argvs["squeue"]), _tool("sinfo", "sinfo", argvs["sinfo"]))
    sacct = await _tool("sacct (accounting)", "sacct", argvs["sacct"])
    if not sacct.ok:
        sacct.fatal = False
        sacct.fix = ("optional: without accounting wove relies on squeue/scontrol, so failure details are "
                     "only available while jobs stay in the controller (MinJobAge); set executor_config['sacct'] "
                     "if sacct has another name or path")
    checks = [*found, sacct]
    # squeue exits 1 for an unknown job id; that still means the controller answered.
    for check in checks:
        if check.name.startswith("squeue") and "invalid job id" in check.detail.lower():
            check.ok, check.detail, check.fix = True, "answers", ""
    return checks


def _first_line(text: str, limit: int = DETAIL_LIMIT) -> str:
    """The first line of a message, whole, or cut at a word boundary with an ellipsis when very long."""
    line = (text.strip().splitlines() or [""])[0]
    if len(line) <= limit:
        return line
    cut = line[:limit].rsplit(" ", 1)[0] if " " in line[:limit] else line[:limit]
    return cut.rstrip() + " …"


async def _limits_check(cli: SlurmCli, executor_config: dict[str, Any]) -> Check:
    """Not fatal: wove paces submissions under a limit, but a limit used up by other jobs blocks it."""
    try:
        limit = await cli.submit_limit(qos=str(executor_config.get("qos") or ""),
                                       account=str(executor_config.get("account") or ""))
    except WoveError as exc:
        return Check("submit limits", False, f"cannot be read: {_first_line(str(exc))}",
                     "optional: wove then learns them from sbatch refusals; set max_queued_jobs if you know "
                     "your limit", fatal=False)
    if limit is None:
        return Check("submit limits", True, "none that wove can read (MaxSubmitJobs and kin)", fatal=False)
    detail = f"{limit.source} is {limit.limit}, {limit.used} in use, room for {limit.free} more job(s)"
    if limit.free:
        return Check("submit limits", True, detail + "; larger maps are paced", fatal=False)
    return Check("submit limits", False, detail, "wait for your queued jobs to end (squeue --me), or ask your "
                 "admin to raise the limit; wove waits up to submit_retry_seconds for room", fatal=False)


def _is_slurm(spec: dict[str, Any]) -> bool:
    from .executor import SlurmExecutor

    return spec["executor"] == "slurm" or isinstance(spec["executor"], SlurmExecutor)


def _environment_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The executor_config to check: ``--environment``'s, else the default or first Slurm environment's."""
    snap = _config.snapshot()
    environments = snap["environments"]
    name = args.environment
    slurm = [n for n, spec in environments.items() if _is_slurm(spec)]
    if name is not None and (name not in environments or not _is_slurm(environments[name])):
        configured = ", ".join(f"{n!r} ({_executor_name(spec)})" for n, spec in environments.items())
        problem = "is not configured" if name not in environments else (
            f"uses executor {_executor_name(environments[name])!r}, not 'slurm'")
        hint = (f"pass one of the Slurm environments ({', '.join(map(repr, slurm))})" if slurm else
                "none of them is a Slurm one: add an environment with 'executor': 'slurm' to wove_config.py "
                "(or pass --config PATH)")
        raise DoctorUsageError(f"environment {name!r} {problem}; the configured environments are {configured}; {hint}")
    if name is None:
        name = snap["default_environment"] if snap["default_environment"] in slurm else (slurm[0] if slurm else None)
    spec = dict(environments[name]["executor_config"]) if name else {}
    if args.command:
        spec["command"] = args.command
    if args.partition:
        spec["partition"] = args.partition
    spec.setdefault("job_name_prefix", "wove-doctor")
    return spec


def _executor_name(spec: dict[str, Any]) -> str:
    executor = spec["executor"]
    return executor if isinstance(executor, str) else type(executor).__name__


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
        if any(r.details.get("delivered_via") == "spool" for r in w.result.jobs.get("wove_probe", ())):
            # It only came back because the worker left it in the spool: the callback URL is unreachable.
            value = ConnectionError("the job could not deliver its result to the callback URL (it reached the "
                                    "weave only through the spool fallback, seconds late)")
    except Exception as exc:  # the weave itself could not run (e.g. sbatch failed)
        value = exc
    finally:
        _config.config(environments={name: None})
    elapsed = time.perf_counter() - started
    if isinstance(value, BaseException):
        return None, elapsed, protocol.redact(f"{type(value).__name__}: {value}")   # never print the token
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
    executor_config = _environment_spec(args)
    cli = SlurmCli(executor_config)
    checks = asyncio.run(_tool_checks(cli))
    result = fallback = None
    if all(c.ok for c in checks if c.fatal):
        checks.append(asyncio.run(_limits_check(cli, executor_config)))
        result, seconds, error = _run_probe(executor_config, args.timeout)
        if result is not None:
            checks.append(Check("probe task round trip", True,
                                f"ran on {result['host']} as job {result['job']} in {seconds:.2f}s "
                                f"(python {result['python']}, cloudpickle {result['cloudpickle']}, "
                                f"wove {result['wove']})"))
            checks.append(_versions_check(result))
        else:
            fix = _fix_for(error)
            if "invalid partition" in error.lower():
                fix += _valid_partitions(cli)
            checks.append(Check("probe task round trip", False, _first_line(error), fix))
            if executor_config.get("result_channel", "http") == "http" and "could not deliver" in error.lower():
                fallback, fs_check = _filesystem_check(executor_config, args.timeout)
                checks.append(fs_check)
    else:
        checks.append(Check("probe task round trip", False, "skipped: Slurm tools are not usable",
                            "fix the checks above first"))
    print("wove slurm doctor")
    for check in checks:
        mark = "PASS" if check.ok else ("FAIL" if check.fatal else "WARN")
        print(f"  [{mark}] {check.name}: {check.detail}")
        if not check.ok and check.fix:
            print(f"         fix: {check.fix}")
    if result is not None:
        print("result: a task can make the round trip")
        return 0
    if fallback is not None:
        # Real tasks use the configuration as it is, and it cannot deliver their results: not a pass.
        print("result: tasks with this configuration cannot report back, but the filesystem result channel works: "
              "set executor_config['result_channel'] = 'filesystem' (with a spool_dir the compute nodes share)")
    else:
        print("result: tasks cannot run on this Slurm setup yet")
    return 1


def _valid_partitions(cli: SlurmCli) -> str:
    """``"; valid partitions: debug (the default), gpu"`` from sinfo, or "" when sinfo cannot say."""
    try:
        names, default = asyncio.run(cli.partitions())
    except Exception:   # sinfo missing or failing: the fix text stands without the list
        return ""
    if not names:
        return ""
    return "; valid partitions: " + ", ".join(f"{n} (the default)" if n == default else n for n in names)


def _filesystem_check(executor_config: dict[str, Any], timeout: float) -> tuple[Optional[dict[str, Any]], Check]:
    """The probe again over the filesystem result channel, when the callback URL could not be reached."""
    result, seconds, error = _run_probe({**executor_config, "result_channel": "filesystem"}, timeout)
    if result is None:
        return None, Check("filesystem result channel", False, _first_line(error), _fix_for(error), fatal=False)
    return result, Check("filesystem result channel", True,
                         f"round trip in {seconds:.2f}s: set executor_config['result_channel'] = 'filesystem'")


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
    except (DoctorUsageError, UsageError) as exc:   # no such environment; a config file that cannot be used
        print(f"wove doctor: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except SlurmJobError as exc:  # pragma: no cover - reported through the probe check normally
        print(f"wove doctor: {exc}", file=sys.stderr)
        return 1
