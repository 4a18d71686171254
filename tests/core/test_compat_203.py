"""Code written against the published wove 2.0.3 keeps working: error types and the leading words of messages.

Each expected pattern below is the start of the message wove 2.0.3 raises for the same mistake (taken from its
source), matched the way `pytest.raises(..., match=...)` written against 2.0.3 would match it. Every error must
also be a `wove.WoveError`, and the builtin 2.0.3 raised (so `except RuntimeError` etc. still catch it).
"""

from __future__ import annotations

import contextlib
import pickle
import re

import pytest

import wove
import wove.errors
from wove import Weave, WoveError, fold, merge, weave
from wove.errors import (
    DependencyCycleError,
    TaskDefinitionError,
    UnresolvedSignatureError,
)


@contextlib.contextmanager
def raises_203(builtin, pattern):
    """`pytest.raises(builtin, match=pattern)`, plus: the error is a WoveError and starts with the pattern."""
    with pytest.raises(builtin, match=pattern) as info:
        yield info
    assert isinstance(info.value, WoveError), f"{type(info.value).__name__} is not a WoveError"
    assert re.match(pattern, str(info.value)), f"{str(info.value)!r} does not start with {pattern!r}"


# ----------------------------------------------------------------------------- the errors the issue names


def test_dependency_cycle_is_a_runtime_error_with_the_203_words():
    with raises_203(RuntimeError, r"Circular dependency detected\.") as info, weave() as w:
        @w.do
        def ping(pong):
            return 1

        @w.do
        def pong(ping):
            return 2

    error = info.value
    assert isinstance(error, DependencyCycleError)
    assert isinstance(error, ValueError), "still a ValueError, as in our earlier releases"
    assert "ping" in str(error) and "pong" in str(error), "followed by our explanation naming the cycle"
    assert error.cycle[0] == error.cycle[-1] and set(error.cycle) == {"ping", "pong"}


def test_except_runtime_error_catches_a_cycle():
    try:
        with weave() as w:
            @w.do
            def a(b):
                return 1

            @w.do
            def b(a):
                return 1
    except RuntimeError as exc:
        assert type(exc).__name__ == "DependencyCycleError"
    else:
        raise AssertionError("a cycle must raise")


def test_mapping_over_its_own_result_is_a_cycle():
    with raises_203(RuntimeError, r"Circular dependency detected\."), weave() as w:
        @w.do("again")
        def again(item):
            return item


def test_unresolved_dependencies_203_words():
    with raises_203(NameError, r"Task 'needs' has unresolved dependencies: missing\. Available dependencies: ") \
            as info, weave(seed=1) as w:
        @w.do
        def needs(seed, missing):
            return seed

    assert isinstance(info.value, UnresolvedSignatureError)
    message = str(info.value)
    assert "seed" in message and "data" in message, "the available names follow"


def test_reserved_task_name_203_words():
    with raises_203(NameError, r"Task name 'final' conflicts with a built-in attribute of the WoveResult "
                               r"object and is not allowed\."), weave() as w:
        @w.do
        def final():
            return 1


@pytest.mark.parametrize("name", ["cancelled", "final"])
def test_reserved_init_value_name_203_words(name):
    with raises_203(NameError, rf"Initial value name '{name}' conflicts with a built-in attribute\."):
        weave(**{name: 1})


def test_reserved_data_keyword_203_words():
    with raises_203(NameError, r"'data' is a reserved name\."):
        weave(data={"a": 1})


@pytest.mark.parametrize("params", ["", "first, second"])
def test_mapped_task_signature_203_words(params):
    namespace: dict = {}
    exec(f"def each({params}):\n    return 1", namespace)
    with raises_203(TypeError, r"Mapped task 'each' must have exactly one parameter that is not a "
                               r"dependency\.") as info, weave() as w:
        w.do([1, 2])(namespace["each"])
    assert isinstance(info.value, TaskDefinitionError)


