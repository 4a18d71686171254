"""Buffer files and shared inputs (issue 14) without a cluster: the format, its refusals, a full disk."""

from __future__ import annotations

import os

import numpy as np
import pytest
from tmpfs import small_tmpfs

from wove import SpoolFullError
from wove.dispatch import bufferfile, pickling, protocol, spool, worker
from wove.dispatch.rundir import RunDir
from wove.dispatch.shared import SHARED_MIN_BYTES, SharedInputs

MB = 1024 * 1024


@pytest.fixture
def run_dir(tmp_path):
    root = tmp_path / "spool"
    root.mkdir(mode=0o700)
    directory = RunDir.open_private(str(root))
    yield directory
    directory.close()


def test_arrays_travel_out_of_band_and_come_back_writable(run_dir):
    value = {"array": np.arange(1_000_000, dtype=np.float64), "raw": memoryview(b"x" * 100_000), "n": 3}
    main, buffers = pickling.dumps_buffers(value)
    assert len(main) < 1000 and sum(b.nbytes for b in buffers) == 8_000_000 + 100_000   # nothing copied in
    path = run_dir.write_atomic("value.shared", bufferfile.chunks(main, buffers))
    loaded = worker._load_field(protocol.SPOOL_PREFIX + path, "argument", "")
    assert np.array_equal(loaded["array"], value["array"]) and loaded["raw"] == value["raw"] and loaded["n"] == 3
    assert isinstance(loaded["raw"], bytes)   # as cloudpickle sends any memoryview
    assert loaded["array"].flags.writeable
    assert loaded["array"].ctypes.data % bufferfile.ALIGN == 0   # buffers are aligned in the file
    loaded["array"][0] = 42.0   # copy-on-write: the file is not changed
    assert worker._load_field(protocol.SPOOL_PREFIX + path, "argument", "")["array"][0] == 0.0
    os.unlink(path)


@pytest.mark.parametrize("kind", [bytes, bytearray])
def test_a_whole_bytes_argument_travels_out_of_band(run_dir, kind):
    value = kind(os.urandom(200_000))
    main, buffers = pickling.dumps_buffers(value)
    assert len(main) < 100 and [b.nbytes for b in buffers] == [200_000]
    path = run_dir.write_atomic("b.shared", bufferfile.chunks(main, buffers))
    loaded = worker._load_field(protocol.SPOOL_PREFIX + path, "argument", "")
    assert type(loaded) is kind and loaded == value
    os.unlink(path)


