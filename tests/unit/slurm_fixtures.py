"""The Slurm outputs recorded in tests/fixtures/slurm, as data: what was run, its exit code, stdout and stderr.

Each line of tests/fixtures/slurm/README.md names one recording::

    - `NAME` (exit N, YYYY-MM-DD): `command line`      NAME.txt (stdout), NAME.stderr.txt (stderr, if any)
    - `NAME` (file, YYYY-MM-DD): `path`                 NAME.txt: a copy of a job's --error file
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Optional

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "slurm"
_LINE = re.compile(r"^- `(?P<name>[^`]+)` \((?:exit (?P<exit>\d+)|file), (?P<date>\d{4}-\d\d-\d\d)\): `(?P<what>.*)`$")


@dataclass(frozen=True)
class Recorded:
    name: str
    exit_code: Optional[int]     # None for a copied file
    date: str
    argv: tuple[str, ...]        # the Slurm command and its arguments, without `env X=Y` / `runuser -u U --`
    stdout: str
    stderr: str

    @property
    def job_ids(self) -> list[str]:
        """The job ids the command asked about (``--jobs=1,2`` or ``show job 1``), in the order given."""
        for arg in self.argv:
            if arg.startswith("--jobs="):
                return arg[len("--jobs="):].split(",")
        if self.argv[-2:-1] == ("job",):
            return [self.argv[-1]]
        return []


def _slurm_argv(words: list[str]) -> tuple[str, ...]:
    if words[:1] == ["env"]:
        words = words[1:]
        while words and "=" in words[0] and not words[0].startswith("-"):
            words = words[1:]
    if words[:1] == ["runuser"]:
        words = words[words.index("--") + 1:]
    return tuple(words)


@cache
def recordings() -> dict[str, Recorded]:
    found = {}
    for line in (FIXTURES / "README.md").read_text().splitlines():
        match = _LINE.match(line)
        if not match:
            continue
        name = match["name"]
        stderr_file = FIXTURES / f"{name}.stderr.txt"
        is_file = match["exit"] is None
        found[name] = Recorded(
            name=name, exit_code=None if is_file else int(match["exit"]), date=match["date"],
            argv=() if is_file else _slurm_argv(shlex.split(match["what"])),
            stdout=(FIXTURES / f"{name}.txt").read_text(),
            stderr=stderr_file.read_text() if stderr_file.exists() else "")
    return found


def recorded(name: str) -> Recorded:
    return recordings()[name]


def normalized(args: list[str] | tuple[str, ...]) -> list[str]:
    """Arguments with the parts that differ from run to run (job ids, the user's name) as placeholders."""
    out = []
    for index, arg in enumerate(args):
        if arg.startswith("--jobs="):
            arg = "--jobs=<ids>"
        elif arg.startswith("users="):
            arg = "users=<user>"
        elif index >= 2 and args[index - 2:index] in (["show", "job"], ("show", "job")):
            arg = "<id>"
        out.append(arg)
    return out
