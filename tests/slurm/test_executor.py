"""The user's Slurm page, end to end on the real local cluster (issue 4)."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
from slurm_helpers import all_jobs, squeue_jobs, wait_until

import wove
import wove.slurm
from wove import weave
from wove.errors import SlurmCommandError


class RemoteBoom(Exception):
    pass


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_seed_configuration_verbatim(tmp_path, prefix):
    port = _free_port()
    wove.config(
        default_environment="slurm",
        environments={
            "slurm": {
                "executor": "slurm",
                "executor_config": {
                    "command": "python -m wove.backend_worker",
                    "callback_token": "shared-secret",
                    "callback_url": f"http://127.0.0.1:{port}/wove/events/shared-secret",
                    # ours, to keep the test's jobs and files apart:
                    "callback_port": port,
                    "job_name_prefix": prefix,
                    "spool_dir": str(tmp_path),
                },
            }
        },
    )
    with weave(x=20) as w:
        @w.do
        def double(x):
            return x * 2, os.environ.get("SLURM_JOB_ID")

    value, job_id = w.result.double
    assert value == 40
    assert job_id and job_id == w.result.jobs["double"][0].job_id
    assert squeue_jobs(prefix) == []


def test_default_path_runs_sbatch_wrap_with_job_name_and_payload_in_environment(slurm_env, prefix):
    with weave() as w:
        @w.do(environment="slurm")
        def where():
            return os.environ.get("SLURM_JOB_NAME"), "WOVE_BACKEND_PAYLOAD" in os.environ

        @w.do(environment="default")
        def here():
            return os.environ.get("SLURM_JOB_ID")

    name, has_payload = w.result.where
    assert name == f"{prefix}-where"
    assert has_payload
    assert w.result.here is None  # the local task did not run in a job
    job_id = w.result.jobs["where"][0].job_id
    script = subprocess.run(["scontrol", "write", "batch_script", job_id, "-"], capture_output=True, text=True)
    assert script.returncode == 0, script.stderr
    assert "python -m wove.backend_worker" in script.stdout
    assert "sbatch --wrap" in script.stdout


def test_results_exceptions_and_local_tasks_mix(slurm_env, prefix):
    with weave(error_mode="return", base=3) as w:
        @w.do
        def local_start(base):
            return base + 1

        @w.do(environment="slurm")
        def remote_square(local_start):
            return local_start ** 2

        @w.do(environment="slurm")
        def remote_fails():
            raise RemoteBoom("remote side failed")

        @w.do
        def local_end(remote_square):
            return remote_square + 1

    assert w.result.remote_square == 16
    assert w.result.local_end == 17
    error = w.result.remote_fails
    assert type(error) is RemoteBoom and str(error) == "remote side failed"
    assert "remote traceback" in str(error.__cause__)
    assert squeue_jobs(prefix) == []


@pytest.mark.parametrize("style", ["sync", "async"])
def test_custom_submit_callable_with_public_helpers(slurm_env, prefix, style):
    calls = []

    def submit_sync(payload, frame, config):
        calls.append((payload["task_name"], frame["type"], config["job_name_prefix"]))
        env = {**os.environ, **wove.slurm.job_environment(payload)}
        out = subprocess.run(["sbatch", "--parsable", f"--job-name={wove.slurm.job_name(payload, config)}",
                              f"--output={payload['log_dir']}/%j.out",
                              "--mem=200M", "--comment=custom-submit", "--wrap", wove.slurm.worker_command(config)],
                             env=env, capture_output=True, text=True, check=True).stdout
        return wove.slurm.parse_job_id(out)

    async def submit_async(payload, frame, config):
        calls.append((payload["task_name"], frame["type"], config["job_name_prefix"]))
        return await wove.slurm.submit_job(payload, "--mem=200M", "--comment=custom-submit", config=config)

    slurm_env(submit=submit_sync if style == "sync" else submit_async)
    with weave() as w:
        @w.do(environment="slurm")
        def task_a():
            return "a-ran"

        @w.do([1, 2, 3], environment="slurm")
        def task_b(x):
            return x * 10

    assert w.result.task_a == "a-ran"
    assert w.result.task_b == [10, 20, 30]
    assert sorted(calls) == sorted([("task_a", "run_task", prefix)] + [("task_b", "run_task", prefix)] * 3)
    job = w.result.jobs["task_a"][0].job_id
    shown = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
    assert "Comment=custom-submit" in shown
    assert squeue_jobs(prefix) == []


def test_custom_submit_returning_nothing_is_a_clear_error(slurm_env):
    slurm_env(submit=lambda payload, frame, config: None)
    with pytest.raises(SlurmCommandError, match="returned None"):
        with weave() as w:
            @w.do(environment="slurm")
            def task():
                return 1


def test_options_command_sbatch_scancel_prefix(slurm_env, prefix, tmp_path):
    marker = tmp_path / "command-ran"
    slurm_env(
        command=f"touch {marker} && python -m wove.backend_worker",
        sbatch=["sbatch", "--comment=from-base-list"],  # no --parsable: "Submitted batch job N" is parsed
        scancel=["scancel", "--full"],
        job_name_prefix=prefix + "x",
    )
    with weave() as w:
        @w.do(environment="slurm")
        def ok():
            return os.environ["SLURM_JOB_NAME"]

    assert w.result.ok == f"{prefix}x-ok"
    assert marker.exists()
    shown = subprocess.run(["scontrol", "show", "job", w.result.jobs["ok"][0].job_id], capture_output=True,
                           text=True).stdout
    assert "Comment=from-base-list" in shown


def test_weave_timeout_cancels_the_job(slurm_env, prefix):
    started = time.monotonic()
    with pytest.raises(asyncio.TimeoutError):
        with weave() as w:
            @w.do(environment="slurm", timeout=3)
            def sleeper():
                time.sleep(120)
    assert time.monotonic() - started < 60
    assert squeue_jobs(prefix) == []
    states = {row["state"] for row in all_jobs(prefix)}
    assert states <= {"CANCELLED", "COMPLETED", "FAILED"}, states


def test_sibling_error_cancels_running_and_queued_jobs(slurm_env, prefix):
    with pytest.raises(RemoteBoom):
        with weave() as w:
            @w.do([1, 2, 3, 4], environment="slurm")
            def long_items(x):
                time.sleep(300)

            @w.do(environment="slurm")
            def fails_soon():
                time.sleep(2)
                raise RemoteBoom("sibling failed")

    assert squeue_jobs(prefix) == []
    assert "long_items" in w.result.cancelled
    cancelled = [row for row in all_jobs(prefix) if row["name"] == f"{prefix}-long_items"]
    assert cancelled and all(row["state"] == "CANCELLED" for row in cancelled), cancelled


def test_no_job_left_after_keyboard_interrupt(tmp_path, prefix):
    script = tmp_path / "interrupted.py"
    ready = tmp_path / "ready"
    script.write_text(textwrap.dedent(f"""
        import pathlib, time, wove
        from wove import weave
        wove.config(environments={{"slurm": {{"executor": "slurm", "executor_config": {{
            "job_name_prefix": "{prefix}", "spool_dir": "{tmp_path / 'spool'}", "mem": "200M"}}}}}})
        with weave() as w:
            @w.do([1, 2, 3], environment="slurm")
            def forever(x):
                pathlib.Path("{ready}").touch()
                time.sleep(600)
    """))
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        assert wait_until(ready.exists, timeout=60), "no job started"
        assert squeue_jobs(prefix)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert "KeyboardInterrupt" in err
    assert squeue_jobs(prefix) == []
    assert all(row["state"] == "CANCELLED" for row in all_jobs(prefix))
    assert not list((tmp_path / "spool").glob("slurm-*/*.payload*"))


def test_payload_and_token_never_visible_in_scontrol_squeue_or_ps(slurm_env, prefix, tmp_path):
    slurm_env(callback_token="tok-" + prefix)
    seen = {}
    secret_arg = "visible-argument-" + prefix

    with weave() as w:
        @w.do(environment="slurm")
        def look(secret=secret_arg):
            job = os.environ["SLURM_JOB_ID"]
            payload = os.environ["WOVE_BACKEND_PAYLOAD"]
            shown = subprocess.run(["scontrol", "show", "job", "-d", job], capture_output=True, text=True).stdout
            queue = subprocess.run(["squeue", "-h", "-j", job, "-o", "%o %j %k"], capture_output=True,
                                   text=True).stdout
            ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
            return payload, shown, queue, ps

    payload, shown, queue, ps = w.result.look
    decoded = base64.b64decode(payload).decode()
    assert "callable_pickle" in decoded
    token = "tok-" + prefix
    for text in (shown, queue, ps):
        assert payload[:200] not in text
        assert token not in text
        assert "callable_pickle" not in text
    seen["ok"] = True
    assert seen


def test_hundred_megabyte_argument_travels_by_spool(slurm_env, prefix, tmp_path):
    blob = os.urandom(100 * 1024 * 1024)
    slurm_env(mem="1G")
    with weave(blob=blob) as w:
        @w.do(environment="slurm")
        def digest(blob):
            import hashlib

            from wove.dispatch import protocol
            payload = protocol.read_payload(os.environ["WOVE_BACKEND_PAYLOAD"])[0]
            return len(blob), hashlib.sha256(blob).hexdigest(), [field[:6] for _, field in payload["shared"]]

    import hashlib
    size, remote_digest, references = w.result.digest
    assert size == len(blob)
    assert remote_digest == hashlib.sha256(blob).hexdigest()
    assert references == ["spool:"]   # the argument travels as a file of its own (a shared input), not inline
    assert not list((tmp_path / "spool").rglob("*.payload"))


def test_sbatch_error_carries_exit_code_and_stderr(slurm_env):
    slurm_env(partition="no-such-partition")
    with pytest.raises(SlurmCommandError) as caught:
        with weave() as w:
            @w.do(environment="slurm")
            def never():
                return 1
    error = caught.value
    assert error.returncode == 1
    assert "invalid partition" in error.stderr.lower()
    assert "invalid partition" in str(error).lower()
    assert "sbatch" in str(error)


def test_two_hundred_item_map_in_order(slurm_env, prefix):
    with weave() as w:
        @w.do(range(200), environment="slurm")
        def cube(x):
            return x ** 3

    assert w.result.cube == [x ** 3 for x in range(200)]
    records = w.result.jobs["cube"]
    assert sorted(r.map_index for r in records) == list(range(200))
    assert all(r.state == "COMPLETED" for r in records)
    assert squeue_jobs(prefix) == []


def test_event_loop_stays_free_while_a_thousand_items_submit(slurm_env, prefix):
    ticks = []

    async def main():
        async with weave() as w:
            @w.do(range(1000), environment="slurm")
            def item(x):
                return x + 1

            @w.do
            async def ticker():
                for _ in range(50):
                    ticks.append(time.monotonic())
                    await asyncio.sleep(0.02)
                return len(ticks)
        return w.result

    result = asyncio.run(main())
    assert result.item == [x + 1 for x in range(1000)]
    assert result.ticker == 50
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    assert max(gaps) < 1.0, f"the loop was blocked for {max(gaps):.2f}s"
    assert squeue_jobs(prefix) == []
