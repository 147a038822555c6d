"""safetensors files are cut into parts at their large tensors (drtool.snapshot.safetensors.part_plan): a large
tensor's parts hold exactly its bytes, identify it in the manifest and in `diff`, and stay the same blobs when the
header or another tensor changes. Real files written by the safetensors library, snapshots through the CLI."""

from __future__ import annotations

import hashlib
import json
import subprocess

import pytest
import torch
from safetensors.torch import save_file

from drtool.errors import VerificationError
from drtool.snapshot.manifest import canonical_json, parse_manifest, snapshot_id
from drtool.snapshot.safetensors import ALIGNED_TENSOR_MIN, SafetensorsLayout, TensorSpan, part_plan

from .snapshot_helpers import MiB, settle

pytest_plugins = ["tests.snapshot_fixtures"]


def _layout(sizes: list[int], header: int = 1000) -> SafetensorsLayout:
    spans, pos = [], 0
    for i, n in enumerate(sizes):
        spans.append(TensorSpan(f"t{i}", "U8", (n,), pos, pos + n))
        pos += n
    return SafetensorsLayout(8 + header, tuple(spans))


@pytest.mark.parametrize("sizes", [
    [8192, 5 * MiB + 3, 8192, 8192, 2 * MiB, 100, 3 * MiB],  # large tensors between runs of small ones
    [3 * MiB] * 4,  # large only, each a multiple of the part size
    [1000] * 50,  # small only: the file is cut as any other
    [ALIGNED_TENSOR_MIN, ALIGNED_TENSOR_MIN - 1, 0, ALIGNED_TENSOR_MIN + 1],  # at the threshold; an empty tensor
])
def test_part_plan_covers_the_file_and_gives_large_tensors_their_own_parts(sizes):
    part = 1 * MiB
    layout = _layout(sizes)
    file_size = layout.data_start + sum(sizes)
    plan, aligned = part_plan(layout, file_size, part)
    assert sum(plan) == file_size and all(0 < s <= part for s in plan)
    starts = [sum(plan[:i]) for i in range(len(plan))]
    for span in layout.tensors:
        n = span.end - span.begin
        if n < ALIGNED_TENSOR_MIN:
            assert span.name not in aligned
            continue
        first, count = aligned[span.name]
        assert starts[first] == layout.data_start + span.begin  # the tensor begins a part
        assert sum(plan[first:first + count]) == n  # and its parts end where it ends
        assert count == -(-n // part)


def _model(path, big_scale: float = 1.0, metadata: dict | None = None) -> None:
    torch.manual_seed(0)
    tensors = {"embed.weight": torch.randn(1024, 768),  # 3 MiB: three 1 MiB parts
               "layers.0.mlp.weight": torch.randn(512, 1024) * big_scale,  # 2 MiB: two parts
               "layers.0.norm.weight": torch.ones(768),  # small: hashed apart
               "layers.0.norm.bias": torch.zeros(768, dtype=torch.bfloat16),
               "lm_head.weight": torch.randn(256, 1024)}  # 1 MiB: one part, whose digest is its SHA-256
    save_file(tensors, str(path), metadata=metadata)


def _tensor_bytes(path) -> dict[str, bytes]:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    return {k: raw[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]] for k, v in header.items()
            if k != "__metadata__"}


def _create(snap_env, src, store) -> dict:
    return snap_env.json("snapshot", "create", str(src), "--store", store, "--model", "m", "--part-size", "1",
                         "--recheck-share", "0")


def _entry(snap_env, snapshot, store) -> dict:
    shown = snap_env.json("snapshot", "show", snapshot, "--store", store)
    return next(f for f in shown["manifest"]["files"] if f["path"] == "model.safetensors")


