"""The filesystem channel keeps a run's events in order when one of them is not readable yet.

A packed element's flush can name a spooled result file that a slow shared filesystem has not shown yet; the
channel leaves that event for the next round. The run's later events must wait behind it: applying one would
consume its sequence number and turn the held event into a "replay" that is then dropped, losing its items.
"""

from __future__ import annotations

import asyncio
import hashlib
import os

from wove.dispatch import protocol, spool
from wove.dispatch.events import EventGate
from wove.dispatch.filechannel import FileChannel
from wove.dispatch.rundir import RunDir
from wove.dispatch.sender import EventSender


def test_a_held_event_holds_back_the_later_events_of_its_run(tmp_path):
    root = tmp_path / "spool"
    root.mkdir(mode=0o700)
    run_id, key = "r1", protocol.new_key()
    other_id, other_key = "r2", protocol.new_key()

    async def scenario() -> tuple[list[str], list[str], list[str]]:
        top = RunDir.open_root(str(root))
        events = top.make_private("events")
        gate = EventGate(str(root))
        gate.register(run_id, key)
        gate.register(other_id, other_key)
        frames: list[dict] = []
        sender = EventSender({"run_id": run_id, "task_id": "t", "signing": {"key": key},
                              "result_channel": "filesystem", "events_dir": events.path})
        other = EventSender({"run_id": other_id, "task_id": "t", "signing": {"key": other_key},
                             "result_channel": "filesystem", "events_dir": events.path})
        data = protocol.b64decode(protocol.b64encode(b"\x80\x04K*."))   # pickle of 42
        late = os.path.join(str(root), "late.result")   # named by the flush, not written yet
        ref = {"path": late, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        assert sender.send("items_done", {"result_ref": ref, "ok": True})
        assert sender.send("task_result", {"result_pickle": protocol.b64encode(b"\x80\x04K\x07."), "ok": True})
        assert other.send("task_result", {"result_pickle": protocol.b64encode(b"\x80\x04K\x08."), "ok": True})
        channel = FileChannel(events, gate, frames.append, poll_seconds=0.05)
        channel.start()
        try:
            await asyncio.sleep(0.5)
            first = [f"{f['run_id']}:{f['type']}" for f in frames]
            left = sorted(events.listdir())
            spool.write_private(str(root), "late.result", data)   # the shared filesystem catches up
            for _ in range(100):
                await asyncio.sleep(0.05)
                if len(frames) == 3:
                    break
            return first, left, [f"{f['run_id']}:{f['type']}" for f in frames]
        finally:
            await channel.stop()
            events.close()
            top.close()

    first, left, final = asyncio.run(scenario())
    assert first == ["r2:task_result"], first   # another run is not held back
    assert len(left) == 2 and all(name.startswith("r1.") for name in left), left   # both of r1's stay
    assert final == ["r2:task_result", "r1:items_done", "r1:task_result"], final


def test_an_event_whose_result_never_appears_is_given_up_after_the_hold_time(tmp_path, monkeypatch):
    """A spooled result that never shows (deleted, unreadable) holds its run back only for ``HOLD_SECONDS``:
    then that event is dropped (its items count as lost and retry) and the run's later events go through."""
    from wove.dispatch import filechannel

    monkeypatch.setattr(filechannel, "HOLD_SECONDS", 0.4)
    root = tmp_path / "spool"
    root.mkdir(mode=0o700)
    run_id, key = "r1", protocol.new_key()

    async def scenario() -> tuple[list[str], list[str]]:
        top = RunDir.open_root(str(root))
        events = top.make_private("events")
        gate = EventGate(str(root))
        gate.register(run_id, key)
        frames: list[dict] = []
        sender = EventSender({"run_id": run_id, "task_id": "t", "signing": {"key": key},
                              "result_channel": "filesystem", "events_dir": events.path})
        ref = {"path": os.path.join(str(root), "never.result"), "sha256": "0" * 64, "size": 3}
        assert sender.send("items_done", {"result_ref": ref, "ok": True})
        assert sender.send("task_result", {"result_pickle": protocol.b64encode(b"\x80\x04K\x07."), "ok": True})
        channel = FileChannel(events, gate, frames.append, poll_seconds=0.05)
        channel.start()
        try:
            await asyncio.sleep(0.2)
            early = [f["type"] for f in frames]
            for _ in range(60):
                await asyncio.sleep(0.05)
                if frames:
                    break
            return early, [f["type"] for f in frames]
        finally:
            await channel.stop()
            events.close()
            top.close()

    early, final = asyncio.run(scenario())
    assert early == []   # held, with the later event behind it
    assert final == ["task_result"], final   # the held one given up, the later one applied
