"""drtool.fastjson gives what the json package gives, for the arguments drtool passes; the string checks that stand
in for the manifest schema's regular expressions on the create path accept exactly what those expressions accept
(read as whole-string matches)."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys

import pytest

from drtool import fastjson
from drtool.snapshot.manifest import (
    MODEL_NAME_PATTERN,
    PATH_PATTERN,
    SNAPSHOT_ID_PATTERN,
    is_model_name,
    is_safe_path_text,
    is_snapshot_id,
    sha256,
)

# What drtool calls json.dumps with: canonical manifests, cache headers and keys, leases, --json output.
DUMPS_ARGS = [
    {},
    {"sort_keys": True},
    {"sort_keys": True, "separators": (",", ":"), "ensure_ascii": True, "allow_nan": False},
    {"indent": 2, "sort_keys": True, "default": str},
    {"indent": 2, "default": str},
]
ALPHABET = ['a', 'Z', '0', ' ', '"', '\\', '/', '\n', '\t', '\x00', '\x7f', '\u00e9', '\u2028', '\ud83d', '\U0001f600']


class Odd:
    def __str__(self) -> str:
        return "odd\u00fc"


def _doc(rng: random.Random, depth: int = 0):
    kind = rng.randrange(10 if depth < 4 else 6)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.choice([0, -1, 1 << 70, rng.randrange(-10**9, 10**9)])
    if kind == 2:
        return rng.choice([0.0, -0.0, 1.5, 1e300, 1e-300, rng.random() * 10**rng.randrange(-20, 20)])
    if kind in (3, 4, 5):
        return "".join(rng.choice(ALPHABET) for _ in range(rng.randrange(0, 8)))
    if kind in (6, 7):
        return [_doc(rng, depth + 1) for _ in range(rng.randrange(0, 4))]
    if kind == 8:
        return tuple(_doc(rng, depth + 1) for _ in range(rng.randrange(0, 3)))
    return {_doc_key(rng): _doc(rng, depth + 1) for _ in range(rng.randrange(0, 4))}


def _doc_key(rng: random.Random) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randrange(0, 5)))


def test_dumps_is_byte_for_byte_json_dumps_and_loads_reads_it_back_as_json_does():
    rng = random.Random(7)
    for _ in range(3000):
        doc = _doc(rng)
        for kwargs in DUMPS_ARGS:
            text = json.dumps(doc, **kwargs)
            assert fastjson.dumps(doc, **kwargs) == text, (doc, kwargs)
            assert repr(fastjson.loads(text)) == repr(json.loads(text))
            spaced = f" \n\t{text}\r\n "
            assert repr(fastjson.loads(spaced)) == repr(json.loads(spaced))


def test_values_json_cannot_encode_go_through_default_or_fail_as_in_json():
    doc = {"b": [Odd(), {"x": Odd()}], "a": Odd()}
    for kwargs in ({"indent": 2, "sort_keys": True, "default": str}, {"default": str}):
        assert fastjson.dumps(doc, **kwargs) == json.dumps(doc, **kwargs)
    with pytest.raises(TypeError, match="not JSON serializable"):
        fastjson.dumps(doc, indent=2)
    with pytest.raises(TypeError, match="not JSON serializable"):
        fastjson.dumps(doc)
    with pytest.raises(ValueError):
        fastjson.dumps(float("nan"), sort_keys=True, separators=(",", ":"), allow_nan=False)
    loop: list = []
    loop.append(loop)
    for kwargs in ({}, {"indent": 2}):
        with pytest.raises(ValueError, match="Circular reference"):
            fastjson.dumps({"a": loop}, **kwargs)


def test_what_fastjson_leaves_to_json_is_still_json():
    assert fastjson.dumps({1: "a", None: [2]}, indent=2) == json.dumps({1: "a", None: [2]}, indent=2)
    assert fastjson.loads(b'{"a": [1, 2.5]}') == {"a": [1, 2.5]}


@pytest.mark.parametrize("text", ["", " ", "{", '{"a": 1} x', "[1,]", "\ufeff{}", '"\x01"', "nul", "01", "[1 2]"])
def test_malformed_json_fails_as_json_fails(text):
    with pytest.raises(json.JSONDecodeError) as ours:
        fastjson.loads(text)
    with pytest.raises(json.JSONDecodeError) as theirs:
        json.loads(text)
    assert (ours.value.msg, ours.value.pos) == (theirs.value.msg, theirs.value.pos)


CHECKS = [(is_model_name, MODEL_NAME_PATTERN), (is_snapshot_id, SNAPSHOT_ID_PATTERN), (is_safe_path_text, PATH_PATTERN)]
NAME_ALPHABET = "aZ09f._-/ \\\n\t\x00\x1f\x7f\x80\u00a0\u00e9\u200b\u2028"


@pytest.mark.parametrize(("check", "pattern"), CHECKS, ids=["model", "snapshot-id", "path"])
def test_string_checks_accept_exactly_what_their_pattern_matches_whole(check, pattern):
    whole = re.compile(pattern.removesuffix("$") + r"\Z").match
    rng = random.Random(11)
    samples = ["", "a", "a" * 128, "a" * 129, "e" * 64, "e" * 63, "E" * 64, "model\n", "f" * 64 + "\n", "-a", ".a"]
    for _ in range(20000):
        samples.append("".join(rng.choice(NAME_ALPHABET) for _ in range(rng.choice([1, 2, 5, 64, 130]))))
    for text in samples:
        assert check(text) == bool(whole(text)), repr(text)


def test_sha256_is_the_builtin_one_until_hashlib_is_loaded_and_gives_the_same_digests():
    import hashlib

    from drtool.snapshot import manifest

    for data in (b"", b"abc", bytes(range(256)) * 1000):
        digest = hashlib.sha256(data).hexdigest()
        assert manifest._BUILTIN_SHA256(data).hexdigest() == sha256(data).hexdigest() == digest
    probe = ("import sys; from drtool.snapshot.manifest import sha256; "
             "print(sha256(b'abc').hexdigest(), 'hashlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert out == [hashlib.sha256(b"abc").hexdigest(), "False"]
