"""Slurm job states, and turning a job that ended without reporting into the right ``SlurmJobError``.

``RunRecord.state`` holds Slurm's name for the job's state as a :class:`RecordState`: a plain string to read and
compare, which also carries its ``phase`` for the progress line, so the core never tests Slurm's names.

Each error says what happened in Slurm's words (state, exit code, node, elapsed time, requested memory and
time, the tail of the job's stderr) and what to change, so the user does not have to go digging in
``sacct`` to find out why a task died.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional

from ..dispatch.protocol import redact
from . import errors


class JobState(str, enum.Enum):
    PENDING = "PENDING"
    CONFIGURING = "CONFIGURING"
    RUNNING = "RUNNING"
    COMPLETING = "COMPLETING"
    SUSPENDED = "SUSPENDED"
    STOPPED = "STOPPED"
    REQUEUED = "REQUEUED"
    REQUEUE_HOLD = "REQUEUE_HOLD"
    REQUEUE_FED = "REQUEUE_FED"
    RESIZING = "RESIZING"
    SIGNALING = "SIGNALING"
    STAGE_OUT = "STAGE_OUT"
    SPECIAL_EXIT = "SPECIAL_EXIT"
    RESV_DEL_HOLD = "RESV_DEL_HOLD"
    COMPLETED = "COMPLETED"
    CANCELLED = "CANCELLED"
    FAILED = "FAILED"
    TIMEOUT = "TIMEOUT"
    NODE_FAIL = "NODE_FAIL"
    PREEMPTED = "PREEMPTED"
    BOOT_FAIL = "BOOT_FAIL"
    DEADLINE = "DEADLINE"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    REVOKED = "REVOKED"
    UNKNOWN = "UNKNOWN"

    @classmethod
    def parse(cls, text: str) -> JobState:
        """Slurm prints ``CANCELLED by 0`` or abbreviations such as ``CA``; map all of them."""
        word = (text or "").strip().split(" ")[0].rstrip("+").upper()
        word = _SHORT.get(word, word)
        try:
            return cls(word)
        except ValueError:
            return cls.UNKNOWN

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL

    @property
    def waiting(self) -> bool:
        return self in (JobState.PENDING, JobState.CONFIGURING, JobState.REQUEUED, JobState.REQUEUE_HOLD,
                        JobState.REQUEUE_FED, JobState.RESV_DEL_HOLD)


class RecordState(str):
    """A Slurm state as written on ``RunRecord.state`` (``"PENDING"``, ``"COMPLETING"``...), plus its ``phase``.

    ``phase`` is ``"running"`` or ``"pending"``: how ``weave(progress=True)`` counts a record in this state.
    """

    phase: str

    def __new__(cls, name: str, phase: str) -> RecordState:
        self = super().__new__(cls, name)
        self.phase = phase
        return self

    def __reduce__(self):
        return (RecordState, (str(self), self.phase))


def record_state(state: JobState) -> RecordState:
    """What to write on a run's record for a job in ``state``."""
    return _RECORD_STATES[state]


_TERMINAL = frozenset({JobState.COMPLETED, JobState.CANCELLED, JobState.FAILED, JobState.TIMEOUT,
                       JobState.NODE_FAIL, JobState.PREEMPTED, JobState.BOOT_FAIL, JobState.DEADLINE,
                       JobState.OUT_OF_MEMORY, JobState.REVOKED})
_SHORT = {"PD": "PENDING", "R": "RUNNING", "CG": "COMPLETING", "CD": "COMPLETED", "CA": "CANCELLED",
          "F": "FAILED", "TO": "TIMEOUT", "NF": "NODE_FAIL", "PR": "PREEMPTED", "BF": "BOOT_FAIL",
          "DL": "DEADLINE", "OOM": "OUT_OF_MEMORY", "CF": "CONFIGURING", "S": "SUSPENDED", "ST": "STOPPED",
          "RQ": "REQUEUED", "RH": "REQUEUE_HOLD", "RF": "REQUEUE_FED", "RS": "RESIZING", "SI": "SIGNALING",
          "SO": "STAGE_OUT", "SE": "SPECIAL_EXIT", "RV": "REVOKED", "RD": "RESV_DEL_HOLD"}

