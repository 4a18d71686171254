"""The journal of a durable weave on disk: one directory, one live driver, nothing half-written ever read.

Layout of ``weave(journal=PATH)``::

    PATH/            mode 0700, owned by you
      lock           flock()ed by the driver using the journal (released by the kernel if it dies)
      entries.jsonl  a header line, then one line per event of a call: "<json> <sha256 of json, 16 hex>"
      results/<sha>  results larger than INLINE_BYTES, by content hash

Lines are appended (never rewritten) by one writer thread, which fsyncs the result files it wrote and then
the entries file at most every ``FLUSH_SECONDS``, and at close. A crash at any instant therefore leaves a
journal whose every complete line is valid; a torn last line (or a damaged one) fails its checksum and is
skipped, so that call is simply run again. A file that is not a journal, one of another format version, or
a directory someone else could write is refused with the path and the fix.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import queue
import stat
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from ..errors import WoveError

log = logging.getLogger("wove.journal")

FORMAT = 1
ENTRIES = "entries.jsonl"
LOCK = "lock"
RESULTS = "results"
INLINE_BYTES = 16 * 1024
FLUSH_SECONDS = 0.2


class JournalError(WoveError, ValueError):
    """A journal path wove cannot use: not a journal, another format version, or not private to you."""


class JournalLockedError(JournalError):
    """Another live process holds the journal: one driver per journal at a time."""


@dataclass
class Entry:
    """The latest that the journal knows of one call (``key``)."""

    key: str
    task: str
    state: str                       # "submitted" | "done" | "failed"
    index: Optional[int] = None      # the item's position, for mapped tasks
    job_id: Optional[str] = None
    inline: Optional[bytes] = None   # the pickled result, when small
    digest: Optional[str] = None     # sha256 of the pickled result
    size: int = 0
    info: dict[str, Any] = field(default_factory=dict)   # what reattaching to a running job needs
    time: float = 0.0
    position: Optional[int] = None   # its place in a packed element (whose entries share one ``info``)


def _checksum(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _line(record: dict[str, Any]) -> bytes:
    text = json.dumps(record, separators=(",", ":"))
    return f"{text} {_checksum(text)}\n".encode()


def _parse(raw: bytes) -> Optional[dict[str, Any]]:
    """One line's record, or None when it is torn or damaged."""
    try:
        text = raw.decode().rstrip("\n")
        body, _, check = text.rpartition(" ")
        if not body or _checksum(body) != check:
            return None
        value = json.loads(body)
        return value if isinstance(value, dict) else None
    except (UnicodeDecodeError, ValueError):
        return None


