"""``python -m wove.slurm doctor [options]``."""

import sys

from .doctor import main


def cli(argv: list[str]) -> int:
    if not argv or argv[0] != "doctor":
        print("usage: python -m wove.slurm doctor [--environment NAME] [--command CMD] [--partition P] "
              "[--timeout S]", file=sys.stderr)
        return 2
    return main(argv[1:])


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
