"""Without cloudpickle: ``import wove`` and local weaves work; dispatch features name the install command."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from dispatch_helpers import REPO

pytestmark = pytest.mark.timeout(60)

SCRIPT = textwrap.dedent('''
    import json
    import sys


    class BlockCloudpickle:
        def find_spec(self, name, path=None, target=None):
            if name == "cloudpickle" or name.startswith("cloudpickle."):
                raise ImportError("No module named 'cloudpickle' (blocked by the test)")
            return None


    sys.meta_path.insert(0, BlockCloudpickle())
    sys.modules.pop("cloudpickle", None)

    import wove
    from wove import BackendAdapter, BackendAdapterEnvironmentExecutor, MissingDispatchFeatureError, weave

    report = {"cloudpickle imported by import wove": "cloudpickle" in sys.modules}

    with weave() as w:
        @w.do
        def local():
            return "local works"

        @w.do([1, 2])
        def mapped(x):
            return x * 2

    report["local"] = [w.result.local, w.result.mapped]


    class Adapter(BackendAdapter):
        async def submit(self, payload, frame):
            raise AssertionError("must not be reached")


    environments = {
        "stdio": {"executor": "stdio"},
        "adapter": {"executor": BackendAdapterEnvironmentExecutor("adapter", adapter_class=Adapter)},
    }
    for name, spec in environments.items():
        wove.config(environments={name: spec})
        try:
            with weave() as w:
                @w.do(environment=name)
                def remote():
                    return 1
        except MissingDispatchFeatureError as exc:
            report[name] = ["MissingDispatchFeatureError", str(exc), isinstance(exc, ImportError)]
        except BaseException as exc:
            report[name] = [type(exc).__name__, str(exc), False]
        else:
            report[name] = ["no error", "", False]
    print(json.dumps(report))
''')


def test_dispatch_without_cloudpickle_names_the_install_command():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, cwd=REPO,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["cloudpickle imported by import wove"] is False
    assert report["local"] == ["local works", [2, 4]]
    for name in ("stdio", "adapter"):
        kind, message, is_import_error = report[name]
        assert kind == "MissingDispatchFeatureError", (name, report[name])
        assert 'pip install "wove[dispatch]"' in message
        assert is_import_error
