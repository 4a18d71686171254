"""Shared fixtures: keep wove's process-wide configuration from leaking between tests; ``other_user``.

The ``slurm`` marker: every test under ``tests/slurm`` carries it (added at collection, so ``-m "not slurm"``
really leaves them out), and only tests that carry it start or need the local cluster (``slurm_cluster``).
Outside CI a machine without the cluster skips them; with ``CI`` set they fail instead, so CI can never pass
without having run them.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from users import other_user  # noqa: F401  (fixture: a throwaway second Unix user, see users.py)

import wove._config


def pytest_configure(config):
    """Tests send SIGINT and SIGHUP to drivers they start, which inherit ignored signals (a suite started with
    ``nohup`` or in the background of a non-interactive shell ignores both): give both their defaults, so
    the children behave as a user's terminal session would. Tests of ignored signals set them themselves."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if hasattr(signal, "SIGHUP") and signal.getsignal(signal.SIGHUP) is signal.SIG_IGN:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)


@pytest.fixture(autouse=True)
def _fresh_wove_config():
    wove._config.reset()
    yield
    wove._config.reset()


TESTS = Path(__file__).resolve().parent
SLURM_TESTS = TESTS / "slurm"
LOCAL_SLURM = TESTS.parent / "scripts" / "local-slurm.sh"


@pytest.hookimpl(tryfirst=True)   # before the mark plugin applies -m
def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLURM_TESTS in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.slurm)


def _ensure_cluster() -> str:
    try:
        if subprocess.run(["sinfo", "-h"], capture_output=True).returncode == 0:
            return ""
    except FileNotFoundError:
        pass
    result = subprocess.run([str(LOCAL_SLURM), "start"], capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        return f"local Slurm cluster could not start:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    return ""


@pytest.fixture(scope="session")
def slurm_cluster():
    """The local Slurm cluster (scripts/local-slurm.sh start, idempotent), for tests marked ``slurm``."""
    # Jobs run `python -m wove.backend_worker`: put this interpreter (the venv) first on PATH.
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    problem = _ensure_cluster()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(problem)
    yield


@pytest.fixture(autouse=True)
def _cluster_for_slurm_tests(request):
    if request.node.get_closest_marker("slurm") is not None:
        request.getfixturevalue("slurm_cluster")
