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
from wove.errors import SlurmCommandError, SlurmSubmitLimitError
from wove.slurm.limits import SubmitLimit, SubmitRoom, parse_assoc_mgr, read_submit_limit

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


# ------------------------------------------------------------------ the real cluster
def _root_limit():
    return asyncio.run(read_submit_limit(["scontrol"]))


def _set_max_submit(value: int) -> None:
    subprocess.run(["sacctmgr", "-i", "modify", "user", "root", "set", f"maxsubmitjobs={value}"],
                   capture_output=True, text=True, check=True)
    # slurmdbd pushes the change to slurmctld asynchronously.
    wanted = (lambda limit: limit is not None and limit.limit == value) if value >= 0 else (lambda limit: limit is None)
    assert wait_until(lambda: wanted(_root_limit()), timeout=30), _root_limit()


@pytest.fixture
def max_submit_jobs():
    if subprocess.run(["sacctmgr", "-n", "list", "cluster"], capture_output=True).returncode != 0:
        pytest.fail("these tests need the local cluster's accounting (scripts/local-slurm.sh, the default)")
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True).stdout
    if "limits" not in config.split("AccountingStorageEnforce", 1)[1].split("\n")[0]:
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


def test_read_submit_limit_follows_the_account_chain(max_submit_jobs):
    def sacctmgr(*args):
        subprocess.run(["sacctmgr", "-i", *args], capture_output=True, text=True, check=True)

    sacctmgr("add", "account", "wovechild", "parent=root", "grpsubmitjobs=7")
    try:
        sacctmgr("add", "account", "wovegrand", "parent=wovechild")
        sacctmgr("add", "user", "root", "account=wovegrand")

        def read():
            return asyncio.run(read_submit_limit(["scontrol"], account="wovegrand"))
        limit = wait_until(read, timeout=30)
        assert (limit.limit, limit.source) == (7, "GrpSubmitJobs of association account=wovechild")
        assert _root_limit() is None   # root's default association is not under wovechild
    finally:
        subprocess.run(["sacctmgr", "-i", "delete", "user", "root", "account=wovegrand"], capture_output=True)
        subprocess.run(["sacctmgr", "-i", "delete", "account", "wovegrand"], capture_output=True)
        subprocess.run(["sacctmgr", "-i", "delete", "account", "wovechild"], capture_output=True)


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
    assert max(pending) <= 6, pending


def test_doctor_reports_the_submit_limit(max_submit_jobs, tmp_path):
    max_submit_jobs(4)
    result = subprocess.run([sys.executable, "-m", "wove.slurm", "doctor", "--timeout", "60"], capture_output=True,
                            text=True, cwd=tmp_path, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert ("[PASS] submit limits: MaxSubmitJobs of association account=root user=root is 4, 0 in use, room for "
            "4 more job(s); larger maps are paced") in result.stdout, result.stdout


def test_workers_cap_running_items_while_paced(executor, max_submit_jobs, tmp_path):
    max_submit_jobs(8)
    instance = executor()
    spans = tmp_path / "spans"

    with weave() as w:
        @w.do(range(24), environment="slurm", workers=3)
        def span(x):
            started = time.time()
            time.sleep(0.5)
            with open(spans, "a") as handle:   # one short line per append: atomic
                handle.write(f"{started} {time.time()}\n")
            return x

    assert w.result.span == list(range(24))
    edges = []
    for line in spans.read_text().splitlines():
        start, end = map(float, line.split())
        edges += [(start, 1), (end, -1)]
    running = peak = 0
    for _, step in sorted(edges):   # at equal times an end sorts before a start
        running += step
        peak = max(peak, running)
    assert len(edges) == 48 and peak <= 3, peak
    assert all(call["elements"] <= 3 for call in instance.adapter.submissions)


def _flaky_scontrol(tmp_path):
    """scontrol that fails the first limits query (a controller blip), then behaves."""
    marker = tmp_path / "failed-once"
    wrapper = tmp_path / "scontrol"
    wrapper.write_text(f'#!/bin/bash\nif [[ "$*" == *assoc_mgr* && ! -e {marker} ]]; then\n'
                       f'  touch {marker}; echo "slurm_load_assoc_mgr_info: Socket timed out" >&2; exit 1\nfi\n'
                       'exec scontrol "$@"\n')
    wrapper.chmod(0o755)
    return wrapper, marker


def test_array_refused_by_a_limit_read_too_late_goes_out_in_pieces(executor, max_submit_jobs, tmp_path, prefix):
    max_submit_jobs(10)
    wrapper, marker = _flaky_scontrol(tmp_path)
    instance = executor(scontrol=[str(wrapper)])
    with weave() as w:
        @w.do(range(30), environment="slurm")
        def item(x):
            return x + 1

    assert marker.exists()   # the first read failed: wove first tried one array of 30, which was refused
    assert w.result.item == list(range(1, 31))
    assert [room.limit.limit for room in instance.adapter._rooms.values()] == [10]   # read after the refusal
    calls = instance.adapter.submissions
    assert all(call["elements"] <= 10 for call in calls) and sum(call["items"] for call in calls) == 30
    assert squeue_jobs(prefix) == []


def test_a_limit_that_cannot_be_read_is_learned_from_refusals(executor, max_submit_jobs, prefix):
    max_submit_jobs(10)
    instance = executor(scontrol=["true"])   # prints nothing: no limit to read
    with weave() as w:
        @w.do(range(30), environment="slurm")
        def item(x):
            return x * 2

    assert w.result.item == [x * 2 for x in range(30)]
    calls = instance.adapter.submissions
    assert all(call["elements"] <= 10 for call in calls), [call["elements"] for call in calls]
    learned = [room.learned for room in instance.adapter._rooms.values()]
    assert len(learned) == 1 and 1 <= learned[0] <= 10, learned   # 30 -> 15 -> 7 (or less)
    assert squeue_jobs(prefix) == []


@pytest.mark.parametrize("value", [0, -3, 2.5, True, "10"])
def test_invalid_max_queued_jobs_is_refused_at_config_time(value):
    import wove

    with pytest.raises(ValueError, match=rf"executor_config\.max_queued_jobs must be an integer >= 1, got {value!r}"):
        wove.config(environments={"slurm": {"executor": "slurm", "executor_config": {"max_queued_jobs": value}}})
