"""``wove cleanup`` asks the queue with the tools the dead run was configured with (its lease says which)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time


def _tool(path, body: str) -> str:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


def test_cleanup_uses_the_configured_squeue_and_scancel(tmp_path):
    calls = tmp_path / "calls"
    squeue = _tool(tmp_path / "my-squeue", f'echo "squeue $*" >> {calls}; echo 4711')
    scancel = _tool(tmp_path / "my-scancel", f'echo "scancel $*" >> {calls}')
    root = tmp_path / "spool"
    run = root / "slurm-dead"
    run.mkdir(parents=True, mode=0o700)
    root.chmod(0o700)
    lease = run / "lease"
    lease.write_text(json.dumps({"pid": 1, "journaled": False,
                                 "tools": {"squeue": [squeue, "--clusters=a"], "scancel": [scancel]}}))
    (run / "jobs").write_text("4711\n4712\n")
    for name in ("lease", "jobs"):
        (run / name).chmod(0o600)
    old = time.time() - 3600
    os.utime(lease, (old, old))

    done = subprocess.run([sys.executable, "-m", "wove", "cleanup", "--spool-dir", str(root), "--cancel"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = calls.read_text().splitlines()
    assert lines[0].startswith("squeue --clusters=a -h --array") and "--jobs=4711,4712" in lines[0]
    assert lines[1] == "scancel 4711"   # only the job the configured squeue still knows
    assert "1 still queued: 4711" in done.stdout
    assert not run.exists()