def test_a_truncated_buffer_file_is_refused_with_its_path(run_dir):
    main, buffers = pickling.dumps_buffers(np.ones(100_000))
    path = run_dir.write_atomic("cut.shared", bufferfile.chunks(main, buffers))
    with open(path, "r+b") as handle:
        handle.truncate(os.path.getsize(path) // 2)
    with pytest.raises(bufferfile.BufferFileError, match=r"cut\.shared is truncated"):
        worker._load_field(protocol.SPOOL_PREFIX + path, "argument", "")
    os.unlink(path)


def test_a_result_whose_digest_does_not_match_is_refused(run_dir):
    from wove.dispatch.events import EventGate

    main, buffers = pickling.dumps_buffers(np.ones(100_000))
    chunks = bufferfile.chunks(main, buffers)
    path = run_dir.write_atomic("r.0.result", chunks)
    gate = EventGate(run_dir.path)
    ref = {"path": path, "sha256": "0" * 64, "size": os.path.getsize(path), "format": "buffers"}
    with pytest.raises(ValueError, match="does not match its signed digest"):
        gate.unpack({"type": "task_result", "run_id": "r", "result_ref": ref})
    assert os.path.exists(path)   # kept for inspection, never loaded
    os.unlink(path)


def test_shared_inputs_are_written_once_and_deleted_with_their_last_call(run_dir):
    inputs = SharedInputs(run_dir, lambda value: isinstance(value, int))
    big = np.zeros(SHARED_MIN_BYTES, dtype=np.uint8)
    twin = big.copy()   # another object, the same contents

    def func(item, big):
        return item

    references = []
    for run_id, value in (("a", big), ("b", big), ("c", twin)):
        args, kwargs, shared = inputs.split(run_id, func, (1,), {"big": value}, "t", None)
        assert kwargs == {"big": None} and args == (1,)
        references.append(shared[0][1])
    assert len(set(references)) == 1 and inputs.bytes_written < 2 * big.nbytes
    path = references[0][len(protocol.SPOOL_PREFIX):]
    inputs.release("a")
    inputs.release("c")
    assert os.path.exists(path)   # "b" still uses it
    inputs.release("b")
    assert not os.path.exists(path)
    # small values ride inline, as base64, and are never written
    _, _, shared = inputs.split("d", func, (1,), {"big": [1, 2, 3]}, "t", None)
    assert not shared[0][1].startswith(protocol.SPOOL_PREFIX)
    inputs.release("d")


def test_another_task_gets_the_object_as_it_is_now_not_as_it_was_first_sent(run_dir):
    inputs = SharedInputs(run_dir, lambda value: isinstance(value, int))
    big = np.zeros(SHARED_MIN_BYTES, dtype=np.uint8)

    def func(big):
        return big

    _, _, [[_, first]] = inputs.split("a", func, (big,), {}, "task_a", None)
    big[:] = 7   # changed while "a" is still out
    _, _, [[_, same_task]] = inputs.split("a2", func, (big,), {}, "task_a", None)
    _, _, [[_, other_task]] = inputs.split("b", func, (big,), {}, "task_b", None)
    assert same_task == first   # the items of one task share what the first of them sent
    assert other_task != first  # another task pickles it again
    assert worker._load_field(other_task, "argument", "")[0] == 7
    for run_id in ("a", "a2", "b"):
        inputs.release(run_id)


def test_arguments_that_share_an_object_travel_together(run_dir):
    inputs = SharedInputs(run_dir, lambda value: isinstance(value, int))
    x = np.zeros(SHARED_MIN_BYTES, dtype=np.uint8)

    def func(a, b):
        return a, b

    args, _, shared = inputs.split("r", func, (x, {"k": x}), {}, "t", None)
    assert shared == [] and args[1]["k"] is x   # not split: the job keeps b["k"] is a
    args, _, shared = inputs.split("s", func, (x, x), {}, "t", None)
    assert args == (None, None) and shared[0][1] == shared[1][1]
    loaded, _ = worker._with_shared(args, {}, shared, "")
    assert loaded[0] is loaded[1]   # f(x, x): one object in the job too
    twin = x.copy()                 # equal, but another object: two objects in the job
    _, _, shared_twins = inputs.split("u", func, (x, twin), {}, "t", None)
    assert shared_twins[0][1] == shared_twins[1][1]   # one file (same contents) ...
    loaded, _ = worker._with_shared((None, None), {}, shared_twins, "")
    assert loaded[0] is not loaded[1]                 # ... two objects, as in the weave
    inputs.release("s")
    inputs.release("u")
    assert not os.path.exists(shared[0][1][len(protocol.SPOOL_PREFIX):])


def test_a_failed_split_keeps_nothing(run_dir):
    inputs = SharedInputs(run_dir, lambda value: isinstance(value, int))
    big = np.zeros(SHARED_MIN_BYTES, dtype=np.uint8)
    import threading

    def func(big, lock):
        return big

    with pytest.raises(TypeError, match="argument 'lock'"):
        inputs.split("r", func, (big, threading.Lock()), {}, "t", None)
    assert [name for name in os.listdir(run_dir.path) if name.endswith((".shared", ".writing"))] == []


def test_a_spooled_result_cut_short_is_an_error_not_a_crash(run_dir):
    from wove.dispatch.events import EventGate

    main, buffers = pickling.dumps_buffers(np.ones(100_000))
    chunks = bufferfile.chunks(main, buffers)
    path = run_dir.write_atomic("r.0.result", chunks)
    size = os.path.getsize(path)
    os.truncate(path, size // 2)
    ref = {"path": path, "sha256": "0" * 64, "size": size, "format": "buffers"}
    with pytest.raises(ValueError, match=f"has {size // 2} bytes, its event says {size}"):
        EventGate(run_dir.path).unpack({"type": "task_result", "run_id": "r", "result_ref": ref})
    os.unlink(path)


@pytest.fixture
def tiny_tmpfs(tmp_path):
    with small_tmpfs(tmp_path, "4m") as mount:
        yield mount


@pytest.mark.parametrize("checked_first", [True, False], ids=["free-space-check", "ENOSPC"])
def test_a_full_disk_fails_with_the_directory_and_bytes_and_leaves_nothing(tiny_tmpfs, monkeypatch, checked_first):
    if not checked_first:   # skip the free-space check: the write itself runs out of room
        monkeypatch.setattr(spool, "_ROOM_CHECK_BYTES", 1 << 60)
    data = np.ones(8 * MB, dtype=np.uint8)
    main, buffers = pickling.dumps_buffers(data)
    with pytest.raises(SpoolFullError) as caught:
        spool.write_private_digest(tiny_tmpfs, "r.0.result", bufferfile.chunks(main, buffers), digest=True)
    error = caught.value
    assert error.directory == tiny_tmpfs and error.needed > 8 * MB and error.available is not None
    assert f"{error.needed:,} bytes" in str(error) and tiny_tmpfs in str(error)
    assert isinstance(error, OSError) and error.errno == 28
    assert os.listdir(tiny_tmpfs) == []   # the partial file is gone
