"""wove's Slurm parsers and its state-to-error table, fed with real outputs recorded from the local cluster.

The recordings (tests/fixtures/slurm, made by its record.sh with the command lines wove runs) cover
``sbatch --parsable``, ``squeue``/``sacct``/``scontrol show job`` for jobs that completed, failed with an exit
code, were killed by a signal, ran out of memory, timed out, missed a deadline, were cancelled, requeued or
lost with their node, for throttled and failing arrays, and for jobs and accounting that are gone;
``scontrol show config`` and ``scontrol show assoc_mgr``. wove runs a stand-in (slurm_replay.py) instead
of each tool, configured exactly as a user's ``executor_config['squeue']`` would be, so these tests need
neither Slurm nor root, and each checks that wove still runs the recorded command line.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from pathlib import Path
from typing import Callable

import pytest
from slurm_fixtures import FIXTURES, normalized, recorded, recordings

from wove import errors
from wove.errors import SlurmCommandError
from wove.slurm import commands, limits
from wove.slurm.adapter import SlurmAdapter
from wove.slurm.monitor import JobMonitor
from wove.slurm.states import JobInfo, JobState, job_error, parse_duration, parse_exit

REPLAY = Path(__file__).resolve().parent / "slurm_replay.py"


class Replay:
    """Makes command lists that replay a recording, and checks what wove passed to them."""

    def __init__(self, log: Path):
        self.log = log

    def tool(self, name: str) -> list[str]:
        return [sys.executable, str(REPLAY), name]

    def check_calls(self, *names: str) -> None:
        """wove ran each named recording's tool with the recorded arguments (ids aside), in this order."""
        calls = [json.loads(line) for line in self.log.read_text().splitlines()] if self.log.exists() else []
        assert [call["name"] for call in calls] == list(names)
        for call in calls:
            assert normalized(call["args"]) == normalized(recorded(call["name"]).argv[1:]), call["name"]


@pytest.fixture
def replay(tmp_path, monkeypatch) -> Replay:
    log = tmp_path / "replay.jsonl"
    monkeypatch.setenv("WOVE_REPLAY_LOG", str(log))
    return Replay(log)


def _monitor(replay: Replay, **tools: str) -> JobMonitor:
    return JobMonitor(lambda run_id, frame: None, **{tool: replay.tool(name) for tool, name in tools.items()})


def squeue(replay: Replay, name: str) -> dict[str, JobInfo]:
    async def run():
        return await _monitor(replay, squeue=name)._squeue(recorded(name).job_ids)
    infos = asyncio.run(run())
    replay.check_calls(name)
    return infos


def sacct(replay: Replay, name: str) -> tuple[dict[str, JobInfo], bool | None]:
    async def run():
        monitor = _monitor(replay, sacct=name)
        return await monitor._sacct(recorded(name).job_ids), monitor.accounting
    result = asyncio.run(run())
    replay.check_calls(name)
    return result


def scontrol_job(replay: Replay, name: str) -> dict[str, JobInfo]:
    async def run():
        return await _monitor(replay, scontrol=name)._scontrol(recorded(name).job_ids[0])
    infos = asyncio.run(run())
    replay.check_calls(name)
    return infos


def ids(name: str) -> list[str]:
    return recorded(name).job_ids


def stderr_of(job: str) -> str:
    """A job's recorded --error file (joberr_<job>.txt)."""
    return recorded(f"joberr_{job}").stdout


# The order record.sh asks squeue and sacct about the jobs that ended (ENDED there).
ENDED = ("ok", "failed", "killed", "oom", "timeout", "cancelled", "deadline", "begin", "nocmd", "nomodule")


def ended_ids() -> dict[str, str]:
    found = ids("squeue_ended")
    assert found == ids("sacct_ended") and len(found) == len(ENDED)
    return dict(zip(ENDED, found))


# ------------------------------------------------------------------ the recordings themselves
def test_every_fixture_file_is_a_documented_recording():
    names = set(recordings())
    files = {path.name for path in FIXTURES.glob("*.txt")}
    expected = {f"{name}.txt" for name in names} | {f"{name}.stderr.txt" for name in names
                                                       if recorded(name).stderr}
    assert files == expected
    assert len(names) >= 45
    for name in names:
        recording = recorded(name)
        assert recording.date.startswith("20")
        if not name.startswith("joberr_"):
            assert recording.argv[0] in ("sbatch", "squeue", "sacct", "scontrol"), recording.argv


