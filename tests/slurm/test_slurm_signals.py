"""SIGTERM and SIGHUP to a driver with Slurm jobs (issue 12, point 2), on the real local cluster.

Each driver is a separate Python process running a 20-item Slurm map of ``time.sleep(300)``; the test waits
until its 20 jobs are pending or running in squeue, signals it, and reads squeue, the exit status and
stderr. The no-cluster side (installation rules, reference counts, Ctrl-C) is tests/core/test_signals.py.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap

import pytest
from slurm_helpers import all_jobs, squeue_jobs, wait_until

from wove import _signals, weave

DRIVER = textwrap.dedent("""
    import asyncio, signal, subprocess, sys, time, wove
    from wove import weave

    prefix, spool, mode = sys.argv[1:4]
    config = {"job_name_prefix": prefix, "spool_dir": spool, "mem": "100M"}
    if mode == "slow_scancel":
        config["scancel"] = [sys.argv[4]]
    wove.config(environments={"slurm": {"executor": "slurm", "executor_config": config}})
    if mode == "user_handler":
        def users_handler(signum, frame):
            out = subprocess.run(["squeue", "-h", "--array", "-o", "%j"], capture_output=True, text=True).stdout
            left = [name for name in out.split() if name.startswith(prefix)]
            print(f"user handler: signal {signum}, {len(left)} jobs in squeue", flush=True)
        signal.signal(signal.SIGTERM, users_handler)
    before = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP))
    print("SIGHUP ignored before:", signal.getsignal(signal.SIGHUP) == signal.SIG_IGN, flush=True)
    try:
        with weave() as w:
            @w.do(list(range(20)), environment="slurm")
            def sleeper(x):
                time.sleep(300)
    except asyncio.CancelledError:
        print("block raised CancelledError", flush=True)
    after = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP))
    print("handlers restored:", after == before, flush=True)
""")


class Driver:
    """A driver process whose stdout and stderr go to files, readable while it runs."""

    def __init__(self, tmp_path, prefix: str, mode: str = "plain", *, nohup: bool = False, extra=()):
        self.prefix = prefix
        script = tmp_path / "driver.py"
        script.write_text(DRIVER)
        self.out_path, self.err_path = tmp_path / "driver.out", tmp_path / "driver.err"
        command = ["nohup"] if nohup else []
        command += [sys.executable, str(script), prefix, str(tmp_path / "spool"), mode, *map(str, extra)]
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            # its own session: the teardown can end whatever it started (the slow scancel's sleep)
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                            start_new_session=True)

    def out(self) -> str:
        return self.out_path.read_text()

    def err(self) -> str:
        return self.err_path.read_text()

    def wait_for_jobs(self, count: int = 20) -> None:
        def queued():
            rows = [line.split() for line in squeue_jobs(self.prefix)]
            return len([row for row in rows if row[2] in ("PENDING", "RUNNING")]) >= count
        assert wait_until(queued, timeout=180, interval=0.5), (squeue_jobs(self.prefix), self.err())

    def close(self) -> None:
        """Teardown: end the driver and its children, and cancel whatever of its jobs is still queued."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(30)
        ids = [line.split()[0] for line in squeue_jobs(self.prefix)]
        if ids:
            subprocess.run(["scancel", *ids], capture_output=True)


@pytest.fixture
def driver(tmp_path, prefix):
    started = []

    def start(*args, **kwargs) -> Driver:
        started.append(Driver(tmp_path, prefix, *args, **kwargs))
        return started[-1]

    yield start
    for each in started:
        each.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_signal_cancels_every_job_and_exits_killed_by_it(driver, prefix, signum):
    run = driver()
    run.wait_for_jobs(20)
    run.process.send_signal(signum)
    assert wait_until(lambda: not squeue_jobs(prefix), timeout=10, interval=0.2), squeue_jobs(prefix)
    run.process.wait(timeout=90)
    assert run.process.returncode == -signum, (run.process.returncode, run.err())
    name = signal.Signals(signum).name
    assert f"wove: {name}: cancelling 20 Slurm jobs (drain_timeout 30 s); send again to exit at once" in run.err()
    assert "handlers restored" not in run.out(), "the driver went on after the signal"
    states = {row["state"] for row in all_jobs(prefix)}
    assert states <= {"CANCELLED"}, states


def test_under_nohup_sighup_is_survived_and_sigterm_still_cancels(driver, prefix):
    run = driver(nohup=True)
    run.wait_for_jobs(20)
    assert "SIGHUP ignored before: True" in run.out()
    run.process.send_signal(signal.SIGHUP)
    # A handler put over SIG_IGN would cancel at once (and print its line); the default would kill.
    assert not wait_until(lambda: run.process.poll() is not None or "wove: SIGHUP" in run.err(), timeout=5)
    assert len(squeue_jobs(prefix)) == 20, "the hang-up cancelled jobs"
    run.process.send_signal(signal.SIGTERM)
    assert wait_until(lambda: not squeue_jobs(prefix), timeout=10, interval=0.2), squeue_jobs(prefix)
    run.process.wait(timeout=90)
    assert run.process.returncode == -signal.SIGTERM, run.err()
    assert "wove: SIGHUP" not in run.err()


def test_users_handler_is_called_after_the_cancellation(driver, prefix):
    run = driver("user_handler")
    run.wait_for_jobs(20)
    run.process.send_signal(signal.SIGTERM)
    run.process.wait(timeout=90)
    out = run.out()
    assert run.process.returncode == 0, run.err()
    calls = re.findall(r"user handler: .*", out)
    assert calls == [f"user handler: signal {int(signal.SIGTERM)}, 0 jobs in squeue"], (out, run.err())
    assert "block raised CancelledError" in out
    assert "handlers restored: True" in out
    assert "wove: SIGTERM: cancelling 20 Slurm jobs" in run.err()
    assert squeue_jobs(prefix) == []


def test_second_signal_during_a_slow_drain_exits_at_once_naming_the_jobs(driver, prefix, tmp_path):
    slow = tmp_path / "slow-scancel"
    slow.write_text("#!/bin/sh\nsleep 120\nexec scancel \"$@\"\n")
    slow.chmod(0o700)
    run = driver("slow_scancel", extra=[slow])
    run.wait_for_jobs(20)
    run.process.send_signal(signal.SIGTERM)
    assert wait_until(lambda: "wove: SIGTERM: cancelling 20 Slurm jobs" in run.err(), timeout=30), run.err()
    run.process.send_signal(signal.SIGTERM)
    run.process.wait(timeout=30)   # the scancel it waits for sleeps 120 s: this is not the drain finishing
    err = run.err()
    assert run.process.returncode == -signal.SIGTERM, err
    match = re.search(r"wove: SIGTERM again: exiting now .*may be left: ([\d ]+) \(cancel them with: scancel "
                      r"([\d ]+)\)", err)
    assert match, err
    named = set(match.group(2).split())
    left = {line.split()[0].split("_")[0] for line in squeue_jobs(prefix)}
    assert left and left <= named, (left, named)


def test_handlers_are_restored_after_a_slurm_weave(slurm_env):
    before = {signum: signal.getsignal(signum) for signum in _signals.SIGNALS}
    seen = {}
    with weave() as w:
        @w.do(environment="slurm")
        def remote():
            return 1

        @w.do
        def look():
            seen.update({signum: signal.getsignal(signum) for signum in _signals.SIGNALS})

    assert w.result.remote == 1
    assert all(handler is _signals._handle for handler in seen.values()), seen
    assert {signum: signal.getsignal(signum) for signum in _signals.SIGNALS} == before
