"""Helpers for Slurm tests: find a test's jobs in squeue, wait for conditions."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path


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


def closed_port() -> int:
    """A local port nobody listens on (as when compute nodes cannot reach the driver)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def peak_overlap(spans: Path) -> tuple[int, int]:
    """``(spans, peak)``: how many ``"<start> <end>"`` lines the file has, and the most that overlapped."""
    edges = []
    for line in spans.read_text().splitlines():
        start, end = map(float, line.split())
        edges += [(start, 1), (end, -1)]
    running = peak = 0
    for _, step in sorted(edges):   # at equal times an end sorts before a start
        running += step
        peak = max(peak, running)
    return len(edges) // 2, peak