# ------------------------------------------------------------------ sbatch
def test_sbatch_output_gives_the_job_id():
    assert commands.parse_job_id(recorded("sbatch_parsable").stdout) == ids("squeue_ended")[0]
    plain = recorded("sbatch_plain").stdout
    assert plain.startswith("Submitted batch job ")
    assert commands.parse_job_id(plain) == plain.split()[-1]
    assert commands.parse_job_id("4242;wove\n") == "4242"   # --parsable on a multi-cluster setup (not recorded)
    with pytest.raises(SlurmCommandError, match="could not find a job id in sbatch's output"):
        commands.parse_job_id(recorded("sbatch_invalid_partition").stdout)


@pytest.mark.parametrize(("name", "fragment"), [
    ("sbatch_invalid_partition", "Invalid partition name specified"),
    ("sbatch_controller_unreachable", "Unable to contact slurm controller"),
    ("sbatch_submit_limit", "AssocMaxSubmitJobLimit"),
])
def test_sbatch_failures_carry_exit_code_and_stderr(replay, name, fragment):
    argv = [*replay.tool(name), *recorded(name).argv[1:]]
    with pytest.raises(SlurmCommandError) as caught:
        asyncio.run(commands.run(argv))
    error = caught.value
    assert error.returncode == recorded(name).exit_code == 1
    assert fragment in error.stderr and fragment in str(error)
    assert "failed with exit code 1" in str(error)


def test_sbatch_refusals_and_transient_failures_are_told_apart():
    from wove.slurm.adapter import _TRANSIENT

    def refused(name):
        return any(marker in recorded(name).stderr.lower() for marker in limits.REFUSAL_MARKERS)

    def transient(name):
        return any(marker in recorded(name).stderr.lower() for marker in _TRANSIENT)

    assert refused("sbatch_submit_limit") and not transient("sbatch_submit_limit")
    assert transient("sbatch_controller_unreachable") and not refused("sbatch_controller_unreachable")
    assert not refused("sbatch_invalid_partition") and not transient("sbatch_invalid_partition")


# ------------------------------------------------------------------ squeue
def test_squeue_fields_of_jobs_that_ended(replay):
    job = ended_ids()
    infos = squeue(replay, "squeue_ended")
    assert set(infos) == set(job.values())
    states = {what: infos[job[what]].state for what in ENDED}
    assert states == {"ok": JobState.COMPLETED, "failed": JobState.FAILED, "killed": JobState.FAILED,
                      "oom": JobState.OUT_OF_MEMORY, "timeout": JobState.TIMEOUT,
                      "cancelled": JobState.CANCELLED, "deadline": JobState.DEADLINE, "begin": JobState.PENDING,
                      "nocmd": JobState.FAILED, "nomodule": JobState.FAILED}
    # squeue's exit_code is the raw wait status: 768 is exit 3, 9 is signal 9, 32512 is exit 127.
    assert (infos[job["failed"]].exit_code, infos[job["failed"]].signal) == (3, None)
    assert (infos[job["killed"]].exit_code, infos[job["killed"]].signal) == (0, 9)
    assert (infos[job["nocmd"]].exit_code, infos[job["nomodule"]].exit_code) == (127, 1)
    assert infos[job["cancelled"]].signal == 15
    failed = infos[job["failed"]]
    assert failed.reason == "NonZeroExitCode" and failed.node and failed.requested_memory == "50M"
    assert failed.stderr_path == f"/tmp/wove-fixrec/{job['failed']}.err"   # %j expanded
    assert failed.restarts == 0 and failed.array_index is None and failed.job_id == job["failed"]
    timeout = infos[job["timeout"]]
    assert timeout.reason == "TimeLimit" and timeout.requested_time == "1:00" and timeout.elapsed >= 60
    assert infos[job["oom"]].reason == "OutOfMemory"
    assert infos[job["begin"]].reason == "BeginTime" and infos[job["begin"]].node == ""
    assert infos[job["deadline"]].reason == "DeadLine"


