"""Dispatch throughput and overhead, measured on loopback.

    python benchmarks/dispatch.py [--posters 8] [--events 2000] [--runs 7]

(a) Signed events per second accepted by one callback receiver from ``--posters`` concurrent processes.
    Each process posts ``--events`` signed heartbeat events for its own registered run, with increasing
    sequence numbers, through ``wove.dispatch.worker.EventSender`` (the worker's own keep-alive client).
    The receiver counts what it accepted; lost = posted - accepted. Target: >= 2,000 events/s, 0 lost.
(b) Round-trip time of one task through a subprocess backend adapter (a ``python -m wove.backend_worker``
    child per task, the callback receiver, signed events), and through the stdio executor, against calling
    the function locally and running it in a local weave. Median of ``--runs`` runs each.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

EVENT_TARGET = 2000.0


# ----------------------------------------------------------------------------- (a) event throughput
def poster_main(url: str, run_id: str, count: int, start_at: float) -> int:
    """Child process: post ``count`` signed events for ``run_id``; exit code = events not delivered."""
    from wove.dispatch.worker import EventSender

    payload = {"run_id": run_id, "task_id": "bench", "callback_url": url,
               "signing": {"key": os.environ["WOVE_BENCH_KEY"]}, "delivery": {"post_timeout": 30}}
    sender = EventSender(payload)
    delay = start_at - time.time()
    if delay > 0:
        time.sleep(delay)
    failed = 0
    for _ in range(count):
        if not sender.send("heartbeat"):
            failed += 1
    if sender._connection is not None:
        sender._connection.close()
    return min(failed, 255)


async def measure_events(posters: int, events: int) -> dict[str, float]:
    from wove.dispatch import protocol
    from wove.dispatch.events import EventGate
    from wove.dispatch.receiver import CallbackReceiver

    gate = EventGate()
    accepted = 0
    last_accept = 0.0

    def on_frame(frame: dict) -> None:
        nonlocal accepted, last_accept
        accepted += 1
        last_accept = time.perf_counter()

    receiver = CallbackReceiver(gate, on_frame, token="bench")
    await receiver.start()
    try:
        url = receiver.url()
        start_at = time.time() + 1.5          # let every poster start up before the clock runs
        procs = []
        for index in range(posters):
            run_id = f"bench-run-{index}"
            key = protocol.new_key()
            gate.register(run_id, key)
            env = {**os.environ, "WOVE_BENCH_KEY": key, "PYTHONPATH": str(ROOT)}
            procs.append(await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--poster", url, run_id, str(events), repr(start_at), env=env))
        await asyncio.sleep(max(0.0, start_at - time.time()))
        started = time.perf_counter()
        codes = [await proc.wait() for proc in procs]
        ended = last_accept if accepted else time.perf_counter()
    finally:
        await receiver.stop()
    total = posters * events
    seconds = max(ended - started, 1e-9)
    return {"posted": total, "accepted": accepted, "lost": total - accepted, "seconds": seconds,
            "rate": accepted / seconds, "undelivered": sum(codes), "rejected": sum(gate.rejected.values())}


# ----------------------------------------------------------------------------- (b) round trip
def one() -> int:
    return 1


def make_adapter_class():
    from wove import BackendAdapter

    class SubprocessAdapter(BackendAdapter):
        """``submit`` starts ``python -m wove.backend_worker`` with the payload in its environment."""

        async def start(self) -> None:
            self.procs: list[subprocess.Popen] = []

        def submit(self, payload, frame):
            env = {**os.environ, "WOVE_BACKEND_PAYLOAD": self.encode_payload(payload)}
            proc = subprocess.Popen([sys.executable, "-m", "wove.backend_worker"], env=env, cwd=str(ROOT))
            self.procs.append(proc)
            return proc.pid

        async def cancel(self, run_id, submission, frame):
            for proc in self.procs:
                if proc.pid == submission and proc.poll() is None:
                    proc.terminate()

        async def close(self) -> None:
            loop = asyncio.get_running_loop()
            for proc in self.procs:
                await loop.run_in_executor(None, proc.wait)

    return SubprocessAdapter


def time_weave(environment: str | None) -> float:
    from wove import weave

    start = time.perf_counter()
    with weave() as w:
        if environment:
            w.do(environment=environment)(one)
        else:
            w.do(one)
    assert w.result.one == 1
    return time.perf_counter() - start


def measure_round_trip(runs: int) -> dict[str, float]:
    import wove
    from wove import BackendAdapterEnvironmentExecutor

    wove.config(environments={
        "sub": {"executor": BackendAdapterEnvironmentExecutor("sub", adapter_class=make_adapter_class())},
        "io": {"executor": "stdio"},
    })
    results: dict[str, list[float]] = {"local call": [], "local weave": [], "stdio": [], "adapter": []}
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(1000):
            one()
        results["local call"].append((time.perf_counter() - start) / 1000)
        results["local weave"].append(time_weave(None))
        results["adapter"].append(time_weave("sub"))
        results["stdio"].append(time_weave("io"))
    return {name: statistics.median(values) for name, values in results.items()}


# ----------------------------------------------------------------------------- main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--posters", type=int, default=8)
    parser.add_argument("--events", type=int, default=2000, help="events per posting process")
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()

    print(f"wove dispatch benchmark (Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f})")
    events = asyncio.run(measure_events(args.posters, args.events))
    verdict = "OK" if events["rate"] >= EVENT_TARGET and events["lost"] == 0 else "BELOW TARGET"
    print()
    print(f"(a) signed events accepted by the receiver, {args.posters} posting processes on loopback")
    print(f"    {'posted':>10} {'accepted':>10} {'lost':>6} {'rejected':>9} {'seconds':>8} {'events/s':>10}")
    print(f"    {events['posted']:>10} {events['accepted']:>10} {events['lost']:>6} {events['rejected']:>9} "
          f"{events['seconds']:>8.2f} {events['rate']:>10.0f}   target >= {EVENT_TARGET:.0f}/s, 0 lost: "
          f"{verdict}")

    trip = measure_round_trip(args.runs)
    print()
    print(f"(b) one task, median of {args.runs} runs")
    print(f"    {'path':<52} {'time':>12}")
    rows = [
        ("calling the function locally", trip["local call"]),
        ("local weave (one task, in this process)", trip["local weave"]),
        ("stdio executor (worker process per weave)", trip["stdio"]),
        ("subprocess backend adapter (backend_worker per task)", trip["adapter"]),
    ]
    for label, seconds in rows:
        text = f"{seconds * 1e6:.2f} us" if seconds < 1e-3 else f"{seconds * 1e3:.1f} ms"
        print(f"    {label:<52} {text:>12}")
    print(f"    {'adapter round-trip overhead vs local call':<52} "
          f"{(trip['adapter'] - trip['local call']) * 1e3:>9.1f} ms")
    return 0 if verdict == "OK" else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--poster":
        url, run_id, count, start_at = sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
        sys.exit(poster_main(url, run_id, count, start_at))
    sys.exit(main())
