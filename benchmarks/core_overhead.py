"""Core scheduling overhead of wove vs hand-written asyncio / thread pools, measured side by side.

    python benchmarks/core_overhead.py [--runs 5] [--items 10000] [--graph 500]

Each case runs ``--runs`` times alternating wove and its baseline, and prints the median microseconds per
task and the ratio wove / baseline. Targets: async map <= 2.0x asyncio.gather, sync map <= 2.0x
ThreadPoolExecutor.map (same worker count), 500-task diamond graph <= 3.0x hand-written asyncio.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wove import weave

WORKERS = 256  # wove's default max_workers; the thread-pool baseline uses the same


async def anoop(x):
    return x


def noop(x):
    return x


# ----------------------------------------------------------------------------- async map
async def wove_async_map(n: int) -> float:
    start = time.perf_counter()
    async with weave() as w:
        @w.do(range(n))
        async def item(x):
            return x
    assert len(w.result.item) == n
    return time.perf_counter() - start


async def gather_async_map(n: int) -> float:
    start = time.perf_counter()
    out = await asyncio.gather(*(anoop(x) for x in range(n)))
    assert len(out) == n
    return time.perf_counter() - start


# ----------------------------------------------------------------------------- sync map
def wove_sync_map(n: int) -> float:
    start = time.perf_counter()
    with weave(max_workers=WORKERS) as w:
        @w.do(range(n))
        def item(x):
            return x
    assert len(w.result.item) == n
    return time.perf_counter() - start


def pool_sync_map(n: int) -> float:
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        out = list(pool.map(noop, range(n)))
    assert len(out) == n
    return time.perf_counter() - start


# ----------------------------------------------------------------------------- diamond graph
def graph_layers(total: int, width: int = 10) -> list[list[str]]:
    """A diamond: one source, layers of ``width`` tasks each depending on the whole previous layer, one sink."""
    names = ["t_src"]
    layers = [["t_src"]]
    middle = total - 2
    index = 0
    while index < middle:
        layer = [f"t_{index + j}" for j in range(min(width, middle - index))]
        index += len(layer)
        layers.append(layer)
        names.extend(layer)
    layers.append(["t_sink"])
    return layers


def make_async_functions(layers: list[list[str]]) -> dict[str, object]:
    funcs: dict[str, object] = {}
    previous: list[str] = []
    for layer in layers:
        for name in layer:
            params = ", ".join(previous)
            namespace: dict[str, object] = {}
            exec(f"async def {name}({params}):\n    return 1\n", namespace)
            funcs[name] = namespace[name]
        previous = layer
    return funcs


async def wove_graph(layers, funcs) -> float:
    start = time.perf_counter()
    async with weave() as w:
        for layer in layers:
            for name in layer:
                w.do(funcs[name])
    assert w.result.t_sink == 1
    return time.perf_counter() - start


async def asyncio_graph(layers, funcs) -> float:
    """The hand-written version: one task per node, each awaiting its inputs, then calling the function."""
    start = time.perf_counter()
    tasks: dict[str, asyncio.Task] = {}
    previous: list[str] = []

    async def node(func, deps):
        values = [await tasks[d] for d in deps]
        return await func(*values)

    for layer in layers:
        for name in layer:
            tasks[name] = asyncio.ensure_future(node(funcs[name], list(previous)))
        previous = layer
    assert await tasks["t_sink"] == 1
    return time.perf_counter() - start


def measure(runs: int, wove_case, base_case) -> tuple[float, float]:
    wove_times, base_times = [], []
    for _ in range(runs):
        wove_times.append(wove_case())
        base_times.append(base_case())
    return statistics.median(wove_times), statistics.median(base_times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--graph", type=int, default=500)
    args = parser.parse_args()
    n, runs = args.items, args.runs
    layers = graph_layers(args.graph)
    funcs = make_async_functions(layers)
    tasks_in_graph = sum(len(layer) for layer in layers)

    # Warm up imports, thread creation and the allocator once before measuring.
    asyncio.run(wove_async_map(100))
    wove_sync_map(100)

    cases = [
        ("async map", n, 2.0, "asyncio.gather",
         lambda: asyncio.run(wove_async_map(n)), lambda: asyncio.run(gather_async_map(n))),
        ("sync map", n, 2.0, f"ThreadPoolExecutor.map({WORKERS})",
         lambda: wove_sync_map(n), lambda: pool_sync_map(n)),
        ("diamond graph", tasks_in_graph, 3.0, "hand-written asyncio",
         lambda: asyncio.run(wove_graph(layers, funcs)), lambda: asyncio.run(asyncio_graph(layers, funcs))),
    ]
    print(f"median of {runs} runs, python {sys.version.split()[0]}")
    print(f"{'case':<15}{'tasks':>7}{'wove us/task':>14}{'baseline us/task':>18}{'ratio':>8}{'target':>8}  baseline")
    failed = False
    for label, count, target, base_name, wove_case, base_case in cases:
        wove_s, base_s = measure(runs, wove_case, base_case)
        ratio = wove_s / base_s
        ok = ratio <= target
        failed |= not ok
        print(f"{label:<15}{count:>7}{wove_s / count * 1e6:>14.2f}{base_s / count * 1e6:>18.2f}"
              f"{ratio:>7.2f}x{'<=' + str(target):>8}  {base_name}{'' if ok else '  (over target)'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
