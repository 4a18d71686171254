"""Running Slurm's command-line tools without blocking the event loop.

The command lines come from ``cli.py`` (the one place that names a Slurm tool); this module runs them. Each
call is an asyncio subprocess with a timeout; failures become ``SlurmCommandError`` with the command's exit
code and stderr (an invalid partition, a controller that is down...), never a bare ``CalledProcessError``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from typing import Optional

from .errors import SlurmCommandError
from .parse import parse_job_id  # noqa: F401  (its old home; callers and tests still find it here)

DEFAULT_TIMEOUT = 60.0


async def run(argv: Sequence[str], *, env: Optional[Mapping[str, str]] = None, stdin: Optional[bytes] = None,
              timeout: float = DEFAULT_TIMEOUT, check: bool = True) -> tuple[int, str, str]:
    """Run a command; return ``(exit code, stdout, stderr)``. ``check`` raises on a non-zero exit."""
    argv = list(argv)
    try:
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=dict(env) if env is not None else None)
    except FileNotFoundError:
        raise SlurmCommandError(
            f"{argv[0]} not found: wove's Slurm executor runs Slurm's command-line tools, so {argv[0]} must "
            "be on PATH of the process that runs the weave (or set the command list in executor_config)",
            argv, None, "") from None
    except OSError as exc:
        raise SlurmCommandError(f"cannot run {argv[0]}: {exc.strerror or exc}", argv, None, "") from exc
    try:
        out, err = await asyncio.wait_for(process.communicate(stdin), timeout)
    except asyncio.TimeoutError:
        process.kill()
        await process.wait()
        raise SlurmCommandError(f"{_short(argv)} did not answer within {timeout:.0f}s (is slurmctld reachable?)",
                                argv, None, "") from None
    except asyncio.CancelledError:
        if process.returncode is None:
            process.kill()
            await process.wait()
        raise
    code = process.returncode if process.returncode is not None else -1
    stdout, stderr = out.decode(errors="replace"), err.decode(errors="replace")
    if check and code != 0:
        message = stderr.strip() or stdout.strip() or "no output"
        raise SlurmCommandError(f"{_short(argv)} failed with exit code {code}: {message}", argv, code, stderr)
    return code, stdout, stderr


def _short(argv: Sequence[str]) -> str:
    """The command for messages, without any ``--wrap`` text or long argument lists."""
    shown: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            shown.append("...")
            skip = False
            continue
        if arg == "--wrap":
            skip = True
        shown.append(arg if len(arg) <= 80 else arg[:77] + "...")
        if len(shown) > 12:
            shown.append("...")
            break
    return " ".join(shown)


def environment_with(extra: Mapping[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env
