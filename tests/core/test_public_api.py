"""The public surface: names, error types, and ``import wove`` without optional packages."""

import subprocess
import sys
import textwrap

import wove
import wove.errors

# The list under "Public imports" in the API reference (spec/api.md), which includes __version__.
DOCUMENTED = {
    "weave", "Weave", "WoveResult", "config", "merge", "flatten", "fold", "batch", "undict", "redict",
    "denone", "sync_to_async", "EnvironmentExecutor", "BackendAdapter", "BackendAdapterEnvironmentExecutor",
    "MissingDispatchFeatureError", "DeliveryTimeoutError", "DeliveryOrphanedError", "__version__",
}
# Documented under "Also importable" without a module; accepted in wove.__all__ as well. WoveError (the base
# of every error wove raises), RunRecord (the entries of WoveResult.jobs) and WeaveContext (the type of `w`)
# are exported by issue 11; ItemError (the entries of WoveResult.errors) by issue 12; SpoolFullError (a payload
# or result that does not fit in the spool) by issue 14.
ALSO_IMPORTABLE = {"EnvironmentExecutionError", "WoveError", "RunRecord", "WeaveContext", "ItemError",
                   "SpoolFullError"}


def test_all_matches_documented_public_names():
    exported = set(wove.__all__)
    assert len(wove.__all__) == len(exported), "no duplicates in __all__"
    assert exported >= DOCUMENTED, f"missing: {sorted(DOCUMENTED - exported)}"
    assert exported - DOCUMENTED <= ALSO_IMPORTABLE, f"undocumented: {sorted(exported - DOCUMENTED)}"


def test_every_exported_name_resolves():
    missing = []
    for name in wove.__all__:
        try:
            getattr(wove, name)
        except (AttributeError, ImportError) as exc:
            missing.append(f"{name}: {exc!r}")
    assert missing == []


def test_star_import_works():
    namespace = {}
    exec("from wove import *", namespace)
    assert set(wove.__all__) <= set(namespace)


def test_version_is_a_string():
    assert isinstance(wove.__version__, str) and wove.__version__


def test_core_names_are_the_right_kind():
    assert callable(wove.weave) and callable(wove.config) and callable(wove.merge)
    assert isinstance(wove.Weave, type) and isinstance(wove.WoveResult, type)
    assert isinstance(wove.EnvironmentExecutor, type)
    assert issubclass(wove.MissingDispatchFeatureError, ImportError)
    assert issubclass(wove.DeliveryTimeoutError, TimeoutError)
    assert issubclass(wove.DeliveryOrphanedError, RuntimeError)


def test_error_types():
    assert issubclass(wove.errors.UnresolvedSignatureError, NameError)
    assert issubclass(wove.errors.EnvironmentExecutionError, RuntimeError)
    error = wove.errors.EnvironmentExecutionError("remote failed")
    assert set(error.payload) >= {"kind", "message", "traceback", "retryable", "source"}
    assert error.payload["message"] == "remote failed"


def test_unknown_attribute_is_attribute_error():
    try:
        _ = wove.no_such_name
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("wove.no_such_name should raise AttributeError")


BLOCKED_IMPORT = textwrap.dedent("""
    import sys

    class BlockCloudpickle:
        def find_spec(self, name, path=None, target=None):
            if name == "cloudpickle" or name.startswith("cloudpickle."):
                raise ImportError("cloudpickle is blocked for this test")
            return None

    sys.meta_path.insert(0, BlockCloudpickle())
    sys.modules.pop("cloudpickle", None)

    import wove
    from wove import weave, merge, flatten

    with weave(n=2) as w:
        @w.do
        def a(n):
            return n + 1

        @w.do
        async def b(a):
            return a * 2

        @w.do([1, 2])
        def c(i, b):
            return merge(lambda: i + b)

    assert w.result.b == 6, w.result.b
    assert w.result.c == [7, 8], w.result.c
    assert flatten([[1], [2]]) == [1, 2]
    assert "cloudpickle" not in sys.modules

    try:
        with weave(background=True, fork=True) as w:
            @w.do
            def x():
                return 1
    except ImportError as exc:
        assert type(exc).__name__ == "MissingDispatchFeatureError", type(exc)
        assert 'pip install "wove[dispatch]"' in str(exc), str(exc)
    else:
        raise AssertionError("fork=True without cloudpickle must raise MissingDispatchFeatureError")
    print("OK")
""")


def test_import_and_local_weave_without_cloudpickle():
    proc = subprocess.run([sys.executable, "-c", BLOCKED_IMPORT], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "OK"


def test_import_wove_is_light():
    code = ("import sys, wove; heavy = [m for m in ('asyncio', 'cloudpickle', 'wove._scheduler') "
            "if m in sys.modules]; print(heavy)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