class Journal:
    """An open journal: ``lookup`` what earlier drivers recorded, ``record_*`` what this one learns."""

    def __init__(self, path: str, lock_fd: int, entries: dict[str, Entry], skipped: int):
        self.path = path
        self._lock_fd = lock_fd
        self.entries = entries
        self.skipped = skipped                 # damaged lines found while loading (their calls run again)
        self._queue: queue.Queue[Optional[tuple[dict[str, Any], list[tuple[str, bytes]]]]] = queue.Queue()
        self._writer = threading.Thread(target=self._write_loop, name="wove-journal", daemon=True)
        self._error: Optional[BaseException] = None
        self._writer.start()

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str) -> Journal:
        path = os.path.abspath(os.path.expanduser(os.fspath(path)))
        _make_private_dir(path)
        lock_fd = os.open(os.path.join(path, LOCK), os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(lock_fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(lock_fd)
            raise JournalLockedError(
                f"journal {path} is in use by {holder}: one driver per journal at a time. Wait for that weave "
                "to finish (or stop it), or give this weave another journal path") from None
        try:
            os.ftruncate(lock_fd, 0)
            os.pwrite(lock_fd, f"pid {os.getpid()} on {os.uname().nodename}\n".encode(), 0)
            entries, skipped = _load(path)
            os.makedirs(os.path.join(path, RESULTS), mode=0o700, exist_ok=True)
        except BaseException:
            os.close(lock_fd)
            raise
        return cls(path, lock_fd, entries, skipped)

    # ------------------------------------------------------------------ reading
    def lookup(self, key: str) -> Optional[Entry]:
        return self.entries.get(key)

    def result_bytes(self, entry: Entry) -> Optional[bytes]:
        """The pickled result of a done call, verified against its digest (None: recompute the call)."""
        data = entry.inline
        if data is None and entry.digest:
            try:
                with open(os.path.join(self.path, RESULTS, entry.digest), "rb") as handle:
                    data = handle.read()
            except OSError:
                return None
        if data is None or hashlib.sha256(data).hexdigest() != entry.digest:
            return None
        return data

    # ------------------------------------------------------------------ writing
    def record(self, key: str, task: str, state: str, *, index: Optional[int] = None,
               job_id: Optional[str] = None, result: Optional[bytes] = None, digest: Optional[str] = None,
               **info: Any) -> Entry:
        """Note what happened to one call; written by the writer thread within ``FLUSH_SECONDS``."""
        entry = Entry(key, task, state, index=index, job_id=job_id, info=info, time=time.time())
        blob = None
        record: dict[str, Any] = {"k": key, "t": task, "s": state, "i": index, "j": job_id, "at": entry.time}
        if info:
            record["x"] = info
        if result is not None:
            entry.digest, entry.size = digest or hashlib.sha256(result).hexdigest(), len(result)
            record["d"], record["n"] = entry.digest, entry.size
            if len(result) <= INLINE_BYTES:
                entry.inline = result
                record["r"] = result   # as hex in the file
            else:
                blob = (entry.digest, result)
        self.entries[key] = entry
        self._queue.put((record, [blob] if blob else []))   # serialized by the writer thread, off the loop
        return entry

    def record_many(self, task: str, state: str, calls: list[tuple[Optional[str], Optional[int], Optional[bytes]]], *,
                    job_id: Optional[str] = None, **info: Any) -> None:
        """Note one outcome for many calls (a packed element's items) in one line: ``calls`` are
        ``(key, index, pickled result or None)``; a submitted element's keys are listed in their order in
        the element (each entry's ``position``, for reattaching)."""
        now = time.time()
        rows: list[list[Any]] = []
        blobs: list[tuple[str, bytes]] = []
        shared = dict(info)   # one dict for the element's entries, however many items it has
        for position, (key, index, result) in enumerate(calls):
            if not key:   # a call that cannot be journaled: it keeps its position, nothing more
                rows.append(["", index])
                continue
            known = self.entries.get(key)
            if state == "submitted" and known is not None and known.state == "done":
                rows.append(["", index])   # its result arrived before its submission was noted: keep it
                continue
            entry = Entry(key, task, state, index=index, job_id=job_id, info=shared, time=now,
                          position=position if state == "submitted" else None)
            row: list[Any] = [key, index]
            if result is not None:
                entry.digest, entry.size = hashlib.sha256(result).hexdigest(), len(result)
                row += [entry.digest, entry.size]
                if len(result) <= INLINE_BYTES:
                    entry.inline = result
                    row.append(result)
                else:
                    blobs.append((entry.digest, result))
            self.entries[key] = entry
            rows.append(row)
        record: dict[str, Any] = {"m": rows, "t": task, "s": state, "j": job_id, "at": now}
        if info:
            record["x"] = info
        self._queue.put((record, blobs))

    def _write_loop(self) -> None:
        fd = os.open(os.path.join(self.path, ENTRIES), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            while True:
                item = self._queue.get()
                stop = item is None
                batch: list[tuple[dict[str, Any], list[tuple[str, bytes]]]] = [] if item is None else [item]
                deadline = time.monotonic() + FLUSH_SECONDS
                while not stop:   # gather what arrives within the flush window: one fsync for all of it
                    try:
                        more = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                    except queue.Empty:
                        break
                    if more is None:
                        stop = True
                    else:
                        batch.append(more)
                if batch:
                    try:
                        self._write(fd, batch)
                    except OSError as exc:   # a full disk: reported at close, the weave's results stand
                        self._error = exc
                        log.error("wove: could not write journal %s: %s", self.path, exc)
                if stop:
                    return
        finally:
            os.close(fd)

    def _write(self, fd: int, batch: list[tuple[dict[str, Any], list[tuple[str, bytes]]]]) -> None:
        results = os.path.join(self.path, RESULTS)
        for digest, data in (blob for _, blobs in batch for blob in blobs):   # durable before its line
            target = os.path.join(results, digest)
            if os.path.exists(target):
                continue
            temp = f"{target}.{os.getpid()}.tmp"
            with open(temp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, target)
        lines = []
        for record, _ in batch:
            if isinstance(record.get("r"), bytes):
                record = {**record, "r": record["r"].hex()}
            if "m" in record:   # a packed element's line: its inline results as hex too
                record = {**record, "m": [[*row[:4], row[4].hex()] if len(row) > 4 else row for row in record["m"]]}
            lines.append(_line(record))
        data = memoryview(b"".join(lines))
        while data:   # a short write (a signal, a full disk) must not leave half a line before the next
            data = data[os.write(fd, data):]
        os.fsync(fd)

    def close(self) -> None:
        """Write everything recorded, then release the journal for the next driver."""
        if self._writer.is_alive():
            self._queue.put(None)
            self._writer.join()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
        if self._error is not None:
            error, self._error = self._error, None
            raise JournalError(f"journal {self.path} could not be written ({error}); the weave's results are "
                               "valid, but a rerun will compute the unrecorded calls again") from error

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _make_private_dir(path: str) -> None:
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise JournalError(f"cannot create journal directory {path}: {exc}") from exc
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise JournalError(f"journal path {path} exists and is not a directory: give weave(journal=...) a "
                           "directory of its own (wove creates it)")
    if st.st_uid != os.geteuid() or st.st_mode & 0o077:
        from ..dispatch.spool import owner_name

        raise JournalError(
            f"journal directory {path} (owner {owner_name(st.st_uid)}, mode {st.st_mode & 0o7777:04o}) must be "
            f"yours alone (mode 0700): results read back from it become your task values. Use a directory "
            f"of your own, or `chmod 700 {path}` if it is yours")


def _load(path: str) -> tuple[dict[str, Entry], int]:
    entries_path = os.path.join(path, ENTRIES)
    try:
        with open(entries_path, "rb") as handle:
            lines = handle.readlines()
    except FileNotFoundError:
        lines = []
    if not lines:
        fd = os.open(entries_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
        try:
            os.write(fd, _line({"wove_journal": FORMAT, "created": time.time()}))
            os.fsync(fd)
        finally:
            os.close(fd)
        return {}, 0
    skipped_tail = 0
    if len(lines) > 1 and not lines[-1].endswith(b"\n"):
        # A line torn by a crash: cut it off, so this driver's first line starts on a line of its own.
        with open(entries_path, "r+b") as handle:
            handle.truncate(sum(len(line) for line in lines[:-1]))
        lines, skipped_tail = lines[:-1], 1
    header = _parse(lines[0])
    if header is None or "wove_journal" not in header:
        raise JournalError(f"{entries_path} is not a wove journal (its first line is not a journal header); "
                           "give weave(journal=...) a directory of its own, or remove that file")
    if header["wove_journal"] != FORMAT:
        raise JournalError(f"journal {path} has format {header['wove_journal']!r}, this wove reads format "
                           f"{FORMAT}; run it with the wove version that wrote it, or remove the directory to "
                           "start afresh")
    entries: dict[str, Entry] = {}
    skipped = skipped_tail
    for raw in lines[1:]:
        record = _parse(raw)
        if record is not None and isinstance(record.get("m"), list):
            if not _load_many(record, entries):
                skipped += 1
            continue
        if record is None or "k" not in record:
            skipped += 1
            continue
        inline = bytes.fromhex(record["r"]) if isinstance(record.get("r"), str) else None
        entries[record["k"]] = Entry(
            key=record["k"], task=str(record.get("t", "")), state=str(record.get("s", "")), index=record.get("i"),
            job_id=record.get("j"), inline=inline, digest=record.get("d"), size=int(record.get("n") or 0),
            info=dict(record.get("x") or {}), time=float(record.get("at") or 0.0))
    if skipped:
        log.warning("wove: journal %s: %d damaged line(s) skipped; those calls run again", path, skipped)
    return entries, skipped


def _load_many(record: dict[str, Any], entries: dict[str, Entry]) -> bool:
    """The entries of one packed element's line (``record_many``); False when a row is malformed."""
    task, state, job_id = str(record.get("t", "")), str(record.get("s", "")), record.get("j")
    info: dict[str, Any] = record["x"] if isinstance(record.get("x"), dict) else {}
    at = float(record.get("at") or 0.0)
    try:
        for position, row in enumerate(record["m"]):
            key, index = str(row[0]), row[1]
            if not key:
                continue
            known = entries.get(key)
            if state == "submitted" and known is not None and known.state == "done":
                continue   # a done line written before its element's submitted line still counts
            entry = Entry(key, task, state, index=index, job_id=job_id, info=info, time=at,
                          position=position if state == "submitted" else None)
            if len(row) >= 4:
                entry.digest, entry.size = str(row[2]), int(row[3])
                if len(row) > 4:
                    entry.inline = bytes.fromhex(row[4])
            entries[key] = entry
    except (IndexError, TypeError, ValueError):
        return False
    return True
