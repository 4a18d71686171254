"""``python -m wove.backend_worker [PAYLOAD]``: run one dispatched task (or a packed share) on this host.

The payload comes from the first argument or ``WOVE_BACKEND_PAYLOAD``: base64 JSON, or ``spool:<path>``
for payloads written to the shared spool directory. Kept tiny: it runs once per remote job.
"""

import os
import sys
import threading

from wove.dispatch.worker import EXIT_UNDELIVERED, main


def _exit(code: int) -> None:
    """Exit with ``code``; when outcomes could not be delivered (exit 2), without waiting for item threads of a
    packed element that still run: nobody collects their outcomes, and Python would join the threads."""
    running = []
    if code == EXIT_UNDELIVERED:
        from wove.dispatch.batch import ITEM_THREADS

        running = [t for t in threading.enumerate() if t.name.startswith(ITEM_THREADS) and t.is_alive()]
    if running:
        print(f"wove.backend_worker: stopping with {len(running)} item thread(s) still running, since their "
              "outcomes cannot be delivered", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    _exit(main(sys.argv))
