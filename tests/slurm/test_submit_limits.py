"""Per-user submit limits (MaxSubmitJobs and kin): arrays sized to the room left, the rest paced (issue 6)."""

from __future__ import annotations

import asyncio
import os
import pickle
import subprocess
import sys
import time

import pytest
from slurm_helpers import squeue_jobs, wait_until

from wove import weave
from wove.errors import SlurmSubmitLimitError
from wove.slurm.limits import SubmitLimit, SubmitRoom, parse_assoc_mgr, read_submit_limit

ASSOC_MGR = """\
Current Association Manager state

Association Records

ClusterName=c Account=root UserName= Partition= Priority=0 ID=1
    GrpJobs=N(3) GrpJobsAccrue=N(0)
    GrpSubmitJobs=N(5) GrpWall=N(0.00)
    MaxJobs=1(0) MaxJobsAccrue= MaxSubmitJobs=2(0) MaxWallPJ=
ClusterName=c Account=physics UserName= Partition= Priority=0 ID=3
    GrpSubmitJobs=50(44) GrpWall=N(0.00)
ClusterName=c Account=root UserName=alice(1000) Partition= Priority=0 ID=2
    GrpSubmitJobs=N(5) GrpWall=N(0.00)
    MaxJobs=3(3) MaxJobsAccrue= MaxSubmitJobs=100(37) MaxWallPJ=
ClusterName=c Account=root UserName=bob(1001) Partition= Priority=0 ID=4
    MaxJobs= MaxJobsAccrue= MaxSubmitJobs=1(1) MaxWallPJ=

QOS Records

QOS=normal(1)
    GrpJobs=N(3) GrpJobsAccrue=N(2) GrpSubmitJobs=N(5) GrpWall=N(0.00)
    Account Limits
      root
        MaxJobsPA=N(3) MaxJobsAccruePA=N(2) MaxSubmitJobsPA=N(5)
    User Limits
      1000
        MaxJobsPU=N(3) MaxJobsAccruePU=N(2) MaxSubmitJobsPU=70(5)
      1001
        MaxJobsPU=N(3) MaxJobsAccruePU=N(2) MaxSubmitJobsPU=2(2)
QOS=long(2)
    GrpJobs=N(0) GrpJobsAccrue=N(0) GrpSubmitJobs=10(0) GrpWall=N(0.00)
"""


# ------------------------------------------------------------------ parsing (no cluster needed)
def test_parse_finds_the_tightest_limit_that_applies_to_the_user():
    limit = parse_assoc_mgr(ASSOC_MGR, 1000)
    # physics' group limit (6 free) is tighter than alice's MaxSubmitJobs (63 free) and the QOS (65 free);
    # Max* on an account record and bob's limits do not count.
    assert (limit.limit, limit.used, limit.free) == (50, 44, 6)
    assert limit.source == "GrpSubmitJobs of association account=physics"


def test_parse_reads_qos_limits_for_this_user_and_the_chosen_qos_only():
    text = ASSOC_MGR.replace("GrpSubmitJobs=50(44)", "GrpSubmitJobs=N(44)")
    limit = parse_assoc_mgr(text, 1000)
    assert (limit.limit, limit.used) == (100, 37)   # alice's own association: 63 free, the QOS 65
    limit = parse_assoc_mgr(text.replace("MaxSubmitJobs=100(37)", "MaxSubmitJobs=N(37)"), 1000)
    assert (limit.limit, limit.used, limit.source) == (70, 5, "MaxSubmitJobsPU of QOS normal")
    limit = parse_assoc_mgr(text, 1000, qos="long")
    assert (limit.limit, limit.used, limit.source) == (10, 0, "GrpSubmitJobs of QOS long")


def test_parse_without_any_limit_is_none():
    # Account group limits count for everyone shown (the output does not tell parents apart).
    assert parse_assoc_mgr(ASSOC_MGR, 4242, qos="other").source == "GrpSubmitJobs of association account=physics"
    plain = "\n".join(line for line in ASSOC_MGR.splitlines() if "(44)" not in line)
    assert parse_assoc_mgr(plain, 4242, qos="other") is None
    assert parse_assoc_mgr("", 0) is None


