"""The job-side loader gives what pickle.loads gives, without importing cloudpickle for functions."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import textwrap

import pytest

cloudpickle = pytest.importorskip("cloudpickle")

from wove.dispatch import unpickle  # noqa: E402

VERSION = cloudpickle.__version__
OFFSET = 7


def _loads(obj):
    data = cloudpickle.dumps(obj)
    assert b"cloudpickle" in data   # really by value, or the test proves nothing
    return unpickle.loads(data, VERSION)


def test_function_with_globals_defaults_and_attributes():
    def scaled(x, factor=2, *, shift=OFFSET) -> float:
        """Scaled and shifted."""
        return math.floor(x * factor) + shift
    scaled.tag = "mine"

    loaded = _loads(scaled)
    assert loaded(1.6) == scaled(1.6) == 10
    assert loaded(1, 3, shift=0) == 3
    assert (loaded.__name__, loaded.__doc__, loaded.tag) == ("scaled", "Scaled and shifted.", "mine")
    assert loaded.__kwdefaults__ == {"shift": OFFSET} and loaded.__defaults__ == (2,)
    assert loaded.__annotations__ == {"return": "float"}


def test_closures_recursion_lambdas_and_empty_cells():
    def outer(n):
        def fact(k):
            return 1 if k <= 1 else k * fact(k - 1)   # refers to its own cell
        return lambda: fact(n)

    assert _loads(outer(5))() == 120

    def with_empty_cell():
        if False:
            later = 1

        def inner():
            return later
        return inner

    loaded = _loads(with_empty_cell())
    with pytest.raises(NameError):
        loaded()


def test_async_function_and_submodule_reference():
    import os.path

    async def joined(a, b):
        await asyncio.sleep(0)
        return os.path.join(a, b)

    assert asyncio.run(_loads(joined)("x", "y")) == os.path.join("x", "y")


def test_classes_still_load_through_cloudpickle():
    class Point:
        def __init__(self, x):
            self.x = x

        def double(self):
            return Point(self.x * 2)

    loaded = _loads(Point(3))
    assert loaded.double().x == 6 and type(loaded).__name__ == "Point"


def test_other_cloudpickle_versions_use_plain_pickle():
    data = cloudpickle.dumps(lambda: 42)
    assert unpickle.loads(data, "2.2.1")() == 42
    assert unpickle.loads(data, "")() == 42


def _job(obj_source: str, tmp_path) -> dict:
    """Pickle an object defined in a script's __main__, load it in a fresh interpreter as a job would."""
    script = tmp_path / "make.py"
    script.write_text(textwrap.dedent(obj_source) + textwrap.dedent("""
        import base64, cloudpickle
        print(base64.b64encode(cloudpickle.dumps(OBJ)).decode())
    """))
    data = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True).stdout.strip()
    check = textwrap.dedent(f"""
        import base64, json, sys
        from wove.dispatch import unpickle
        obj = unpickle.loads(base64.b64decode({data!r}), {VERSION!r})
        value = obj(4) if callable(obj) and not isinstance(obj, type) else obj.value()
        print(json.dumps({{"value": value, "cloudpickle": "cloudpickle" in sys.modules}}))
    """)
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def test_a_main_function_loads_without_importing_cloudpickle(tmp_path):
    result = _job("""
        import math
        BASE = 10
        def helper(x):
            return x * BASE
        def OBJ(x):
            return helper(x) + math.floor(0.5)
    """, tmp_path)
    assert result == {"value": 40, "cloudpickle": False}


def test_a_main_class_instance_imports_cloudpickle_and_still_loads(tmp_path):
    result = _job("""
        class Box:
            def __init__(self, v):
                self.v = v
            def value(self):
                return self.v + 1
        OBJ = Box(41)
    """, tmp_path)
    assert result == {"value": 42, "cloudpickle": True}

