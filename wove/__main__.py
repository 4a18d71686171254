"""The ``wove`` command: ``wove doctor`` (also ``wove slurm doctor``) checks a Slurm setup end to end;
``wove cleanup`` lists (and with ``--cancel`` removes) what dead drivers left; ``wove journal PATH`` shows a
durable weave's journal."""

from __future__ import annotations

import sys
from typing import Optional


def main(argv: Optional[list[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["slurm"]:
        args = args[1:]
    if args[:1] == ["doctor"]:
        from .slurm.doctor import main as doctor
        return doctor(args[1:])
    if args[:1] == ["cleanup"]:
        from .cleanup import cleanup
        return cleanup(args[1:])
    if args[:1] == ["journal"]:
        from .cleanup import journal
        return journal(args[1:])
    if args[:1] in (["--version"], ["version"]):
        from ._version import __version__
        print(f"wove {__version__}")
        return 0
    print("usage: wove doctor [--environment NAME] [--command CMD] [--partition P] [--timeout S]\n"
          "       wove cleanup [--spool-dir DIR] [--grace S] [--cancel]\n"
          "       wove journal PATH\n"
          "       wove --version", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
