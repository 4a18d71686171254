"""@w.do in every form, re-registration, dependency inference and definition errors."""

import pytest

import wove
from wove import Weave, merge, weave
from wove.errors import (
    DependencyCycleError,
    ReservedNameError,
    TaskDefinitionError,
    UnresolvedSignatureError,
    WoveError,
)


def test_bare_decorator_and_empty_call_register_tasks():
    with weave() as w:
        @w.do
        def a():
            return 1

        @w.do()
        def b(a):
            return a + 1

    assert (w.result.a, w.result.b) == (1, 2)


def test_decorator_with_options_applies_them():
    attempts = []
    with weave() as w:
        @w.do(retries=1)
        def flaky():
            attempts.append(1)
            if len(attempts) == 1:
                raise ValueError("first attempt fails")
            return "ok"

    assert w.result.flaky == "ok"
    assert len(attempts) == 2


def test_decorator_with_iterable_maps():
    with weave() as w:
        @w.do([1, 2, 3])
        def doubled(n):
            return n * 2

        @w.do(range(3))
        def squared(i):
            return i * i

    assert w.result.doubled == [2, 4, 6]
    assert w.result.squared == [0, 1, 4]


def test_decorator_with_iterable_and_options():
    attempts = {}
    with weave() as w:
        @w.do([1, 2], retries=1)
        def item(n):
            attempts[n] = attempts.get(n, 0) + 1
            if attempts[n] == 1:
                raise ValueError(n)
            return -n

    assert w.result.item == [-1, -2]
    assert attempts == {1: 2, 2: 2}


def test_decorator_with_upstream_task_name_maps_over_its_result():
    with weave() as w:
        @w.do
        def numbers():
            return [1, 2, 3]

        @w.do("numbers")
        def plus_one(n):
            return n + 1

    assert w.result.plus_one == [2, 3, 4]
    assert w.execution_plan["dependencies"]["plus_one"] == ["numbers"]


def test_decorator_with_init_value_name_maps_over_it():
    with weave(items=("a", "b")) as w:
        @w.do("items")
        def upper(s):
            return s.upper()

    assert w.result.upper == ["A", "B"]


def test_do_on_existing_function_returns_it_unchanged():
    def base():
        return 5

    def plus(base):
        return base + 1

    def each(x):
        return x * 3

    with weave() as w:
        assert w.do(base) is base
        assert w.do(retries=0)(plus) is plus
        assert w.do([1, 2])(each) is each

    assert w.result.base == 5
    assert w.result.plus == 6
    assert w.result.each == [3, 6]


def test_decorator_returns_function_unchanged():
    with weave() as w:
        @w.do
        def a():
            return "called directly"

        @w.do(retries=2)
        def b():
            return "b"

    assert a() == "called directly"
    assert b() == "b"


def test_reregistration_replaces_task_and_inherits_unset_options():
    first, second = [], []
    with weave(error_mode="return") as w:
        @w.do(retries=2)
        def job():
            first.append(1)
            raise ValueError("first definition")

        @w.do
        def job():  # noqa: F811
            second.append(1)
            raise KeyError("second definition")

    assert first == [], "the replaced definition must not run"
    assert len(second) == 3, "retries=2 is inherited by the new definition"
    assert isinstance(w.result.job, KeyError)
    assert len(w.result) == 1


def test_reregistration_own_options_override_inherited_ones():
    attempts = []
    with weave(error_mode="return") as w:
        @w.do(retries=3)
        def job():
            raise ValueError("first")

        @w.do(retries=0)
        def job():  # noqa: F811
            attempts.append(1)
            raise ValueError("second")

    assert len(attempts) == 1
    assert str(w.result.job) == "second"


def test_dependencies_inferred_from_tasks_init_values_and_data():
    with weave(factor=10, offset=1) as w:
        @w.do
        def a():
            return 2

        @w.do
        def b(a, factor):
            return a * factor

        @w.do
        def c(b, data):
            return b + data["offset"]

        @w.do
        def d(*, c, a):
            return (c, a)

    assert w.result.b == 20
    assert w.result.c == 21
    assert w.result.d == (21, 2)
    deps = w.execution_plan["dependencies"]
    assert deps["b"] == ["a"]
    assert deps["c"] == ["b"]
    assert sorted(deps["d"]) == ["a", "c"]


