"""Job logs are private like the spool, and the callback token never shows in them or in errors (issue 10).

Point 5 against the real local cluster: another user (a throwaway account, ``other_user`` in tests/users.py)
cannot read a job's stdout through the path ``scontrol show job`` shows, because log directories are 0700;
a log directory someone else made (or can write) is refused at start like a spool directory; a job that
cannot reach its weave names the callback URL in its log as ``/wove/events/…``, not with the token.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import stat
import tempfile
import uuid

import pytest
from slurm_helpers import closed_port

from wove import weave
from wove.errors import ExecutorStartError
from wove.slurm.executor import SlurmExecutor

pytestmark = pytest.mark.timeout(180)

SECRET = "user data SECRET-4f1d2c9a"   # the job imports this module too: a constant


@pytest.fixture
def shared_dir():
    """A directory under /tmp that other users can enter (0755, ours), removed afterwards."""
    path = tempfile.mkdtemp(prefix="wove-logsec-", dir="/tmp")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def mode_of(path: str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def print_secret():
    print(SECRET, flush=True)
    return "printed"


def test_other_users_cannot_read_job_output(executor, other_user, shared_dir):
    root = os.path.join(shared_dir, "spool")   # other users may enter the parent: only the modes protect
    instance = executor(spool_dir=root, keep_logs=True)
    with weave() as w:
        w.do(environment="slurm")(print_secret)
    assert w.result.print_secret == "printed"

    adapter = instance.adapter
    job_id = adapter.submissions[0]["job_id"]
    log_dir = adapter.log_dir
    out = os.path.join(log_dir, f"{job_id}.out")
    try:
        with open(out) as handle:
            assert SECRET in handle.read()   # kept (keep_logs=True), and it is the job's stdout
        attempt = other_user.run(f"cat {out}; ls {log_dir}; cat {os.path.join(root, 'logs')}/*/*.out")
        assert SECRET.encode() not in attempt.stdout
        assert attempt.returncode != 0 and b"Permission denied" in attempt.stderr
        assert os.path.dirname(log_dir) == os.path.join(root, "logs")
        assert mode_of(log_dir) == 0o700
        assert mode_of(root) == 0o700 and mode_of(os.path.join(root, "logs")) == 0o700   # wove made both
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)


def start_and_stop(instance: SlurmExecutor, **executor_config) -> None:
    async def cycle():
        await instance.start(environment_name="slurm", environment_config={"executor_config": executor_config},
                             run_config={})
        await instance.stop()

    asyncio.run(cycle())


def test_a_logs_directory_another_user_made_in_the_spool_root_is_refused(other_user, shared_dir):
    root = os.path.join(shared_dir, "spool")
    os.mkdir(root)
    os.chmod(root, 0o1777)   # a shared root of ours: others may create entries, so <root>/logs is checked
    logs = os.path.join(root, "logs")
    other_user.run(f"mkdir -m 0755 {logs}", check=True)
    with pytest.raises(ExecutorStartError) as info:
        start_and_stop(SlurmExecutor(), spool_dir=root)
    message = str(info.value)
    assert "log directory" in message and logs in message
    assert f"owner {other_user.name}" in message and "mode 0755" in message
    assert os.listdir(logs) == []
    assert os.listdir(root) == ["logs"]   # the run directory was removed again

    os.rmdir(logs)   # a symlink to their own directory instead: refused as well
    target = f"/tmp/wove-atk-logs-{uuid.uuid4().hex[:8]}"
    other_user.run(f"mkdir -m 0777 {target} && ln -s {target} {logs}", check=True)
    try:
        with pytest.raises(ExecutorStartError, match="symbolic link"):
            start_and_stop(SlurmExecutor(), spool_dir=root)
        assert os.listdir(target) == []
    finally:
        shutil.rmtree(target, ignore_errors=True)


def test_a_log_dir_of_your_choice_is_created_private_or_checked(other_user, shared_dir, caplog):
    spool_root = os.path.join(shared_dir, "spool")
    fresh = os.path.join(shared_dir, "my-logs")
    start_and_stop(SlurmExecutor(), spool_dir=spool_root, log_dir=fresh)
    assert mode_of(fresh) == 0o700   # created for us: private

    readable = os.path.join(shared_dir, "readable-logs")
    os.mkdir(readable, 0o755)
    with caplog.at_level(logging.WARNING, logger="wove.slurm"):
        start_and_stop(SlurmExecutor(), spool_dir=spool_root, log_dir=readable)
    warnings = [r.getMessage() for r in caplog.records if r.name == "wove.slurm" and readable in r.getMessage()]
    assert len(warnings) == 1 and "other users can read" in warnings[0] and "0755" in warnings[0]

    for mode in (0o777, 0o770):   # others can write it: refused
        open_dir = os.path.join(shared_dir, f"open-{mode:o}")
        os.mkdir(open_dir)
        os.chmod(open_dir, mode)
        with pytest.raises(ExecutorStartError, match=f"refusing log directory {open_dir} .*mode {mode:04o}"):
            start_and_stop(SlurmExecutor(), spool_dir=spool_root, log_dir=open_dir)

    theirs = f"/tmp/wove-atk-mylogs-{uuid.uuid4().hex[:8]}"
    other_user.run(f"mkdir -m 0700 {theirs}", check=True)
    try:
        with pytest.raises(ExecutorStartError) as info:
            start_and_stop(SlurmExecutor(), spool_dir=spool_root, log_dir=theirs)
        assert theirs in str(info.value) and f"owner {other_user.name}" in str(info.value)
    finally:
        shutil.rmtree(theirs, ignore_errors=True)


def test_undeliverable_events_do_not_show_the_token(executor):
    """A job that cannot reach its weave says so in its log (and leaves its outcome in the spool, issue 13),
    naming the callback URL with the token hidden."""
    token = "tok-" + uuid.uuid4().hex
    executor(callback_url=f"http://127.0.0.1:{closed_port()}/wove/events/{token}", post_timeout=1, keep_logs=True)
    with weave(error_mode="return") as w:
        @w.do(environment="slurm")
        def unreachable():
            return 1

    assert w.result.unreachable == 1
    (record,) = w.result.jobs["unreachable"]
    assert record.details.get("delivered_via") == "spool"
    with open(record.stderr_path) as handle:
        log = handle.read()
    assert "could not reach http://127.0.0.1:" in log and "/wove/events/\u2026" in log
    assert token not in log
