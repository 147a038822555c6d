"""The snapshot manifest: its JSON schema, canonical encoding (whose SHA-256 is the snapshot id) and safe parsing."""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections import namedtuple

from drtool.errors import VerificationError

FORMAT = "drtool.snapshot/1"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SNAPSHOT_ID_RE = re.compile(r"^[0-9a-f]{64}$")
# No control characters and no backslash: every path must print as one line that `sha256sum -c` reads back as is.
PATH_PATTERN = r"^[^\u0000-\u001f\u007f\\]+$"

_SHA256 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_SIZE = {"type": "integer", "minimum": 0}

MANIFEST_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": ["format", "model", "version", "created", "source_host", "source_path", "part_size", "files"],
    "properties": {
        "format": {"const": FORMAT},
        "model": {"type": "string", "pattern": MODEL_NAME_RE.pattern},
        "version": {"type": ["string", "null"], "maxLength": 256},
        "created": {"type": "string", "pattern": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$"},
        "source_host": {"type": "string", "maxLength": 256},
        "source_path": {"type": "string", "maxLength": 4096},
        "part_size": {"type": "integer", "minimum": 1},
        "files": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["path", "size", "mode", "sha256", "parts"],
                "properties": {
                    "path": {"type": "string", "minLength": 1, "maxLength": 4096, "pattern": PATH_PATTERN},
                    "size": _SIZE,
                    "mode": {"type": "integer", "minimum": 0, "maximum": 0o7777},
                    "sha256": _SHA256,
                    "parts": {
                        "type": "array",
                        "items": {"type": "object", "additionalProperties": False, "required": ["sha256", "size"],
                                  "properties": {"sha256": _SHA256, "size": {"type": "integer", "minimum": 1}}},
                    },
                    "tensors": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["name", "dtype", "shape", "offsets", "sha256"],
                            "properties": {
                                "name": {"type": "string"},
                                "dtype": {"type": "string"},
                                "shape": {"type": "array", "items": _SIZE},
                                "offsets": {"type": "array", "items": _SIZE, "minItems": 2, "maxItems": 2},
                                "sha256": _SHA256,
                            },
                        },
                    },
                },
            },
        },
    },
}


@functools.cache
def _validator():
    # jsonschema costs ~0.1 s to import: only reading a manifest needs it, not an unchanged `create`.
    import jsonschema

    return jsonschema.Draft202012Validator(MANIFEST_SCHEMA)


# Immutable records as named tuples, not dataclasses: `dataclasses` costs ~18 ms to import here, a sixth of an
# unchanged re-run's whole budget (docs/benchmarks.md).
class PartRef(namedtuple("PartRef", "sha256 size")):
    """One stored part of a file: its SHA-256 (the blob's name) and size."""

    __slots__ = ()


class TensorRef(namedtuple("TensorRef", "name dtype shape offsets sha256")):
    """One tensor of a safetensors file: offsets are relative to the start of the data region, as in the header;
    shape is a tuple of ints, offsets a (begin, end) pair."""

    __slots__ = ()


class FileEntry(namedtuple("FileEntry", "path size mode sha256 parts tensors", defaults=(None,))):
    """One file of a snapshot: parts is a tuple of PartRef; tensors a tuple of TensorRef (safetensors) or None."""

    __slots__ = ()

    def to_json(self) -> dict:
        doc = {"path": self.path, "size": self.size, "mode": self.mode, "sha256": self.sha256,
               "parts": [{"sha256": p.sha256, "size": p.size} for p in self.parts]}
        if self.tensors is not None:
            doc["tensors"] = [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape), "offsets": list(t.offsets),
                               "sha256": t.sha256} for t in self.tensors]
        return doc

    @classmethod
    def from_json(cls, doc: dict) -> FileEntry:
        tensors = doc.get("tensors")
        return cls(
            path=doc["path"], size=doc["size"], mode=doc["mode"], sha256=doc["sha256"],
            parts=tuple(PartRef(p["sha256"], p["size"]) for p in doc["parts"]),
            tensors=None if tensors is None else tuple(
                TensorRef(t["name"], t["dtype"], tuple(t["shape"]), (t["offsets"][0], t["offsets"][1]), t["sha256"])
                for t in tensors),
        )


class SnapshotManifest(namedtuple("SnapshotManifest", "model version created source_host source_path part_size files",
                                  defaults=((),))):
    """A parsed manifest; files is a tuple of FileEntry."""

    __slots__ = ()

    def to_json(self) -> dict:
        return {"format": FORMAT, "model": self.model, "version": self.version, "created": self.created,
                "source_host": self.source_host, "source_path": self.source_path, "part_size": self.part_size,
                "files": [f.to_json() for f in self.files]}

    def encode(self) -> bytes:
        """The canonical bytes: sorted keys, no insignificant whitespace, ASCII only, integers only.
        The same manifest always encodes to the same bytes, so its SHA-256 (the snapshot id) is reproducible."""
        return canonical_json(self.to_json())

    @property
    def bytes_total(self) -> int:
        return sum(f.size for f in self.files)

    def blob_digests(self) -> set[str]:
        return {p.sha256 for f in self.files for p in f.parts}

    def summary(self, snapshot_id: str) -> dict:
        return {"id": snapshot_id, "model": self.model, "version": self.version, "created": self.created,
                "source_host": self.source_host, "files": len(self.files), "bytes": self.bytes_total}

    def sha256sum_lines(self) -> list[str]:
        """Lines `sha256sum -c` accepts when run in the restore destination."""
        return [f"{f.sha256}  {f.path}" for f in self.files]


