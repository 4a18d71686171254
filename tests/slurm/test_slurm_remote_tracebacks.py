"""A script's task that raises on the real Slurm cluster: the traceback the user sees names the script,
the line numbers and the source lines (issue 12, point 6), not ``File "<dynamic-code>"``.

The script is a real file run as ``python script.py``; its task runs as a Slurm job. The "blind" job runs
a worker whose ``linecache`` finds no source (as on a node that cannot read the submitter's files), so
the source lines must come from the driver.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from slurm_helpers import squeue_jobs, wait_until

pytestmark = pytest.mark.timeout(240)

BLIND_WORKER = textwrap.dedent("""\
    import linecache
    import sys

    linecache.getline = lambda *args, **kwargs: ""
    from wove.dispatch.worker import main

    sys.exit(main(sys.argv))
    """)

SCRIPT = textwrap.dedent('''\
    import wove
    from wove import weave

    wove.config(environments={"slurm": {"executor": "slurm", "executor_config": CONFIG}})


    def check(level):
        raise ValueError(f"level {level} is too high")


    with weave() as w:
        @w.do(environment="slurm")
        def compute():
            return check(7) + 1
    ''')


def line_of(text: str) -> int:
    return SCRIPT.splitlines().index(text) + 1


@pytest.mark.parametrize("blind", [False, True], ids=["job-reads-source", "blind-job"])
def test_slurm_traceback_names_the_script_line_and_source(tmp_path, prefix, blind):
    command = f"{sys.executable} -m wove.backend_worker"
    if blind:
        worker = tmp_path / "blind_worker.py"
        worker.write_text(BLIND_WORKER)
        command = f"{sys.executable} {worker}"
    config = {"job_name_prefix": prefix, "spool_dir": str(tmp_path / "spool"), "mem": "100M", "command": command}
    script = tmp_path / "pipeline.py"
    script.write_text(SCRIPT.replace("CONFIG", repr(config)))

    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=200)

    assert done.returncode == 1, done.stderr[-3000:]
    assert "ValueError: level 7 is too high" in done.stderr, done.stderr[-3000:]
    remote = done.stderr.split("--- remote traceback ---", 1)[1]
    assert "<dynamic-code>" not in remote
    raise_line = line_of('    raise ValueError(f"level {level} is too high")')
    call_line = line_of("        return check(7) + 1")
    call = f'  File "{script}", line {call_line}, in compute\n    return check(7) + 1\n'
    raised = f'  File "{script}", line {raise_line}, in check\n    raise ValueError(f"level {{level}} is too high")\n'
    assert call in remote and raised in remote, remote
    assert remote.index(call) < remote.index(raised)
    assert wait_until(lambda: not squeue_jobs(prefix), timeout=60)
