"""``wove doctor`` checks that need no cluster: which environment it checks, and how it cuts long messages.

The round trip itself (and the tools it runs) is tested on the real cluster in tests/slurm/test_doctor.py.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from wove.slurm import doctor

CONFIG = textwrap.dedent("""
    environments = {
        "hpc": {"executor": "slurm", "executor_config": {"partition": "debug"}},
        "gpu": {"executor": "slurm"},
    }
""")


def _doctor(tmp_path, *args):
    (tmp_path / "wove_config.py").write_text(CONFIG)
    return subprocess.run([sys.executable, "-m", "wove", "doctor", *args], capture_output=True, text=True,
                          cwd=tmp_path, timeout=60)


def test_an_unknown_environment_lists_the_configured_ones(tmp_path):
    result = _doctor(tmp_path, "--environment", "nope")
    assert result.returncode == 2, result.stdout + result.stderr   # was a KeyError traceback
    assert "Traceback" not in result.stderr
    message = result.stderr.strip()
    assert message.startswith("wove doctor: environment 'nope' is not configured"), message
    assert "'default' (local), 'hpc' (slurm), 'gpu' (slurm)" in message
    assert "pass one of the Slurm environments ('hpc', 'gpu')" in message
    assert result.stdout == ""   # nothing was checked


def test_an_environment_that_is_not_a_slurm_one_is_refused(tmp_path):
    result = _doctor(tmp_path, "--environment", "default")
    assert result.returncode == 2
    assert "environment 'default' uses executor 'local', not 'slurm'" in result.stderr


def test_a_missing_config_file_is_a_usage_error(tmp_path):
    result = _doctor(tmp_path, "--config", str(tmp_path / "missing.py"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "missing.py" in result.stderr


def test_long_messages_are_cut_at_a_word_never_inside_one():
    words = " ".join(f"word{i}" for i in range(400))
    cut = doctor._first_line(words + "\nsecond line", limit=100)
    assert cut.endswith(" …") and len(cut) <= 102
    assert cut[:-2].split(" ")[-1] in words.split(" ")   # the last word shown is whole
    message = "sbatch: error: invalid partition specified: nope"
    assert doctor._first_line(f"{message}\nmore") == message
    assert doctor._first_line("x" * 50, limit=10) == "x" * 10 + " …"   # one long word: cut, and marked