def test_squeue_shows_each_element_of_a_throttled_array(replay):
    array = ids("squeue_array_throttled")[0]
    infos = squeue(replay, "squeue_array_throttled")
    assert set(infos) == {f"{array}_{index}" for index in range(10)}   # pending elements one by one
    running = [info for info in infos.values() if info.state is JobState.RUNNING]
    pending = [info for info in infos.values() if info.state is JobState.PENDING]
    assert 1 <= len(running) <= 2 and len(pending) >= 6   # --array=0-9%2
    for info in pending:
        assert info.reason == "JobArrayTaskLimit" and info.node == "" and info.elapsed == 0
    for info in infos.values():
        index = int(info.key.split("_")[1])
        assert info.array_index == index and info.job_id == array
        assert info.stderr_path == f"/tmp/wove-fixrec/{array}_{index}.err"   # %A_%a expanded
    assert all(info.node and info.elapsed is not None for info in running)
    # Without --array, squeue folds the pending elements into one line (123_[2-9%2]):
    folded = recorded("squeue_default_array_throttled").stdout.split()[0]
    assert re.fullmatch(rf"{array}_\[\d-9%2\]", folded), folded


def test_squeue_of_arrays_that_ended_keeps_every_element(replay):
    array, codes = ids("squeue_arrays_ended")
    infos = squeue(replay, "squeue_arrays_ended")
    assert {key for key in infos if key.startswith(f"{array}_")} == {f"{array}_{i}" for i in range(10)}
    assert all(infos[f"{array}_{i}"].state is JobState.COMPLETED for i in range(10))
    assert [(infos[f"{codes}_{i}"].state, infos[f"{codes}_{i}"].exit_code) for i in range(4)] == [
        (JobState.COMPLETED, 0), (JobState.FAILED, 1), (JobState.FAILED, 2), (JobState.FAILED, 3)]


def test_squeue_counts_restarts_of_requeued_jobs(replay):
    job = ids("squeue_requeued")[0]
    # A second after `scontrol requeue`: still COMPLETING, or already REQUEUED/PENDING; counted either way.
    right_after = squeue(replay, "squeue_requeued")[job]
    assert right_after.state in (JobState.COMPLETING, JobState.REQUEUED, JobState.PENDING)
    assert right_after.restarts == 1
    replay.log.unlink()
    pending = squeue(replay, "squeue_requeued_pending")[job]
    assert pending.state is JobState.PENDING and pending.reason == "BeginTime" and pending.restarts == 1
    assert pending.state.waiting and not pending.state.terminal


def test_squeue_after_the_node_went_down(replay):
    lost, requeued = ids("squeue_node_fail")
    infos = squeue(replay, "squeue_node_fail")
    assert infos[lost].state is JobState.NODE_FAIL and infos[lost].reason == "NodeDown" and infos[lost].node
    assert infos[requeued].state is JobState.PENDING and infos[requeued].restarts == 1


def test_squeue_for_jobs_the_controller_forgot_is_empty(replay):
    assert squeue(replay, "squeue_invalid_job") == {}


def test_squeue_without_a_controller_raises(replay):
    with pytest.raises(SlurmCommandError, match="Unable to contact slurm controller") as caught:
        squeue(replay, "squeue_controller_unreachable")
    assert caught.value.returncode == 1


# ------------------------------------------------------------------ sacct
def test_sacct_fields_of_jobs_that_ended(replay):
    job = ended_ids()
    infos, accounting = sacct(replay, "sacct_ended")
    assert accounting is True
    assert set(infos) == set(job.values())
    exits = {what: (infos[job[what]].exit_code, infos[job[what]].signal) for what in ENDED}
    assert exits["failed"] == (3, None) and exits["killed"] == (0, 9) and exits["oom"] == (0, 125)
    assert exits["nocmd"] == (127, None) and exits["ok"] == (0, None)
    assert infos[job["oom"]].state is JobState.OUT_OF_MEMORY and infos[job["oom"]].requested_memory == "50M"
    timeout = infos[job["timeout"]]
    assert timeout.state is JobState.TIMEOUT and timeout.requested_time == "00:01:00" and timeout.elapsed >= 60
    cancelled = infos[job["cancelled"]]
    assert cancelled.state is JobState.CANCELLED and cancelled.cancelled_by == "root"   # "CANCELLED by 0"
    assert infos[job["deadline"]].state is JobState.DEADLINE
    assert infos[job["begin"]].state is JobState.PENDING and infos[job["begin"]].reason == "BeginTime"
    assert infos[job["begin"]].node == "None assigned"