# ------------------------------------------------------------------ the room (stand-in controller)
def test_room_grants_what_is_free_and_waits_for_own_jobs_to_end():
    async def scenario():
        state = {"used": 7, "own": 0}

        async def read():
            return SubmitLimit(10, state["used"], "MaxSubmitJobs of association account=a user=u")

        room = SubmitRoom(read, lambda: state["own"], patience=5.0)
        assert await room.take(8) == 3          # only 3 free: a smaller array now
        room.confirm(3)
        state["used"], state["own"] = 10, 3
        waiter = asyncio.ensure_future(room.take(4))
        await asyncio.sleep(0.2)
        assert not waiter.done()                 # full, and our own jobs will free room
        state["used"], state["own"] = 8, 1       # two of ours ended
        room.job_finished()
        assert await asyncio.wait_for(waiter, 5) == 2
        assert room.waits >= 1

    asyncio.run(scenario())


def test_room_gives_up_when_others_hold_the_limit():
    async def scenario():
        async def read():
            return SubmitLimit(2, 2, "MaxSubmitJobs of association account=a user=u")

        room = SubmitRoom(read, lambda: 0, patience=0.5)
        started = time.monotonic()
        with pytest.raises(SlurmSubmitLimitError, match=r"MaxSubmitJobs of association account=a user=u is 2 and "
                           r"2 jobs already count against it") as info:
            await room.take(1)
        assert time.monotonic() - started < 5
        assert (info.value.limit, info.value.used) == (2, 2)
        copy = pickle.loads(pickle.dumps(info.value))   # it may cross a process boundary
        assert (type(copy), str(copy), copy.limit, copy.used, copy.source) == (
            SlurmSubmitLimitError, str(info.value), 2, 2, info.value.source)

    asyncio.run(scenario())


def test_room_cap_counts_own_and_reserved_jobs():
    async def scenario():
        async def read():
            return None

        own = {"n": 0}
        room = SubmitRoom(read, lambda: own["n"], patience=5.0, cap=5)
        await room.ready()
        assert room.bound == 5
        assert await room.take(4) == 4            # reserved, sbatch still running
        assert await room.take(4) == 1            # the cap counts the reservation
        abandoned = await room.take(1, abandoned=lambda: True)
        assert abandoned == 0

    asyncio.run(scenario())


# ------------------------------------------------------------------ the real cluster
def _assoc_mgr() -> str:
    return subprocess.run(["scontrol", "show", "assoc_mgr", "users=root", "flags=assoc"], capture_output=True,
                          text=True, check=True).stdout


def _set_max_submit(value: int) -> None:
    subprocess.run(["sacctmgr", "-i", "modify", "user", "root", "set", f"maxsubmitjobs={value}"],
                   capture_output=True, text=True, check=True)
    shown = f"MaxSubmitJobs={value}(" if value >= 0 else "MaxSubmitJobs= "
    # slurmdbd pushes the change to slurmctld asynchronously.
    assert wait_until(lambda: shown in _assoc_mgr(), timeout=30), _assoc_mgr()


@pytest.fixture
def max_submit_jobs():
    if subprocess.run(["sacctmgr", "-n", "list", "cluster"], capture_output=True).returncode != 0:
        pytest.fail("these tests need the local cluster's accounting (scripts/local-slurm.sh, the default)")
    if "associations" not in subprocess.run(["scontrol", "show", "config"], capture_output=True,
                                            text=True).stdout.split("AccountingStorageEnforce", 1)[1].split("\n")[0]:
        pytest.fail("AccountingStorageEnforce lacks limits: run scripts/local-slurm.sh restart")
    yield _set_max_submit
    _set_max_submit(-1)


def _elements(call: dict) -> int:
    array = next((a for a in call["argv"] if a.startswith("--array=0-")), None)
    return int(array[len("--array=0-"):].split("%")[0]) + 1 if array else 1


