"""Throwaway Unix users for multi-user security tests: a real second account plays the other user.

``other_user`` (registered for every test in ``tests/conftest.py``) creates ``wove-atk-<random>`` with
``useradd -M -N -s /usr/sbin/nologin`` and deletes it with ``userdel`` afterwards, whatever happens in
between. It skips, saying why, when the tests do not run as root or ``useradd`` is missing. Commands run as
that user through ``OtherUser.run`` (``subprocess`` with ``user=``/``group=``, no supplementary groups), so
the kernel, not the test, decides what it may read or write. Tests remove the files they make as that user.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from typing import Optional

import pytest

SAFE_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


@dataclass
class OtherUser:
    """A real Unix account other than the one running the tests."""

    name: str
    uid: int
    gid: int

    def run(self, command: str, *, input: Optional[bytes] = None, check: bool = False,
            timeout: float = 30.0) -> subprocess.CompletedProcess:
        """``sh -c command`` as this user (its own uid and primary group only); output captured as text."""
        return subprocess.run(["/bin/sh", "-c", command], user=self.uid, group=self.gid, extra_groups=[],
                              env=dict(SAFE_ENV), cwd="/", input=input, capture_output=True, check=check,
                              timeout=timeout)


def _skip_reason() -> Optional[str]:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "multi-user tests create a throwaway Unix user, which needs root (run the suite as root, as CI does)"
    for tool in ("useradd", "userdel"):
        if shutil.which(tool) is None:
            return f"multi-user tests need `{tool}` (package passwd/shadow-utils) to create a throwaway user"
    return None


def create_user() -> OtherUser:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    import pwd

    name = f"wove-atk-{uuid.uuid4().hex[:8]}"
    nologin = "/usr/sbin/nologin" if os.path.exists("/usr/sbin/nologin") else "/bin/false"
    done = subprocess.run(["useradd", "-M", "-N", "-s", nologin, name], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"useradd could not create a throwaway user: {done.stderr.strip()}")
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        remove_user(name)
        raise
    return OtherUser(name, entry.pw_uid, entry.pw_gid)


def remove_user(name: str) -> None:
    subprocess.run(["userdel", name], capture_output=True)


@pytest.fixture(scope="module")
def other_user():
    """A second, unprivileged Unix user (``OtherUser``), deleted when the module's tests are done."""
    user = create_user()
    try:
        yield user
    finally:
        remove_user(user.name)