def test_sacct_shows_the_pending_part_of_a_throttled_array_as_one_range(replay):
    array = ids("sacct_array_throttled")[0]
    infos, _ = sacct(replay, "sacct_array_throttled")
    folded = [key for key in infos if "[" in key]
    assert len(folded) == 1 and re.fullmatch(rf"{array}_\[(\d)-9%2\]", folded[0]), list(infos)
    first_pending = int(folded[0].split("[")[1].split("-")[0])
    assert set(infos) == {*folded, *(f"{array}_{index}" for index in range(first_pending))}
    info = infos[folded[0]]
    assert info.state is JobState.PENDING and info.reason == "JobArrayTaskLimit"
    assert info.array_index is None and info.job_id == array
    # so a pending element is not found here: the monitor keeps waiting on it instead of failing it
    assert f"{array}_9" not in infos
    assert all(infos[f"{array}_{index}"].state in (JobState.RUNNING, JobState.COMPLETED)
               for index in range(first_pending))


def test_sacct_of_arrays_that_ended(replay):
    array, codes = ids("sacct_arrays_ended")
    infos, _ = sacct(replay, "sacct_arrays_ended")
    assert len(infos) == 14
    assert [infos[f"{codes}_{i}"].exit_code for i in range(4)] == [0, 1, 2, 3]
    assert infos[f"{codes}_3"].state is JobState.FAILED and infos[f"{codes}_3"].array_index == 3
    assert infos[f"{array}_9"].reason == "JobArrayTaskLimit"   # the reason it once waited for


def test_sacct_of_a_requeued_and_a_node_failed_job(replay):
    job = ids("sacct_requeued")[0]
    infos, _ = sacct(replay, "sacct_requeued")
    assert infos[job].state is JobState.REQUEUED and infos[job].state.waiting
    replay.log.unlink()
    lost, requeued = ids("sacct_node_fail")
    infos, _ = sacct(replay, "sacct_node_fail")
    assert infos[lost].state is JobState.NODE_FAIL
    # The job Slurm requeued after the node failure may still read NODE_FAIL in accounting (its first run)
    # while squeue shows it PENDING with RestartCnt=1: the monitor asks sacct only about jobs squeue lacks.
    assert infos[requeued].state in (JobState.NODE_FAIL, JobState.PENDING, JobState.REQUEUED)


@pytest.mark.parametrize(("name", "accounting"), [
    ("sacct_unknown_job", True),        # accounting works, it just knows no such job
    ("sacct_no_accounting", False),     # "Slurm accounting storage is disabled": stop asking sacct
    ("sacct_dbd_unreachable", None),    # slurmdbd away: unknown, ask again next time
])
def test_sacct_without_an_answer(replay, name, accounting):
    infos, learned = sacct(replay, name)
    assert infos == {}
    assert learned is accounting
    if name != "sacct_unknown_job":
        assert recorded(name).exit_code == 1 and recorded(name).stderr


def test_doctor_sees_accounting_disabled_in_the_recorded_message():
    assert recorded("doctor_sacct").exit_code == 0
    message = recorded("doctor_sacct_no_accounting").stderr
    assert recorded("doctor_sacct_no_accounting").exit_code == 1
    assert "accounting storage is disabled" in message.lower()   # what JobMonitor._sacct looks for


