"""Submit limits without a cluster: parsing ``scontrol show assoc_mgr`` and the room that paces submissions.

The real cluster's side (limits set with sacctmgr, maps paced under them) is in tests/slurm/test_submit_limits.py;
outputs recorded from the real controller are parsed in tests/unit/test_slurm_parsers.py.
"""

from __future__ import annotations

import asyncio
import pickle
import time

import pytest

import wove
from wove.errors import SlurmCommandError, SlurmSubmitLimitError
from wove.slurm.limits import SubmitLimit, SubmitRoom, parse_assoc_mgr

# What `scontrol show assoc_mgr users=alice flags=assoc,qos` prints (Slurm 22.05), trimmed: alice's default
# association is in account physics (a child of root); she also has one in account side; chem is unrelated.
ASSOC_MGR = """\
Current Association Manager state

Association Records

ClusterName=c Account=root UserName= Partition= Priority=0 ID=1
    ParentAccount= Lft=1 DefAssoc=No
    GrpJobs=N(3) GrpJobsAccrue=N(0)
    GrpSubmitJobs=900(60) GrpWall=N(0.00)
    MaxJobs=1(0) MaxJobsAccrue= MaxSubmitJobs=2(0) MaxWallPJ=
ClusterName=c Account=physics UserName= Partition= Priority=0 ID=3
    ParentAccount=root(1) Lft=2 DefAssoc=No
    GrpSubmitJobs=N(44) GrpWall=N(0.00)
ClusterName=c Account=chem UserName= Partition= Priority=0 ID=5
    ParentAccount=root(1) Lft=6 DefAssoc=No
    GrpSubmitJobs=5(5) GrpWall=N(0.00)
ClusterName=c Account=side UserName= Partition= Priority=0 ID=7
    ParentAccount=root(1) Lft=8 DefAssoc=No
    GrpSubmitJobs=N(0) GrpWall=N(0.00)
ClusterName=c Account=physics UserName=alice(1000) Partition= Priority=0 ID=4
    ParentAccount= Lft=3 DefAssoc=Yes
    GrpSubmitJobs=N(5) GrpWall=N(0.00)
    MaxJobs=3(3) MaxJobsAccrue= MaxSubmitJobs=100(37) MaxWallPJ=
ClusterName=c Account=side UserName=alice(1000) Partition= Priority=0 ID=8
    ParentAccount= Lft=9 DefAssoc=No
    MaxJobs= MaxJobsAccrue= MaxSubmitJobs=10(10) MaxWallPJ=
ClusterName=c Account=physics UserName=bob(1001) Partition= Priority=0 ID=6
    ParentAccount= Lft=4 DefAssoc=Yes
    MaxJobs= MaxJobsAccrue= MaxSubmitJobs=1(1) MaxWallPJ=

QOS Records

QOS=normal(1)
    GrpJobs=N(3) GrpJobsAccrue=N(2) GrpSubmitJobs=N(5) GrpWall=N(0.00)
    Account Limits
      physics
        MaxJobsPA=N(3) MaxJobsAccruePA=N(2) MaxSubmitJobsPA=N(5)
        MaxTRESPA=cpu=N(3),mem=N(750)
      chem
        MaxJobsPA=N(3) MaxJobsAccruePA=N(2) MaxSubmitJobsPA=1(1)
    User Limits
      1000
        MaxJobsPU=N(3) MaxJobsAccruePU=N(2) MaxSubmitJobsPU=80(5)
      1001
        MaxJobsPU=N(3) MaxJobsAccruePU=N(2) MaxSubmitJobsPU=2(2)
QOS=long(2)
    GrpJobs=N(0) GrpJobsAccrue=N(0) GrpSubmitJobs=10(0) GrpWall=N(0.00)
"""


# ------------------------------------------------------------------ parsing (no cluster needed)
def test_parse_reads_the_default_association_and_its_account_chain():
    limit = parse_assoc_mgr(ASSOC_MGR, 1000)
    # alice's own MaxSubmitJobs (63 free) is tighter than root's group limit (840) and the QOS (75);
    # chem, side, bob's limits and Max* on account records do not apply to her default association.
    assert (limit.limit, limit.used, limit.free) == (100, 37, 63)
    assert limit.source == "MaxSubmitJobs of association account=physics user=alice"
    tighter = ASSOC_MGR.replace("GrpSubmitJobs=900(60)", "GrpSubmitJobs=90(60)")
    limit = parse_assoc_mgr(tighter, 1000)
    assert (limit.limit, limit.used, limit.source) == (90, 60, "GrpSubmitJobs of association account=root")


