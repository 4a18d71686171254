"""No outcome is lost while nobody listens (issue 13, point 3): a worker that cannot reach its weave over
HTTP leaves the signed event in the run's spool, and the weave collects it from there."""

from __future__ import annotations

import subprocess
import time

from slurm_helpers import closed_port, wait_until

from wove import weave


def test_result_reaches_the_weave_through_the_spool_when_http_is_refused(executor, prefix):
    executor(callback_url=f"http://127.0.0.1:{closed_port()}/wove/events/notthetoken",
             keep_logs=True)
    started = time.monotonic()
    with weave() as w:
        @w.do(range(3), environment="slurm")
        def triple(x):
            return x * 3

    assert w.result.triple == [0, 3, 6]
    assert time.monotonic() - started < 90   # 3 s of refused connections, then the file (polled each second)
    records = w.result.jobs["triple"]
    assert {r.outcome for r in records} == {"result"}
    # The worker's exit status says which path the outcome took: 4, "left in the spool".
    def exit_codes() -> str:   # accounting may lag a moment behind the job's end
        return subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,ExitCode", "-j", records[0].job_id],
                              capture_output=True, text=True).stdout
    out = wait_until(lambda: "|4:0" in exit_codes() and exit_codes(), 30)
    assert out and "|4:0" in out, exit_codes()
    assert all(r.details.get("delivered_via") == "spool" for r in records)
    with open(records[0].stderr_path) as handle:
        log = handle.read()
    assert "could not reach" in log and "for the weave (or the next run of its journal) to collect" in log
    assert "notthetoken" not in log     # the callback token stays secret in logs
