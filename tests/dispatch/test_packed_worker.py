"""The job side of a packed element (``wove.dispatch.batch``) against a live callback receiver, no Slurm."""

from __future__ import annotations

import pickle
import threading
import time

import cloudpickle
import pytest
from dispatch_helpers import LiveReceiver, b64, run_worker

from wove.dispatch import protocol

pytestmark = pytest.mark.timeout(60)


def item(x):
    if x == 2:
        raise ValueError(f"item {x} is bad")
    if x == 3:
        return threading.Lock()   # cannot be pickled: fails this item only
    return x * 3


def slow(x):
    time.sleep(0.4)
    return -x


def packed(receiver: LiveReceiver, func, items, **extra):
    calls = [((x,), {}) for x in items]
    payload = receiver.payload(func, **extra)
    payload.update(args_pickle=b64(cloudpickle.dumps(calls)), batch=len(calls),
                   version=protocol.PAYLOAD_VERSION_BUFFERS)
    return payload


def outcomes(receiver: LiveReceiver, run_id: str) -> dict[int, tuple[bool, object]]:
    seen: dict[int, tuple[bool, object]] = {}
    for frame in receiver.frames_of(run_id):
        if frame["type"] in ("items_done", "task_result"):
            for position, ok, data in frame["result"]:
                assert position not in seen, f"item {position} reported twice"
                seen[position] = (ok, pickle.loads(data) if ok else data)
    return seen


def test_each_item_has_its_own_outcome(receiver):
    payload = packed(receiver, item, range(5))
    done = run_worker(payload)
    assert done.returncode == 1, done.stderr   # some items failed
    run_id = payload["run_id"]
    assert receiver.types_of(run_id) == ["task_started", "task_result"]
    seen = outcomes(receiver, run_id)
    assert sorted(seen) == [0, 1, 2, 3, 4]
    assert [seen[i] for i in (0, 1, 4)] == [(True, 0), (True, 3), (True, 12)]
    ok, error = seen[2]
    assert not ok and error["error"]["kind"] == "ValueError" and "item 2 is bad" in error["error"]["message"]
    assert isinstance(pickle.loads(__import__("base64").b64decode(error["exception_pickle"])), ValueError)
    ok, error = seen[3]
    assert not ok and "lock" in error["error"]["message"].lower()


def test_all_good_items_exit_0(receiver):
    payload = packed(receiver, slow, range(2))
    assert run_worker(payload).returncode == 0


def test_outcomes_are_flushed_while_the_element_runs(receiver):
    """Items of 0.4 s: at least one ``items_done`` before the final ``task_result``, every item exactly once."""
    payload = packed(receiver, slow, range(6))
    done = run_worker(payload)
    assert done.returncode == 0, done.stderr
    kinds = receiver.types_of(payload["run_id"])
    assert kinds[0] == "task_started" and kinds[-1] == "task_result"
    assert 1 <= kinds.count("items_done") <= 3
    seen = outcomes(receiver, payload["run_id"])
    assert seen == {i: (True, -i) for i in range(6)}


def test_a_payload_whose_item_count_is_wrong_is_refused(receiver):
    payload = packed(receiver, slow, range(3))
    payload["batch"] = 4
    done = run_worker(payload)
    assert done.returncode == 1
    error = receiver.wait_for(payload["run_id"], "task_error")
    assert "lists 4 items but holds 3" in error["error"]["message"]


def threaded(x):
    time.sleep(0.3)
    return threading.current_thread().name


def test_items_run_on_the_jobs_cpus_at_once(receiver):
    """``cpus_per_task=3`` (SLURM_CPUS_PER_TASK): three items at a time, in threads, each reported once."""
    payload = packed(receiver, threaded, range(6))
    done = run_worker(payload, env={"SLURM_CPUS_PER_TASK": "3"})
    assert done.returncode == 0, done.stderr
    seen = outcomes(receiver, payload["run_id"])
    assert sorted(seen) == list(range(6)) and all(ok for ok, _ in seen.values())
    assert len({name for _, name in seen.values()}) == 3


def quick_then_stuck(x):
    time.sleep(0.05 if x < 2 else 30)
    return x


def test_an_undeliverable_flush_ends_the_job_without_waiting_for_running_items(receiver):
    """Two items at a time; the first two finish, their flush is refused (the weave forgot the run), and
    items 2 and 3 are still in their 30 s sleep: the job exits at once instead of keeping the allocation."""
    from dispatch_helpers import start_worker, wait_until

    payload = packed(receiver, quick_then_stuck, range(4))
    started = time.monotonic()
    proc = start_worker(payload, env={"SLURM_CPUS_PER_TASK": "2"})
    try:
        wait_until(lambda: "task_started" in receiver.types_of(payload["run_id"]), 15)
        receiver.gate.forget(payload["run_id"])   # its flush now gets 403 and, with no events_dir, is lost
        _, err = proc.communicate(timeout=25)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 2, err   # EXIT_UNDELIVERED
    assert time.monotonic() - started < 20, "the job waited for its stuck items"
    assert "2 item thread(s) still running" in err, err
