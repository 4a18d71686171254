"""``python -m wove.backend_worker [PAYLOAD]``: run one dispatched task (or a packed share) on this host.

The payload comes from the first argument or ``WOVE_BACKEND_PAYLOAD``: base64 JSON, or ``spool:<path>``
for payloads written to the shared spool directory. Kept tiny: it runs once per remote job.
"""

import sys

from wove.dispatch.worker import main

if __name__ == "__main__":
    sys.exit(main(sys.argv))
