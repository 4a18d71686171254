"""Every ```python block of README.md runs on its own, each as a script in a fresh process (issue 12, point 6).

A reader copies one snippet, not the whole page, so each must carry its own imports and configuration; the
Slurm ones submit to the real local cluster. A snippet that cannot run alone for a real reason says so on the
line before its fence: ``<!-- snippet: no-run (the reason) -->``. Shell blocks are not run, but an
``examples/...py`` they name must exist.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
TIMEOUT = 120.0          # seconds per snippet: only catches a hang (the machine is small and shared)
SHELL_LANGUAGES = {"sh", "bash", "console", "shell"}
FENCE = re.compile(r"^```\s*([\w+-]*)\s*$")
MARKER = re.compile(r"^\s*<!--\s*snippet:(.*?)-->\s*$")
NO_RUN = re.compile(r"^\s*no-run\s*(?:\((.*)\))?\s*$")
EXAMPLE = re.compile(r"\bexamples/[\w./-]+\.py\b")


@dataclass(frozen=True)
class Snippet:
    """One fenced block: where it is (for the test id and messages) and whether it may be left unrun."""

    language: str
    heading: str
    line: int                 # 1-based line of the opening fence
    code: str
    no_run: str | None        # the marker's reason ('' if the marker has none); None without a marker

    @property
    def test_id(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.heading.lower()).strip("-") or "top"
        return f"{slug}-L{self.line}"


def parse_marker(text: str, line: int) -> str | None:
    """The reason of a ``<!-- snippet: no-run (reason) -->`` line, '' if it gives none; None if not a marker."""
    match = MARKER.match(text)
    if match is None:
        return None
    no_run = NO_RUN.match(match.group(1))
    if no_run is None:
        raise ValueError(f"README.md line {line}: unknown snippet marker {text.strip()!r}; "
                         f"valid: <!-- snippet: no-run (reason) -->")
    return (no_run.group(1) or "").strip()


def extract(text: str) -> list[Snippet]:
    """Every fenced block of a Markdown text, with the heading above it and any marker on the line before."""
    snippets: list[Snippet] = []
    lines = text.splitlines()
    heading, index = "", 0
    while index < len(lines):
        fence = FENCE.match(lines[index])
        if fence is None:
            if lines[index].startswith("#"):
                heading = lines[index].lstrip("#").strip()
            index += 1
            continue
        start = index
        end = next((i for i in range(start + 1, len(lines)) if lines[i].strip() == "```"), None)
        if end is None:
            raise ValueError(f"README.md line {start + 1}: a ``` fence that is never closed")
        marker = parse_marker(lines[start - 1], start) if start > 0 else None
        snippets.append(Snippet(fence.group(1).lower(), heading, start + 1, "\n".join(lines[start + 1:end]) + "\n",
                                marker))
        index = end + 1
    return snippets


SNIPPETS = extract(README.read_text(encoding="utf-8"))
PYTHON = [snippet for snippet in SNIPPETS if snippet.language == "python"]
EXAMPLES = sorted({(name, snippet.line) for snippet in SNIPPETS if snippet.language in SHELL_LANGUAGES
                   for name in EXAMPLE.findall(snippet.code)})
# Snippets that fail because of a bug in wove itself (not in the snippet): test id -> the bug.
KNOWN_BUGS: dict[str, str] = {}


def _run(script: Path, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a script; on a hang, stop it as a user would (SIGTERM cancels its jobs) and report what it printed."""
    proc = subprocess.Popen([sys.executable, str(script)], cwd=cwd, env=env, text=True, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        pytest.fail(f"{script.name} still running after {TIMEOUT:.0f} s\nstdout:\n{out[-3000:]}\nstderr:\n"
                    f"{err[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _params(snippets: list[Snippet]) -> list:
    return [pytest.param(snippet, id=snippet.test_id,
                         marks=[pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[snippet.test_id])]
                         if snippet.test_id in KNOWN_BUGS else [])
            for snippet in snippets]


@pytest.mark.parametrize("snippet", _params(PYTHON))
def test_python_snippet_runs_on_its_own(snippet: Snippet, tmp_path: Path) -> None:
    if snippet.no_run is not None:
        assert snippet.no_run, (f"README.md line {snippet.line - 1}: a no-run marker needs its reason, "
                                f"e.g. <!-- snippet: no-run (a fragment showing one option) -->")
        pytest.skip(f"marked no-run: {snippet.no_run}")
    script = tmp_path / f"snippet_L{snippet.line}.py"
    script.write_text(snippet.code, encoding="utf-8")
    # The environment the other Slurm tests run in (the venv first on PATH, set by the slurm_cluster fixture),
    # with a private spool directory instead of ~/.cache/wove/spool.
    env = {**os.environ, "WOVE_SPOOL_DIR": str(tmp_path / "spool")}
    env.pop("WOVE_CONFIG", None)
    result = _run(script, tmp_path, env)
    if result.returncode != 0:
        pytest.fail(f"README.md snippet at line {snippet.line} (under {snippet.heading!r}) exited {result.returncode}"
                    f"\nstderr:\n{result.stderr[-4000:]}", pytrace=False)


@pytest.mark.parametrize(("name", "line"), EXAMPLES, ids=[f"{name}-L{line}" for name, line in EXAMPLES])
def test_examples_named_in_shell_blocks_exist(name: str, line: int) -> None:
    assert (ROOT / name).is_file(), f"README.md shell block at line {line} names {name}, which does not exist"


def test_the_readme_has_python_snippets() -> None:
    # Guards the extraction itself: a fence regex that matched nothing would make the tests above vacuous.
    assert len(PYTHON) >= 3, [snippet.test_id for snippet in SNIPPETS]
    assert all(snippet.code.strip() for snippet in PYTHON)


def test_markers_are_read_and_a_marker_without_reason_is_caught() -> None:
    text = ("# Top\n\n```python\nprint(1)\n```\n## Part two\n<!-- snippet: no-run (needs a second user) -->\n"
            "```python\nx\n```\n<!-- snippet: no-run -->\n```python\ny\n```\n```sh\npython examples/a.py\n```\n")
    top, second, bare, shell = extract(text)
    assert (top.test_id, top.no_run, top.code) == ("top-L3", None, "print(1)\n")
    assert (second.test_id, second.no_run) == ("part-two-L8", "needs a second user")
    assert bare.no_run == ""
    assert shell.language == "sh" and EXAMPLE.findall(shell.code) == ["examples/a.py"]
    with pytest.raises(ValueError, match=r"unknown snippet marker.*valid: <!-- snippet: no-run"):
        extract("<!-- snippet: skip -->\n```python\nz\n```\n")
    with pytest.raises(ValueError, match="never closed"):
        extract("```python\nz\n")
