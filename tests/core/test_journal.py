"""Durable weaves, local side (issue 13): a rerun with the same journal reads back what is done.

Each run is a real Python process running a script, as a user's rerun would be; the journal's store is
also tested directly (torn lines, foreign files, locks). The Slurm side is in tests/slurm.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
import time

import pytest

from wove.journal.store import ENTRIES, Journal, JournalError, JournalLockedError

SCRIPT = textwrap.dedent("""
    import json, sys, wove
    from wove import weave

    journal, factor, marker = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    wove.config(journal=journal)

    def log(what):
        with open(marker, "a") as fh:
            fh.write(what + "\\n")

    with weave() as w:
        @w.do(range(6))
        def square(i):
            log(f"square {i}")
            return i * i * factor

        @w.do
        def total(square):
            log("total")
            return sum(square)

        @w.do(journal=False)
        def side_effect(total):
            log("side_effect")
            return total
    print(json.dumps({"total": w.result.total,
                      "states": sorted({r.state for r in w.result.jobs.get("square", [])})}))
""")


def run(tmp_path, factor=1, script=SCRIPT):
    path = tmp_path / "script.py"
    path.write_text(script)
    marker = tmp_path / "calls.txt"
    marker.write_text("")
    done = subprocess.run([sys.executable, str(path), str(tmp_path / "journal"), str(factor), str(marker)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    import json
    return json.loads(done.stdout.splitlines()[-1]), sorted(marker.read_text().split("\n")[:-1])


def test_rerun_reads_back_every_finished_call(tmp_path):
    first, calls = run(tmp_path)
    assert first["total"] == sum(i * i for i in range(6))
    assert len(calls) == 8 and "total" in calls          # 6 items, the reduction, the side effect
    second, calls = run(tmp_path)
    assert second["total"] == first["total"] and second["states"] == ["JOURNALED"]
    assert calls == ["side_effect"]                       # journal=False: run every time


def test_changed_arguments_recompute_only_what_they_change(tmp_path):
    run(tmp_path)
    changed_script = SCRIPT.replace("range(6)", "range(7)")
    result, calls = run(tmp_path, script=changed_script)
    assert result["total"] == sum(i * i for i in range(7))
    assert calls == ["side_effect", "square 6", "total"]  # the new item, and the reduction of a new list


def test_changed_function_body_recomputes(tmp_path):
    run(tmp_path)
    result, calls = run(tmp_path, script=SCRIPT.replace("return i * i * factor", "return i * i * factor + 1"))
    assert result["total"] == sum(i * i + 1 for i in range(6))
    assert len([c for c in calls if c.startswith("square")]) == 6


def test_a_changed_global_recomputes_the_calls_that_read_it(tmp_path):
    run(tmp_path, factor=1)
    result, calls = run(tmp_path, factor=2)   # `factor` is a module global `square` reads
    assert result["total"] == 2 * sum(i * i for i in range(6))   # not the recorded results of factor=1
    assert sorted(calls) == sorted([f"square {i}" for i in range(6)] + ["total", "side_effect"])
    result, calls = run(tmp_path, factor=2)   # and unchanged again: everything read back
    assert calls == ["side_effect"]


def test_closure_defaults_and_arguments_are_part_of_the_key():
    import cloudpickle

    from wove.journal.keys import call_key

    def key(func, *args, **options):
        return call_key("t", func, args, {}, environment=options.get("env", "default"),
                        resources=options.get("resources"), dumps=cloudpickle.dumps)

    def make(n):
        def add(x):
            return x + n
        return add

    def with_default(x, y=1):
        return x + y

    def with_other_default(x, y=2):
        return x + y

    assert key(make(1), 5) == key(make(1), 5)
    assert key(make(1), 5) != key(make(2), 5)                  # a closure value
    assert key(with_default, 5) != key(with_other_default, 5)  # a default (and the name)
    assert key(make(1), 5) != key(make(1), 6)                  # an argument
    assert key(make(1), 5) != key(make(1), 5, env="slurm")     # the environment
    assert key(make(1), 5, resources={"mem": "1G"}) != key(make(1), 5, resources={"mem": "2G"})


def test_torn_last_line_loads_and_that_call_runs_again(tmp_path):
    run(tmp_path)
    entries = tmp_path / "journal" / ENTRIES
    data = entries.read_bytes()
    entries.write_bytes(data[:-7])          # a crash in the middle of the last append
    result, calls = run(tmp_path)
    assert result["total"] == sum(i * i for i in range(6))
    assert len(calls) == 2 and "side_effect" in calls    # exactly the torn call ran again


def test_damaged_result_file_is_never_a_wrong_result(tmp_path):
    journal = Journal.open(str(tmp_path / "j"))
    entry = journal.record("key", "task", "done", result=b"\x80\x05K\x01." + b" " * 20000)
    journal.close()
    blob = tmp_path / "j" / "results" / entry.digest
    blob.write_bytes(blob.read_bytes()[:-1] + b"!")
    reopened = Journal.open(str(tmp_path / "j"))
    assert reopened.result_bytes(reopened.lookup("key")) is None
    reopened.close()


def test_second_driver_is_refused_while_the_first_lives(tmp_path):
    path = str(tmp_path / "journal")
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from wove.journal.store import Journal
        j = Journal.open({path!r})
        print("open", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(JournalLockedError, match=f"in use by pid {holder.pid}"):
            Journal.open(path)
    finally:
        holder.kill()
        holder.wait()
    Journal.open(path).close()      # the kernel released a dead driver's lock


def test_foreign_and_other_version_files_are_refused(tmp_path):
    (tmp_path / "notes").mkdir(mode=0o700)
    (tmp_path / "notes" / ENTRIES).write_text("my shopping list\n")
    with pytest.raises(JournalError, match="is not a wove journal"):
        Journal.open(str(tmp_path / "notes"))
    Journal.open(str(tmp_path / "old")).close()
    entries = tmp_path / "old" / ENTRIES
    text = entries.read_text().replace('"wove_journal":1', '"wove_journal":99')
    body = text.split("\n")[0].rsplit(" ", 1)[0]
    import hashlib
    entries.write_text(f"{body} {hashlib.sha256(body.encode()).hexdigest()[:16]}\n")
    with pytest.raises(JournalError, match="format 99"):
        Journal.open(str(tmp_path / "old"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(JournalError, match="not a directory"):
        Journal.open(str(tmp_path / "file"))


def test_a_journal_others_can_write_is_refused(tmp_path):
    path = tmp_path / "open"
    path.mkdir()
    os.chmod(path, 0o777)
    with pytest.raises(JournalError, match="must be yours alone"):
        Journal.open(str(path))


def test_a_journal_owned_by_another_user_is_refused(tmp_path, other_user):
    path = tmp_path / "theirs"
    path.mkdir(mode=0o700)
    os.chown(path, other_user.uid, other_user.gid)
    try:
        with pytest.raises(JournalError, match=f"owner {other_user.name}"):
            Journal.open(str(path))
    finally:
        os.chown(path, os.getuid(), os.getgid())


def test_records_reach_the_disk_at_close_and_within_the_flush_window(tmp_path):
    journal = Journal.open(str(tmp_path / "j"))
    journal.record("a", "t", "done", result=b"x")
    deadline = time.monotonic() + 5
    entries = tmp_path / "j" / ENTRIES
    while time.monotonic() < deadline and b'"k":"a"' not in entries.read_bytes():
        time.sleep(0.05)
    assert b'"k":"a"' in entries.read_bytes()            # written by the writer thread without a close
    journal.close()
    assert oct((tmp_path / "j").stat().st_mode & 0o777) == "0o700"
    assert oct(entries.stat().st_mode & 0o777) == "0o600"


_RAN: list[int] = []
FACTOR = 1
_STATE: dict[str, int] = {}


def _scale(value):
    return value * FACTOR


def test_a_changed_global_the_function_reads_changes_the_key():
    from wove.journal.keys import function_identity

    def uses_global(x):
        return x * FACTOR

    def uses_helper(x):
        return _scale(x)

    global FACTOR, _STATE
    before = function_identity(uses_global, pickle.dumps), function_identity(uses_helper, pickle.dumps)
    assert before == (function_identity(uses_global, pickle.dumps), function_identity(uses_helper, pickle.dumps))
    FACTOR = 2
    try:
        after = function_identity(uses_global, pickle.dumps), function_identity(uses_helper, pickle.dumps)
    finally:
        FACTOR = 1
    assert after[0] != before[0]   # the task reads a constant that changed
    assert after[1] == before[1]   # only constants the task itself reads count, not its callees'

    def uses_state(x):
        return _STATE.get(x)
    first = function_identity(uses_state, pickle.dumps)
    _STATE["filled at run time"] = 1   # a global dict: state, not a constant; it does not change the key
    assert function_identity(uses_state, pickle.dumps) == first


def test_weave_journal_argument_and_a_second_weave_on_it_is_refused(tmp_path):
    from wove import weave

    path = str(tmp_path / "journal")
    ran = str(tmp_path / "ran")
    for _ in range(2):
        with weave(journal=path) as w:
            @w.do
            def step():
                with open(ran, "a") as handle:   # counted outside the key's inputs (a file, not a global)
                    handle.write("x")
                return 7
        assert w.result.step == 7
    with open(ran) as handle:
        assert handle.read() == "x"
    assert [r.state for r in w.result.jobs["step"]] == ["JOURNALED"]

    holder = Journal.open(path)     # as another live driver would hold it
    try:
        with pytest.raises(JournalLockedError, match="one driver per journal"):
            with weave(journal=path) as w:
                @w.do
                def other():
                    return 1
    finally:
        holder.close()
    with pytest.raises(ValueError, match="journal must be the path of a directory"):
        weave(journal=42)


def test_failed_calls_are_recorded_and_run_again(tmp_path):
    from wove import weave

    path = str(tmp_path / "journal")
    for attempt in range(2):
        _RAN.clear()
        with weave(journal=path, error_mode="return") as w:
            @w.do(range(3), item_errors="return")
            def flaky(i):
                _RAN.append(i)
                if i == 1 and not os.path.exists(tmp_path / "fixed"):
                    raise ValueError("not yet")
                return i
        if attempt == 0:
            assert isinstance(w.result.flaky[1], ValueError) and sorted(_RAN) == [0, 1, 2]
            reopened = Journal.open(path)
            assert sorted(e.state for e in reopened.entries.values()) == ["done", "done", "failed"]
            reopened.close()
            (tmp_path / "fixed").write_text("")
        else:
            assert w.result.flaky == [0, 1, 2] and _RAN == [1]   # only the failed item ran again


def test_torn_line_is_cut_off_so_the_next_drivers_first_line_loads(tmp_path):
    path = str(tmp_path / "j")
    journal = Journal.open(path)
    journal.record("a", "task", "done", result=pickle.dumps(1))
    journal.close()
    entries = tmp_path / "j" / ENTRIES
    entries.write_bytes(entries.read_bytes()[:-5])        # the crash tore the line of "a"
    second = Journal.open(path)
    assert second.skipped == 1 and second.lookup("a") is None
    second.record("b", "task", "done", result=pickle.dumps(2))
    second.close()
    third = Journal.open(path)
    assert third.skipped == 0 and third.result_bytes(third.lookup("b")) == pickle.dumps(2)
    third.close()


def test_packed_element_lines_and_a_result_that_arrived_before_its_submission(tmp_path):
    """One line per element: its submitted keys in element order (positions), one per flush of results; a
    done line written before the element's submitted line still counts as done, on reload too."""
    path = str(tmp_path / "j")
    journal = Journal.open(path)
    journal.record_many("sweep", "done", [("k1", 1, pickle.dumps("one"))], job_id="7_0")
    journal.record_many("sweep", "submitted", [("k0", 0, None), ("k1", 1, None), (None, 2, None), ("k3", 3, None)],
                        job_id="7_0", run_id="r", signing_key="s")
    big = pickle.dumps(b"x" * 100_000)
    journal.record_many("sweep", "done", [("k3", 3, big)], job_id="7_0")
    for reader in (journal, None):
        if reader is None:   # (a large result's file is written by the writer thread, by close at the latest)
            journal.close()
            reader = Journal.open(path)
            assert reader.result_bytes(reader.lookup("k3")) == big
        assert reader.lookup("k1").state == "done"
        assert reader.result_bytes(reader.lookup("k1")) == pickle.dumps("one")
        k0 = reader.lookup("k0")
        assert (k0.state, k0.position, k0.job_id, k0.info["run_id"]) == ("submitted", 0, "7_0", "r")
        assert reader.lookup("k3").state == "done" and reader.lookup("k3").inline is None   # in a result file
    reader.close()
