"""Durable weaves on the real cluster (issue 13): a sweep outlives the driver that runs it.

The driver is a real Python process running a script; it is killed with SIGKILL mid-sweep and the same
script is run again with the same journal.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

from slurm_helpers import squeue_jobs, wait_until

SCRIPT = textwrap.dedent("""
    import json, sys, time, wove
    from wove import weave

    journal, spool, prefix, slow = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    per_job = int(sys.argv[5]) if len(sys.argv) > 5 else 1
    wove.config(journal=journal, environments={"slurm": {"executor": "slurm", "executor_config": {
        "job_name_prefix": prefix, "spool_dir": spool, "mem": "100M", "items_per_job": per_job}}})

    started = time.monotonic()
    with weave() as w:
        @w.do(range(30), environment="slurm")
        def sweep(i):
            import time
            time.sleep(1 if i < 15 else slow)
            return i * 10

        @w.do
        def total(sweep):
            return sum(sweep)
    print(json.dumps({"total": w.result.total, "seconds": time.monotonic() - started,
                      "states": sorted(r.state if isinstance(r.state, str) else r.state.value
                                       for r in w.result.jobs["sweep"]),
                      "reattached": sum(r.details.get("journal") == "reattached" for r in w.result.jobs["sweep"])}))
""")


def _elements(prefix: str) -> list[str]:
    """Every job or array element ever submitted under ``prefix`` (from accounting)."""
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,JobName", "-S", "now-1hour"],
                         capture_output=True, text=True, check=True).stdout
    return sorted({line.split("|")[0] for line in out.splitlines() if line.split("|")[1].startswith(prefix)})


def _done_lines(journal) -> int:
    try:
        with open(os.path.join(journal, "entries.jsonl")) as handle:
            return sum('"s":"done"' in line and '"t":"sweep"' in line for line in handle)
    except OSError:
        return 0


def _done_items(journal) -> int:
    """Items of ``sweep`` journaled as done, one line per item or one per packed flush."""
    count = 0
    try:
        with open(os.path.join(journal, "entries.jsonl")) as handle:
            for line in handle:
                if '"s":"done"' in line and '"t":"sweep"' in line:
                    record = json.loads(line.rsplit(" ", 1)[0])
                    count += len(record["m"]) if "m" in record else 1
    except OSError:
        pass
    return count


def _run(tmp_path, prefix, slow, per_job=1, **popen):
    script = tmp_path / "sweep.py"
    script.write_text(SCRIPT)
    argv = [sys.executable, str(script), str(tmp_path / "journal"), str(tmp_path / "spool"), prefix, str(slow),
            str(per_job)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def test_killed_driver_rerun_collects_every_result_without_resubmitting(tmp_path, prefix):
    first = _run(tmp_path, prefix, 40)
    try:
        assert wait_until(lambda: _done_lines(tmp_path / "journal") >= 15, 90), "the fast half never finished"
        time.sleep(1)   # the slow half is running
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=30)
    killed_at = time.monotonic()
    assert len(squeue_jobs(prefix)) == 15   # the survivors keep running: their results are wanted

    second = _run(tmp_path, prefix, 40)
    out, err = second.communicate(timeout=180)
    assert second.returncode == 0, err
    report = json.loads(out.splitlines()[-1])
    assert report["total"] == sum(i * 10 for i in range(30))
    assert report["states"].count("JOURNALED") == 15 and report["reattached"] == 15
    assert len(_elements(prefix)) == 30          # nothing was submitted twice
    # The rerun waited for the survivors (40 s from their start), it did not run them again from scratch.
    assert time.monotonic() - killed_at < 40 + 20

    # A finished sweep run again: everything read back, nothing submitted, in well under 2 s of weave time.
    third = _run(tmp_path, prefix, 40)
    out, err = third.communicate(timeout=60)
    assert third.returncode == 0, err
    report = json.loads(out.splitlines()[-1])
    assert report["states"] == ["JOURNALED"] * 30 and report["seconds"] < 2.0
    assert len(_elements(prefix)) == 30
    shown = _wove("journal", str(tmp_path / "journal"))
    assert ": 31 call(s): 31 done, 0 submitted" in shown   # 30 items and the reduction


def test_killed_driver_of_a_packed_sweep_reattaches_its_elements(tmp_path, prefix):
    """Five items to an array element: the driver dies when the three fast elements are done; the rerun
    reads their 15 items back, reattaches the three running elements (no new job) and collects them."""
    first = _run(tmp_path, prefix, 8, per_job=5)
    try:
        assert wait_until(lambda: _done_items(tmp_path / "journal") >= 15, 90), "the fast half never finished"
        time.sleep(1)
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=30)
    killed_at = time.monotonic()
    assert len(squeue_jobs(prefix)) == 3   # the slow elements keep running

    second = _run(tmp_path, prefix, 8, per_job=5)
    out, err = second.communicate(timeout=180)
    assert second.returncode == 0, err
    report = json.loads(out.splitlines()[-1])
    assert report["total"] == sum(i * 10 for i in range(30))
    assert report["states"].count("JOURNALED") == 15 and report["reattached"] == 15
    assert len(_elements(prefix)) == 6           # six elements, none submitted twice
    assert time.monotonic() - killed_at < 40 + 20

    third = _run(tmp_path, prefix, 8, per_job=5)
    out, err = third.communicate(timeout=60)
    assert third.returncode == 0, err
    report = json.loads(out.splitlines()[-1])
    assert report["states"] == ["JOURNALED"] * 30 and report["seconds"] < 2.0
    assert len(_elements(prefix)) == 6
    assert ": 31 call(s): 31 done, 0 submitted" in _wove("journal", str(tmp_path / "journal"))


def test_a_hang_up_leaves_a_journaled_sweep_running_for_the_rerun(tmp_path, prefix):
    """SIGHUP (an SSH session closed) or SIGTERM is not a decision to give up a journaled sweep: the jobs
    keep running, the journal is written out, and the rerun collects everything."""
    first = _run(tmp_path, prefix, 40)
    try:
        assert wait_until(lambda: _done_lines(tmp_path / "journal") >= 15, 90), "the fast half never finished"
        time.sleep(1)
        hung_up = time.monotonic()
        first.send_signal(signal.SIGHUP)
        _, err = first.communicate(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == -signal.SIGHUP      # ended as the signal says, as without wove
    assert time.monotonic() - hung_up < 10         # without cancelling or draining anything
    assert "SIGHUP: leaving 15 Slurm jobs running for the journal" in err
    assert len(squeue_jobs(prefix)) == 15

    second = _run(tmp_path, prefix, 40)
    out, err = second.communicate(timeout=180)
    assert second.returncode == 0, err
    report = json.loads(out.splitlines()[-1])
    assert report["total"] == sum(i * 10 for i in range(30)) and report["reattached"] == 15
    assert len(_elements(prefix)) == 30


CHANGING = textwrap.dedent("""
    import json, sys, wove
    from wove import weave

    journal, spool, prefix, items, factor = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
    wove.config(journal=journal, environments={"slurm": {"executor": "slurm", "executor_config": {
        "job_name_prefix": prefix, "spool_dir": spool, "mem": "100M"}}})
    with weave() as w:
        @w.do(json.loads(items), environment="slurm")
        def scaled(i):
            return i * 10

        @w.do(environment="slurm")
        def tail():
            return "tail" * factor
    print(json.dumps({"scaled": w.result.scaled, "tail": w.result.tail}))