def test_large_tensors_are_recorded_by_parts_that_hold_exactly_their_bytes(snap_env):
    src = snap_env.tmp / "src"
    src.mkdir()
    _model(src / "model.safetensors")
    settle(src)
    store = snap_env.store("file")
    created = _create(snap_env, src, store)
    entry = _entry(snap_env, created["id"], store)
    data = _tensor_bytes(src / "model.safetensors")
    by_name = {t["name"]: t for t in entry["tensors"]}
    assert by_name["embed.weight"]["parts"][1] == 3 and by_name["layers.0.mlp.weight"]["parts"][1] == 2
    for name, t in by_name.items():
        if "parts" in t:
            first, count = t["parts"]
            held = b"".join((snap_env.tmp / "store" / "blobs" / "sha256" / p["sha256"][:2] / p["sha256"]).read_bytes()
                            for p in entry["parts"][first:first + count])
            assert held == data[name], name  # the parts' bytes are the tensor's, nothing more
            assert "sha256" not in t
        else:
            assert t["sha256"] == hashlib.sha256(data[name]).hexdigest(), name
    assert "parts" not in by_name["lm_head.weight"]  # one part: recorded by its SHA-256, the part's digest
    assert all(p["size"] <= MiB for p in entry["parts"])
    assert entry["sha256"] == hashlib.sha256((src / "model.safetensors").read_bytes()).hexdigest()

    dest = snap_env.tmp / "dest"
    snap_env.json("snapshot", "restore", created["id"], str(dest), "--store", store)
    sums = snap_env.run("snapshot", "sums", created["id"], "--store", store)
    check = subprocess.run(["sha256sum", "-c", "--strict", "-"], input=sums.stdout, capture_output=True, text=True,
                           cwd=dest)
    assert check.returncode == 0, check.stdout + check.stderr


def test_diff_names_a_changed_large_tensor_and_a_header_edit_reuploads_no_tensor(snap_env):
    src = snap_env.tmp / "src"
    src.mkdir()
    weights = src / "model.safetensors"
    _model(weights)
    settle(src)
    store = snap_env.store("file")
    a = _create(snap_env, src, store)

    _model(weights, big_scale=2.0)
    settle(src)
    b = _create(snap_env, src, store)
    diff = snap_env.json("snapshot", "diff", a["id"], b["id"], "--store", store)
    tensors = diff["changed"][0]["tensors"]
    assert [c["name"] for c in tensors["changed"]] == ["layers.0.mlp.weight"]
    assert len(tensors["changed"][0]["from"]) == 2 and tensors["changed"][0]["from"] != tensors["changed"][0]["to"]
    assert b["bytes_uploaded"] < 3 * MiB  # the changed tensor's two parts and the header's; not the rest

    _model(weights, big_scale=2.0, metadata={"note": "the header grows: every tensor moves"})
    settle(src)
    c = _create(snap_env, src, store)
    assert c["bytes_uploaded"] < 64 * 1024  # the header and the small tensors; the large tensors' blobs are kept
    diff = snap_env.json("snapshot", "diff", b["id"], c["id"], "--store", store)
    tensors = diff["changed"][0]["tensors"]
    assert tensors == {"added": [], "removed": [], "changed": []}


def _manifest_bytes(tensor: dict, parts: list[dict], fmt: str = "drtool.snapshot/2") -> bytes:
    size = sum(p["size"] for p in parts)
    return canonical_json({
        "format": fmt, "model": "m", "version": None, "created": "2026-12-02T00:00:00.000000Z",
        "source_host": "h", "source_path": "/w", "part_size": MiB,
        "files": [{"path": "model.safetensors", "size": size, "mode": 0o644, "sha256": "a" * 64, "parts": parts,
                   "tensors": [tensor]}]})


def test_a_tensor_naming_parts_that_do_not_hold_it_is_refused_and_format_1_is_still_read():
    parts = [{"sha256": "b" * 64, "size": 100}, {"sha256": "c" * 64, "size": MiB}, {"sha256": "d" * 64, "size": MiB}]
    good = {"name": "w", "dtype": "U8", "shape": [2 * MiB], "offsets": [0, 2 * MiB], "parts": [1, 2]}
    data = _manifest_bytes(good, parts)
    manifest = parse_manifest(data, snapshot_id(data), "test")
    t = manifest.files[0].tensors[0]
    assert t.identity(manifest.files[0].parts) == ("c" * 64, "d" * 64)
    for bad in ({**good, "parts": [0, 2]}, {**good, "parts": [2, 2]}):
        data = _manifest_bytes(bad, parts)
        with pytest.raises(VerificationError, match="do not hold"):
            parse_manifest(data, snapshot_id(data), "test")
    data = _manifest_bytes({**good, "sha256": "e" * 64}, parts)  # both ways at once: not one of the two forms
    with pytest.raises(VerificationError, match="schema"):
        parse_manifest(data, snapshot_id(data), "test")
    old = {"name": "w", "dtype": "U8", "shape": [2 * MiB], "offsets": [0, 2 * MiB], "sha256": "e" * 64}
    data = _manifest_bytes(old, parts, fmt="drtool.snapshot/1")
    assert parse_manifest(data, snapshot_id(data), "test").files[0].tensors[0].sha256 == "e" * 64