def test_mapping_over_a_missing_task_203_words():
    with raises_203(NameError, r"Mapped task 'each' depends on 'nowhere', but no task with that name was "
                               r"found\.") as info, weave() as w:
        @w.do("nowhere")
        def each(item):
            return item

    assert isinstance(info.value, UnresolvedSignatureError)


def test_mapping_over_a_non_iterable_203_words():
    with raises_203(TypeError, r"result of type 'int' is not iterable"), weave() as w:
        @w.do(5)
        def each(item):
            return item


def test_instantiating_a_weave_template_203_words():
    class Pipeline(Weave):
        @Weave.do
        def step(self):
            return 1

    with raises_203(TypeError, r"'Pipeline' cannot be instantiated directly\."):
        Pipeline()

    with weave(Pipeline) as w:   # the template still runs through weave()
        pass
    assert w.result.step == 1


# ----------------------------------------------------------------------------- other errors 2.0.3 has too


def test_merge_outside_a_weave_203_words():
    with raises_203(RuntimeError, r"The `merge` function can only be used inside a task running within an "
                                  r"active `weave` block\."):
        merge(lambda: 1)


def test_workers_on_an_unmapped_task_203_words():
    with raises_203(ValueError, re.escape("The 'workers' and 'limit_per_minute' parameters can only be used "
                                          "with mapped tasks (e.g., @w.do(iterable, ...)).")), weave() as w:
        @w.do(workers=2)
        def single():
            return 1


def test_workers_on_an_unmapped_merge_203_words():
    words = re.escape("The 'workers' and 'limit_per_minute' parameters can only be used with mapped tasks "
                      "(e.g., @w.do(iterable, ...) or merge(func, iterable, ...)).")
    with raises_203(ValueError, words), weave() as w:
        @w.do
        def outer():
            return merge(lambda: 1, limit_per_minute=5)


@pytest.mark.parametrize(("key", "value", "words"), [
    ("error_mode", "loud", r"error_mode must be one of: 'raise', 'return'"),
    ("delivery_cancel_mode", "maybe", r"delivery_cancel_mode must be one of: 'best_effort', 'require_ack'"),
    ("delivery_orphan_policy", "keep",
     r"delivery_orphan_policy must be one of: 'cancel', 'detach', 'fail', 'requeue'"),
])
def test_bad_choice_203_words(key, value, words):
    with raises_203(ValueError, words):
        weave(**{key: value})
    with raises_203(ValueError, words):
        wove.config(**{key: value})


def test_bad_choice_on_an_environment_203_words():
    with raises_203(ValueError, r"Environment 'env' has invalid delivery_cancel_mode\. Expected "
                                r"'best_effort' or 'require_ack'\."):
        wove.config(environments={"env": {"executor": "local", "delivery_cancel_mode": "maybe"}})
    with raises_203(ValueError, r"Environment 'env' has invalid delivery_orphan_policy\. Expected one of: "
                                r"'cancel', 'detach', 'fail', 'requeue'\."):
        wove.config(environments={"env": {"executor": "local", "delivery_orphan_policy": "keep"}})


def test_unknown_environment_203_words():
    with raises_203(NameError, r"Environment 'nope' is not configured\."):
        weave(environment="nope")
    with raises_203(NameError, r"Task 'a' references unknown environment 'nope'\."), weave() as w:
        @w.do(environment="nope")
        def a():
            return 1


def test_merge_with_an_unknown_environment_and_resources_is_a_name_error_not_a_key_error():
    with raises_203(NameError, r"Environment 'typo' is not configured\.") as info, weave() as w:
        @w.do
        def outer():
            return merge(lambda: 1, environment="typo", resources={"mem": "1G"})

    assert not isinstance(info.value, KeyError)


def test_unknown_executor_203_words():
    with raises_203(ValueError, r"Unknown executor 'nope'\."):
        wove.config(environments={"env": {"executor": "nope"}})


