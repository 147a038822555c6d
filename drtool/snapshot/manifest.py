"""The snapshot manifest: its JSON schema, canonical encoding (whose SHA-256 is the snapshot id) and safe parsing."""

from __future__ import annotations  # PEP 563 (public), for TensorRef in its own class

import functools
import json
from collections import namedtuple
from hashlib import sha256

from drtool.errors import VerificationError

FORMAT = "drtool.snapshot/2"  # 2: a large tensor may be recorded by its parts instead of its own SHA-256
FORMATS_READ = ("drtool.snapshot/1", FORMAT)
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"  # of b""
# The patterns are the schema's; the checks below say the same with string methods (tests/test_snapshot_safety.py
# checks that they accept exactly what the patterns match), for the create path, which runs no schema.
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
SNAPSHOT_ID_PATTERN = r"^[0-9a-f]{64}$"
# No control characters and no backslash: every path must print as one line that `sha256sum -c` reads back as is.
PATH_PATTERN = r"^[^\u0000-\u001f\u007f\\]+$"
_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_HEX = "0123456789abcdef"
_UNPRINTABLE = frozenset(map(chr, [*range(0x20), 0x7F]))


def is_model_name(name: str) -> bool:
    """Letters, digits, '.', '_' and '-', starting with a letter or digit, at most 128 (MODEL_NAME_PATTERN)."""
    return 0 < len(name) <= 128 and name[0] in _ALNUM and not name.strip(_ALNUM + "._-")


def is_snapshot_id(text: str) -> bool:
    """64 lowercase hex digits: a SHA-256 (SNAPSHOT_ID_PATTERN)."""
    return len(text) == 64 and not text.strip(_HEX)


def is_safe_path_text(path: str) -> bool:
    """Not empty, no control character and no backslash (PATH_PATTERN). isprintable() answers for nearly every
    name at C speed; only a name it refuses (it also refuses some non-ASCII spaces and marks) is looked at closely."""
    if "\\" in path or not path:
        return False
    return path.isprintable() or _UNPRINTABLE.isdisjoint(path)


_SHA256 = {"type": "string", "pattern": SNAPSHOT_ID_PATTERN}
_SIZE = {"type": "integer", "minimum": 0}

