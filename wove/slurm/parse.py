"""Reading what Slurm's tools print: job ids, job states, cluster settings, submit limits, sbatch's complaints.

Pure functions of text (no subprocess, no state), so each one is tested from recorded real outputs
(tests/fixtures/slurm). The command lines that produce these outputs are built in ``cli.py``.
"""

from __future__ import annotations

import pwd
import re
from dataclasses import dataclass
from typing import Optional

from .errors import SlurmCommandError
from .states import JobInfo, JobState, parse_duration, parse_exit

SQUEUE_FIELDS = ("JobID", "JobArrayID", "ArrayTaskID", "State", "Reason", "NodeList", "TimeUsed",
                 "TimeLimit", "MinMemory", "exit_code", "RestartCnt", "STDERR")
SQUEUE_FORMAT = ",".join(f"{name}:|" for name in SQUEUE_FIELDS)
SACCT_FIELDS = ("JobID", "State", "ExitCode", "NodeList", "ElapsedRaw", "ReqMem", "Timelimit", "Reason")
SACCT_FORMAT = ",".join(SACCT_FIELDS)

# The reasons sbatch prints when a submit limit refused a job (AssocMaxSubmitJobLimit, QOSGrpSubmitJobsLimit,
# QOSMaxSubmitJobPerUserLimit, ...). Not the generic "job submit limit, user's size and/or time limits"
# sentence: it also covers jobs that can never run (over MaxWall, MaxTRESPerJob).
REFUSAL_MARKERS = ("maxsubmitjob", "grpsubmitjob")
# sbatch failures that go away by themselves: the controller is restarting, busy or briefly unreachable.
TRANSIENT_MARKERS = ("unable to contact slurm controller", "socket timed out", "temporarily unable",
                     "resource temporarily unavailable", "try again",
                     "slurm_persist_conn_open", "connection refused")

_PARSABLE = re.compile(r"^\s*(\d+)(?:;(\S+))?\s*$")
_SUBMITTED = re.compile(r"Submitted batch job (\d+)")
_LIMIT = re.compile(r"\b((?:Max|Grp)SubmitJobs(?:PU|PA)?)=(\d+)\((\d+)\)")


# ------------------------------------------------------------------ sbatch
def parse_job_id(output: str) -> str:
    """The job id in sbatch's output: ``N``, ``N;cluster`` (``--parsable``) or ``Submitted batch job N``."""
    for line in output.splitlines():
        match = _PARSABLE.match(line) or _SUBMITTED.search(line)
        if match:
            return match.group(1)
    raise SlurmCommandError(f"could not find a job id in sbatch's output: {output.strip()[:200]!r}",
                            ["sbatch"], 0, output)


def refused_by_submit_limit(error: SlurmCommandError) -> bool:
    """sbatch was refused because a submit limit (MaxSubmitJobs and kin) has no room."""
    return any(marker in _error_text(error) for marker in REFUSAL_MARKERS)


def transient(error: SlurmCommandError) -> bool:
    """sbatch failed for a reason that goes away by itself (the controller is away or busy)."""
    return any(marker in _error_text(error) for marker in TRANSIENT_MARKERS)


def _error_text(error: SlurmCommandError) -> str:
    return (error.stderr or str(error)).lower()


# ------------------------------------------------------------------ job states
def squeue_jobs(out: str) -> dict[str, JobInfo]:
    """``squeue --noheader --array --Format=<SQUEUE_FORMAT>`` output, by job key (``123`` or ``123_4``)."""
    infos = {}
    for line in out.splitlines():
        parts = line.split("|")
        if len(parts) < len(SQUEUE_FIELDS):
            continue
        row = dict(zip(SQUEUE_FIELDS, (p.strip() for p in parts)))
        key = row["JobArrayID"] or row["JobID"]   # "123_4" for array elements, "123" otherwise
        status = int(row["exit_code"]) if row["exit_code"].isdigit() else None
        exit_code, signal = (status >> 8, (status & 0x7F) or None) if status is not None else (None, None)
        infos[key] = JobInfo(
            key=key, state=JobState.parse(row["State"]), reason=row["Reason"], node=row["NodeList"],
            exit_code=exit_code, signal=signal, elapsed=parse_duration(row["TimeUsed"]),
            requested_memory=_mem_text(row["MinMemory"]), requested_time=row["TimeLimit"],
            stderr_path=_expand(row["STDERR"], row), restarts=int(row["RestartCnt"] or 0)
            if row["RestartCnt"].isdigit() else 0)
    return infos