""")


def test_a_changed_argument_or_body_resubmits_exactly_the_affected_calls(tmp_path, prefix):
    script = tmp_path / "changing.py"
    script.write_text(CHANGING)

    def run(items, factor, body="i * 10"):
        script.write_text(CHANGING.replace("return i * 10", f"return {body}"))
        argv = [sys.executable, str(script), str(tmp_path / "journal"), str(tmp_path / "spool"), prefix,
                json.dumps(items), str(factor)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.splitlines()[-1])

    def submitted() -> int:   # accounting lags a moment behind the jobs
        wait_until(lambda: len(_elements(prefix)) >= expected, 30)
        return len(_elements(prefix))

    assert run([1, 2, 3], 1) == {"scaled": [10, 20, 30], "tail": "tail"}
    expected = 4
    assert submitted() == 4
    # one argument changed (3 -> 4): that call alone goes out again
    assert run([1, 2, 4], 1) == {"scaled": [10, 20, 40], "tail": "tail"}
    expected = 5
    assert submitted() == 5
    # the mapped function's body changed: its three calls go out again, `tail` is read back
    assert run([1, 2, 4], 1, body="i * 100") == {"scaled": [100, 200, 400], "tail": "tail"}
    expected = 8
    assert submitted() == 8
    # a global the other task reads changed: only that task goes out again
    assert run([1, 2, 4], 2, body="i * 100") == {"scaled": [100, 200, 400], "tail": "tailtail"}
    expected = 9
    assert submitted() == 9


LEASE_SCRIPT = textwrap.dedent("""
    import sys, wove
    from wove import weave

    spool, prefix, markers = sys.argv[1], sys.argv[2], sys.argv[3]
    wove.config(environments={"slurm": {"executor": "slurm", "executor_config": {
        "job_name_prefix": prefix, "spool_dir": spool, "mem": "100M", "orphan_grace": 10}}})

    with weave() as w:
        @w.do(range(6), environment="slurm", workers=2)
        def long(i):
            import os, time
            open(os.path.join(markers, str(i)), "w").close()
            time.sleep(300)
