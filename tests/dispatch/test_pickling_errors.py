"""Pickling failures name the task, the argument (or the function, or the return value) and the type;
open files passed as arguments warn that the job only gets a copy.

Every case runs through a real worker process: ``python -m wove.stdio_worker`` (the stdio executor) and
``python -m wove.backend_worker`` (a ``BackendAdapter``, the path Slurm takes).
"""

from __future__ import annotations

import threading
import warnings

import pytest
from dispatch_helpers import AdapterLog, SubprocessAdapter

import wove
from wove import WoveError, weave
from wove.errors import TaskPicklingError
from wove.executors.adapter import BackendAdapterEnvironmentExecutor

pytestmark = pytest.mark.timeout(90)

PICKLED = []   # one entry per time a Counted is pickled (in this process: the driver)


class Counted:
    """An argument that records every time it is pickled."""

    def __reduce__(self):
        PICKLED.append(1)
        return (Counted, ())


@pytest.fixture(params=["stdio", "adapter"])
def remote(request):
    """The name of a configured remote environment: a stdio worker, or backend workers in subprocesses."""
    if request.param == "stdio":
        wove.config(environments={"remote": {"executor": "stdio"}})
    else:
        executor = BackendAdapterEnvironmentExecutor("remote", adapter_class=SubprocessAdapter,
                                                     adapter_options={"log": AdapterLog()})
        wove.config(environments={"remote": {"executor": executor}})
    return "remote"


def test_unpicklable_init_value_names_task_parameter_and_type(remote):
    with weave(error_mode="return", lock=threading.Lock(), fine=Counted()) as w:
        @w.do(environment=remote)
        def guarded(fine, lock):
            return 1

    error = w.result.guarded
    assert isinstance(error, TaskPicklingError)
    assert isinstance(error, TypeError) and isinstance(error, WoveError)   # `except TypeError` still works
    message = str(error)
    assert "task 'guarded'" in message and "argument 'lock'" in message and "_thread.lock" in message
    assert "pass something picklable" in message.lower() and "inside the task" in message
    assert 'run the task locally (environment="default")' in message
    assert (error.task, error.what, error.type_name) == ("guarded", "argument 'lock'", "_thread.lock")
    assert isinstance(error.__cause__, TypeError) and "_thread.lock" in str(error.__cause__)


def test_the_part_of_an_argument_that_fails_is_named(remote):
    with weave(error_mode="return", settings={"db": {"options": [1, threading.RLock()]}}) as w:
        @w.do(environment=remote)
        def connect(settings):
            return 1

    message = str(w.result.connect)
    assert "argument 'settings' (a dict)" in message
    assert "settings['db']['options'][1] is a _thread.RLock" in message
    assert w.result.connect.type_name == "_thread.RLock"


def test_a_mapped_item_that_cannot_be_pickled_is_named_by_its_index(remote):
    with weave(error_mode="return", things=[1, 2, threading.Lock(), 4]) as w:
        @w.do("things", environment=remote)
        def use(thing):
            return thing

    error = w.result.use
    assert isinstance(error, TaskPicklingError)
    assert "task 'use' item 2" in str(error) and "argument 'thing'" in str(error)
    assert "_thread.lock" in str(error)


def test_a_function_that_captures_something_unpicklable_says_so(remote):
    captured = threading.Lock()

    with weave(error_mode="return") as w:
        @w.do(environment=remote)
        def closure():
            with captured:
                return 1

    error = w.result.closure
    assert isinstance(error, TaskPicklingError) and error.what == "the function itself"
    assert "task 'closure'" in str(error) and "the function itself cannot be pickled" in str(error)
    assert "its closure variable 'captured' is a _thread.lock" in str(error)