def test_parameters_with_unmatched_defaults_keep_their_defaults():
    with weave(scale=3) as w:
        @w.do
        def a(unmatched=5):
            return unmatched

        @w.do
        def b(a, scale=100, suffix="!"):
            return f"{a * scale}{suffix}"

    assert w.result.a == 5
    assert w.result.b == "15!", "a default whose name matches an init value takes the init value"


def test_default_parameter_named_like_a_task_becomes_a_dependency():
    with weave() as w:
        @w.do
        def a():
            return 7

        @w.do
        def b(a=0):
            return a

    assert w.result.b == 7
    assert w.execution_plan["dependencies"]["b"] == ["a"]


def test_unresolved_parameter_names_task_parameter_and_close_matches():
    ran = []
    with pytest.raises(UnresolvedSignatureError) as info, weave(user_id=1) as w:
        @w.do
        def fetch_user(user_id):
            ran.append("fetch_user")

        @w.do
        def render(fetch_usr):
            ran.append("render")

    assert isinstance(info.value, NameError)
    message = str(info.value)
    assert "render" in message
    assert "fetch_usr" in message
    assert "fetch_user" in message
    assert ran == [], "nothing runs when the plan is invalid"


def test_unresolved_parameter_message_lists_available_names():
    with pytest.raises(UnresolvedSignatureError) as info, weave(alpha=1) as w:
        @w.do
        def beta():
            return 1

        @w.do
        def gamma(zzz_nothing_like_it):
            return 2

    message = str(info.value)
    assert "gamma" in message and "zzz_nothing_like_it" in message
    assert "alpha" in message and "beta" in message


def test_cycle_error_names_every_task_on_the_cycle_only():
    ran = []
    with pytest.raises(DependencyCycleError) as info, weave() as w:
        @w.do
        def origin():
            ran.append("origin")

        @w.do
        def alpha(gamma, origin):
            ran.append("alpha")

        @w.do
        def beta(alpha):
            ran.append("beta")

        @w.do
        def gamma(beta):
            ran.append("gamma")

        @w.do
        def downstream(gamma):
            ran.append("downstream")

    message = str(info.value)
    for name in ("alpha", "beta", "gamma"):
        assert name in message
    assert "downstream" not in message
    assert "origin" not in message
    assert ran == []


def test_two_task_cycle_is_reported():
    with pytest.raises(DependencyCycleError) as info, weave() as w:
        @w.do
        def ping(pong):
            return 1

        @w.do
        def pong(ping):
            return 2

    assert "ping" in str(info.value) and "pong" in str(info.value)


def test_mapped_task_with_no_free_parameter_is_explained():
    with pytest.raises(TaskDefinitionError) as info, weave(seed=1) as w:
        @w.do([1, 2])
        def stuck(seed):
            return seed

    assert isinstance(info.value, TypeError)
    assert "stuck" in str(info.value)


def test_mapped_task_with_two_free_parameters_is_explained():
    with pytest.raises(TaskDefinitionError) as info, weave() as w:
        @w.do([1, 2])
        def ambiguous(first, second):
            return first

    message = str(info.value)
    assert "ambiguous" in message
    assert "first" in message and "second" in message


def test_mapped_task_free_parameter_may_have_any_name_and_position():
    with weave(factor=10) as w:
        @w.do
        def base():
            return 1

        @w.do([1, 2, 3])
        def scaled(factor, base, whatever_name):
            return whatever_name * factor + base

    assert w.result.scaled == [11, 21, 31]


def test_mapping_over_unknown_name_is_unresolved():
    with pytest.raises(UnresolvedSignatureError) as info, weave() as w:
        @w.do("nonexistent_source")
        def each(x):
            return x

    assert "each" in str(info.value) and "nonexistent_source" in str(info.value)


def test_unknown_task_option_is_rejected_with_valid_names():
    with pytest.raises((TypeError, ValueError)) as info, weave() as w:
        @w.do(retires=1)
        def a():
            return 1

    assert "retires" in str(info.value)
    assert "retries" in str(info.value)