# ------------------------------------------------------------------ scontrol show job
@pytest.mark.parametrize(("name", "state", "exit_code", "signal"), [
    ("scontrol_job_ok", JobState.COMPLETED, 0, None),
    ("scontrol_job_failed", JobState.FAILED, 3, None),
    ("scontrol_job_killed", JobState.FAILED, 0, 9),
    ("scontrol_job_oom", JobState.OUT_OF_MEMORY, 0, 125),
    ("scontrol_job_timeout", JobState.TIMEOUT, 0, 15),        # ExitCode=0:15 here, 0:0 in sacct
    ("scontrol_job_cancelled", JobState.CANCELLED, 0, 15),
    ("scontrol_job_deadline", JobState.DEADLINE, 0, 1),       # ExitCode=0:1 here, 1:0 in sacct
    ("scontrol_job_node_fail", JobState.NODE_FAIL, 0, None),
    ("scontrol_job_pending_begin", JobState.PENDING, 0, None),
])
def test_scontrol_show_job(replay, name, state, exit_code, signal):
    job = ids(name)[0]
    infos = scontrol_job(replay, name)
    assert list(infos) == [job]
    info = infos[job]
    assert (info.state, info.exit_code, info.signal) == (state, exit_code, signal)
    assert info.stderr_path == f"/tmp/wove-fixrec/{job}.err"
    assert info.restarts == 0
    if state is JobState.TIMEOUT:
        assert info.requested_time == "00:01:00" and info.elapsed >= 60 and info.reason == "TimeLimit"
    if state is JobState.PENDING:
        assert info.reason == "BeginTime" and info.node == ""


def test_scontrol_show_job_counts_restarts(replay):
    for name in ("scontrol_job_requeued", "scontrol_job_node_fail_requeued"):
        info = scontrol_job(replay, name)[ids(name)[0]]
        assert info.state is JobState.PENDING and info.restarts == 1, name
        replay.log.unlink()


def test_scontrol_show_job_of_arrays(replay):
    codes = ids("scontrol_job_array_codes")[0]
    infos = scontrol_job(replay, "scontrol_job_array_codes")
    assert {key: info.exit_code for key, info in infos.items()} == {f"{codes}_{i}": i for i in range(4)}
    assert infos[f"{codes}_2"].stderr_path == f"/tmp/wove-fixrec/{codes}_2.err"
    replay.log.unlink()
    array = ids("scontrol_job_array_throttled")[0]
    text = recorded("scontrol_job_array_throttled").stdout
    first_pending = int(re.search(r"ArrayTaskId=(\d)-9%2 ", text).group(1))
    infos = scontrol_job(replay, "scontrol_job_array_throttled")
    # The pending remainder (ArrayTaskId=N-9%2) comes under the array's own id, not as elements.
    assert set(infos) == {array, *(f"{array}_{index}" for index in range(first_pending))}
    assert infos[array].state is JobState.PENDING and infos[array].reason == "JobArrayTaskLimit"
    assert 1 <= sum(info.state is JobState.RUNNING for info in infos.values()) <= 2


def test_scontrol_show_job_for_a_forgotten_job_is_empty(replay):
    assert scontrol_job(replay, "scontrol_job_invalid") == {}


# ------------------------------------------------------------------ scontrol show config / assoc_mgr
def test_max_array_size_from_scontrol_show_config(replay):
    from wove.slurm import adapter as slurm_adapter

    name = "scontrol_show_config"
    slurm_adapter._max_array_cache.clear()
    try:
        adapter = SlurmAdapter(name="slurm", config={"scontrol": replay.tool(name)}, callback_url="",
                               run_config={})
        assert asyncio.run(adapter._max_array_size()) == 1001
    finally:
        slurm_adapter._max_array_cache.clear()
    replay.check_calls(name)
    assert "MaxArraySize            = 1001" in recorded(name).stdout


def test_assoc_mgr_without_limits(replay):
    name = "scontrol_assoc_mgr"
    assert limits.parse_assoc_mgr(recorded(name).stdout, 0) is None    # root: every limit is N(...)
    assert asyncio.run(limits.read_submit_limit(replay.tool(name))) is None   # whoever runs the tests
    replay.check_calls(name)


def test_assoc_mgr_with_a_max_submit_jobs_limit():
    text = recorded("scontrol_assoc_mgr_limit").stdout
    user_field = next(token for token in text.split() if token.startswith("UserName=wove-fixrec("))
    uid = int(user_field.split("(")[1].rstrip(")"))
    limit = limits.parse_assoc_mgr(text, uid)
    assert (limit.limit, limit.used, limit.free) == (1, 1, 0)   # one held job counts against MaxSubmitJobs=1
    assert limit.source == "MaxSubmitJobs of association account=root user=wove-fixrec"
    assert limits.parse_assoc_mgr(text, uid, account="other") is None


