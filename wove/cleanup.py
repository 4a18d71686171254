"""``wove cleanup`` and ``wove journal PATH``: what dead drivers left behind, and what a journal holds.

A driver that dies (kill -9, a reboot) leaves its run directory in the spool: payloads, undelivered events,
its lease (no longer renewed) and the ids of the jobs it submitted. ``wove cleanup`` lists those runs (yours
only: the spool is private to you) with the jobs still queued; ``--cancel`` cancels those jobs and deletes
the directories. Runs of a journaled weave are marked: their results are wanted by the next run of it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

from .dispatch.lease import DEFAULT_GRACE, JOBS_NAME, LEASE_NAME


@dataclass
class DeadRun:
    """A run directory whose driver stopped renewing its lease."""

    path: str
    age: float
    journaled: bool
    jobs: list[str] = field(default_factory=list)
    #: The environment's configured ``squeue``/``scancel`` argv (executor_config), recorded in its lease.
    tools: dict[str, list[str]] = field(default_factory=dict)

    def tool(self, name: str) -> list[str]:
        return self.tools.get(name) or [name]


def dead_runs(root: str, grace: float = DEFAULT_GRACE, limit: int = 10_000) -> list[DeadRun]:
    """Run directories in spool ``root`` whose lease is older than ``grace`` seconds (at most ``limit`` looked at)."""
    runs = []
    try:
        names = sorted(os.listdir(root))[:limit]
    except OSError:
        return []
    now = time.time()
    me = os.geteuid()
    for name in names:
        path = os.path.join(root, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        # Only directories that are yours alone (wove makes them 0700): never anything someone else planted.
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != me or st.st_mode & 0o077:
            continue
        lease = _read_private(path, LEASE_NAME)
        if lease is None:
            continue
        data, mtime = lease
        age = now - mtime
        if age < grace:
            continue
        try:
            info = json.loads(data or b"{}")
        except ValueError:
            info = {}
        info = info if isinstance(info, dict) else {}
        journaled = bool(info.get("journaled"))
        tools = {name: argv for name, argv in (info.get("tools") or {}).items()
                 if name in ("squeue", "scancel") and isinstance(argv, list) and argv
                 and all(isinstance(part, str) for part in argv)} if isinstance(info.get("tools"), dict) else {}
        jobs_file = _read_private(path, JOBS_NAME)
        jobs = [line for line in (jobs_file[0].decode(errors="replace").split() if jobs_file else [])
                if _JOB_ID.fullmatch(line)]
        runs.append(DeadRun(path, age, journaled, jobs, tools))
    return runs


_JOB_ID = re.compile(r"\d+(_\d+)?")


def _read_private(directory: str, name: str, limit: int = 16 * 1024 * 1024) -> Optional[tuple[bytes, float]]:
    """``(content, mtime)`` of a regular file of yours in ``directory``, opened without following a symlink or
    blocking on a FIFO; None otherwise."""
    try:
        fd = os.open(os.path.join(directory, name), os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            return None
        return os.read(fd, limit), st.st_mtime
    except OSError:
        return None
    finally:
        os.close(fd)


def queued(jobs: list[str], squeue: Optional[list[str]] = None) -> Optional[set[str]]:
    """Which of ``jobs`` (``123`` or ``123_4``) Slurm still holds (pending or running); None if squeue failed.

    ``squeue`` is the argv to run (the environment's configured one; plain ``squeue`` by default)."""
    if not jobs:
        return set()
    base = sorted({job.split("_", 1)[0] for job in jobs})
    try:
        done = subprocess.run([*(squeue or ["squeue"]), "-h", "--array", "-o", "%i", f"--jobs={','.join(base)}"],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        if "invalid job id" in done.stderr.lower():
            return set()   # every one of them has left the controller
        return None
    live = {line.strip() for line in done.stdout.splitlines() if line.strip()}
    return {job for job in jobs if job in live or job.split("_", 1)[0] in live}


def cleanup(argv: Optional[list[str]] = None) -> int:
    from .executors.adapter import default_spool_root

    parser = argparse.ArgumentParser(prog="wove cleanup", description=__doc__.splitlines()[0])
    parser.add_argument("--spool-dir", default=None, help="spool root (default: $WOVE_SPOOL_DIR or "
                                                           "~/.cache/wove/spool)")
    parser.add_argument("--grace", type=float, default=DEFAULT_GRACE,
                        help="seconds without a lease renewal before a driver counts as gone (default 30)")
    parser.add_argument("--cancel", action="store_true",
                        help="scancel their jobs still queued and delete their run directories")
    args = parser.parse_args(argv)
    root = args.spool_dir or default_spool_root()
    runs = dead_runs(root, args.grace)
    if not runs:
        print(f"wove cleanup: nothing left by dead drivers in {root}")
        return 0
    for run in runs:
        found = queued(run.jobs, run.tool("squeue"))
        live = sorted(found or ())
        kind = "journaled (a rerun of its weave collects these)" if run.journaled else "not journaled"
        state = (f"{len(live)} still queued{': ' + ' '.join(live) if live else ''}" if found is not None
                 else "squeue did not answer, so which are still queued is unknown")
        print(f"{run.path}: driver gone {run.age:.0f}s, {kind}; {len(run.jobs)} job(s) submitted, {state}")
        if args.cancel and found is None:
            print(f"wove cleanup: not removing {run.path}: its jobs could not be checked (squeue failed); "
                  "try again when the controller answers", file=sys.stderr)
            continue
        if args.cancel:
            if live:
                subprocess.run([*run.tool("scancel"), *live], check=False)
            from .dispatch.spool import remove_tree

            remove_tree(run.path)
            logs = os.path.join(root, "logs", os.path.basename(run.path))
            if os.path.isdir(logs):
                remove_tree(logs)
    if not args.cancel:
        print(f"wove cleanup: {len(runs)} run(s) left behind; `wove cleanup --cancel` cancels their queued jobs "
              "and deletes their files")
    return 0


def journal(argv: Optional[list[str]] = None) -> int:
    from .journal.store import ENTRIES, RESULTS, JournalError, _load

    parser = argparse.ArgumentParser(prog="wove journal", description="what a durable weave's journal holds")
    parser.add_argument("path")
    args = parser.parse_args(argv)
    path = os.path.abspath(os.path.expanduser(args.path))
    try:
        entries, skipped = _load(path) if os.path.exists(os.path.join(path, ENTRIES)) else ({}, 0)
    except JournalError as exc:
        print(f"wove journal: {exc}", file=sys.stderr)
        return 2
    if not os.path.isdir(path):
        print(f"wove journal: {path} is not a journal directory", file=sys.stderr)
        return 2
    states: dict[str, int] = {}
    running = []
    for entry in entries.values():
        states[entry.state] = states.get(entry.state, 0) + 1
        if entry.state == "submitted" and entry.job_id:
            running.append(entry.job_id)
    disk = 0
    for folder in (path, os.path.join(path, RESULTS)):
        try:
            disk += sum(os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder)
                        if os.path.isfile(os.path.join(folder, n)))
        except OSError:
            pass
    live = queued(running) or set()
    print(f"{path}: {len(entries)} call(s): {states.get('done', 0)} done, {states.get('submitted', 0)} submitted "
          f"({len(live)} still queued in Slurm{': ' + ' '.join(sorted(live)) if live else ''}), "
          f"{states.get('failed', 0)} failed; {disk / 1e6:.1f} MB on disk"
          + (f"; {skipped} damaged line(s) (those calls run again)" if skipped else ""))
    return 0
