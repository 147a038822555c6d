"""Retention: the policy keeps what restic's rules keep; prune deletes the rest and frees only unreferenced blobs."""

from __future__ import annotations

import json

from drtool.snapshot.manifest import SnapshotManifest
from drtool.snapshot.prune import RetentionPolicy, keep_reasons

from .snapshot_helpers import settle, write_random

pytest_plugins = ["tests.snapshot_fixtures"]  # the snap_env fixture (seaweed_s3 is in conftest)


def _snap(created: str) -> SnapshotManifest:
    return SnapshotManifest(model="m", version=None, created=created, source_host="h", source_path="/w",
                            part_size=1 << 24)


def test_policy_keeps_last_daily_weekly_monthly():
    times = ["2024-01-31T10:00:00.000000Z", "2024-02-26T09:00:00.000000Z", "2024-02-27T09:00:00.000000Z",
             "2024-03-04T08:00:00.000000Z", "2024-03-04T20:00:00.000000Z", "2024-03-05T07:00:00.000000Z",
             "2024-03-05T23:00:00.000000Z"]
    snaps = [(f"id{i}", _snap(t)) for i, t in enumerate(times)]
    assert set(keep_reasons(snaps, RetentionPolicy(last=2))) == {"id6", "id5"}
    assert set(keep_reasons(snaps, RetentionPolicy(daily=3))) == {"id6", "id4", "id2"}
    # ISO weeks: 2024-W10 (Mar 4-5), W09 (Feb 26-27), W05 (Jan 31)
    assert set(keep_reasons(snaps, RetentionPolicy(weekly=2))) == {"id6", "id2"}
    assert set(keep_reasons(snaps, RetentionPolicy(monthly=5))) == {"id6", "id2", "id0"}
    both = keep_reasons(snaps, RetentionPolicy(last=1, monthly=2))
    assert both == {"id6": ["last", "monthly 2024-03"], "id2": ["monthly 2024-02"]}


def _blobs(store_root) -> set[str]:
    return {p.name for p in (store_root / "blobs").rglob("*") if p.is_file()}


def test_prune_deletes_what_the_policy_drops_and_frees_only_unreferenced_blobs(snap_env):
    store_root = snap_env.tmp / "store"
    store = f"file://{store_root}"
    src = snap_env.tmp / "src"
    write_random(src / "shared.bin", 5000)
    ids, unique = [], []
    for i in range(3):
        unique.append(write_random(src / "unique.bin", 4000 + i).read_bytes())
        settle(src)
        ids.append(snap_env.json("snapshot", "create", str(src), "--store", store, "--model", "m")["id"])
    other = snap_env.json("snapshot", "create", str(src), "--store", store, "--model", "other")["id"]
    blobs_before = _blobs(store_root)
    assert len(blobs_before) == 4

    dry = snap_env.json("snapshot", "prune", "--store", store, "--model", "m", "--keep-last", "1", "--dry-run")
    assert {s["id"] for s in dry["removed"]} == {ids[0], ids[1]} and dry["blobs_deleted"] == 2
    assert _blobs(store_root) == blobs_before and len(snap_env.json("snapshot", "list", "--store", store)[
        "snapshots"]) == 4

    done = snap_env.json("snapshot", "prune", "--store", store, "--model", "m", "--keep-last", "1",
                         "--protect", ids[0][:10])
    assert {s["id"] for s in done["removed"]} == {ids[1]}
    assert {s["id"]: s["reasons"] for s in done["kept"]} == {ids[2]: ["last"], ids[0]: ["protected"]}
    assert done["blobs_deleted"] == 1 and done["bytes_freed"] == 4001
    remaining = {s["id"] for s in snap_env.json("snapshot", "list", "--store", store)["snapshots"]}
    assert remaining == {ids[0], ids[2], other}  # the other model is untouched by --model m
    for sid in remaining:
        snap_env.json("snapshot", "verify", sid, "--store", store, "--read-data")

    err = snap_env.run("snapshot", "prune", "--store", store, "--json")
    assert err.returncode == 2 and "no retention rule" in err.stdout



def test_prune_keeps_snapshots_the_registry_names(snap_env):
    """Retention never deletes what a registered model version points at, whatever the policy says."""
    from drtool.config import ObjectStore
    from drtool.model_registry.entries import Canary, ImageRef, VersionEntry
    from drtool.model_registry.registry import ModelRegistry
    from drtool.snapshot.stores import open_store

    src = snap_env.tmp / "src"
    src.mkdir()
    url = snap_env.store("file")
    ids = []
    for i in range(3):
        (src / "w.bin").write_bytes(bytes([i]) * 4096)
        res = snap_env.run("--json", "snapshot", "create", str(src), "--store", url, "--model", "m")
        assert res.returncode == 0, res.stderr
        ids.append(json.loads(res.stdout)["id"])
    store = open_store(ObjectStore(url=url))
    ModelRegistry(store, "test").put_version(VersionEntry(
        "m", "1.0.0", ImageRef("m-server", "sha256:" + "a" * 64), ids[0], Canary({}, [1.0], 0.0), "t", "t"))
    res = snap_env.run("--json", "snapshot", "prune", "--store", url, "--keep-last", "1")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    kept = {s["id"]: s["reasons"] for s in out["kept"]}
    assert set(kept) == {ids[0], ids[2]}
    assert kept[ids[0]] == ["registry: m 1.0.0"]
    assert [s["id"] for s in out["removed"]] == [ids[1]]
