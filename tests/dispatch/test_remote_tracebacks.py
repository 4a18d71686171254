"""Remote tracebacks of functions defined in a script (``__main__``) name the script, its line numbers and
source lines, not ``File "<dynamic-code>"``.

The script is a real file run as ``python script.py`` in a subprocess; its task runs in a real worker
process (stdio, or ``python -m wove.backend_worker`` through a ``BackendAdapter``). The "blind" worker cannot
read any source (its ``linecache`` is emptied, as on a node without the submitter's files): the driver must
fill the lines in.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from wove.dispatch.error_payload import fill_source_lines

pytestmark = pytest.mark.timeout(120)

BLIND_WORKER = ("import linecache, sys; linecache.getline = lambda *args, **kwargs: ''; "
                "from wove.stdio_worker import main; sys.exit(main())")

SCRIPT = textwrap.dedent('''\
    import sys

    import wove
    from wove import weave

    kind = sys.argv[1]
    if kind == "adapter":
        from dispatch_helpers import AdapterLog, SubprocessAdapter

        from wove.executors.adapter import BackendAdapterEnvironmentExecutor

        environment = {"executor": BackendAdapterEnvironmentExecutor(
            "remote", adapter_class=SubprocessAdapter, adapter_options={"log": AdapterLog()})}
    elif kind == "blind":
        environment = {"executor": "stdio", "executor_config": {"command": [sys.executable, "-c", BLIND]}}
    else:
        environment = {"executor": "stdio"}
    wove.config(environments={"remote": environment})


    def check(level):
        raise ValueError(f"level {level} is too high")


    with weave() as w:
        @w.do(environment="remote")
        def compute():
            return check(7) + 1
    ''').replace("BLIND", repr(BLIND_WORKER))


def run_script(tmp_path, kind: str) -> tuple[str, str]:
    """Run the script; returns (its path, the remote traceback text it printed)."""
    script = tmp_path / "pipeline.py"
    script.write_text(SCRIPT)
    done = subprocess.run([sys.executable, str(script), kind], cwd=tmp_path, capture_output=True, text=True,
                          timeout=90)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "ValueError: level 7 is too high" in done.stderr
    assert "--- remote traceback ---" in done.stderr, done.stderr[-3000:]
    return str(script), done.stderr.split("--- remote traceback ---", 1)[1]


def line_of(text: str) -> int:
    return SCRIPT.splitlines().index(text) + 1


@pytest.mark.parametrize("kind", ["stdio", "adapter", "blind"])
def test_remote_traceback_names_the_script_its_lines_and_source(tmp_path, kind):
    path, remote = run_script(tmp_path, kind)
    assert "<dynamic-code>" not in remote
    raise_line = line_of('    raise ValueError(f"level {level} is too high")')
    call_line = line_of("        return check(7) + 1")
    expected = [f'  File "{path}", line {call_line}, in compute\n    return check(7) + 1\n',
                f'  File "{path}", line {raise_line}, in check\n    raise ValueError(f"level {{level}} is too high")\n']
    for frame in expected:
        assert frame in remote, remote
    assert remote.index(expected[0]) < remote.index(expected[1])


def test_missing_source_lines_are_filled_from_the_driver_files(tmp_path):
    source = tmp_path / "job.py"
    source.write_text("def f():\n    return 1 / 0\n")
    text = (f'Traceback (most recent call last):\n  File "{source}", line 2, in f\n'
            '  File "/nowhere/gone.py", line 3, in g\n'
            f'  File "{tmp_path / "data.txt"}", line 1, in h\n'
            f'  File "{source}", line 1, in f\n    kept as the job showed it\n'
            'ZeroDivisionError: division by zero\n')
    (tmp_path / "data.txt").write_text("secret\n")
    filled = fill_source_lines(text)
    assert f'  File "{source}", line 2, in f\n    return 1 / 0\n  File "/nowhere/gone.py"' in filled
    assert '  File "/nowhere/gone.py", line 3, in g\n  File' in filled   # no file here: nothing added
    assert "secret" not in filled                                         # only Python sources are read
    assert 'line 1, in f\n    kept as the job showed it\nZeroDivisionError' in filled
    assert fill_source_lines(filled) == filled
