"""json.dumps and json.loads for the nightly snapshot's start-up path, without importing the `json` package.

The encoding and decoding are the interpreter's own C code, `_json`, the very functions the `json` package runs;
only the package around them is skipped. Importing it costs ~8 ms on our hosts (it imports `re` and compiles nine
regular expressions), a quarter of an unchanged nightly re-run, whose whole process must stay within 2% of the
first run (issue #3, docs/benchmarks.md). `indent` output is laid out here, as `json` does it in Python.

Same results as `json` for the same arguments (tests/test_fastjson.py compares the two on generated documents).
What this does not take on goes to the `json` package: bytes to decode, non-string keys, a Python without `_json`.
"""

from __future__ import annotations

try:
    from _json import encode_basestring, encode_basestring_ascii, make_encoder, make_scanner
except ImportError:  # another Python implementation: the json package does it all
    make_encoder = make_scanner = None

_WS = " \t\n\r"  # what JSON counts as whitespace between tokens
_CONSTANTS = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}


def _not_serializable(o: object):
    raise TypeError(f"Object of type {o.__class__.__name__} is not JSON serializable")


def dumps(obj, *, sort_keys: bool = False, separators: tuple[str, str] | None = None, indent: int | None = None,
          ensure_ascii: bool = True, allow_nan: bool = True, default=None) -> str:
    """json.dumps(obj, ...) for these arguments (check_circular on, skipkeys off)."""
    if make_encoder is None:
        return _json_dumps(obj, sort_keys, separators, indent, ensure_ascii, allow_nan, default)
    string = encode_basestring_ascii if ensure_ascii else encode_basestring
    if indent is None:
        item_sep, key_sep = separators or (", ", ": ")
        encode = make_encoder({}, default or _not_serializable, string, None, key_sep, item_sep, sort_keys, False,
                              allow_nan)
        return "".join(encode(obj, 0))
    item_sep, key_sep = separators or (",", ": ")
    flat = make_encoder({}, _not_serializable, string, None, key_sep, item_sep, False, False, allow_nan)
    try:
        return "".join(_indented(obj, "\n", " " * indent, flat, item_sep, key_sep, sort_keys, default, set()))
    except _Unsupported:
        return _json_dumps(obj, sort_keys, separators, indent, ensure_ascii, allow_nan, default)


class _Unsupported(Exception):
    """A document the indented layout here does not take on (a dict key that is not a string)."""


def _indented(o, newline: str, step: str, flat, item_sep: str, key_sep: str, sort_keys: bool, default, active: set):
    """The chunks of `o` laid out as json.dumps(indent=...) lays it out: each list item and dict member on a line of
    its own, one `step` deeper; scalars (and empty containers) encoded by the C encoder `flat`."""
    if isinstance(o, (list, tuple, dict)) and o:
        if id(o) in active:
            raise ValueError("Circular reference detected")
        active.add(id(o))
        inner = newline + step
        if isinstance(o, dict):
            if not all(isinstance(k, str) for k in o):
                raise _Unsupported
            yield "{"
            for i, (k, v) in enumerate(sorted(o.items()) if sort_keys else o.items()):
                yield (inner if i == 0 else item_sep + inner) + "".join(flat(k, 0)) + key_sep
                yield from _indented(v, inner, step, flat, item_sep, key_sep, sort_keys, default, active)
            yield newline + "}"
        else:
            yield "["
            for i, v in enumerate(o):
                yield inner if i == 0 else item_sep + inner
                yield from _indented(v, inner, step, flat, item_sep, key_sep, sort_keys, default, active)
            yield newline + "]"
        active.discard(id(o))
        return
    try:
        yield "".join(flat(o, 0))
    except TypeError:
        if default is None or isinstance(o, (list, tuple, dict)):
            raise
        if id(o) in active:
            raise ValueError("Circular reference detected") from None
        active.add(id(o))
        yield from _indented(default(o), newline, step, flat, item_sep, key_sep, sort_keys, default, active)
        active.discard(id(o))


def loads(s: str | bytes):
    """json.loads(s)."""
    if make_scanner is None or not isinstance(s, str):
        import json

        return json.loads(s)
    if s.startswith("\ufeff"):
        _fail("Unexpected UTF-8 BOM (decode using utf-8-sig)", s, 0)
    start = len(s) - len(s.lstrip(_WS))
    try:
        obj, end = _scan(s, start)
    except StopIteration as err:
        _fail("Expecting value", s, err.value)
    end = len(s) - len(s[end:].lstrip(_WS))
    if end != len(s):
        _fail("Extra data", s, end)
    return obj


def _fail(message: str, s: str, pos: int):
    from json import JSONDecodeError  # an error path: the import no longer matters

    raise JSONDecodeError(message, s, pos) from None


def _json_dumps(obj, sort_keys, separators, indent, ensure_ascii, allow_nan, default) -> str:
    import json

    return json.dumps(obj, sort_keys=sort_keys, separators=separators, indent=indent, ensure_ascii=ensure_ascii,
                      allow_nan=allow_nan, default=default)


class _Context:
    """What json.decoder.JSONDecoder() hands the C scanner: strict strings, plain dicts, float, int, NaN/Infinity."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = _CONSTANTS.__getitem__


_scan = make_scanner(_Context()) if make_scanner is not None else None