""")


def test_without_a_journal_a_killed_drivers_jobs_stop(tmp_path, prefix):
    markers = tmp_path / "markers"
    markers.mkdir()
    script = tmp_path / "lease.py"
    script.write_text(LEASE_SCRIPT)
    driver = subprocess.Popen([sys.executable, str(script), str(tmp_path / "spool"), prefix, str(markers)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: len(os.listdir(markers)) >= 2, 60), "the first two items never started"
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.communicate(timeout=30)
    killed_at = time.monotonic()
    assert len(squeue_jobs(prefix)) == 6      # 2 running, 4 pending behind the %2 throttle

    try:
        assert wait_until(lambda: not squeue_jobs(prefix), 90, interval=1.0), squeue_jobs(prefix)
        gone_after = time.monotonic() - killed_at
        assert gone_after < 60                 # about a minute at most (orphan_grace 10 s here)
        assert sorted(os.listdir(markers)) == ["0", "1"]   # the pending items never ran their task
    finally:
        subprocess.run(["scancel", "--name", f"{prefix}-long"], check=False)
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,JobName,ExitCode", "-S", "now-1hour"],
                         capture_output=True, text=True, check=True).stdout
    codes = sorted(line.split("|")[2] for line in out.splitlines() if line.split("|")[1].startswith(prefix))
    # Stopped ones exit by SIGTERM's status, never-started ones with 5 (``dispatch.lease.EXIT_ORPHANED``).
    # (accounting lists array elements that never started late, so only their exit statuses are checked)
    assert "0:0" not in codes and "5:0" in codes, codes

    # What the dead driver left is found, listed with its jobs, and removed on request.
    spool = str(tmp_path / "spool")
    listed = _wove("cleanup", "--spool-dir", spool, "--grace", "10")
    (run_dir,) = [d for d in os.listdir(spool) if d != "logs"]
    assert f"{os.path.join(spool, run_dir)}: driver gone" in listed, listed
    assert "not journaled; 6 job(s) submitted" in listed, listed
    _wove("cleanup", "--spool-dir", spool, "--grace", "10", "--cancel")
    assert [d for d in os.listdir(spool) if d != "logs"] == []
    assert "nothing left by dead drivers" in _wove("cleanup", "--spool-dir", spool)


def _wove(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "wove", *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


FINISH_ALONE = textwrap.dedent("""
    import json, sys, wove
    from wove import weave

    journal, spool, prefix = sys.argv[1], sys.argv[2], sys.argv[3]
    wove.config(journal=journal, environments={"slurm": {"executor": "slurm", "executor_config": {
        "job_name_prefix": prefix, "spool_dir": spool, "mem": "100M"}}})
    with weave() as w:
        @w.do(range(4), environment="slurm")
        def work(i):
            import time
            time.sleep(6)
            return {"item": i, "big": "x" * 5_000_000 if i == 3 else ""}   # one result too big to inline
    print(json.dumps({"items": [r["item"] for r in w.result.work], "big": len(w.result.work[3]["big"]),
                      "reattached": sum(r.details.get("journal") == "reattached" for r in w.result.jobs["work"])}))
""")


def test_results_finished_while_no_driver_lived_are_collected(tmp_path, prefix):
    script = tmp_path / "alone.py"
    script.write_text(FINISH_ALONE)
    argv = [sys.executable, str(script), str(tmp_path / "journal"), str(tmp_path / "spool"), prefix]
    first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: len([j for j in squeue_jobs(prefix) if j.endswith("RUNNING")]) == 4, 60)
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=30)
    # The jobs finish with nobody listening: each leaves its outcome in the spool (exit 4).
    assert wait_until(lambda: not squeue_jobs(prefix), 90, interval=1.0)
    def exit_codes() -> list[str]:   # accounting may lag a moment behind the jobs' end
        out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobName,ExitCode", "-S", "now-1hour"],
                             capture_output=True, text=True, check=True).stdout
        return sorted(line.split("|")[1] for line in out.splitlines() if line.startswith(prefix))
    assert wait_until(lambda: exit_codes() == ["4:0"] * 4, 30), exit_codes()

    second = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    report = json.loads(second.stdout.splitlines()[-1])
    assert report == {"items": [0, 1, 2, 3], "big": 5_000_000, "reattached": 4}
    assert len(_elements(prefix)) == 4          # collected, not run again
    assert [d for d in os.listdir(tmp_path / "spool") if d != "logs"] == []   # the old run's files are gone
