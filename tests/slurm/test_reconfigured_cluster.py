"""The cluster restarted without accounting and with a lowered MaxArraySize (issues 5 and 6).

Real clusters exist without slurmdbd; there ``sacct`` fails and wove must rely on ``squeue``/``scontrol``.
The module restarts the local cluster with ``WOVE_SLURM_ACCOUNTING=0 WOVE_SLURM_MAX_ARRAY_SIZE=50`` and
puts the default configuration back afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from slurm_helpers import squeue_jobs, wait_until

from wove import weave
from wove.errors import SlurmCancelledError, SlurmJobFailedError, SlurmOutOfMemoryError
from wove.slurm import cli as slurm_cli
from wove.slurm.executor import SlurmExecutor

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "local-slurm.sh"


def _restart(**env):
    result = subprocess.run([str(SCRIPT), "restart"], env={**os.environ, **env}, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


@pytest.fixture(scope="module", autouse=True)
def reconfigured():
    _restart(WOVE_SLURM_ACCOUNTING="0", WOVE_SLURM_MAX_ARRAY_SIZE="50")
    slurm_cli._max_array_cache.clear()
    try:
        yield
    finally:
        _restart(WOVE_SLURM_ACCOUNTING="1", WOVE_SLURM_MAX_ARRAY_SIZE="1001")
        slurm_cli._max_array_cache.clear()


def test_accounting_is_really_off():
    result = subprocess.run(["sacct", "-n", "-X"], capture_output=True, text=True)
    assert result.returncode != 0
    assert "accounting storage is disabled" in result.stderr.lower()


def _allocate_too_much():
    block = bytearray(600 * 1024 * 1024)
    for index in range(0, len(block), 4096):
        block[index] = 1


def test_failures_are_classified_without_accounting(slurm_env, prefix, tmp_path):
    slurm_env(mem="100M")
    started_flag = tmp_path / "started"

    def killed():
        os.kill(os.getpid(), 9)

    def cancelled_outside():
        Path(started_flag).touch()
        time.sleep(600)

    def cancel_it():
        wait_until(started_flag.exists, timeout=60)
        job = next(line.split()[0] for line in squeue_jobs(prefix) if "cancelled_outside" in line)
        subprocess.run(["scancel", job], check=True)

    thread = threading.Thread(target=cancel_it)
    thread.start()
    with weave(error_mode="return") as w:
        w.do(environment="slurm")(_allocate_too_much)
        w.do(environment="slurm")(killed)
        w.do(environment="slurm")(cancelled_outside)
    thread.join()
    assert type(w.result._allocate_too_much) is SlurmOutOfMemoryError
    assert type(w.result.killed) is SlurmJobFailedError and "SIGKILL" in str(w.result.killed)
    assert type(w.result.cancelled_outside) is SlurmCancelledError
    assert squeue_jobs(prefix) == []


def test_map_is_chunked_at_the_clusters_max_array_size(prefix, tmp_path):
    import wove

    instance = SlurmExecutor()
    wove.config(environments={"slurm": {"executor": instance, "executor_config": {
        "job_name_prefix": prefix, "spool_dir": str(tmp_path), "mem": "50M"}}})
    with weave() as w:
        @w.do(range(120), environment="slurm")
        def item(x):
            return -x

    assert w.result.item == [-x for x in range(120)]
    assert sorted(call["items"] for call in instance.adapter.submissions) == [20, 50, 50]
    assert max(r.array_index for r in w.result.jobs["item"]) == 49


def test_doctor_warns_about_accounting_but_passes(tmp_path):
    result = subprocess.run([sys.executable, "-m", "wove.slurm", "doctor", "--timeout", "60"], capture_output=True,
                            text=True, cwd=tmp_path, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARN] sacct (accounting)" in result.stdout
    assert "[PASS] probe task round trip" in result.stdout