@pytest.mark.parametrize("option", [{"retries": -1}, {"timeout": 0}, {"timeout": "soon"}])
def test_bad_task_option_values_raise_value_error(option):
    (key, value), = option.items()
    with pytest.raises(ValueError) as info, weave() as w:
        w.do(**option)(lambda: 1)
    assert key in str(info.value) and repr(value) in str(info.value)


# ---------------------------------------------------------------- w.do(func, **options) and name= (issue 12)


def test_function_with_options_registers_it_with_those_options():
    attempts = []

    def flaky():
        attempts.append(1)
        if len(attempts) == 1:
            raise ValueError("first attempt fails")
        return "ok"

    with weave() as w:
        assert w.do(flaky, retries=1) is flaky

    assert w.result.flaky == "ok"
    assert len(attempts) == 2, "retries=1 given with the function applied"


def test_lambda_with_options_runs_in_a_remote_environment():
    import os

    wove.config(environments={"proc": {"executor": "stdio"}})
    with weave(x=41) as w:
        w.do(lambda x: (x + 1, os.getpid()), environment="proc")

    value, pid = w.result["<lambda>"]
    assert value == 42
    assert pid != os.getpid(), "the lambda ran in the stdio worker, not here"
    assert [record.environment for record in w.result.jobs["<lambda>"]] == ["proc"]


def test_name_option_names_lambdas_and_functions():
    def base():
        return 2

    with weave() as w:
        w.do(lambda: 10, name="ten")
        w.do(lambda ten: ten + 1, name="eleven", retries=1)
        w.do([1, 2], name="scaled")(lambda n, ten: n * ten)
        w.do(base, name="two")

    assert (w.result.ten, w.result.eleven, w.result.scaled, w.result.two) == (10, 11, [10, 20], 2)
    assert w.execution_plan["dependencies"]["eleven"] == ["ten"]
    assert "base" not in w.result.timings, "name= replaces the function's own name"


def test_name_option_on_template_methods():
    class Pipeline(Weave):
        @Weave.do(name="start")
        def first(self):
            return 1

        @Weave.do
        def second(self, start):
            return start + 1

    with weave(Pipeline) as w:
        pass

    assert (w.result.start, w.result.second) == (1, 2)


def test_second_unnamed_lambda_is_refused_instead_of_replacing_the_first():
    with pytest.raises(TaskDefinitionError) as info, weave() as w:
        w.do(lambda: 1)
        w.do(lambda: 2, retries=1)

    assert isinstance(info.value, TypeError)
    message = str(info.value)
    assert "<lambda>" in message and "name=" in message


def test_one_unnamed_lambda_is_still_a_task():
    with weave() as w:
        w.do(lambda: 1, name="one")
        w.do(lambda one: one + 1)

    assert w.result["<lambda>"] == 2


@pytest.mark.parametrize(("bad", "error"), [("two words", ValueError), ("1st", ValueError), ("class", ValueError),
                                            ("", ValueError), (3, TypeError)])
def test_bad_names_are_refused_naming_the_value(bad, error):
    with pytest.raises(error) as info, weave() as w:
        w.do(lambda: 1, name=bad)

    assert isinstance(info.value, WoveError)
    assert repr(bad) in str(info.value) and "identifier" in str(info.value)
    assert len(w._tasks) == 0


@pytest.mark.parametrize("reserved", ["final", "data", "jobs"])
def test_reserved_names_are_refused_as_for_any_task(reserved):
    with pytest.raises(ReservedNameError) as info, weave() as w:
        w.do(lambda: 1, name=reserved)

    assert isinstance(info.value, NameError)
    assert reserved in str(info.value)


def test_name_clashing_with_an_init_value_is_refused():
    with pytest.raises(ReservedNameError) as info, weave(size=3) as w:
        w.do(lambda: 1, name="size")

    assert "size" in str(info.value)


def test_merge_refuses_name():
    seen = {}
    with weave() as w:
        @w.do
        def outer():
            try:
                merge(lambda: 1, name="inner")
            except TypeError as exc:
                seen["error"] = exc

    assert isinstance(seen["error"], WoveError)
    assert "name" in str(seen["error"]) and "'inner'" in str(seen["error"])
