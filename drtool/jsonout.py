"""The --json contract's encoding (drtool.output): a result, or an error with its exit code, as indented JSON on
stdout."""

from __future__ import annotations  # PEP 563 (public), for DrtoolError, a type-checking import

import json

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time, docs/benchmarks.md)
if TYPE_CHECKING:
    from drtool.errors import DrtoolError


def result_json(data: dict) -> str:
    return json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"


def error_json(err: DrtoolError) -> str:
    return json.dumps(err.to_dict(), indent=2, default=str) + "\n"