def test_read_submit_limit_from_the_controller(max_submit_jobs):
    max_submit_jobs(9)
    limit = asyncio.run(read_submit_limit(["scontrol"]))
    assert limit is not None and limit.limit == 9 and "MaxSubmitJobs" in limit.source and "root" in limit.source


def test_map_larger_than_max_submit_jobs_is_paced(executor, max_submit_jobs, prefix):
    max_submit_jobs(20)
    instance = executor()
    with weave() as w:
        @w.do(range(70), environment="slurm")
        def triple(x):
            return 3 * x

    assert w.result.triple == [3 * x for x in range(70)]
    calls = instance.adapter.submissions
    assert len(calls) >= 4 and all(_elements(call) <= 20 for call in calls), [c["argv"][-5:] for c in calls]
    assert sum(call["items"] for call in calls) == 70
    assert sum(room.waits for room in instance.adapter._rooms.values()) > 0   # it did wait for room
    assert squeue_jobs(prefix) == []


def test_single_jobs_wait_for_room_when_the_limit_cannot_be_read(executor, max_submit_jobs, prefix, caplog):
    # scontrol that prints nothing: wove cannot read the limit, so sbatch is refused and wove waits.
    caplog.set_level("INFO", logger="wove.slurm")
    max_submit_jobs(3)
    instance = executor(arrays=False, scontrol=["true"])
    with weave() as w:
        @w.do(range(7), environment="slurm")
        def slow(x):
            time.sleep(1)
            return x

    assert w.result.slow == list(range(7))
    assert len(instance.adapter.submissions) == 7
    assert "sbatch refused by a submit limit; waiting for room" in caplog.text
    assert squeue_jobs(prefix) == []


def test_limit_used_up_by_other_jobs_is_a_clear_error(executor, max_submit_jobs, prefix):
    max_submit_jobs(2)
    held = [subprocess.run(["sbatch", "--parsable", "--hold", f"--job-name={prefix}-other", "--mem=10M",
                            f"--output={os.devnull}", "--wrap", "true"], capture_output=True, text=True,
                           check=True).stdout.strip() for _ in range(2)]
    try:
        executor(submit_retry_seconds=2)
        started = time.monotonic()
        with pytest.raises(SlurmSubmitLimitError, match=r"MaxSubmitJobs of association account=root user=root "
                           r"is 2 and 2 jobs already count against it") as info:
            with weave() as w:
                @w.do(range(5), environment="slurm")
                def blocked(x):
                    return x
        assert time.monotonic() - started < 30
        assert info.value.limit == 2 and info.value.used == 2
    finally:
        subprocess.run(["scancel", *held], check=True)
    assert wait_until(lambda: squeue_jobs(prefix) == [], timeout=30)


def test_max_queued_jobs_caps_a_weave_without_cluster_limits(executor, prefix):
    instance = executor(max_queued_jobs=6)
    pending = []

    with weave() as w:
        @w.do(range(25), environment="slurm")
        def item(x):
            time.sleep(0.3)
            return x

        @w.do
        def watch():
            # sample squeue while the map runs: never more than 6 of ours waiting to start
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                rows = squeue_jobs(prefix)
                pending.append(sum(row.endswith("PENDING") for row in rows))
                if not rows and sum(c["items"] for c in instance.adapter.submissions) == 25:
                    return
                time.sleep(0.05)

    assert w.result.item == list(range(25))
    calls = instance.adapter.submissions
    assert len(calls) >= 5 and all(call["elements"] <= 6 for call in calls)
    assert max(call["awaited"] for call in calls) <= 6, [call["awaited"] for call in calls]
    assert 0 < max(pending) <= 6, pending


def test_doctor_reports_the_submit_limit(max_submit_jobs, tmp_path):
    max_submit_jobs(4)
    result = subprocess.run([sys.executable, "-m", "wove.slurm", "doctor", "--timeout", "60"], capture_output=True,
                            text=True, cwd=tmp_path, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert ("[PASS] submit limits: MaxSubmitJobs of association account=root user=root is 4, 0 in use, room for "
            "4 more job(s); larger maps are paced") in result.stdout, result.stdout