MANIFEST_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": ["format", "model", "version", "created", "source_host", "source_path", "part_size", "files"],
    "properties": {
        "format": {"enum": list(FORMATS_READ)},
        "model": {"type": "string", "pattern": MODEL_NAME_PATTERN},
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
                            "required": ["name", "dtype", "shape", "offsets"],
                            # its own SHA-256, or (format 2) the parts of the file that hold exactly its bytes:
                            # [index of the first, count], at least two (one part's digest is the tensor's SHA-256)
                            "oneOf": [{"required": ["sha256"]}, {"required": ["parts"]}],
                            "properties": {
                                "name": {"type": "string"},
                                "dtype": {"type": "string"},
                                "shape": {"type": "array", "items": _SIZE},
                                "offsets": {"type": "array", "items": _SIZE, "minItems": 2, "maxItems": 2},
                                "sha256": _SHA256,
                                "parts": {"type": "array", "minItems": 2, "maxItems": 2,
                                          "prefixItems": [_SIZE, {"type": "integer", "minimum": 2}]},
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


class TensorRef(namedtuple("TensorRef", "name dtype shape offsets sha256 parts", defaults=(None,))):
    """One tensor of a safetensors file: offsets are relative to the start of the data region, as in the header;
    shape is a tuple of ints, offsets a (begin, end) pair. Identified by sha256 (of its bytes), or, for a large
    tensor stored in several whole parts of the file, by parts: (index of the first part, count)."""

    __slots__ = ()

    def identity(self, file_parts: tuple[PartRef, ...]) -> str | tuple[str, ...]:
        """What tells two versions of the tensor apart: its SHA-256, or the digests of the parts that hold it."""
        if self.parts is None:
            return self.sha256
        first, count = self.parts
        return tuple(p.sha256 for p in file_parts[first:first + count])

    def to_json(self) -> dict:
        doc = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "offsets": list(self.offsets)}
        if self.parts is None:
            doc["sha256"] = self.sha256
        else:
            doc["parts"] = list(self.parts)
        return doc

    @classmethod
    def from_json(cls, t: dict) -> TensorRef:
        parts = t.get("parts")
        return cls(t["name"], t["dtype"], tuple(t["shape"]), (t["offsets"][0], t["offsets"][1]), t.get("sha256"),
                   None if parts is None else (parts[0], parts[1]))


class FileEntry(namedtuple("FileEntry", "path size mode sha256 parts tensors", defaults=(None,))):
    """One file of a snapshot: parts is a tuple of PartRef; tensors a tuple of TensorRef (safetensors) or None."""

    __slots__ = ()

    def to_json(self) -> dict:
        doc = {"path": self.path, "size": self.size, "mode": self.mode, "sha256": self.sha256,
               "parts": [{"sha256": p.sha256, "size": p.size} for p in self.parts]}
        if self.tensors is not None:
            doc["tensors"] = [t.to_json() for t in self.tensors]
        return doc

    @classmethod
    def from_json(cls, doc: dict) -> FileEntry:
        tensors = doc.get("tensors")
        return cls(
            path=doc["path"], size=doc["size"], mode=doc["mode"], sha256=doc["sha256"],
            parts=tuple(PartRef(p["sha256"], p["size"]) for p in doc["parts"]),
            tensors=None if tensors is None else tuple(TensorRef.from_json(t) for t in tensors),
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
    return sha256(data).hexdigest()


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
        raise VerificationError(f"manifest {where} does not match the snapshot schema ({', '.join(FORMATS_READ)})",
                                details=problems[:20], hint="the manifest was not written by drtool, or is damaged")
    manifest = SnapshotManifest(
        model=doc["model"], version=doc["version"], created=doc["created"], source_host=doc["source_host"],
        source_path=doc["source_path"], part_size=doc["part_size"],
        files=tuple(FileEntry.from_json(f) for f in doc["files"]))
    check_consistency(manifest, where)
    return manifest


def check_relative_path(path: str, where: str) -> None:
    """A manifest path must stay inside the destination: relative, no '..', no '.' or empty components."""
    if not is_safe_path_text(path):  # the schema's PATH_PATTERN, whose `$` lets a final newline through in Python
        raise VerificationError(f"manifest {where}: unsafe path {path!r} (a control character or a backslash)",
                                hint="refusing to restore a manifest whose paths `sha256sum -c` could not read back")
    parts = path.split("/")
    if path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise VerificationError(f"manifest {where}: unsafe path {path!r} (absolute, '..', '.' or empty component)",
                                hint="refusing to restore a manifest that could write outside the destination")


def check_consistency(manifest: SnapshotManifest, where: str) -> None:
    """Rules the schema cannot say: safe unique paths, parts that add up, tensors that tile the data region."""
    if not is_model_name(manifest.model):  # as for paths: the schema's pattern lets a final newline through
        raise VerificationError(f"manifest {where}: model name {manifest.model!r} is not valid")
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
        for t in f.tensors or ():
            if t.parts is not None:
                first, count = t.parts
                held = f.parts[first:first + count]
                if len(held) != count or sum(p.size for p in held) != t.offsets[1] - t.offsets[0]:
                    raise VerificationError(f"manifest {where}: {f.path}: tensor {t.name!r} names parts "
                                            f"{first}..{first + count - 1} that do not hold its "
                                            f"{t.offsets[1] - t.offsets[0]} bytes")
        if len(f.parts) == 1 and f.parts[0].sha256 != f.sha256:
            raise VerificationError(f"manifest {where}: {f.path}: single-part file whose part digest differs "
                                    f"from the file digest ({f.parts[0].sha256} vs {f.sha256})")
    clash = sorted(seen & dirs)
    if clash:
        raise VerificationError(f"manifest {where}: {clash[0]!r} is both a file and a directory",
                                hint="refusing to restore a manifest with conflicting paths")