# ------------------------------------------------------------------ the state-to-error table, on real jobs
@pytest.mark.parametrize("source", ["sacct", "squeue"])
def test_real_failures_become_the_right_errors(replay, source):
    job = ended_ids()
    infos = sacct(replay, "sacct_ended")[0] if source == "sacct" else squeue(replay, "squeue_ended")
    node = infos[job["failed"]].node
    assert node

    def error(what, tail=""):
        found = job_error(infos[job[what]], tail, task=what)
        assert isinstance(found, errors.SlurmJobError) and found.job_id == job[what]
        assert found.state == infos[job[what]].state.value
        assert str(found).startswith(f"Slurm job {job[what]} (task {what!r}) ")
        return found

    oom = error("oom", stderr_of("oom"))
    assert type(oom) is errors.SlurmOutOfMemoryError and oom.requested_memory == "50M"
    assert "was killed for exceeding --mem=50M" in str(oom) and "raise mem" in str(oom)
    assert "oom-kill event" in str(oom)   # the job's stderr is quoted

    timeout = error("timeout", stderr_of("timeout"))
    limit = "00:01:00" if source == "sacct" else "1:00"
    assert type(timeout) is errors.SlurmTimeLimitError
    assert f"hit its time limit of {limit} (state TIMEOUT on {node}" in str(timeout)
    assert "DUE TO TIME LIMIT" in str(timeout)

    deadline = error("deadline")
    assert type(deadline) is errors.SlurmTimeLimitError and "(state DEADLINE" in str(deadline)

    cancelled = error("cancelled", stderr_of("cancelled"))
    assert type(cancelled) is errors.SlurmCancelledError
    by = " by root" if source == "sacct" else ""
    assert f"was cancelled{by} outside this weave on {node}" in str(cancelled)

    failed = error("failed", stderr_of("failed"))
    assert type(failed) is errors.SlurmJobFailedError and failed.exit_code == 3
    assert f"exited with code 3 on {node}" in str(failed) and "about to fail" in failed.stderr_tail
    # Exit codes 2 and 3 are the worker's own (this job ran `exit 3`, a wove job runs the worker).
    assert "could not read its payload" in str(failed)
    assert str(failed).endswith("--- last lines of the job's stderr ---\nabout to fail")

    killed = error("killed", stderr_of("killed"))
    assert type(killed) is errors.SlurmJobFailedError and killed.signal == 9
    assert "was killed by signal 9 (SIGKILL)" in str(killed) and "OOM killer" in str(killed)

    nocmd = error("nocmd", stderr_of("nocmd"))
    assert type(nocmd) is errors.SlurmJobFailedError and nocmd.exit_code == 127
    assert "could not start on the node (bad environment)" in str(nocmd)
    assert "no-such-python: not found" in str(nocmd)

    nomodule = error("nomodule", stderr_of("nomodule"))
    assert type(nomodule) is errors.SlurmJobFailedError and nomodule.exit_code == 1
    assert "cannot import wove (bad environment)" in str(nomodule)

    completed = error("ok")   # finished, but the task's outcome never arrived
    assert type(completed) is errors.SlurmJobFailedError and "exited with code 0" in str(completed)
    assert "without reporting the task's outcome" in str(completed)


def test_a_failed_job_whose_stderr_shows_the_oom_killer_is_out_of_memory(replay):
    # Clusters without OUT_OF_MEMORY accounting report such jobs as FAILED; the recorded stderr decides.
    job = ended_ids()
    infos, _ = sacct(replay, "sacct_ended")
    error = job_error(infos[job["failed"]], stderr_of("oom"))
    assert type(error) is errors.SlurmOutOfMemoryError and error.state == "FAILED"


def test_node_failure_and_array_element_errors(replay):
    lost = ids("sacct_node_fail")[0]
    infos, _ = sacct(replay, "sacct_node_fail")
    error = job_error(infos[lost], stderr_of("node_fail"))
    assert type(error) is errors.SlurmNodeFailError and error.node == infos[lost].node
    assert f"was lost because node {infos[lost].node} failed or was set down" in str(error)
    assert "DUE TO NODE FAILURE" in error.stderr_tail
    replay.log.unlink()

    codes = ids("sacct_arrays_ended")[1]
    infos, _ = sacct(replay, "sacct_arrays_ended")
    error = job_error(infos[f"{codes}_1"], stderr_of("array_codes_1"), task="each")
    assert type(error) is errors.SlurmJobFailedError
    assert (error.job_id, error.array_index, error.exit_code) == (codes, 1, 1)
    assert str(error).startswith(f"Slurm job {codes}_1 (task 'each') exited with code 1")
    assert "element 1" in error.stderr_tail