def canonical_json(doc: dict) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def encode_manifest(meta: dict, file_entries: list[str]) -> bytes:
    """The canonical bytes of a manifest whose files are given as their canonical JSON text (from the incremental
    cache): the same bytes as SnapshotManifest.encode(), joined instead of re-encoded. `meta` holds every other
    field but "format"."""
    doc = {"format": FORMAT, **meta}
    before = canonical_json({k: v for k, v in doc.items() if k < "files"})[:-1]  # without its closing brace
    after = canonical_json({k: v for k, v in doc.items() if k > "files"})[1:]  # without its opening brace
    files = b'"files":[' + ",".join(file_entries).encode() + b"]"
    return before + (b"," if len(before) > 1 else b"") + files + (b"," if len(after) > 1 else b"") + after


def snapshot_id(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse_manifest(data: bytes, expected_id: str, where: str) -> SnapshotManifest:
    """Parse stored manifest bytes, refusing anything that is not exactly what `expected_id` names and safe to restore.
    Every refusal is a VerificationError (exit 3) naming `where` (the manifest's key)."""
    actual = snapshot_id(data)
    if actual != expected_id:
        raise VerificationError(f"manifest {where}: sha256 mismatch: expected {expected_id}, actual {actual}",
                                hint="the manifest was altered or damaged in the store; restore another snapshot")

    def reject_duplicate_keys(pairs):
        keys = [k for k, _ in pairs]
        if len(keys) != len(set(keys)):
            raise ValueError(f"duplicate key in object: {sorted(k for k in keys if keys.count(k) > 1)[0]!r}")
        return dict(pairs)

    try:
        doc = json.loads(data.decode("utf-8"), object_pairs_hook=reject_duplicate_keys)
    except (UnicodeDecodeError, ValueError) as exc:
        raise VerificationError(f"manifest {where} is not valid JSON: {exc}",
                                hint="the manifest is damaged; restore another snapshot") from None
    problems = sorted(f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
                      for e in _validator().iter_errors(doc))
    if problems:
        raise VerificationError(f"manifest {where} does not match the snapshot schema {FORMAT}",
                                details=problems[:20], hint="the manifest was not written by drtool, or is damaged")
    manifest = SnapshotManifest(
        model=doc["model"], version=doc["version"], created=doc["created"], source_host=doc["source_host"],
        source_path=doc["source_path"], part_size=doc["part_size"],
        files=tuple(FileEntry.from_json(f) for f in doc["files"]))
    check_consistency(manifest, where)
    return manifest


def check_relative_path(path: str, where: str) -> None:
    """A manifest path must stay inside the destination: relative, no '..', no '.' or empty components."""
    parts = path.split("/")
    if path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise VerificationError(f"manifest {where}: unsafe path {path!r} (absolute, '..', '.' or empty component)",
                                hint="refusing to restore a manifest that could write outside the destination")


def check_consistency(manifest: SnapshotManifest, where: str) -> None:
    """Rules the schema cannot say: safe unique paths, parts that add up, tensors that tile the data region."""
    seen: set[str] = set()
    dirs: set[str] = set()
    for f in manifest.files:
        check_relative_path(f.path, where)
        if f.path in seen:
            raise VerificationError(f"manifest {where}: duplicate path {f.path!r}",
                                    hint="refusing to restore a manifest that names one file twice")
        seen.add(f.path)
        components = f.path.split("/")
        dirs.update("/".join(components[:i]) for i in range(1, len(components)))
        if sum(p.size for p in f.parts) != f.size:
            raise VerificationError(f"manifest {where}: {f.path}: parts add up to "
                                    f"{sum(p.size for p in f.parts)} bytes, the file has {f.size}")
        if f.size == 0 and f.sha256 != EMPTY_SHA256:
            raise VerificationError(f"manifest {where}: {f.path}: empty file with a non-empty sha256")
        if len(f.parts) == 1 and f.parts[0].sha256 != f.sha256:
            raise VerificationError(f"manifest {where}: {f.path}: single-part file whose part digest differs "
                                    f"from the file digest ({f.parts[0].sha256} vs {f.sha256})")
    clash = sorted(seen & dirs)
    if clash:
        raise VerificationError(f"manifest {where}: {clash[0]!r} is both a file and a directory",
                                hint="refusing to restore a manifest with conflicting paths")
