"""Typed messages between the runtime, executors and adapters (issue 11, point 1): frozen, and still read
like the published dict frames, so executors and adapters written against wove 2.0.3 keep working."""

from __future__ import annotations

import dataclasses

import pytest
from dispatch_helpers import AdapterLog, SubprocessAdapter

import wove
from wove import BackendAdapterEnvironmentExecutor, weave
from wove.dispatch.messages import CancelTask, Delivery, Event, RunTask, Shutdown


def make_run_task(**extra):
    return RunTask(run_id="r1", task_id="t", task_name="t", callable=len, args=(([1, 2],), {}),
                   delivery=Delivery(timeout=5.0), **extra)


def test_commands_are_frozen_and_read_as_the_published_frames():
    message = make_run_task(map_index=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        message.run_id = "other"
    with pytest.raises(TypeError):
        message["submitted"] = True   # type: ignore[index]  # an adapter cannot write back into it
    assert message["type"] == "run_task" and message.get("map_index") == 3 and message["callable"] is len
    frame = dict(message)
    assert {"type", "run_id", "task_id", "callable", "args", "delivery"} <= set(frame)
    assert dict(frame["delivery"])["timeout"] == 5.0
    with pytest.raises(KeyError):
        message["nope"]
    cancel = CancelTask(run_id="r1", task_id="t", delivery_cancel_mode="require_ack")
    assert dict(cancel)["type"] == "cancel_task" and cancel["delivery_cancel_mode"] == "require_ack"
    assert Shutdown()["type"] == "shutdown"


def test_events_are_read_from_any_executors_dict_frames():
    event = Event.from_frame({"type": "task_started", "run_id": "r1", "node": "n7", "custom": 1})
    assert (event.type, event.run_id, event.node, event.extra) == ("task_started", "r1", "n7", {"custom": 1})
    assert Event.from_frame(event) is event
    odd = Event.from_frame({"type": "task_error", "run_id": "r1", "exception": "not an exception"})
    assert odd.exception is None


class RecordingAdapter(SubprocessAdapter):
    """An adapter as a user writes it: reads the frame like a dict, returns its submission."""

    def submit(self, payload, frame):
        self.log.frames.append({"type": frame["type"], "task_name": frame.get("task_name"),
                                "is_message": isinstance(frame, RunTask)})
        return super().submit(payload, frame)


def test_an_adapter_reading_dict_frames_runs_unchanged():
    log = AdapterLog()
    executor = BackendAdapterEnvironmentExecutor("rec", adapter_class=RecordingAdapter, adapter_options={"log": log})
    wove.config(environments={"rec": {"executor": executor}})
    with weave() as w:
        @w.do(environment="rec")
        def remote():
            return 41 + 1
    assert w.result.remote == 42
    assert log.frames[0]["type"] == "run_task" and log.frames[0]["task_name"] == "remote"
    assert log.frames[0]["is_message"] is True
    record = w.result.jobs["remote"][0]
    assert record.submission is not None and record.state == "COMPLETED"
