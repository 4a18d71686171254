"""``wove doctor`` on the real cluster: the configuration it checks is the one real tasks use (issue 11, bug e).

Its checks that need no cluster (unknown environments, cutting long messages) are in
tests/unit/test_slurm_doctor.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import wove


def _doctor(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "wove", "doctor", "--timeout", "60", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=240, env=env)


def _write_config(directory: Path, executor_config: dict) -> None:
    (directory / "wove_config.py").write_text(textwrap.dedent(f"""
        environments = {{"hpc": {{"executor": "slurm", "executor_config": {executor_config!r}}}}}
    """))


def _base_config(tmp_path: Path) -> dict:
    return {"spool_dir": str(tmp_path / "spool"), "mem": "100M", "job_name_prefix": "wove-doctor-test"}


def test_an_invalid_partition_is_shown_whole(tmp_path):
    result = _doctor(tmp_path, "--partition", "nope")
    assert result.returncode == 1, result.stdout + result.stderr
    line = next(line for line in result.stdout.splitlines() if "[FAIL] probe task round trip" in line)
    # It was cut after 300 characters, mid-word ("...invalid partit"), losing the reason.
    assert line.endswith("invalid partition specified: nope"), line
    assert "fix: pass a valid --partition" in result.stdout
    assert "valid partitions: debug (the default)" in result.stdout   # from sinfo, through the configured tool


def test_a_round_trip_that_only_works_over_the_filesystem_channel_fails(tmp_path):
    # Jobs are told to report to a port nobody listens on, as when compute nodes cannot reach the driver.
    _write_config(tmp_path, {**_base_config(tmp_path), "post_timeout": 2,
                             "callback_url": "http://127.0.0.1:9/wove/events/doctor-test-token"})
    result = _doctor(tmp_path)
    out = result.stdout
    assert "[FAIL] probe task round trip" in out and "could not deliver" in out, out
    assert "[PASS] filesystem result channel" in out, out
    # It exited 0 with "a task can make the round trip" although every real task of this config fails.
    assert result.returncode == 1, out + result.stderr
    assert "a task can make the round trip" not in out
    assert "set executor_config['result_channel'] = 'filesystem'" in out.splitlines()[-1], out


LOGGING_TOOL = """
import json, os, sys

log, argv = sys.argv[1], sys.argv[2:]
with open(log, "a") as handle:
    handle.write(json.dumps(argv) + "\\n")
os.execvp(argv[0], argv)
"""


def test_the_doctor_runs_the_configured_tools(tmp_path):
    wrapper, log = tmp_path / "logging_tool.py", tmp_path / "tools.jsonl"
    wrapper.write_text(LOGGING_TOOL)
    tools = {"sbatch": ["sbatch", "--parsable"], "scancel": ["scancel"], "squeue": ["squeue"], "sacct": ["sacct"],
             "scontrol": ["scontrol"], "sinfo": ["sinfo"]}
    _write_config(tmp_path, {**_base_config(tmp_path),
                             **{key: [sys.executable, str(wrapper), str(log), *argv] for key, argv in tools.items()}})
    result = _doctor(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    # It ran plain `sbatch`, `squeue`, `sacct`... whatever executor_config said.
    assert {call[0] for call in calls} == set(tools), calls
    assert ["sbatch", "--parsable", "--version"] in calls
    assert ["sinfo", "-h"] in calls
    assert any(call[0] == "sbatch" and "--job-name=wove-doctor-test-wove_probe" in call for call in calls)
    assert any(call[:3] == ["scontrol", "show", "assoc_mgr"] for call in calls)


def test_missing_tools_name_config_keys_that_exist(tmp_path):
    env = {"PATH": str(Path(sys.executable).parent), "HOME": str(tmp_path)}   # no Slurm tools on PATH
    result = _doctor(tmp_path, env=env)
    assert result.returncode == 1
    keys = set(re.findall(r"executor_config\['(\w+)'\] \(a command list", result.stdout))
    assert keys == {"sbatch", "scancel", "squeue", "sinfo"}, result.stdout
    for key in keys:   # it suggested executor_config['sinfo'], which the configuration then refused
        wove.config(environments={"hpc": {"executor": "slurm", "executor_config": {key: [f"/opt/slurm/bin/{key}"]}}})
