"""Snapshots end to end through the CLI, on a directory store and on S3 (SeaweedFS over HTTP): create, list, show,
restore byte-exact, sums for sha256sum -c, dedupe, incremental re-runs, safetensors diff, replicate."""

from __future__ import annotations

import filecmp
import subprocess

import pytest
import torch
from safetensors.torch import save_file

from .snapshot_helpers import MiB, model_dir, settle, write_random

pytest_plugins = ["tests.snapshot_fixtures"]  # the snap_env fixture (seaweed_s3 is in conftest)


def _same_tree(a, b) -> None:
    left = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    right = sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    assert left == right
    for rel in left:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
        assert (a / rel).stat().st_mode == (b / rel).stat().st_mode, rel


@pytest.mark.parametrize("kind", ["file", "s3"])
def test_create_list_show_restore_round_trip(snap_env, kind):
    src = model_dir(snap_env.tmp / "src")
    (src / "config.json").chmod(0o640)
    store = snap_env.store(kind)
    created = snap_env.json("snapshot", "create", str(src), "--store", store, "--model", "llama", "--version", "v1",
                            "--part-size", "1")
    total = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
    assert created["files"] == 4 and created["bytes_total"] == total
    assert created["bytes_read"] == total and created["bytes_uploaded"] == total
    assert created["seconds"] >= 0 and len(created["id"]) == 64

    listed = snap_env.json("snapshot", "list", "--store", store)
    assert [s["id"] for s in listed["snapshots"]] == [created["id"]]
    assert listed["snapshots"][0]["version"] == "v1"

    shown = snap_env.json("snapshot", "show", created["id"][:10], "--store", store)
    shard = next(f for f in shown["manifest"]["files"] if f["path"].startswith("model-"))
    assert len(shard["parts"]) == 4 and sum(p["size"] for p in shard["parts"]) == shard["size"]

    verified = snap_env.json("snapshot", "verify", created["id"][:8], "--store", store, "--read-data")
    assert verified["ok"] and verified["bytes_read"] == total

    dest = snap_env.tmp / "dest"
    restored = snap_env.json("snapshot", "restore", created["id"], str(dest), "--store", store)
    assert restored["files"] == 4
    _same_tree(src, dest)
    assert not [p for p in dest.rglob(".drtool-restore-*")]

    sums = snap_env.run("snapshot", "sums", created["id"], "--store", store)
    assert sums.returncode == 0, sums.stderr
    check = subprocess.run(["sha256sum", "--strict", "-c", "-"], input=sums.stdout, cwd=dest, capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.count(": OK") == 4


def test_second_snapshot_uploads_only_changed_parts_and_other_models_dedupe(snap_env):
    src = snap_env.tmp / "src"
    shard = write_random(src / "shard.bin", 8 * MiB)
    write_random(src / "small.bin", 1000)
    settle(src)
    store = snap_env.store("file")
    # --recheck-share 0: otherwise a file in today's re-check bucket is read again although unchanged (small.bin is
    # in it one UTC day in seven, when the second run read 8 MiB + 1000 bytes).
    args = ("snapshot", "create", str(src), "--store", store, "--part-size", "1", "--recheck-share", "0")
    first = snap_env.json(*args, "--model", "m")
    assert first["blobs_uploaded"] == 9

    with open(shard, "r+b") as f:  # change one byte in the fourth part
        f.seek(3 * MiB + 5)
        byte = f.read(1)[0]
        f.seek(3 * MiB + 5)  # back: after the read, a write would land on the next byte (unchanged 1 time in 256)
        f.write(bytes([byte ^ 0xFF]))
    second = snap_env.json(*args, "--model", "m")
    assert second["bytes_uploaded"] == 1 * MiB and second["blobs_uploaded"] == 1
    assert second["bytes_read"] == 8 * MiB  # only the changed file was read again

    other = snap_env.json(*args, "--model", "m-copy")
    assert other["bytes_uploaded"] == 0 and other["blobs_present"] == 9
    blobs = [p for p in (snap_env.tmp / "store" / "blobs").rglob("*") if p.is_file()]
    assert len(blobs) == 10


@pytest.mark.parametrize("kind", ["file", "s3"])
def test_unchanged_rerun_reads_nothing_and_recheck_share_rereads(snap_env, kind):
    src = model_dir(snap_env.tmp / "src")
    store = snap_env.store(kind)
    args = ("snapshot", "create", str(src), "--store", store, "--model", "m", "--recheck-share", "0")
    first = snap_env.json(*args)
    again = snap_env.json(*args)
    assert again["bytes_read"] == 0 and again["files_cached"] == 4 and again["bytes_uploaded"] == 0
    assert again["id"] != first["id"]  # a new snapshot (new time), same content
    everything = snap_env.json("snapshot", "create", str(src), "--store", store, "--model", "m",
                               "--recheck-share", "1")
    assert everything["bytes_read"] >= everything["bytes_total"] and everything["recheck_mismatches"] == []


def test_blobs_freed_by_prune_are_uploaded_again_although_the_cache_knows_the_file(snap_env):
    src = model_dir(snap_env.tmp / "src")
    other = model_dir(snap_env.tmp / "other")
    store = snap_env.store("file")
    snap_env.json("snapshot", "create", str(src), "--store", store, "--model", "m", "--recheck-share", "0")
    snap_env.json("snapshot", "create", str(other), "--store", store, "--model", "m")
    pruned = snap_env.json("snapshot", "prune", "--store", store, "--keep-last", "1")
    assert pruned["blobs_deleted"] == 2  # shard and vocab; config.json is the same in both
    again = snap_env.json("snapshot", "create", str(src), "--store", store, "--model", "m", "--recheck-share", "0")
    freed = (src / "model-00001-of-00001.bin").stat().st_size + (src / "tokenizer" / "vocab.bin").stat().st_size
    assert again["files_cached"] == 2 and again["bytes_read"] == freed and again["bytes_uploaded"] == freed
    snap_env.json("snapshot", "verify", again["id"], "--store", store, "--read-data")


def _weights(scale: float) -> dict:
    torch.manual_seed(0)
    return {"embed.weight": torch.randn(64, 32), "layers.0.attn.weight": torch.randn(32, 32) * scale,
            "layers.0.norm.bias": torch.zeros(32, dtype=torch.bfloat16), "lm_head.weight": torch.randn(32, 64)}


def test_diff_names_the_changed_tensor(snap_env):
    src = snap_env.tmp / "src"
    src.mkdir()
    save_file(_weights(1.0), str(src / "model.safetensors"))
    (src / "config.json").write_text("{}")
    settle(src)
    store = snap_env.store("file")
    a = snap_env.json("snapshot", "create", str(src), "--store", store, "--model", "m", "--version", "1")
    shown = snap_env.json("snapshot", "show", a["id"], "--store", store)
    tensors = next(f for f in shown["manifest"]["files"] if f["path"] == "model.safetensors")["tensors"]
    assert [t["name"] for t in tensors] == sorted(_weights(1.0))

    save_file(_weights(2.0), str(src / "model.safetensors"))
    b = snap_env.json("snapshot", "create", str(src), "--store", store, "--model", "m", "--version", "2")
    diff = snap_env.json("snapshot", "diff", a["id"][:12], b["id"][:12], "--store", store)
    assert [c["path"] for c in diff["changed"]] == ["model.safetensors"] and diff["unchanged"] == 1
    tensors = diff["changed"][0]["tensors"]
    assert [c["name"] for c in tensors["changed"]] == ["layers.0.attn.weight"]
    assert tensors["added"] == [] and tensors["removed"] == []
    table = snap_env.run("snapshot", "diff", a["id"], b["id"], "--store", store)
    assert "layers.0.attn.weight" in table.stdout


def test_replicate_to_s3_then_restore_there(snap_env):
    src = model_dir(snap_env.tmp / "src")
    primary = snap_env.store("file")
    dr = snap_env.store("s3")
    created = snap_env.json("snapshot", "create", str(src), "--store", primary, "--model", "m", "--part-size", "1")
    copied = snap_env.json("snapshot", "replicate", created["id"][:8], "--from", primary, "--to", dr)
    assert copied["id"] == created["id"] and copied["blobs_copied"] == 6
    again = snap_env.json("snapshot", "replicate", created["id"], "--from", primary, "--to", dr)
    assert again["blobs_copied"] == 0 and again["bytes_copied"] == 0
    assert [s["id"] for s in snap_env.json("snapshot", "list", "--store", dr)["snapshots"]] == [created["id"]]
    snap_env.json("snapshot", "restore", created["id"], str(snap_env.tmp / "dest"), "--store", dr)
    _same_tree(src, snap_env.tmp / "dest")


def test_restore_over_an_existing_tree_replaces_files(snap_env):
    src = model_dir(snap_env.tmp / "src")
    store = snap_env.store("file")
    created = snap_env.json("snapshot", "create", str(src), "--store", store, "--model", "m")
    dest = snap_env.tmp / "dest"
    write_random(dest / "config.json", 10)
    (dest / "keep.txt").write_text("not in the snapshot")
    snap_env.json("snapshot", "restore", created["id"], str(dest), "--store", store)
    assert filecmp.cmp(src / "config.json", dest / "config.json", shallow=False)
    assert (dest / "keep.txt").read_text() == "not in the snapshot"
