"""Start-up cost of the job side, ``python -m wove.backend_worker``, against a bare ``python -c pass``.

    PATH=$PWD/.venv/bin:$PATH python benchmarks/worker_startup.py [--runs 21]

Prints median wall times of: a bare interpreter; the worker's start-up (every import it makes before it
reads a payload; measured by running it without one, so it exits right after start-up); and whole runs of
one trivial task posting its events to a local receiver, with the function pickled by reference (an
importable module function) and by value (defined in ``__main__``; the job loads it without importing
cloudpickle, see wove.dispatch.unpickle).
Target for the start-up: within 40 ms of ``python -c pass``. Also prints the worker's own imports as
reported by ``python -X importtime``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cloudpickle

from wove.dispatch import events, protocol
from wove.dispatch.receiver import CallbackReceiver

PYTHON = sys.executable


def trivial(x):
    return x


class Receiver:
    """A callback receiver on a background loop, accepting runs registered by ``payload``."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.gate = events.EventGate()
        self.frames = []
        self.server = CallbackReceiver(self.gate, self.frames.append, token="bench")
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result()
        self.count = 0

    def payload(self, func, args) -> str:
        self.count += 1
        key, run_id = protocol.new_key(), f"bench-{self.count}"
        self.gate.register(run_id, key)
        return protocol.encode_inline({
            "version": protocol.PAYLOAD_VERSION, "run_id": run_id, "task_id": "t", "task_name": "t",
            "callback_url": self.server.url(), "signing": {"key": key}, "delivery": {},
            "callable_pickle": base64.b64encode(cloudpickle.dumps(func)).decode(),
            "args_pickle": base64.b64encode(cloudpickle.dumps((args, {}))).decode(),
            **protocol.version_info()})


def timed(argv, runs, env_for=None, expect=0) -> float:
    samples = []
    for index in range(runs):
        env = dict(os.environ, **(env_for(index) if env_for else {}))
        start = time.perf_counter()
        code = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
        samples.append(time.perf_counter() - start)
        if code != expect:
            raise SystemExit(f"{argv} exited {code}, expected {expect}")
    return statistics.median(samples) * 1000


def worker_imports() -> list[tuple[int, str]]:
    out = subprocess.run([PYTHON, "-X", "importtime", "-m", "wove.backend_worker"], capture_output=True,
                         text=True, env=dict(os.environ, WOVE_BACKEND_PAYLOAD="")).stderr
    rows = []
    for line in out.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit() and not parts[2].startswith("   "):
            rows.append((int(parts[1]), parts[2].strip()))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=21)
    args = parser.parse_args()
    receiver = Receiver()
    worker = [PYTHON, "-m", "wove.backend_worker"]
    bare = timed([PYTHON, "-c", "pass"], args.runs)
    startup = timed(worker, args.runs, lambda i: {"WOVE_BACKEND_PAYLOAD": ""}, expect=3)
    by_ref = timed(worker, args.runs, lambda i: {"WOVE_BACKEND_PAYLOAD": receiver.payload(os.getcwd, ())})
    by_value = timed(worker, args.runs, lambda i: {"WOVE_BACKEND_PAYLOAD": receiver.payload(trivial, (1,))})
    print(f"median of {args.runs} runs, python {sys.version.split()[0]}")
    print(f"  python -c pass                                  {bare:7.1f} ms")
    print(f"  worker start-up (all imports, no payload)       {startup:7.1f} ms  (+{startup - bare:.1f} ms, "
          f"target <= +40 ms)")
    print(f"  one task, function by reference, 2 events       {by_ref:7.1f} ms  (+{by_ref - bare:.1f} ms)")
    print(f"  one task, function by value (cloudpickle), 2 ev {by_value:7.1f} ms  (+{by_value - bare:.1f} ms)")
    rows = sorted(worker_imports(), reverse=True)[:6]
    print("  largest top-level imports of the worker (python -X importtime, cumulative us):")
    for micros, name in rows:
        print(f"    {micros:>7} {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