def sacct_jobs(out: str) -> dict[str, JobInfo]:
    """``sacct --noheader --parsable2 --allocations --format=<SACCT_FORMAT>`` output, by job key."""
    infos = {}
    for line in out.splitlines():
        parts = line.split("|")
        if len(parts) < len(SACCT_FIELDS):
            continue
        row = dict(zip(SACCT_FIELDS, parts))
        exit_code, signal = parse_exit(row["ExitCode"])
        state_text = row["State"]
        by = ""
        if " by " in state_text:
            by = _user_name(state_text.split(" by ", 1)[1].strip())
        infos[row["JobID"]] = JobInfo(
            key=row["JobID"], state=JobState.parse(state_text), reason=row["Reason"], node=row["NodeList"],
            exit_code=exit_code, signal=signal,
            elapsed=float(row["ElapsedRaw"]) if row["ElapsedRaw"].isdigit() else None,
            requested_memory=row["ReqMem"], requested_time=row["Timelimit"], cancelled_by=by)
    return infos


def accounting_disabled(stderr: str) -> bool:
    """sacct's stderr says the cluster keeps no accounting (as opposed to a passing failure)."""
    return "accounting storage is disabled" in stderr.lower() or "not configured" in stderr.lower()


def scontrol_jobs(out: str) -> dict[str, JobInfo]:
    """``scontrol --oneliner show job N`` output, by job key."""
    infos = {}
    for line in out.splitlines():
        fields: dict[str, str] = {}
        for token in line.split():
            name, sep, value = token.partition("=")
            if sep:
                fields.setdefault(name, value)
        array_job, task = fields.get("ArrayJobId"), fields.get("ArrayTaskId")
        key = f"{array_job}_{task}" if array_job and task and task.isdigit() else fields.get("JobId", "")
        exit_code, signal = parse_exit(fields.get("ExitCode", ""))
        infos[key] = JobInfo(key=key, state=JobState.parse(fields.get("JobState", "")),
                             reason=fields.get("Reason", ""), node=fields.get("NodeList", ""),
                             exit_code=exit_code, signal=signal, elapsed=parse_duration(fields.get("RunTime", "")),
                             requested_time=fields.get("TimeLimit", ""), stderr_path=fields.get("StdErr", ""),
                             restarts=int(fields.get("Restarts", "0") or 0))
    return infos


def _mem_text(value: str) -> str:
    value = value.strip()
    return value if not value or value[-1].isalpha() else f"{value}M"


def _expand(path: str, row: dict[str, str]) -> str:
    """Replace the filename patterns sbatch understands (%j, %A, %a) with this job's values."""
    if "%" not in path:
        return path
    job = row["JobID"]
    array_job = row["JobArrayID"].split("_", 1)[0]
    return path.replace("%A", array_job).replace("%a", row["ArrayTaskID"]).replace("%j", job)


def _user_name(uid_text: str) -> str:
    try:
        return pwd.getpwuid(int(uid_text)).pw_name
    except (ValueError, KeyError):
        return uid_text


# ------------------------------------------------------------------ scontrol show config
def max_array_size(out: str) -> Optional[int]:
    match = re.search(r"^MaxArraySize\s*=\s*(\d+)", out, re.MULTILINE)
    return int(match.group(1)) if match else None


