"""snapshot diff: which files, and inside safetensors files which tensors, differ between two snapshots."""

from drtool.snapshot.manifest import FileEntry, SnapshotManifest, TensorRef


def _tensor_changes(a: FileEntry, b: FileEntry) -> dict | None:
    if a.tensors is None or b.tensors is None:
        return None
    ta = {t.name: t for t in a.tensors}
    tb = {t.name: t for t in b.tensors}
    changed, unknown = [], []
    for name in sorted(ta.keys() & tb.keys()):
        x, y = ta[name], tb[name]
        ix, iy = x.identity(a.parts), y.identity(b.parts)
        if (x.dtype, x.shape) == (y.dtype, y.shape) and _pieces(x, a) != _pieces(y, b):
            unknown.append(name)  # recorded two ways (a format-1 snapshot, or another part size): bytes unseen
            continue
        if (ix, x.dtype, x.shape) != (iy, y.dtype, y.shape):
            what = "data" if (x.dtype, x.shape) == (y.dtype, y.shape) else \
                f"{x.dtype}{list(x.shape)} -> {y.dtype}{list(y.shape)}"
            # "from"/"to": the tensor's SHA-256, or the digests of the parts that hold it (a large tensor)
            changed.append({"name": name, "change": what, "from": _shown(ix), "to": _shown(iy)})
    result = {"added": sorted(tb.keys() - ta.keys()), "removed": sorted(ta.keys() - tb.keys()), "changed": changed}
    if unknown:
        result["not_comparable"] = unknown
    return result


def _pieces(t: TensorRef, f: FileEntry) -> tuple[int, ...]:
    """The sizes of the pieces a tensor's record hashes: its whole size, or the sizes of the parts that hold it."""
    if t.parts is None:
        return (t.offsets[1] - t.offsets[0],)
    first, count = t.parts
    return tuple(p.size for p in f.parts[first:first + count])


def _shown(identity: str | tuple[str, ...]) -> str | list[str]:
    return identity if isinstance(identity, str) else list(identity)


def diff_manifests(a: SnapshotManifest, b: SnapshotManifest) -> dict:
    fa = {f.path: f for f in a.files}
    fb = {f.path: f for f in b.files}
    changed = []
    for path in sorted(fa.keys() & fb.keys()):
        x, y = fa[path], fb[path]
        if x.sha256 != y.sha256 or x.mode != y.mode:
            entry = {"path": path, "from": x.sha256, "to": y.sha256, "size_from": x.size, "size_to": y.size,
                     "mode_from": oct(x.mode), "mode_to": oct(y.mode)}
            if x.sha256 != y.sha256:
                tensors = _tensor_changes(x, y)
                if tensors is not None:
                    entry["tensors"] = tensors
            changed.append(entry)
    return {
        "added": [{"path": p, "size": fb[p].size, "sha256": fb[p].sha256} for p in sorted(fb.keys() - fa.keys())],
        "removed": [{"path": p, "size": fa[p].size, "sha256": fa[p].sha256} for p in sorted(fa.keys() - fb.keys())],
        "changed": changed,
        "unchanged": sum(1 for p in fa.keys() & fb.keys() if fa[p] == fb[p]),
    }
