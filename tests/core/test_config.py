"""wove.config(), wove_config.py, environments, validation and the resolution order."""

import asyncio
import textwrap

import pytest

import wove
from wove import weave


def _attempts_of_failing_task(**weave_kwargs):
    """Run one always-failing task (return mode) and report how many attempts it got."""
    task_options = weave_kwargs.pop("task_options", {})
    attempts = []
    with weave(error_mode="return", **weave_kwargs) as w:
        @w.do(**task_options)
        def failing():
            attempts.append(1)
            raise ValueError("always")

    assert isinstance(w.result.failing, ValueError)
    return len(attempts)


def _attempts_in_error_mode_from_config():
    attempts = []
    with weave() as w:
        @w.do
        def failing():
            attempts.append(1)
            raise ValueError("always")

    assert isinstance(w.result.failing, ValueError), "error_mode='return' came from the configuration"
    return len(attempts)


# ----------------------------------------------------------------------------- wove.config


def test_config_calls_accumulate():
    wove.config(retries=2)
    wove.config(error_mode="return")
    assert _attempts_in_error_mode_from_config() == 3


def test_config_later_call_overrides_same_key():
    wove.config(retries=3)
    wove.config(retries=1)
    assert _attempts_of_failing_task() == 2


def test_weave_none_arguments_fall_back_to_config():
    wove.config(error_mode="return", max_pending=2)
    with weave(error_mode=None, max_pending=None) as w:
        @w.do([1, 2, 3])
        def each(i):
            return i

    assert isinstance(w.result.each, RuntimeError)
    assert "3" in str(w.result.each) and "2" in str(w.result.each)


def test_weave_argument_beats_config():
    wove.config(error_mode="return")
    with pytest.raises(ValueError), weave(error_mode="raise") as w:
        @w.do
        def failing():
            raise ValueError("raised despite the config")


# ----------------------------------------------------------------------------- wove_config.py


def test_loads_wove_config_dict_form_from_cwd(tmp_path, monkeypatch):
    (tmp_path / "wove_config.py").write_text("WOVE_CONFIG = {'retries': 2, 'error_mode': 'return'}\n")
    monkeypatch.chdir(tmp_path)
    wove.config()
    assert _attempts_in_error_mode_from_config() == 3


def test_loads_wove_config_module_names_from_parent_directory(tmp_path, monkeypatch):
    (tmp_path / "wove_config.py").write_text(textwrap.dedent("""
        import os  # helpers in the file are not config keys

        retries = 1
        error_mode = "return"
        _private_helper = os.sep
    """))
    nested = tmp_path / "pkg" / "sub"
    nested.mkdir(parents=True)
    monkeypatch.chdir(nested)
    wove.config()
    assert _attempts_in_error_mode_from_config() == 2


def test_nearest_wove_config_wins(tmp_path, monkeypatch):
    (tmp_path / "wove_config.py").write_text("WOVE_CONFIG = {'retries': 5, 'error_mode': 'return'}\n")
    nested = tmp_path / "inner"
    nested.mkdir()
    (nested / "wove_config.py").write_text("WOVE_CONFIG = {'retries': 1, 'error_mode': 'return'}\n")
    monkeypatch.chdir(nested)
    wove.config()
    assert _attempts_in_error_mode_from_config() == 2


def test_wove_config_file_defines_environments(tmp_path, monkeypatch):
    (tmp_path / "wove_config.py").write_text(textwrap.dedent("""
        default_environment = "patient"
        environments = {"patient": {"executor": "local", "retries": 2}}
    """))
    monkeypatch.chdir(tmp_path)
    wove.config()
    assert _attempts_of_failing_task() == 3


def test_explicit_config_file_is_loaded(tmp_path):
    path = tmp_path / "custom_name.py"
    path.write_text("WOVE_CONFIG = {'retries': 1, 'error_mode': 'return'}\n")
    wove.config(config_file=str(path))
    assert _attempts_in_error_mode_from_config() == 2


def test_explicit_missing_config_file_raises_file_not_found(tmp_path):
    missing = tmp_path / "does_not_exist.py"
    with pytest.raises(FileNotFoundError) as info:
        wove.config(config_file=str(missing))
    assert "does_not_exist.py" in str(info.value)


def test_unknown_key_in_config_file_is_rejected(tmp_path):
    path = tmp_path / "cfg.py"
    path.write_text("WOVE_CONFIG = {'retrys': 1}\n")
    with pytest.raises((ValueError, TypeError)) as info:
        wove.config(config_file=str(path))
    assert "retrys" in str(info.value) and "retries" in str(info.value)


# ----------------------------------------------------------------------------- validation


def test_unknown_config_key_names_it_and_valid_keys():
    with pytest.raises((TypeError, ValueError)) as info:
        wove.config(retires=1)
    message = str(info.value)
    assert "retires" in message
    assert "retries" in message and "max_workers" in message


@pytest.mark.parametrize(("key", "value", "valid"), [
    ("error_mode", "explode", ["raise", "return"]),
    ("delivery_cancel_mode", "maybe", ["best_effort", "require_ack"]),
    ("delivery_orphan_policy", "ignore", ["fail", "cancel", "requeue", "detach"]),
    ("retries", -1, []),
    ("timeout", 0, []),
    ("timeout", "soon", []),
    ("workers", 0, []),
    ("limit_per_minute", -5, []),
    ("max_workers", 0, []),
    ("max_pending", 0, []),
    ("background", "yes", []),
    ("delivery_timeout", -1, []),
    ("delivery_max_in_flight", 0, []),
])
def test_bad_config_values_name_the_value_and_valid_ones(key, value, valid):
    with pytest.raises(ValueError) as info:
        wove.config(**{key: value})
    message = str(info.value)
    assert key in message
    assert repr(value) in message
    for name in valid:
        assert name in message