def controller_address(out: str) -> Optional[str]:
    """``SlurmctldHost[0]=name(address)``: the address if given, else the name."""
    match = re.search(r"^SlurmctldHost\[0\]\s*=\s*([^\s(]+)(?:\(([^)]+)\))?", out, re.MULTILINE)
    if not match:
        return None
    return match.group(2) or match.group(1)


# ------------------------------------------------------------------ scontrol show assoc_mgr
@dataclass
class SubmitLimit:
    """The tightest submit limit that applies to the user's jobs, and how much of it is in use."""

    limit: int
    used: int
    source: str   # e.g. "MaxSubmitJobs of association account=root user=root"

    @property
    def free(self) -> int:
        return max(0, self.limit - self.used)


def _records(text: str) -> list[tuple[dict[str, str], list[str]]]:
    """Split assoc_mgr output into records: the header line's fields, and the record's other lines."""
    records: list[tuple[dict[str, str], list[str]]] = []
    for raw in text.splitlines():
        if not raw.strip():
            continue
        if not raw.startswith(" "):
            records.append((dict(token.partition("=")[::2] for token in raw.split() if "=" in token), []))
        elif records:
            records[-1][1].append(raw.strip())
    return records


def _field(lines: list[str], name: str) -> str:
    for line in lines:
        for token in line.split():
            key, sep, value = token.partition("=")
            if sep and key == name:
                return value
    return ""


def _limits_in(lines: list[str], source: str, group_only: bool = False) -> list[SubmitLimit]:
    found = []
    for line in lines:
        for name, limit, used in _LIMIT.findall(line):
            if not group_only or name.startswith("Grp"):
                found.append(SubmitLimit(int(limit), int(used), f"{name} of {source}"))
    return found


def parse_assoc_mgr(text: str, uid: int, qos: str = "normal", account: str = "") -> Optional[SubmitLimit]:
    """The tightest submit limit in ``scontrol show assoc_mgr flags=assoc,qos`` output for this user's jobs.

    Counted: the user's association for ``account`` (else the default one, ``DefAssoc=Yes``), the ``Grp``
    limits of that account and of its parents (``ParentAccount``), and the job's QOS: its group limit, and its
    per-user and per-account limits for this user and that account.
    """
    records = _records(text)
    assocs = [(fields, lines) for fields, lines in records if "ClusterName" in fields]
    accounts = {fields.get("Account", ""): lines for fields, lines in assocs if not fields.get("UserName")}
    mine = [(fields, lines) for fields, lines in assocs
            if fields.get("UserName", "").endswith(f"({uid})") and not fields.get("Partition")]
    if account:
        mine = [entry for entry in mine if entry[0].get("Account") == account]
    else:
        mine = [entry for entry in mine if _field(entry[1], "DefAssoc") == "Yes"] or mine
    found: list[SubmitLimit] = []
    used_accounts = set()
    for fields, lines in mine:
        current = fields.get("Account", "")
        used_accounts.add(current)
        found += _limits_in(lines, f"association account={current} user={fields['UserName'].split('(')[0]}")
        seen = set()
        while current in accounts and current not in seen:   # the account and its parents
            seen.add(current)
            found += _limits_in(accounts[current], f"association account={current}", group_only=True)
            current = _field(accounts[current], "ParentAccount").split("(")[0]
    for fields, lines in records:
        if fields.get("QOS", "").split("(")[0] != qos or "ClusterName" in fields:
            continue
        part, applies = "", True
        for line in lines:
            if line in ("Account Limits", "User Limits"):
                part = line
            elif part and _LIMIT.search(line) is None and "=" not in line:   # an account name or a uid
                applies = line == str(uid) if part == "User Limits" else line in used_accounts or not mine
            elif not part or applies:
                found += _limits_in([line], f"QOS {qos}")
    return min(found, key=_free) if found else None


def _free(limit: SubmitLimit) -> int:
    return limit.free