# ------------------------------------------------------------------ the monitor, end to end on recordings
class _Record:
    """What the monitor updates on a run's record."""

    state = reason = node = ""
    started_at = None

    def __init__(self):
        self.details = {}


def _poll_twice(make: Callable[[], JobMonitor]) -> JobMonitor:
    async def run():
        monitor = make()
        await monitor.poll()   # a terminal state is noted, and reported once the grace period (0 here) is over
        await monitor.poll()
        return monitor
    return asyncio.run(run())


def test_monitor_keeps_a_job_requeued_after_its_node_failed(replay):
    lost, requeued = ids("squeue_node_fail")
    reports = {}

    def make():
        monitor = JobMonitor(lambda run_id, frame: reports.setdefault(run_id, frame),
                             squeue=replay.tool("squeue_node_fail"), grace=0.0, read_stderr=False)
        monitor.track(lost, "lost", "run-lost", _Record())
        monitor.track(requeued, "requeued", "run-requeued", _Record())
        return monitor

    monitor = _poll_twice(make)
    assert list(reports) == ["run-lost"]
    error = reports["run-lost"]["exception"]
    assert type(error) is errors.SlurmNodeFailError and error.job_id == lost
    assert list(monitor.jobs) == [requeued] and monitor.jobs[requeued].restarts == 1
    assert monitor.calls["sacct"] == 0   # squeue knew both jobs


def test_monitor_fails_tracked_jobs_from_a_recorded_squeue(replay):
    job = ended_ids()
    reports = {}

    async def run():
        monitor = JobMonitor(lambda run_id, frame: reports.setdefault(run_id, frame),
                             squeue=replay.tool("squeue_ended"), grace=0.0, read_stderr=False)
        for what in ("oom", "timeout", "failed", "begin"):
            monitor.track(job[what], what, f"run-{what}", _Record(), requested_memory="50M")
        await monitor.poll()   # terminal: noted, reported after the grace period
        assert reports == {}
        await monitor.poll()
        return monitor

    monitor = asyncio.run(run())
    assert sorted(reports) == ["run-failed", "run-oom", "run-timeout"]
    kinds = {run_id: type(frame["exception"]) for run_id, frame in reports.items()}
    assert kinds == {"run-oom": errors.SlurmOutOfMemoryError, "run-timeout": errors.SlurmTimeLimitError,
                     "run-failed": errors.SlurmJobFailedError}
    assert list(monitor.jobs) == [job["begin"]]   # still pending: still watched
    assert monitor.calls["sacct"] == 0


def test_monitor_falls_back_to_scontrol_without_accounting(replay):
    job = ids("scontrol_job_oom")[0]
    reports = {}

    def make():
        monitor = JobMonitor(lambda run_id, frame: reports.setdefault(run_id, frame),
                             squeue=replay.tool("squeue_invalid_job"), sacct=replay.tool("sacct_no_accounting"),
                             scontrol=replay.tool("scontrol_job_oom"), grace=0.0, read_stderr=False)
        monitor.track(job, "hungry", "run-1", _Record())
        return monitor

    monitor = _poll_twice(make)
    assert monitor.accounting is False
    assert type(reports["run-1"]["exception"]) is errors.SlurmOutOfMemoryError
    # squeue and sacct once each time until sacct said accounting is off; then scontrol only.
    replay.check_calls("squeue_invalid_job", "sacct_no_accounting", "scontrol_job_oom", "squeue_invalid_job",
                       "scontrol_job_oom")


def test_monitor_treats_an_unreachable_controller_as_an_outage(replay):
    job = ended_ids()["failed"]
    reports = {}

    def make():
        monitor = JobMonitor(lambda run_id, frame: reports.setdefault(run_id, frame),
                             squeue=replay.tool("squeue_controller_unreachable"), grace=0.0)
        monitor.track(job, "task", "run-1", _Record())
        return monitor

    monitor = _poll_twice(make)
    assert reports == {} and monitor.outage_since is not None and list(monitor.jobs) == [job]