def test_bad_value_leaves_previous_configuration_in_place():
    wove.config(retries=1)
    with pytest.raises(ValueError):
        wove.config(retries=4, error_mode="explode")
    assert _attempts_of_failing_task() == 2


def test_unknown_executor_names_valid_ones():
    with pytest.raises(ValueError) as info:
        wove.config(environments={"cluster": {"executor": "kubernetes"}})
    message = str(info.value)
    assert "kubernetes" in message
    for name in ("local", "stdio", "slurm"):
        assert name in message


def test_unknown_environment_key_names_valid_ones():
    with pytest.raises(ValueError) as info:
        wove.config(environments={"e": {"executor": "local", "retires": 1}})
    message = str(info.value)
    assert "retires" in message and "retries" in message


def test_bad_value_inside_environment_is_rejected():
    with pytest.raises(ValueError) as info:
        wove.config(environments={"e": {"executor": "local", "delivery_orphan_policy": "shrug"}})
    assert "shrug" in str(info.value) and "requeue" in str(info.value)


def test_environment_executor_config_alias():
    wove.config(environments={"a": {"executor": "local", "config": {}},
                              "b": {"executor": "local", "executor_config": {}},
                              "c": {"retries": 1}})
    for env in ("a", "b", "c"):
        with weave(environment=env, env_name=env) as w:
            @w.do
            def t(env_name):
                return env_name
        assert w.result.t == env


def test_environment_removed_with_none():
    wove.config(environments={"temp": {"executor": "local"}})
    with weave(environment="temp") as w:
        @w.do
        def t():
            return 1
    assert w.result.t == 1

    wove.config(environments={"temp": None})
    with pytest.raises(NameError, match="temp"):
        weave(environment="temp")


def test_environments_accumulate_across_calls():
    wove.config(environments={"one": {"retries": 1}})
    wove.config(environments={"two": {"retries": 2}})
    assert _attempts_of_failing_task(task_options={"environment": "one"}) == 2
    assert _attempts_of_failing_task(task_options={"environment": "two"}) == 3


def test_unknown_default_environment_is_name_error():
    wove.config(default_environment="ghost")
    with pytest.raises(NameError, match="ghost"):
        weave()


def test_default_environment_always_exists():
    with weave(environment="default") as w:
        @w.do(environment="default")
        def t():
            return "local"
    assert w.result.t == "local"


# ----------------------------------------------------------------------------- resolution order


def test_environment_retries_apply_to_tasks_routed_there():
    wove.config(environments={"flaky_net": {"executor": "local", "retries": 2}})
    assert _attempts_of_failing_task(task_options={"environment": "flaky_net"}) == 3
    assert _attempts_of_failing_task() == 1, "tasks in the default environment are unaffected"


@pytest.mark.timeout(30)
def test_environment_timeout_applies_to_tasks_routed_there():
    wove.config(environments={"strict": {"executor": "local", "timeout": 0.05}})
    with pytest.raises(asyncio.TimeoutError), weave() as w:
        @w.do(environment="strict")
        async def slow():
            await asyncio.sleep(10)


def test_task_option_beats_environment():
    wove.config(environments={"flaky_net": {"retries": 3}})
    assert _attempts_of_failing_task(task_options={"environment": "flaky_net", "retries": 0}) == 1


def test_environment_beats_global_config():
    wove.config(retries=1, environments={"flaky_net": {"retries": 3}})
    assert _attempts_of_failing_task(task_options={"environment": "flaky_net"}) == 4
    assert _attempts_of_failing_task() == 2, "global config still applies in the default environment"


def test_global_config_beats_builtin_default():
    assert _attempts_of_failing_task() == 1
    wove.config(retries=2)
    assert _attempts_of_failing_task() == 3


def test_environment_name_resolution_order():
    wove.config(environments={"task_env": {"retries": 1}, "weave_env": {"retries": 2},
                              "configured_default": {"retries": 3}})
    # No environment anywhere: the built-in local "default" (no retries).
    assert _attempts_of_failing_task() == 1
    wove.config(default_environment="configured_default")
    assert _attempts_of_failing_task() == 4
    assert _attempts_of_failing_task(environment="weave_env") == 3
    assert _attempts_of_failing_task(environment="weave_env", task_options={"environment": "task_env"}) == 2


def test_weave_settings_resolution_order_for_max_pending():
    wove.config(max_pending=1, environments={"roomy": {"max_pending": 2}})

    def run(**kwargs):
        with weave(error_mode="return", **kwargs) as w:
            @w.do([1, 2, 3])
            def each(i):
                return i
        return w.result.each

    global_only = run()
    assert isinstance(global_only, RuntimeError) and "max_pending=1" in str(global_only).replace(" ", "")
    from_environment = run(environment="roomy")
    assert isinstance(from_environment, RuntimeError) and "2" in str(from_environment)
    assert run(environment="roomy", max_pending=3) == [1, 2, 3]
