"""items_per_job, arrays and max_queued_jobs per task, in resources= (issue 12, point 5), on the real cluster."""

from __future__ import annotations

import os
import threading
import time

from slurm_helpers import peak_overlap, squeue_jobs, wait_until

from wove import merge, weave


def _no_submit_keys_on_sbatch(instance) -> None:
    """items_per_job / arrays / max_queued_jobs are wove's: none of them may reach sbatch as an option."""
    options = {arg.split("=", 1)[0] for call in instance.adapter.submissions for arg in call["argv"]
               if arg.startswith("-")}
    assert options and not [o for o in options if "items" in o or "queued" in o or o.startswith("--arrays")], options


def test_one_task_packed_and_one_not_in_one_environment(executor, prefix):
    instance = executor()
    with weave() as w:
        @w.do(range(30), environment="slurm", resources={"items_per_job": 10})
        def packed(x):
            return x, os.environ.get("SLURM_ARRAY_TASK_ID"), os.getpid()

        @w.do(range(6), environment="slurm")
        def plain(x):
            return x, os.getpid()

    assert [v[0] for v in w.result.packed] == list(range(30))
    assert [int(v[1]) for v in w.result.packed] == [x // 10 for x in range(30)]
    assert len({v[2] for v in w.result.packed}) == 3            # one process per element
    packed_jobs, plain_jobs = w.result.jobs["packed"], w.result.jobs["plain"]
    assert len(packed_jobs) == 30 and len({r.job_id for r in packed_jobs}) == 3
    assert {r.array_index for r in packed_jobs} == {0, 1, 2}
    assert [v[0] for v in w.result.plain] == list(range(6))
    assert len(plain_jobs) == 6 and len({r.job_id for r in plain_jobs}) == 6
    assert all(r.array_job_id is not None for r in plain_jobs)   # still an array, one item per element
    _no_submit_keys_on_sbatch(instance)
    assert squeue_jobs(prefix) == []


def test_task_items_per_job_overrides_the_environments(executor, prefix):
    instance = executor(items_per_job=10)
    with weave() as w:
        @w.do(range(8), environment="slurm", resources={"items_per_job": 1})
        def unpacked(x):
            return x

        @w.do(range(20), environment="slurm")
        def env_packed(x):
            return x

    assert len({r.job_id for r in w.result.jobs["unpacked"]}) == 8
    assert len({r.job_id for r in w.result.jobs["env_packed"]}) == 2
    _no_submit_keys_on_sbatch(instance)


def test_arrays_false_on_one_task_gives_plain_jobs(executor, prefix):
    instance = executor()
    with weave() as w:
        @w.do(range(4), environment="slurm", resources={"arrays": False})
        def singles(x):
            return x

        @w.do(range(4), environment="slurm")
        def arrayed(x):
            return x

    assert w.result.singles == [0, 1, 2, 3] and w.result.arrayed == [0, 1, 2, 3]
    singles = w.result.jobs["singles"]
    assert all(r.array_job_id is None and r.array_index is None for r in singles)
    assert len({r.job_id for r in singles}) == 4
    arrayed = w.result.jobs["arrayed"]
    assert len({r.array_job_id for r in arrayed}) == 1 and {r.array_index for r in arrayed} == {0, 1, 2, 3}
    single_argvs = [c["argv"] for c in instance.adapter.submissions if any("-singles" in a for a in c["argv"])]
    assert len(single_argvs) == 4 and not any(a.startswith("--array") for argv in single_argvs for a in argv)
    _no_submit_keys_on_sbatch(instance)


def test_arrays_false_still_honours_workers(executor, tmp_path):
    executor()
    spans = tmp_path / "spans"
    with weave() as w:
        @w.do(range(6), environment="slurm", workers=2, resources={"arrays": False})
        def span(x):
            started = time.time()
            time.sleep(1)
            with open(spans, "a") as handle:   # one short line per append: atomic
                handle.write(f"{started} {time.time()}\n")
            return x

    assert w.result.span == list(range(6))
    count, peak = peak_overlap(spans)
    assert count == 6 and peak <= 2, peak


def test_task_max_queued_jobs_caps_that_task_in_squeue(executor, prefix):
    # The environment caps all jobs at 5; 'capped' may have 2 queued at once, 'free' is capped only by the 5
    # (and is submitted first, so 'capped' must also wait for the environment's cap).
    instance = executor(max_queued_jobs=5)
    samples: list[tuple[int, int]] = []
    done = threading.Event()

    def watch():
        # A job that has reported its result may linger RUNNING/COMPLETING in squeue a moment while the next
        # one is submitted, so the jobs counted are the ones squeue lists and the weave still awaits.
        while not done.is_set():
            monitor = getattr(getattr(instance, "adapter", None), "monitor", None)
            try:
                awaited = set(monitor.jobs) if monitor is not None else set()
            except RuntimeError:   # changed size while copied (the weave's loop runs in another thread)
                continue
            rows = [row.split() for row in squeue_jobs(prefix)]
            counts = {name: sum(1 for key, job_name, state in rows if job_name == f"{prefix}-{name}"
                                and state in ("PENDING", "RUNNING", "CONFIGURING") and key in awaited)
                      for name in ("capped", "free")}
            samples.append((counts["capped"], counts["free"]))
            time.sleep(0.05)

    def free_rows() -> int:
        return sum(1 for row in squeue_jobs(prefix) if row.split()[1] == f"{prefix}-free")

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        with weave() as w:
            @w.do(range(8), environment="slurm")
            def free(x):
                time.sleep(2)
                return x

            @w.do
            def gate():
                # 'capped' goes in only once 'free' fills the environment's cap: it must wait for room then
                assert wait_until(lambda: free_rows() >= 5, timeout=60)
                return list(range(8))

            @w.do("gate", environment="slurm", resources={"max_queued_jobs": 2})
            def capped(x):
                time.sleep(1.5)
                return x
    finally:
        done.set()
        watcher.join(10)

    assert w.result.capped == list(range(8)) and w.result.free == list(range(8))
    assert max(c for c, _ in samples) == 2, samples            # seen at its cap, never above it
    assert max(c + f for c, f in samples) <= 5, samples        # the environment's cap still holds the total
    assert max(f for _, f in samples) >= 3, samples            # the task's cap is not the other task's
    capped_calls = [c for c in instance.adapter.submissions if any("-capped" in a for a in c["argv"])]
    assert len(capped_calls) >= 4 and all(c["elements"] <= 2 for c in capped_calls)
    _no_submit_keys_on_sbatch(instance)
    assert squeue_jobs(prefix) == []


def test_submit_keys_through_merge(executor, prefix):
    instance = executor()
    with weave() as w:
        @w.do(environment="slurm")
        def outer():
            return 0

        @w.do
        def fan(outer):
            return merge(lambda_free, range(12), environment="slurm", resources={"items_per_job": 4})

    assert w.result.fan == [x * 2 for x in range(12)]
    arrays = [c for c in instance.adapter.submissions if c["items"] == 12]
    assert len(arrays) == 1 and arrays[0]["elements"] == 3
    _no_submit_keys_on_sbatch(instance)


def lambda_free(x):
    return x * 2