# ------------------------------------------------------------------ the table itself
@pytest.mark.parametrize(("state", "cls", "fragment"), [
    (JobState.OUT_OF_MEMORY, errors.SlurmOutOfMemoryError, "was killed for exceeding --mem=its memory request"),
    (JobState.TIMEOUT, errors.SlurmTimeLimitError, "hit its time limit of its time limit (state TIMEOUT"),
    (JobState.DEADLINE, errors.SlurmTimeLimitError, "(state DEADLINE"),
    (JobState.NODE_FAIL, errors.SlurmNodeFailError, "was lost because node ? failed or was set down"),
    (JobState.PREEMPTED, errors.SlurmPreemptedError, "was preempted by a higher-priority job"),
    (JobState.BOOT_FAIL, errors.SlurmBootFailError, "could not start because its node failed to boot"),
    (JobState.CANCELLED, errors.SlurmCancelledError, "was cancelled outside this weave"),
    (JobState.FAILED, errors.SlurmJobFailedError, "ended in state FAILED"),
    (JobState.COMPLETED, errors.SlurmJobFailedError, "ended in state COMPLETED"),
    (JobState.REVOKED, errors.SlurmJobFailedError, "ended in state REVOKED"),
    (JobState.UNKNOWN, errors.SlurmJobFailedError, "ended in state UNKNOWN"),
])
def test_state_to_error_table(state, cls, fragment):
    error = job_error(JobInfo("12_3", state))
    assert type(error) is cls and fragment in str(error)
    assert (error.job_id, error.array_index, error.state) == ("12", 3, state.value)


def test_the_table_covers_every_terminal_state():
    covered = {JobState.OUT_OF_MEMORY, JobState.TIMEOUT, JobState.DEADLINE, JobState.NODE_FAIL,
               JobState.PREEMPTED, JobState.BOOT_FAIL, JobState.CANCELLED, JobState.FAILED, JobState.COMPLETED,
               JobState.REVOKED}
    assert {state for state in JobState if state.terminal} == covered


@pytest.mark.parametrize(("exit_code", "tail", "fragment"), [
    (2, "", "could not deliver its outcome to the callback URL"),
    (3, "", "could not read its payload"),
    (137, "", "was killed by signal 9 (SIGKILL)"),   # the job shell reports a killed child as 128+9
    (1, "Traceback ...\nModuleNotFoundError: No module named 'wove'", "cannot import wove"),
])
def test_worker_exit_codes_name_their_cause(exit_code, tail, fragment):
    error = job_error(JobInfo("7", JobState.FAILED, exit_code=exit_code), tail)
    assert type(error) is errors.SlurmJobFailedError and fragment in str(error)


def test_state_words_as_slurm_prints_them():
    recorded_words = set()
    for name in ("sacct_ended", "sacct_arrays_ended", "sacct_node_fail", "sacct_requeued", "sacct_array_throttled"):
        recorded_words |= {line.split("|")[1] for line in recorded(name).stdout.splitlines()}
    assert "CANCELLED by 0" in recorded_words
    assert all(JobState.parse(word) is not JobState.UNKNOWN for word in recorded_words), recorded_words
    assert JobState.parse("CANCELLED by 0") is JobState.CANCELLED
    assert JobState.parse("CA") is JobState.CANCELLED and JobState.parse("OOM") is JobState.OUT_OF_MEMORY
    assert JobState.parse("PD") is JobState.PENDING and JobState.parse("NF") is JobState.NODE_FAIL
    assert JobState.parse("CANCELLED+") is JobState.CANCELLED and JobState.parse("") is JobState.UNKNOWN
    assert JobState.parse("SOMETHING_NEW") is JobState.UNKNOWN


def test_exit_codes_and_durations_as_slurm_prints_them():
    assert parse_exit("0:125") == (0, 125) and parse_exit("127:0") == (127, None) and parse_exit("") == (None, None)
    assert parse_duration("1:07") == 67 and parse_duration("00:01:00") == 60
    assert parse_duration("365-00:00:00") == 365 * 86400 and parse_duration("1-02:03:04") == 93784
    assert parse_duration("UNLIMITED") is None and parse_duration("Partition_Limit") is None
