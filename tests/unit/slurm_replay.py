"""Stand-in for a Slurm command: prints what the real one printed (tests/fixtures/slurm) and exits the same.

    python slurm_replay.py NAME [ARGS...]

wove is configured with ``[python, slurm_replay.py, NAME]`` as its ``squeue``/``sacct``/``scontrol``/``sbatch``
and appends its own arguments, exactly as with the real tool. Those arguments are appended as one JSON line
to ``$WOVE_REPLAY_LOG`` so the test can check them against the command line the recording came from.
"""

from __future__ import annotations

import json
import os
import sys

from slurm_fixtures import recorded


def main() -> int:
    name, args = sys.argv[1], sys.argv[2:]
    log = os.environ.get("WOVE_REPLAY_LOG")
    if log:
        with open(log, "a") as handle:
            handle.write(json.dumps({"name": name, "args": args}) + "\n")
    recording = recorded(name)
    sys.stdout.write(recording.stdout)
    sys.stderr.write(recording.stderr)
    return recording.exit_code or 0


if __name__ == "__main__":
    sys.exit(main())
