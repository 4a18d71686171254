"""Per-user submit limits (MaxSubmitJobs and kin): arrays sized to the room left, the rest paced (issue 6)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest
from slurm_helpers import peak_overlap, squeue_jobs, wait_until

from wove import weave
from wove.errors import SlurmSubmitLimitError
from wove.slurm.limits import read_submit_limit

# Parsing and pacing without a cluster: tests/unit/test_limits_offline.py.


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
    assert sum(room.waits for room in instance.adapter.pacer.rooms.values()) > 0   # it did wait for room
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
    count, peak = peak_overlap(spans)
    assert count == 24 and peak <= 3, peak
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
    assert [room.limit.limit for room in instance.adapter.pacer.rooms.values()] == [10]   # read after the refusal
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
    learned = [room.learned for room in instance.adapter.pacer.rooms.values()]
    assert len(learned) == 1 and 1 <= learned[0] <= 10, learned   # 30 -> 15 -> 7 (or less)
    assert squeue_jobs(prefix) == []