_RECORD_STATES = {state: RecordState(state.value, "running" if state in (JobState.RUNNING, JobState.COMPLETING)
                                     else "pending") for state in JobState}


@dataclass
class JobInfo:
    """One job (or array element) as Slurm reports it."""

    key: str                      # "123" or "123_4"
    state: JobState = JobState.UNKNOWN
    reason: str = ""
    node: str = ""
    exit_code: Optional[int] = None
    signal: Optional[int] = None
    elapsed: Optional[float] = None
    requested_memory: str = ""
    requested_time: str = ""
    stderr_path: str = ""
    cancelled_by: str = ""
    restarts: int = 0

    @property
    def job_id(self) -> str:
        return self.key.split("_", 1)[0]

    @property
    def array_index(self) -> Optional[int]:
        if "_" in self.key:
            tail = self.key.split("_", 1)[1]
            return int(tail) if tail.isdigit() else None
        return None


def parse_exit(text: str) -> tuple[Optional[int], Optional[int]]:
    """``"1:0"`` -> (1, None); ``"0:9"`` -> (0, 9)."""
    if not text or ":" not in text:
        return (int(text), None) if text and text.strip().isdigit() else (None, None)
    code, _, sig = text.partition(":")
    try:
        return int(code), (int(sig) or None)
    except ValueError:
        return None, None


def parse_duration(text: str) -> Optional[float]:
    """Slurm durations ``[D-]HH:MM:SS``, ``MM:SS``, ``MM`` -> seconds."""
    text = (text or "").strip()
    if not text or text in ("INVALID", "UNLIMITED", "Partition_Limit", "N/A"):
        return None
    days = 0
    if "-" in text:
        day_text, _, text = text.partition("-")
        days = int(day_text)
    parts = [float(p) for p in text.split(":")]
    if len(parts) == 3:
        seconds = parts[0] * 3600 + parts[1] * 60 + parts[2]
    elif len(parts) == 2:
        seconds = parts[0] * 60 + parts[1]
    else:
        seconds = parts[0] * 60
    return days * 86400 + seconds


_OOM_MARKERS = ("oom-kill", "out-of-memory", "oom_kill", "exceeded job memory limit", "exceeded step memory limit")


