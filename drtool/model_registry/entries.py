"""Registry records: a model version, the alias log entries, and the canary comparison."""

from __future__ import annotations  # PEP 563 (public), for VersionEntry in its own class

import json
import math
import re
from dataclasses import asdict, dataclass

import jsonschema

from drtool.errors import UsageError, VerificationError

SCHEMA_VERSION = 1
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
VERSION_RE = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$"

CANARY_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["input", "expected", "tolerance"],
    "properties": {
        "input": {"type": "object"},
        "expected": {},
        "tolerance": {"type": "number", "minimum": 0},
    },
}

VERSION_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["schema", "model", "version", "image", "snapshot_id", "canary", "registered_by", "registered_at"],
    "properties": {
        "schema": {"const": SCHEMA_VERSION},
        "model": {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,62}$"},
        "version": {"type": "string", "pattern": VERSION_RE},
        "image": {
            "type": "object",
            "additionalProperties": False,
            "required": ["repository", "digest"],
            "properties": {
                "repository": {"type": "string", "pattern": "^[a-z0-9][a-z0-9._/-]*$"},
                "digest": {"type": "string", "pattern": DIGEST_RE.pattern},
                "tag": {"type": "string"},
            },
        },
        "snapshot_id": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "canary": CANARY_SCHEMA,
        "registered_by": {"type": "string"},
        "registered_at": {"type": "string"},
    },
}

ALIAS_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["schema", "model", "alias", "seq", "version", "previous", "by", "at"],
    "properties": {
        "schema": {"const": SCHEMA_VERSION},
        "model": {"type": "string"},
        "alias": {"type": "string"},
        "seq": {"type": "integer", "minimum": 1},
        "version": {"type": "string", "pattern": VERSION_RE},
        "previous": {"type": ["string", "null"]},
        "by": {"type": "string"},
        "at": {"type": "string"},
        "reason": {"type": ["string", "null"]},
    },
}


def _parse(data: bytes, schema: dict, where: str) -> dict:
    try:
        doc = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise VerificationError(f"registry object {where} is not valid JSON: {exc}",
                                hint="the registry in this store is damaged; re-register from a good site") from None
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
    if errors:
        e = errors[0]
        path = "/".join(map(str, e.path)) or "(top)"
        raise VerificationError(f"registry object {where} is malformed: {path}: {e.message}",
                                hint="the registry in this store is damaged; re-register from a good site")
    return doc


def canonical(doc: dict) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class ImageRef:
    repository: str
    digest: str
    tag: str | None = None

    def at(self, registry: str) -> str:
        """The reference by digest in one site's registry."""
        return f"{registry}/{self.repository}@{self.digest}"


@dataclass(frozen=True)
class Canary:
    input: dict
    expected: object
    tolerance: float


@dataclass(frozen=True)
class VersionEntry:
    model: str
    version: str
    image: ImageRef
    snapshot_id: str
    canary: Canary
    registered_by: str
    registered_at: str

    def to_doc(self) -> dict:
        doc = asdict(self)
        doc["schema"] = SCHEMA_VERSION
        if doc["image"]["tag"] is None:
            del doc["image"]["tag"]
        return doc

    def to_bytes(self) -> bytes:
        return canonical(self.to_doc())

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> VersionEntry:
        doc = _parse(data, VERSION_SCHEMA, where)
        doc.pop("schema")
        return cls(**{**doc, "image": ImageRef(**doc["image"]), "canary": Canary(**doc["canary"])})


@dataclass(frozen=True)
class AliasEntry:
    model: str
    alias: str
    seq: int
    version: str
    previous: str | None
    by: str
    at: str
    reason: str | None = None

    def to_bytes(self) -> bytes:
        return canonical({**asdict(self), "schema": SCHEMA_VERSION})

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> AliasEntry:
        doc = _parse(data, ALIAS_SCHEMA, where)
        doc.pop("schema")
        return cls(**doc)


def parse_image_ref(ref: str) -> ImageRef:
    """`[REGISTRY/]REPO[:TAG]@sha256:HEX` → ImageRef (the registry part is dropped: each site has its own)."""
    name, sep, digest = ref.partition("@")
    if not sep or not DIGEST_RE.match(digest):
        raise UsageError(f"image reference {ref!r} does not name a digest",
                         hint="give REGISTRY/REPO@sha256:<64 hex> (see `drtool image build --push` output)")
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        name = rest  # drop the registry host
    repo, _, tag = name.rpartition(":") if ":" in name.rsplit("/", 1)[-1] else (name, "", "")
    return ImageRef(repository=repo, digest=digest, tag=tag or None)


def parse_canary(doc: object, where: str) -> Canary:
    """A canary from user input; UsageError (exit 2) naming what is wrong."""
    errors = sorted(jsonschema.Draft202012Validator(CANARY_SCHEMA).iter_errors(doc), key=lambda e: list(e.path))
    if errors:
        e = errors[0]
        raise UsageError(f"canary in {where} is malformed: {'/'.join(map(str, e.path)) or '(top)'}: {e.message}",
                         hint='expected {"input": {...}, "expected": <output>, "tolerance": <number >= 0>}')
    return Canary(**doc)


def _flatten(value) -> list[float] | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return [float(value)]
    if isinstance(value, list):
        out: list[float] = []
        for v in value:
            sub = _flatten(v)
            if sub is None:
                return None
            out += sub
        return out
    return None


def compare_output(expected, actual, tolerance: float) -> tuple[bool, str]:
    """Numbers within `tolerance` (absolute), everything else exactly. Returns (match, evidence)."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        if set(expected) != set(actual):
            return False, f"keys differ: expected {sorted(expected)}, got {sorted(actual)}"
        for k in sorted(expected):
            ok, why = compare_output(expected[k], actual[k], tolerance)
            if not ok:
                return False, f"{k}: {why}"
        return True, "all keys match"
    e, a = _flatten(expected), _flatten(actual)
    if e is not None and a is not None:
        if len(e) != len(a):
            return False, f"shape differs: {len(e)} values expected, {len(a)} got"
        worst = max((abs(x - y) for x, y in zip(e, a, strict=True)), default=0.0)
        if any(math.isnan(v) for v in a) or worst > tolerance:
            return False, f"max abs difference {worst:.3g} > tolerance {tolerance:g}"
        return True, f"max abs difference {worst:.3g} <= tolerance {tolerance:g}"
    return (expected == actual), ("equal" if expected == actual else "values differ")