def test_environment_type_errors_203_words():
    with raises_203(TypeError, r"Environment 'executor' must be a string or EnvironmentExecutor instance\.") \
            as info:
        wove.config(environments={"env": {"executor": 42}})
    assert isinstance(info.value, ValueError), "still the ValueError of our earlier releases"
    with raises_203(TypeError, r"environments must be a dict\[str, dict\]"):
        wove.config(environments=["env"])
    with raises_203(TypeError, r"Environment 'env' must be a dict\."):
        wove.config(environments={"env": "local"})


def test_config_file_errors_203_words(tmp_path):
    path = tmp_path / "cfg.py"
    path.write_text("WOVE_CONFIG = ['not', 'a', 'dict']\n")
    with raises_203(TypeError, r"WOVE_CONFIG in config file must be a dictionary\."):
        wove.config(config_file=str(path))
    missing = tmp_path / "missing.py"
    with raises_203(FileNotFoundError, r"Config file not found: " + re.escape(str(missing))):
        wove.config(config_file=str(missing))


def test_helper_sizes_203_words():
    with raises_203(ValueError, r"Fold size must be a positive integer\."):
        fold([1, 2], 0)
    with raises_203(ValueError, r"Batch count must be a positive integer\."):
        wove.batch([1, 2], 0)


def test_unknown_result_attribute_203_words():
    with weave() as w:
        @w.do
        def a():
            return 1

    with raises_203(AttributeError, r"'WoveResult' object has no attribute 'nope'"):
        _ = w.result.nope
    assert not hasattr(w.result, "nope")
    with pytest.raises(KeyError, match="nope") as info:
        _ = w.result["nope"]
    assert isinstance(info.value, WoveError)


def test_missing_dispatch_feature_203_words_and_types():
    error = wove.MissingDispatchFeatureError("weave(fork=True)")
    assert isinstance(error, RuntimeError), "wove 2.0.3 raised a RuntimeError"
    assert isinstance(error, ImportError)
    assert re.match(r"Wove dispatch features require cloudpickle\.", str(error))
    assert 'pip install "wove[dispatch]"' in str(error)
    assert error.reason == "weave(fork=True)"


def test_delivery_errors_are_runtime_errors_as_in_203():
    assert issubclass(wove.DeliveryTimeoutError, RuntimeError)
    assert issubclass(wove.DeliveryTimeoutError, TimeoutError)
    assert issubclass(wove.DeliveryOrphanedError, RuntimeError)
    assert issubclass(wove.errors.EnvironmentExecutionError, RuntimeError)


# ----------------------------------------------------------------------------- the exception tree


def _public_error_classes():
    return [getattr(wove.errors, name) for name in wove.errors.__all__]


def test_wove_error_and_friends_are_exported():
    assert wove.WoveError is wove.errors.WoveError
    assert wove.RunRecord.__name__ == "RunRecord"
    with weave() as w:
        pass
    assert type(w) is wove.WeaveContext
    assert {"WoveError", "RunRecord", "WeaveContext"} <= set(wove.__all__)


def test_every_public_error_class_is_a_wove_error():
    classes = _public_error_classes()
    assert len(classes) > 20
    assert [cls.__name__ for cls in classes if not issubclass(cls, WoveError)] == []
    exported = [getattr(wove, name) for name in wove.__all__]
    errors = [obj for obj in exported if isinstance(obj, type) and issubclass(obj, BaseException)]
    assert errors and all(issubclass(cls, WoveError) for cls in errors)