def job_error(info: JobInfo, stderr_tail: str = "", *, task: str = "", log_path: str = "",
              memory_history: Optional[list[str]] = None, cancelled_signal: str = "",
              callback_url: str = "") -> errors.SlurmJobError:
    """The ``SlurmJobError`` subclass and message for a job that ended without reporting.

    Callback tokens (``/wove/events/<token>``, in the URL or in the job's stderr) are shown as ``…``.
    """
    stderr_tail = redact(stderr_tail)
    callback_url = redact(callback_url)
    where = f"Slurm job {info.key}" + (f" (task {task!r})" if task else "")
    node = f" on {info.node}" if info.node else ""
    elapsed = f" after {_fmt_seconds(info.elapsed)}" if info.elapsed is not None else ""
    state = info.state
    tail_lower = stderr_tail.lower()
    signal = info.signal
    cls: type[errors.SlurmJobError]
    if state is JobState.OUT_OF_MEMORY or (
            state is JobState.FAILED and any(marker in tail_lower for marker in _OOM_MARKERS)):
        cls = errors.SlurmOutOfMemoryError
        mem = info.requested_memory or "its memory request"
        tried = f" (sizes tried: {', '.join(memory_history)})" if memory_history and len(memory_history) > 1 else ""
        message = (f"{where} was killed for exceeding --mem={mem}{node}{elapsed}{tried}; raise mem "
                   f"(resources={{'mem': ...}}) or reduce the task's memory use")
    elif state is JobState.TIMEOUT or state is JobState.DEADLINE:
        cls = errors.SlurmTimeLimitError
        limit = info.requested_time or "its time limit"
        message = (f"{where} hit its time limit of {limit} (state {state.value}{node}{elapsed}); raise time "
                   f"(resources={{'time': ...}}, or time_retry_factor), split the work into shorter tasks, or "
                   "call wove.slurm.checkpoint(state) when wove.slurm.time_limit_near() turns true (executor_config "
                   "'signal_before_timeout'): wove submits the call again and wove.slurm.restored_state() gives "
                   "the next job that state")
    elif state is JobState.NODE_FAIL:
        cls = errors.SlurmNodeFailError
        message = (f"{where} was lost because node {info.node or '?'} failed or was set down{elapsed}; "
                   "retry the task (retries=...) or exclude the node (resources={'exclude': ...})")
    elif state is JobState.PREEMPTED:
        cls = errors.SlurmPreemptedError
        message = (f"{where} was preempted by a higher-priority job{node}{elapsed}; retry it (retries=...) "
                   "or run it in a partition/QOS without preemption")
    elif state is JobState.BOOT_FAIL:
        cls = errors.SlurmBootFailError
        message = (f"{where} could not start because its node failed to boot{node}; retry it (retries=...) "
                   "or ask the cluster admins about the node")
    elif state is JobState.CANCELLED:
        cls = errors.SlurmCancelledError
        by = f" by {info.cancelled_by}" if info.cancelled_by else ""
        via = f" (the worker received {cancelled_signal})" if cancelled_signal else ""
        message = (f"{where} was cancelled{by} outside this weave{via}{node}{elapsed}; it did not finish. "
                   "If that was not intended, check `sacct -j "
                   f"{info.job_id}` and who runs scancel on your jobs")
    else:
        cls = errors.SlurmJobFailedError
        code = info.exit_code
        if not signal and code is not None and 128 < code < 128 + 65:
            signal = code - 128  # the job's shell reports a killed child as 128+N
        if signal:
            how = f"was killed by signal {signal}{_signal_name(signal)}"
        elif code is not None:
            how = f"exited with code {code}"
        else:
            how = f"ended in state {state.value}"
        hint = _exit_hint(code, signal, tail_lower, callback_url)
        message = f"{where} {how}{node}{elapsed} without reporting the task's outcome; {hint}"
    if stderr_tail.strip():
        message += "\n--- last lines of the job's stderr" + (f" ({log_path})" if log_path else "") + " ---\n"
        message += stderr_tail.rstrip()
    return cls(redact(message), job_id=info.job_id, array_index=info.array_index, state=state.value,
               exit_code=info.exit_code, signal=info.signal, reason=info.reason, node=info.node,
               elapsed=info.elapsed, requested_memory=info.requested_memory,
               requested_time=info.requested_time, stderr_tail=stderr_tail, log_path=log_path,
               cancelled_by=info.cancelled_by)


def _exit_hint(code: Optional[int], signal: Optional[int], tail: str, callback_url: str) -> str:
    if code == 127 or "command not found" in tail or "no such file or directory" in tail:
        return ("the worker command could not start on the node (bad environment): make `python` with wove "
                "installed available in the job (executor_config 'command' or 'setup' lines such as "
                "'module load ...' / 'source venv/bin/activate')")
    if "no module named" in tail:
        return ("the job's Python cannot import wove (bad environment): pip install \"wove[dispatch]\" in the "
                "job environment, or point executor_config 'command' at the right interpreter")
    if code == 2:
        return (f"the worker ran but could not deliver its outcome to {callback_url or 'the callback URL'}: "
                "make sure compute nodes can reach it (callback_host / callback_url), or use "
                "result_channel='filesystem'")
    if code == 3 and "refusing" in tail:
        return ("the worker refused its payload because another user could have written it: use a spool_dir "
                "of your own that nobody else can write (see the job's stderr below)")
    if code == 3:
        return "the worker could not read its payload: the spool directory must be shared with compute nodes"
    if signal == 9:
        return "the process was killed (SIGKILL): by hand, by the OOM killer, or by a node-level limit"
    return "see the job's stderr below, and retry with retries=... if the failure is transient"


def _signal_name(signum: int) -> str:
    import signal as _signal

    try:
        return f" ({_signal.Signals(signum).name})"
    except ValueError:
        return ""


def _fmt_seconds(seconds: Optional[float]) -> str:
    if seconds is None:
        return "?"
    if seconds < 120:
        return f"{seconds:.0f}s"
    return f"{seconds / 60:.1f} min"
