"""Dispatch test fixtures: worker import path, private spool directory, and a leak check after every test.

After each test (so after each weave it ran) there must be no new threads, no child processes (running or
zombie), no listening sockets of this process and no files in the spool directory. Threads and processes
get a bounded grace period to go away; anything still there fails the test.
"""

from __future__ import annotations

import os
import time

import pytest
from dispatch_helpers import HERE, LiveReceiver, children, listening_sockets, spool_files, threads

LEAK_GRACE_SECONDS = 10.0


@pytest.fixture(autouse=True)
def dispatch_environment(monkeypatch, tmp_path):
    """Worker processes can import the test helpers; spool files land in a private temporary directory."""
    path = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", HERE + (os.pathsep + path if path else ""))
    monkeypatch.delenv("WOVE_BACKEND_PAYLOAD", raising=False)
    spool_root = str(tmp_path / "spool")
    monkeypatch.setenv("WOVE_SPOOL_DIR", spool_root)
    yield spool_root


@pytest.fixture(autouse=True)
def no_leaks(dispatch_environment):
    spool_root = dispatch_environment
    before_threads, before_children, before_sockets = threads(), children(), listening_sockets()
    yield
    deadline = time.monotonic() + LEAK_GRACE_SECONDS
    while True:
        new_threads = {i: n for i, n in threads().items() if i not in before_threads}
        new_children = children() - before_children
        new_sockets = listening_sockets() - before_sockets
        leftover = spool_files(spool_root) if os.path.isdir(spool_root) else []
        if not (new_threads or new_children or new_sockets or leftover) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    problems = []
    if new_threads:
        problems.append(f"threads still running: {sorted(new_threads.values())}")
    if new_children:
        problems.append(f"child processes left (running or unreaped): {sorted(new_children)}")
        for pid in new_children:  # do not let one leak cascade into every later test
            try:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
            except OSError:
                pass
    if new_sockets:
        problems.append(f"listening sockets still open: {sorted(new_sockets)}")
    if leftover:
        problems.append(f"spool files left behind: {leftover}")
    assert not problems, "; ".join(problems)


@pytest.fixture
def spool_dir(dispatch_environment):
    """The spool root every environment of the test uses (also ``$WOVE_SPOOL_DIR``)."""
    return dispatch_environment


@pytest.fixture
def receiver():
    live = LiveReceiver().start()
    yield live
    live.stop()
