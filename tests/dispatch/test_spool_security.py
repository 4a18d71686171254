"""A spool directory another user can write must never let them run code as you; tokens never printed.

Issue 10, points 1 and 5. The other user is a real throwaway Unix account (``other_user``, tests/users.py);
these tests run as root, so "you" is root here and the kernel enforces what the other account can do.

Submitting side: the spool root (``spool_dir``) is refused unless it is yours and nobody else can write it
(a sticky world-writable directory of yours is fine); each run's directory is made fresh (0700) and used
through a descriptor, so replacing it by a symlink redirects nothing. Job side: a spooled payload or array
spool is loaded only if it and its directory are the job user's and writable by nobody else (exit 3
otherwise, naming owner and mode, and the task does not run); results and event files are written only
into such a directory. The callback token never appears in what the worker prints or what wove raises.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import stat
import tempfile
import uuid

import pytest
from dispatch_helpers import LiveReceiver, SubprocessAdapter, free_port, make_payload, run_worker

import wove
from wove import BackendAdapterEnvironmentExecutor, weave
from wove.dispatch import protocol, spool
from wove.errors import ExecutorStartError
from wove.slurm import states

ME = pwd.getpwuid(os.geteuid()).pw_name   # the owner named in refusals of our own directories

pytestmark = pytest.mark.timeout(120)


# --------------------------------------------------------------------------------------------- fixtures
@pytest.fixture
def shared_dir():
    """A directory under /tmp that other users can enter (0755, ours), removed afterwards."""
    path = tempfile.mkdtemp(prefix="wove-sec-", dir="/tmp")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def attacker_dir(other_user):
    """A directory the other user made for themselves in /tmp (0755, theirs), removed afterwards."""
    path = f"/tmp/wove-atk-dir-{uuid.uuid4().hex[:8]}"
    other_user.run(f"mkdir -m 0755 {path}", check=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def use_spool(root: str, **config) -> None:
    executor = BackendAdapterEnvironmentExecutor("sub", adapter_class=SubprocessAdapter)
    wove.config(environments={"sub": {"executor": executor, "executor_config": {"spool_dir": root, **config}}})


def run_one_task(root: str, **config):
    use_spool(root, **config)
    with weave() as w:
        @w.do(environment="sub")
        def remote():
            return "ran"

    return w.result.remote


def start_refused(root: str) -> str:
    with pytest.raises(ExecutorStartError) as info:
        run_one_task(root)
    return str(info.value)


def mode_of(path: str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# --------------------------------------------------------------------------------------------- spool root
def test_spool_root_owned_by_another_user_is_refused_at_start(other_user, attacker_dir):
    message = start_refused(attacker_dir)
    assert attacker_dir in message
    assert f"owner {other_user.name}" in message and "mode 0755" in message
    assert "not owned by you" in message
    assert "~/.cache/wove/spool" in message and "/scratch/$USER/wove" in message   # the fix
    assert os.listdir(attacker_dir) == []   # nothing of ours was written there


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757], ids=oct)
def test_spool_root_others_can_write_without_the_sticky_bit_is_refused(shared_dir, mode):
    root = os.path.join(shared_dir, "spool")
    os.mkdir(root)
    os.chmod(root, mode)
    message = start_refused(root)
    assert root in message and f"mode {mode:04o}" in message and f"owner {ME}" in message
    assert f"chmod go-w {root}" in message
    assert os.listdir(root) == []


def test_a_sticky_world_writable_root_is_accepted_only_when_it_is_yours(other_user, shared_dir):
    mine = os.path.join(shared_dir, "mine")
    os.mkdir(mine)
    os.chmod(mine, 0o1777)
    assert run_one_task(mine) == "ran"
    assert os.listdir(mine) == []   # the run directory was removed again

    theirs = f"/tmp/wove-atk-sticky-{uuid.uuid4().hex[:8]}"
    other_user.run(f"mkdir -m 1777 {theirs}", check=True)
    try:
        message = start_refused(theirs)
        assert f"owner {other_user.name}" in message and "mode 1777" in message
        assert os.listdir(theirs) == []
    finally:
        shutil.rmtree(theirs, ignore_errors=True)


def test_directories_wove_creates_are_private(shared_dir):
    root = os.path.join(shared_dir, "new", "spool")   # does not exist yet: wove creates it
    seen = {}

    async def scenario():
        executor = BackendAdapterEnvironmentExecutor("sub", adapter_class=SubprocessAdapter)
        await executor.start(environment_name="sub", run_config={},
                             environment_config={"executor_config": {"spool_dir": root,
                                                                     "result_channel": "filesystem"}})
        try:
            seen["root"] = mode_of(root)
            seen["run"] = mode_of(executor.spool_dir)
            seen["events"] = mode_of(executor.events_dir)
            reference = executor.encode_payload({"run_id": "r", "data": "x" * 100_000})
            seen["payload"] = mode_of(reference[len(protocol.SPOOL_PREFIX):])
            spool.remove(reference[len(protocol.SPOOL_PREFIX):])
        finally:
            await executor.stop()

    asyncio.run(scenario())
    assert seen == {"root": 0o700, "run": 0o700, "events": 0o700, "payload": 0o600}


# --------------------------------------------------------------------------------------------- run directory
def test_a_run_directory_replaced_by_a_symlink_redirects_nothing(other_user, shared_dir, attacker_dir):
    """Someone renames the fresh run directory and puts a symlink to their own in its place.

    The driver keeps writing into the real directory (through its descriptor), never into the symlink's
    target; the job refuses the path that now goes through a symlink; cleanup does not follow it either.
    """
    root = os.path.join(shared_dir, "spool")
    outcome = {}

    async def scenario():
        executor = BackendAdapterEnvironmentExecutor("sub", adapter_class=SubprocessAdapter)
        await executor.start(environment_name="sub", run_config={},
                             environment_config={"executor_config": {"spool_dir": root}})
        run = executor.spool_dir
        moved = run + ".moved"
        try:
            os.rename(run, moved)
            os.symlink(attacker_dir, run)
            payload = make_payload("http://127.0.0.1:9/wove/events/t", "r1", protocol.new_key(), os.mkdir,
                                   ("/nonexistent",), data="x" * 100_000)
            outcome["reference"] = executor.encode_payload(payload)
            outcome["moved"] = sorted(os.listdir(moved))
            outcome["target"] = os.listdir(attacker_dir)
            outcome["job"] = run_worker(outcome["reference"])
        finally:
            await executor.stop()
            outcome["moved after stop"] = os.listdir(moved)
            outcome["symlink kept"] = os.path.islink(run)
            os.unlink(run)
            os.rmdir(moved)

    asyncio.run(scenario())
    assert outcome["reference"].startswith(protocol.SPOOL_PREFIX)
    assert outcome["moved"] == ["events", "lease", "r1.payload"]   # in the real directory (beside events, lease)
    assert outcome["target"] == []                      # never in the symlink's target
    assert outcome["job"].returncode == 3
    assert "symbolic link" in outcome["job"].stderr or "refusing" in outcome["job"].stderr
    assert outcome["moved after stop"] == []            # removed through the descriptor
    assert outcome["symlink kept"] is True              # and the symlink was not followed
    assert os.listdir(attacker_dir) == []


# --------------------------------------------------------------------------------------------- job side
def marker_payload(receiver: LiveReceiver, marker: str) -> dict:
    """A genuine payload whose task creates ``marker``: it shows whether the task ran."""
    return receiver.payload(os.mkdir, (marker,))


def spooled(directory: str, payload: dict) -> str:
    path = os.path.join(directory, f"{payload['run_id']}.payload")
    with open(path, "w") as handle:
        json.dump(payload, handle)
    os.chmod(path, 0o600)
    return path


@pytest.fixture
def marker(shared_dir):
    return os.path.join(shared_dir, f"ran-{uuid.uuid4().hex[:6]}")


@pytest.fixture
def private_dir(shared_dir):
    path = os.path.join(shared_dir, "run")
    os.mkdir(path, 0o700)
    return path


def test_worker_refuses_a_payload_file_owned_by_another_user(other_user, receiver, private_dir, marker):
    path = spooled(private_dir, marker_payload(receiver, marker))
    os.chown(path, other_user.uid, other_user.gid)   # as if the other user had put it there
    done = run_worker(protocol.SPOOL_PREFIX + path)
    assert done.returncode == 3, done.stderr
    assert path in done.stderr and f"owner {other_user.name}" in done.stderr and "mode 0600" in done.stderr
    assert not os.path.exists(marker)   # the task did not run

    os.chown(path, 0, 0)   # the same file, ours: it runs (so the marker does show a run)
    assert run_worker(protocol.SPOOL_PREFIX + path).returncode == 0
    assert os.path.isdir(marker)


@pytest.mark.parametrize("mode", [0o770, 0o730, 0o703], ids=oct)
def test_worker_refuses_a_payload_in_a_directory_others_can_write(receiver, private_dir, marker, mode):
    path = spooled(private_dir, marker_payload(receiver, marker))
    os.chmod(private_dir, mode)
    done = run_worker(protocol.SPOOL_PREFIX + path)
    assert done.returncode == 3, done.stderr
    assert private_dir in done.stderr and f"mode {mode:04o}" in done.stderr and f"owner {ME}" in done.stderr
    assert not os.path.exists(marker)


def test_worker_refuses_a_payload_the_other_user_wrote_in_their_directory(other_user, receiver, attacker_dir,
                                                                          marker):
    payload = marker_payload(receiver, marker)
    path = os.path.join(attacker_dir, f"{payload['run_id']}.payload")
    other_user.run(f"umask 077; cat > {path}", input=json.dumps(payload).encode(), check=True)
    done = run_worker(protocol.SPOOL_PREFIX + path)
    assert done.returncode == 3, done.stderr
    assert attacker_dir in done.stderr and f"owner {other_user.name}" in done.stderr
    assert not os.path.exists(marker)


def test_worker_refuses_a_payload_that_is_a_symlink(other_user, receiver, private_dir, attacker_dir, marker):
    payload = marker_payload(receiver, marker)
    target = os.path.join(attacker_dir, "evil.payload")
    other_user.run(f"cat > {target}", input=json.dumps(payload).encode(), check=True)
    link = os.path.join(private_dir, f"{payload['run_id']}.payload")
    os.symlink(target, link)
    done = run_worker(protocol.SPOOL_PREFIX + link)
    assert done.returncode == 3 and "symbolic link" in done.stderr, done.stderr
    assert not os.path.exists(marker)


def test_worker_refuses_an_array_spool_owned_by_another_user(other_user, receiver, private_dir, marker):
    payload = marker_payload(receiver, marker)
    path = os.path.join(private_dir, "array-x.payloads")
    spool.write_array(path, [json.dumps(payload)])
    os.chown(path, other_user.uid, other_user.gid)
    done = run_worker(protocol.SPOOL_PREFIX + path, env={"WOVE_ARRAY_INDEX": "0"})
    assert done.returncode == 3, done.stderr
    assert path in done.stderr and f"owner {other_user.name}" in done.stderr and "mode 0600" in done.stderr
    assert not os.path.exists(marker)

    os.chmod(path, 0o622)   # ours again, but others may write it: refused too
    os.chown(path, 0, 0)
    done = run_worker(protocol.SPOOL_PREFIX + path, env={"WOVE_ARRAY_INDEX": "0"})
    assert done.returncode == 3 and "mode 0622" in done.stderr, done.stderr
    assert not os.path.exists(marker)


def test_worker_writes_no_result_file_into_a_spool_directory_others_can_write(shared_dir):
    """A result too large to ride inline goes to the spool only if the directory is private: otherwise the
    task fails with the refusal (delivered over HTTP), and nothing is written there."""
    open_dir = os.path.join(shared_dir, "open")
    os.mkdir(open_dir)
    os.chmod(open_dir, 0o777)
    live = LiveReceiver(max_body=64 * 1024, spool_dir=open_dir).start()
    try:
        payload = live.payload(bytes, (1024 * 1024,), max_body=64 * 1024, spool_dir=open_dir)
        done = run_worker(payload)
        live.wait_for(payload["run_id"], "task_error")
    finally:
        live.stop()
    assert done.returncode == 1, done.stderr
    [error] = [f["error"] for f in live.frames if f["type"] == "task_error"]
    assert error["source"] == "spool" and "refusing" in error["message"] and "mode 0777" in error["message"]
    assert os.listdir(open_dir) == []


def test_worker_writes_no_event_file_into_an_events_directory_others_can_write(shared_dir):
    events = os.path.join(shared_dir, "events")
    os.mkdir(events)
    os.chmod(events, 0o773)
    payload = make_payload("", "r", protocol.new_key(), os.getcwd, result_channel="filesystem",
                           events_dir=events)
    done = run_worker(payload)
    assert done.returncode == 2, done.stderr
    assert "could not write event file" in done.stderr and "mode 0773" in done.stderr
    assert os.listdir(events) == []


def test_custom_submit_helper_writes_through_the_run_directory_descriptor(shared_dir):
    """``wove.slurm.job_environment`` (for custom submit callables) spools like the default path."""
    import wove.slurm

    root = os.path.join(shared_dir, "spool")
    seen = {}

    async def scenario():
        executor = BackendAdapterEnvironmentExecutor("sub", adapter_class=SubprocessAdapter)
        await executor.start(environment_name="sub", run_config={},
                             environment_config={"executor_config": {"spool_dir": root}})
        run = executor.spool_dir
        try:
            os.rename(run, run + ".moved")
            os.mkdir(run, 0o700)   # a different directory now sits at the path
            env = wove.slurm.job_environment({"run_id": "big", "spool_dir": run, "data": "x" * 100_000})
            seen["reference"] = env[protocol.PAYLOAD_ENV]
            seen["moved"] = os.listdir(run + ".moved")
            seen["at path"] = os.listdir(run)
        finally:
            await executor.stop()
            os.rmdir(run)
            os.rmdir(run + ".moved")

    asyncio.run(scenario())
    assert seen["reference"].startswith(protocol.SPOOL_PREFIX)
    assert sorted(seen["moved"]) == ["big.payload", "events", "lease"] and seen["at path"] == []


# --------------------------------------------------------------------------------------------- tokens
SECRET = "s3cret-T0KEN_value"


def test_worker_could_not_deliver_message_hides_the_token():
    url = f"http://127.0.0.1:{free_port()}/wove/events/{SECRET}"
    payload = make_payload(url, "run", protocol.new_key(), os.getcwd, delivery={"post_timeout": 1})
    done = run_worker(payload, timeout=60)
    assert done.returncode == 2
    assert "could not deliver" in done.stderr
    assert "/wove/events/\u2026" in done.stderr
    assert SECRET not in done.stderr and SECRET not in done.stdout


def test_slurm_job_failed_message_hides_the_token():
    url = f"http://submit-host:4242/wove/events/{SECRET}"
    tail = (f"wove.backend_worker: could not deliver task_started to {url} within 60s: "
            "ConnectionRefusedError: [Errno 111] Connection refused\n")
    info = states.JobInfo(key="123", state=states.JobState.FAILED, exit_code=2, node="n1")
    error = states.job_error(info, tail, task="t", log_path="/x/123.err", callback_url=url)
    assert isinstance(error, wove.slurm.SlurmJobFailedError)
    text = str(error)
    assert "could not deliver its outcome to http://submit-host:4242/wove/events/\u2026" in text
    assert "could not deliver task_started to http://submit-host:4242/wove/events/\u2026 within" in text
    assert SECRET not in text and SECRET not in error.stderr_tail
    assert SECRET not in repr(error.args)


def test_redact_hides_every_token_and_keeps_the_rest():
    text = f"a http://h/wove/events/{SECRET} b 'https://x:1/p/wove/events/{SECRET}/' c /wove/events/"
    redacted = protocol.redact(text)
    assert SECRET not in redacted
    assert redacted == ("a http://h/wove/events/\u2026 b 'https://x:1/p/wove/events/\u2026/' c /wove/events/")
    assert protocol.redact(redacted) == redacted
    assert protocol.redact("no url here") == "no url here"


def test_config_errors_do_not_show_the_token():
    from wove.executors.adapter import validate_dispatch_config

    with pytest.raises(ValueError) as info:
        validate_dispatch_config({"callback_token": "other-secret",
                                  "callback_url": f"https://h/wove/events/{SECRET}"}, environment="e")
    assert SECRET not in str(info.value) and "other-secret" not in str(info.value)


def test_redaction_keeps_the_text_after_the_token():
    text = "could not deliver task_result to http://h:1/wove/events/abcDEF_-12: ConnectionRefusedError"
    assert protocol.redact(text) == "could not deliver task_result to http://h:1/wove/events/…: ConnectionRefusedError"
