"""Helpers for Slurm tests: find a test's jobs in squeue, wait for conditions."""

from __future__ import annotations

import subprocess
import time


def squeue_jobs(prefix: str) -> list[str]:
    """Active (pending/running/completing...) jobs whose name starts with ``prefix``."""
    out = subprocess.run(["squeue", "-h", "--array", "-o", "%i %j %T"], capture_output=True, text=True,
                         check=True).stdout
    return [line for line in out.splitlines() if line.split()[1].startswith(prefix)]


def all_jobs(prefix: str) -> list[dict[str, str]]:
    """Every job (any state) whose name starts with ``prefix``: id, name, state."""
    out = subprocess.run(["squeue", "-h", "--array", "-t", "all", "-o", "%i|%j|%T"], capture_output=True,
                         text=True, check=True).stdout
    rows = [dict(zip(("id", "name", "state"), line.split("|"))) for line in out.splitlines()]
    return [row for row in rows if row["name"].startswith(prefix)]


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()
