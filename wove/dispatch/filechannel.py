"""The filesystem result channel: workers write signed event files into the run's ``events`` directory.

For nodes that cannot reach the submitting host (``result_channel="filesystem"``), and, polled less often,
behind the HTTP channel too: a worker that cannot reach its weave leaves its events here instead of losing
them (``dispatch.sender``), for this weave or the next one with the same journal. The poller lists and
reads files in a thread (a shared filesystem can be slow), then applies the same gate as the HTTP receiver:
signature first, and decoding of large events (spooled results) in a thread too. A file whose content is not
readable yet (503) stays for the next round; anything else is deleted once read.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from . import spool
from .events import BAD_REQUEST, FORBIDDEN, OK, UNAVAILABLE, EventGate

log = logging.getLogger("wove.dispatch")

POLL_SECONDS = 0.1
FALLBACK_POLL_SECONDS = 1.0   # the HTTP channel's fallback files: only there when HTTP failed
OFFLOAD_BYTES = 256 * 1024
#: An event whose spooled result stays unreadable this long is given up (its items fail or retry as lost), so
#: one missing file cannot hold back its run's later events for ever.
HOLD_SECONDS = 60.0


@dataclass
class _EventFile:
    name: str
    run_id: str
    event: str
    incarnation: int
    seq: int
    body: bytes
    status: int = OK
    decoded: Any = None
    large: bool = False


class FileChannel:
    """Polls one events directory and hands verified frames to ``on_frame``; stopped by ``stop()``."""

    def __init__(self, events: spool.RunDir, gate: EventGate, on_frame: Callable[[dict[str, Any]], None],
                 poll_seconds: float = POLL_SECONDS, keep_unknown: bool = False):
        self.events = events
        self.gate = gate
        self.on_frame = on_frame
        self.poll_seconds = poll_seconds
        # An earlier driver's directory (reattach): events of runs not adopted yet stay for when they are.
        self.keep_unknown = keep_unknown
        self._task: Optional[asyncio.Task[None]] = None
        self._thread: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._held: dict[str, float] = {}   # file name -> when it was first found unreadable

    def start(self) -> None:
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="wove-files")
        self._task = asyncio.get_running_loop().create_task(self._poll())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.shutdown(wait=True)

    async def _poll(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            files = await loop.run_in_executor(self._thread, self._read_new)
            held: set[str] = set()   # runs with an event not readable yet: their later events wait behind it
            for item in files:
                if item.run_id in held:
                    continue   # applying it would consume its sequence number and make the held one a replay
                try:
                    if not await self._apply(item):
                        held.add(item.run_id)
                except Exception:  # one bad file must not stop the channel
                    log.exception("wove: could not process event file %s", item.name)
            await asyncio.sleep(self.poll_seconds)

    def _read_new(self) -> list[_EventFile]:
        """(Thread) every event file, in name order (a worker's sequence order), read, hashed, authenticated
        against the gate's keys and only then parsed: all the work that grows with the event's size."""
        try:
            names = sorted(self.events.listdir())
        except OSError:
            return []
        files = []
        for name in names:
            if not name.endswith(".event") or name.startswith("."):
                continue
            try:
                data = self.events.read(name)
            except OSError:
                continue
            head, _, body = data.partition(b"\n")
            del data
            try:
                envelope = json.loads(head)
                item = _EventFile(name, str(envelope["run"]), str(envelope["event"]), int(envelope["incarnation"]),
                                  int(envelope["seq"]), body)
                signature = str(envelope["signature"])
            except (ValueError, KeyError, TypeError):
                files.append(_EventFile(name, "", "", 0, 0, b"", status=BAD_REQUEST))
                continue
            item.status = self.gate.authenticate(item.run_id, item.event, str(item.incarnation), str(item.seq),
                                                 signature, body_digest=hashlib.sha256(body).hexdigest())
            if item.status == OK:
                try:
                    item.decoded = json.loads(body)
                except (ValueError, UnicodeDecodeError):
                    item.decoded = None
                item.large = len(body) > OFFLOAD_BYTES
            item.body = b""
            files.append(item)
        return files

    async def _apply(self, item: _EventFile) -> bool:
        """Verify, decode and hand on one file's event; False if it stays for the next round."""
        name, run_id, incarnation, seq = item.name, item.run_id, item.incarnation, item.seq
        gate = self.gate
        status = item.status
        if self.keep_unknown and status == FORBIDDEN:
            return True   # another run's: not this channel's to hold back or delete
        frame = None
        if status == OK:
            status, frame = gate.parse(run_id, item.event, incarnation, seq, None, item.decoded)
        if frame is not None and status == OK and not frame.get("late"):
            try:
                if item.large or "result_ref" in frame:
                    frame = await asyncio.get_running_loop().run_in_executor(self._thread, gate.unpack, frame)
                else:
                    frame = gate.unpack(frame)
            except OSError:
                gate.count_rejection(UNAVAILABLE)
                first = self._held.setdefault(name, time.monotonic())
                if time.monotonic() - first < HOLD_SECONDS:
                    return False   # not readable yet: the file stays for the next round
                log.warning("wove: gave up on event file %s: its spooled result stayed unreadable for %.0f s",
                            name, HOLD_SECONDS)
                frame = None
            except (ValueError, TypeError):
                frame = None
            self._held.pop(name, None)
            gate.commit(run_id, incarnation, seq)
        self.events.remove(name)
        if frame is not None:
            if self.poll_seconds >= FALLBACK_POLL_SECONDS:
                frame["via_spool"] = True   # HTTP did not work for this run (``wove doctor`` tells)
            self.on_frame(frame)
        return True

