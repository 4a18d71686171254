"""The job-side primitives that replace heavier standard modules must agree with them exactly."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

import pytest

from wove.dispatch import protocol


@pytest.mark.parametrize("key_size", [0, 1, 32, 63, 64, 65, 200])
def test_hmac_sha256_matches_the_hmac_module(key_size):
    for _ in range(20):
        key, message = os.urandom(key_size), os.urandom(int.from_bytes(os.urandom(1), "big") * 7)
        assert protocol.hmac_sha256(key, message) == hmac.new(key, message, hashlib.sha256).hexdigest()


def test_signatures_verify_and_reject_any_change():
    key = protocol.new_key()
    body = b'{"type":"task_result"}'
    signature = protocol.sign(key, "run", "task_result", 0, 1, body)
    assert protocol.verify(key, "run", "task_result", 0, 1, body, signature)
    assert not protocol.verify(key, "run", "task_result", 0, 2, body, signature)       # sequence
    assert not protocol.verify(key, "run", "task_result", 1, 1, body, signature)       # incarnation
    assert not protocol.verify(key, "run", "task_error", 0, 1, body, signature)        # event type
    assert not protocol.verify(key, "run2", "task_result", 0, 1, body, signature)      # run
    assert not protocol.verify(key, "run", "task_result", 0, 1, body + b" ", signature)  # body
    assert not protocol.verify(protocol.new_key(), "run", "task_result", 0, 1, body, signature)


def test_base64_helpers_match_the_base64_module():
    for size in (0, 1, 2, 3, 100, 4096):
        data = os.urandom(size)
        assert protocol.b64encode(data) == base64.b64encode(data).decode()
        assert protocol.b64decode(protocol.b64encode(data)) == data


def test_keys_are_random_and_long():
    keys = {protocol.new_key() for _ in range(100)}
    assert len(keys) == 100 and all(len(k) >= 40 for k in keys)


# ---------------------------------------------------------------------------------------------- compact JSON
def test_compact_json_matches_the_json_module():
    import json
    import random

    from wove.dispatch import compactjson

    rng = random.Random(7)

    def value(depth):
        kind = rng.randrange(8 if depth < 4 else 5)
        if kind == 0:
            return rng.randint(-10**20, 10**20)
        if kind == 1:
            return rng.uniform(-1e6, 1e6) * 10 ** rng.randint(-300, 300)
        if kind == 2:
            return "".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(0, 0x2FFFF)])) for _ in range(8))
        if kind == 3:
            return rng.choice([None, True, False])
        if kind == 4:
            return ""
        if kind in (5, 6):
            return {f"k{i}\u00e9": value(depth + 1) for i in range(rng.randrange(4))}
        return [value(depth + 1) for _ in range(rng.randrange(4))]

    for _ in range(300):
        doc = value(0)
        text = compactjson.dumps(doc)
        assert text == json.dumps(doc, separators=(",", ":"))
        assert compactjson.loads(text) == json.loads(text)
        assert compactjson.loads(f" \n{text}\t".encode()) == json.loads(text)
    assert compactjson.dumps({"n": float("nan")}) == '{"n":NaN}'
    for encoded in ('\ufeff{"a": 1}'.encode(), '{"a": 1}'.encode("utf-16"), '{"a": 1}'.encode("utf-32-le")):
        assert compactjson.loads(encoded) == json.loads(encoded) == {"a": 1}
    for bad in ("", "{", '{"a": 1} extra', "[1,]", '{"a": "unterminated', '"open'):
        with pytest.raises(ValueError):
            compactjson.loads(bad)
    loop = []
    loop.append(loop)
    with pytest.raises(ValueError, match="Circular"):
        compactjson.dumps(loop)
    with pytest.raises(TypeError, match="set is not JSON serializable"):
        compactjson.dumps({1, 2})