@pytest.mark.parametrize(("name", "builtins"), [
    ("InvalidValueError", (ValueError,)),
    ("InvalidTypeError", (TypeError,)),
    ("EnvironmentDefinitionError", (ValueError, TypeError)),
    ("TaskDefinitionError", (TypeError,)),
    ("TemplateError", (TypeError,)),
    ("MapSourceError", (TypeError,)),
    ("UnresolvedSignatureError", (NameError,)),
    ("ReservedNameError", (NameError,)),
    ("UnknownEnvironmentError", (NameError,)),
    ("DependencyCycleError", (RuntimeError, ValueError)),
    ("WeaveStateError", (RuntimeError,)),
    ("UnknownResultError", (KeyError, AttributeError)),
    ("ConfigFileNotFoundError", (FileNotFoundError,)),
    ("TaskCancelledError", (RuntimeError,)),
    ("TooManyItemsError", (RuntimeError,)),
    ("WaitTimeoutError", (TimeoutError,)),
    ("MissingDispatchFeatureError", (ImportError, RuntimeError)),
    ("DeliveryTimeoutError", (TimeoutError, RuntimeError)),
    ("DeliveryOrphanedError", (RuntimeError,)),
    ("EnvironmentExecutionError", (RuntimeError,)),
    ("SlurmJobError", (RuntimeError,)),
])
def test_each_error_is_also_the_builtin_users_catch(name, builtins):
    cls = getattr(wove.errors, name)
    assert issubclass(cls, WoveError)
    for builtin in builtins:
        assert issubclass(cls, builtin), f"{name} must be a {builtin.__name__}"


def test_usage_errors_share_a_base():
    usage = wove.errors.UsageError
    for name in ("InvalidValueError", "InvalidTypeError", "UnresolvedSignatureError", "ReservedNameError",
                 "UnknownEnvironmentError", "DependencyCycleError", "WeaveStateError", "UnknownResultError",
                 "ConfigFileNotFoundError", "TaskDefinitionError"):
        assert issubclass(getattr(wove.errors, name), usage), name


def test_error_classes_survive_pickling():
    """Errors cross process boundaries (fork=True, remote environments): rebuilding must keep type and text."""
    for cls in _public_error_classes():
        error = cls("some message")
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is cls and str(copy) == str(error), cls.__name__


@pytest.mark.parametrize("mistake", [
    lambda: wove.config(retires=1),
    lambda: wove.config(retries=-1),
    lambda: weave(on_done=42),
    lambda: weave(error_mode="loud"),
    lambda: weave(parent=int),
    lambda: wove.undict([1]),
    lambda: wove.sync_to_async(_an_async_function),
    lambda: wove.config(environments={"default": None}),
])
def test_configuration_mistakes_are_wove_errors_and_their_usual_builtins(mistake):
    with pytest.raises((ValueError, TypeError, NameError)) as info:
        mistake()
    assert isinstance(info.value, wove.errors.UsageError)


async def _an_async_function():
    return 1


def test_unknown_keyword_uses_pythons_words():
    with raises_203(TypeError, r"config\(\) got an unexpected keyword argument 'retires'"):
        wove.config(retires=1)
    with raises_203(TypeError, r"do\(\) got an unexpected keyword argument 'retires'"), weave() as w:
        @w.do(retires=1)
        def a():
            return 1


CORE_MODULES = ("_call.py", "_config.py", "_fork.py", "_graph.py", "_mapping.py", "_merge.py", "_options.py",
                "_report.py", "_result.py", "_runner.py", "_scheduler.py", "_weave.py", "helpers.py")


def test_core_modules_raise_no_bare_builtin_errors():
    """Every `raise SomeError(...)` in the core modules names a WoveError subclass, never a bare builtin."""
    import ast
    import builtins
    from pathlib import Path

    root = Path(wove.__file__).parent
    found = []
    for module in CORE_MODULES:
        tree = ast.parse((root / module).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and isinstance(node.exc.func, ast.Name):
                name = node.exc.func.id
                builtin = getattr(builtins, name, None)
                if isinstance(builtin, type) and issubclass(builtin, Exception):
                    found.append(f"{module}:{node.lineno} raise {name}(...)")
    assert found == []


def test_a_task_timeout_is_a_wove_error_and_an_asyncio_timeout():
    import asyncio

    from wove import weave
    from wove.errors import TaskTimeoutError, WoveError

    with pytest.raises(asyncio.TimeoutError, match=r"timed out after 0\.05s") as caught:
        with weave() as w:
            @w.do(timeout=0.05)
            async def slow():
                await asyncio.sleep(5)
    assert isinstance(caught.value, TaskTimeoutError) and isinstance(caught.value, WoveError)
