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


def dead_runs(root: str, grace: float = DEFAULT_GRACE, limit: int = 10_000) -> list[DeadRun]:
    """Run directories in spool ``root`` whose lease is older than ``grace`` seconds (at most ``limit`` looked at)."""
    runs = []
    try:
        names = sorted(os.listdir(root))[:limit]
    except OSError:
        return []
    now = time.time()
    for name in names:
        path = os.path.join(root, name)
        lease = os.path.join(path, LEASE_NAME)
        try:
            if os.path.islink(path) or not os.path.isdir(path):
                continue
            age = now - os.stat(lease).st_mtime
        except OSError:
            continue
        if age < grace:
            continue
        try:
            with open(lease, "rb") as handle:
                journaled = bool(json.loads(handle.read() or b"{}").get("journaled"))
        except (OSError, ValueError):
            journaled = False
        try:
            with open(os.path.join(path, JOBS_NAME)) as handle:
                jobs = [line.strip() for line in handle if line.strip()]
        except OSError:
            jobs = []
        runs.append(DeadRun(path, age, journaled, jobs))
    return runs


def queued(jobs: list[str], squeue: str = "squeue") -> set[str]:
    """Which of ``jobs`` (``123`` or ``123_4``) Slurm still holds (pending or running)."""
    if not jobs:
        return set()
    base = sorted({job.split("_", 1)[0] for job in jobs})
    try:
        out = subprocess.run([squeue, "-h", "--array", "-o", "%i", f"--jobs={','.join(base)}"],
                             capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return set()
    live = {line.strip() for line in out.splitlines() if line.strip()}
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
        live = sorted(queued(run.jobs))
        kind = "journaled (a rerun of its weave collects these)" if run.journaled else "not journaled"
        print(f"{run.path}: driver gone {run.age:.0f}s, {kind}; {len(run.jobs)} job(s) submitted, "
              f"{len(live)} still queued{': ' + ' '.join(live) if live else ''}")
        if args.cancel:
            if live:
                subprocess.run(["scancel", *live], check=False)
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
    live = queued(running)
    print(f"{path}: {len(entries)} call(s): {states.get('done', 0)} done, {states.get('submitted', 0)} submitted "
          f"({len(live)} still queued in Slurm{': ' + ' '.join(sorted(live)) if live else ''}), "
          f"{states.get('failed', 0)} failed; {disk / 1e6:.1f} MB on disk"
          + (f"; {skipped} damaged line(s) (those calls run again)" if skipped else ""))
    return 0