def test_an_unpicklable_return_value_names_task_and_type(remote):
    with weave(error_mode="return") as w:
        @w.do(environment=remote)
        def produce():
            return {"rows": (n for n in range(3))}

    error = w.result.produce
    assert isinstance(error, TaskPicklingError) and isinstance(error, TypeError)
    message = str(error)
    assert "task 'produce'" in message and "return value (a dict)" in message
    assert "the return value['rows'] is a generator" in message
    assert error.what == "return value" and error.type_name == "generator"
    assert "cannot pickle 'generator' object" in str(error.__cause__)   # the job's traceback, chained


def test_arguments_are_pickled_once_when_they_pickle(remote):
    PICKLED.clear()
    with weave(value=Counted()) as w:
        @w.do(environment=remote)
        def takes(value):
            return type(value).__name__

    assert w.result.takes == "Counted"
    assert len(PICKLED) == 1   # the one-by-one search happens only after a failure


def test_an_open_file_argument_warns_and_arrives_as_a_copy(remote, tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("first line\n")
    with open(path) as handle, pytest.warns(UserWarning) as caught:
        with weave(handle=handle, many=[1, handle]) as w:
            @w.do(environment=remote)
            def reads(handle):
                return type(handle).__name__, handle.read()

            @w.do(environment=remote)
            def nested(many):
                return len(many)

    assert w.result.reads == ("StringIO", "first line\n")   # cloudpickle's copy, now announced
    messages = [str(record.message) for record in caught]
    direct = [m for m in messages if "task 'reads'" in m]
    assert len(direct) == 1
    assert f"argument 'handle' is the open file {str(path)!r}" in direct[0]
    assert "read-only copy of its contents" in direct[0] and "not the open file" in direct[0]
    assert "Pass the path instead" in direct[0]
    assert any("task 'nested': argument 'many'[1] is the open file" in m for m in messages)
    # Shown at the user's code (this test's `with` block), not inside wove or asyncio.
    assert {record.filename for record in caught} == {__file__}


def test_plain_arguments_do_not_warn(remote):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with weave(text="not a file", values=[1, 2]) as w:
            @w.do(environment=remote)
            def plain(text, values):
                return len(text) + len(values)

    assert w.result.plain == 12


def test_a_file_open_for_writing_suggests_passing_its_path(remote, tmp_path):
    path = tmp_path / "out.txt"
    with open(path, "w") as handle:
        with weave(error_mode="return", out=handle) as w:
            @w.do(environment=remote)
            def writes(out):
                out.write("x")

    error = w.result.writes
    assert isinstance(error, TaskPicklingError) and "argument 'out'" in str(error)
    assert f"Pass the file's path {str(path)!r} and open it inside the task" in str(error)


def test_positional_only_parameters_are_named_from_the_signature(remote, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("x")
    with open(path) as handle, pytest.warns(UserWarning, match="argument 'notes' is the open file"):
        with weave(error_mode="return", lock=threading.Lock(), notes=handle) as w:
            @w.do(environment=remote)
            def positional(lock, /):
                return 1

            @w.do(environment=remote)
            def reads(notes, /):
                return notes.read()

    assert "its argument 'lock' (a _thread.lock)" in str(w.result.positional)
    assert w.result.reads == "x"


def test_without_a_user_frame_on_the_stack_the_warning_points_at_the_task(remote, tmp_path):
    """A weave run by a thread the library started has no user code on its stack: the warning then shows
    the task's definition (its decorator line, as for any decorated function)."""
    import asyncio
    import inspect

    path = tmp_path / "notes.txt"
    path.write_text("x")
    box = {}

    async def main():
        async with weave(notes=handle) as w:
            @w.do(environment=remote)
            def reads(notes):
                return notes.read()
        box["w"] = w

    with open(path) as handle, pytest.warns(UserWarning, match="task 'reads'") as caught:
        runner = threading.Thread(target=asyncio.run, args=(main(),))   # stdlib frames only below the loop
        runner.start()
        runner.join(60)

    assert box["w"].result.reads == "x"
    (record,) = [r for r in caught if "task 'reads'" in str(r.message)]
    decorator_line = inspect.getsourcelines(main)[1] + 2
    assert (record.filename, record.lineno) == (__file__, decorator_line)