def test_parse_honours_the_account_and_qos_the_job_uses():
    limit = parse_assoc_mgr(ASSOC_MGR, 1000, account="side")
    assert (limit.limit, limit.used, limit.free) == (10, 10, 0)
    assert limit.source == "MaxSubmitJobs of association account=side user=alice"
    roomy = ASSOC_MGR.replace("MaxSubmitJobs=100(37)", "MaxSubmitJobs=N(37)")
    limit = parse_assoc_mgr(roomy, 1000)
    assert (limit.limit, limit.used, limit.source) == (80, 5, "MaxSubmitJobsPU of QOS normal")
    limit = parse_assoc_mgr(roomy, 1000, qos="long")
    assert (limit.limit, limit.used, limit.source) == (10, 0, "GrpSubmitJobs of QOS long")


def test_parse_without_any_limit_is_none():
    assert parse_assoc_mgr(ASSOC_MGR, 4242, qos="other") is None   # no association of uid 4242
    assert parse_assoc_mgr("", 0) is None


# ------------------------------------------------------------------ the room (stand-in controller)
def _limit(limit, used):
    return SubmitLimit(limit, used, "MaxSubmitJobs of association account=a user=u")


def test_room_grants_what_is_free_and_waits_for_own_jobs_to_end():
    async def scenario():
        state = {"used": 7, "own": 0}

        async def read():
            return _limit(10, state["used"])

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


def test_room_rereads_a_stale_count_instead_of_waiting():
    async def scenario():
        state = {"used": 0}

        async def read():
            return _limit(4, state["used"])

        room = SubmitRoom(read, lambda: 0, patience=5.0)
        assert await room.take(4) == 4
        room.confirm(4)
        state["used"] = 0                        # those jobs ended already, the controller says so
        await asyncio.sleep(0.6)
        started = time.monotonic()
        assert await room.take(2) == 2
        assert time.monotonic() - started < 0.5

    asyncio.run(scenario())


def test_room_gives_up_once_when_others_hold_the_limit():
    async def scenario():
        async def read():
            return _limit(2, 2)

        room = SubmitRoom(read, lambda: 0, patience=0.5)
        started = time.monotonic()
        results = await asyncio.gather(*(room.take(1) for _ in range(4)), return_exceptions=True)
        assert all(isinstance(r, SlurmSubmitLimitError) for r in results), results
        assert time.monotonic() - started < 3    # the later requests do not wait their own patience again
        error = results[0]
        assert "MaxSubmitJobs of association account=a user=u is 2 and 2 jobs already count against it" in str(error)
        assert (error.limit, error.used) == (2, 2)
        copy = pickle.loads(pickle.dumps(error))   # it may cross a process boundary
        assert (type(copy), str(copy), copy.limit, copy.used, copy.source) == (
            SlurmSubmitLimitError, str(error), 2, 2, error.source)

    asyncio.run(scenario())


def test_room_counts_reservations_as_own_jobs_and_blames_the_full_limit():
    async def scenario():
        async def read():
            return _limit(100, 97)

        room = SubmitRoom(read, lambda: 0, patience=0.3, cap=50)
        assert await room.take(3) == 3           # sbatch for these is still running
        with pytest.raises(asyncio.TimeoutError):   # ours in flight: wait, do not fail
            await asyncio.wait_for(room.take(1), 1.0)
        room.release(3)
        with pytest.raises(SlurmSubmitLimitError, match="MaxSubmitJobs of association account=a user=u is 100"):
            await room.take(4, exact=True)

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


def test_room_keeps_the_last_limit_when_a_read_fails():
    async def scenario():
        calls = {"n": 0}

        async def read():
            calls["n"] += 1
            if calls["n"] > 1:
                raise SlurmCommandError("scontrol: controller away", ["scontrol"], 1, "")
            return _limit(5, 0)

        room = SubmitRoom(read, lambda: 0, patience=5.0)
        await room.ready()
        room.refused(0)
        await room.ready()
        assert calls["n"] == 2 and room.bound == 5 and room.limit.limit == 5

    asyncio.run(scenario())


@pytest.mark.parametrize("value", [0, -3, 2.5, True, "10"])
def test_invalid_max_queued_jobs_is_refused_at_config_time(value):
    with pytest.raises(ValueError, match=rf"executor_config\.max_queued_jobs must be an integer >= 1, got {value!r}"):
        wove.config(environments={"slurm": {"executor": "slurm", "executor_config": {"max_queued_jobs": value}}})
