"""The job side of checkpoints (``wove.slurm.checkpoint`` / ``restored_state``), against a live receiver."""

from __future__ import annotations

import pickle

import pytest
from dispatch_helpers import b64, run_worker

pytestmark = pytest.mark.timeout(60)


def saves():
    from wove.slurm import checkpoint, restored_state

    state = restored_state()
    if state is None:
        checkpoint({"step": 1})
    return state


def in_a_packed_map(x):
    from wove.slurm import checkpoint

    checkpoint(x)


def test_checkpoint_ends_the_attempt_with_its_state_and_exit_6(receiver):
    payload = receiver.payload(saves)
    done = run_worker(payload)
    assert done.returncode == 6, done.stderr
    assert receiver.types_of(payload["run_id"]) == ["task_started", "task_checkpoint"]
    assert receiver.wait_for(payload["run_id"], "task_checkpoint")["result"] == {"step": 1}


def test_the_next_job_starts_from_the_restored_state(receiver):
    payload = receiver.payload(saves, restored_state=b64(pickle.dumps({"step": 1})))
    done = run_worker(payload)
    assert done.returncode == 0, done.stderr
    assert receiver.wait_for(payload["run_id"], "task_result")["result"] == {"step": 1}


def test_a_packed_item_that_checkpoints_fails_with_the_reason(receiver):
    import cloudpickle

    from wove.dispatch import protocol

    payload = receiver.payload(in_a_packed_map)
    payload.update(args_pickle=b64(cloudpickle.dumps([((1,), {})])), batch=1,
                   version=protocol.PAYLOAD_VERSION_BUFFERS)
    done = run_worker(payload)
    assert done.returncode == 1
    (_, ok, error), = receiver.wait_for(payload["run_id"], "task_result")["result"]
    assert not ok and "items_per_job=1" in error["error"]["message"]
