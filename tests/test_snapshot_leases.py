"""Concurrency and crashes: one create per model at a time, dead runs taken over, prune and create excluding each
other, and kill -9 during create or prune never leaving a listed snapshot that points at a missing blob."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import time

from .conftest import wait_for
from .snapshot_helpers import DRTOOL, MiB, model_dir, settle, write_random

pytest_plugins = ["tests.snapshot_fixtures"]  # the snap_env fixture (seaweed_s3 is in conftest)




def _count(s3, bucket: str, prefix: str) -> int:
    return sum(page.get("KeyCount", 0) for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix))


def _lease(holder_host: str, expires_in: float, pid: int = 4242, purpose: str = "snapshot create m") -> bytes:
    return json.dumps({"purpose": purpose, "host": holder_host, "pid": pid, "boot_id": "elsewhere",
                       "started": "2024-01-01T00:00:00Z", "expires": time.time() + expires_in,
                       "token": "t" * 32}).encode()


def test_concurrent_create_exits_4_naming_holder_then_kill_9_and_rerun_uploads_only_missing_parts(snap_env):
    src = snap_env.tmp / "src"
    write_random(src / "shard.bin", 128 * MiB)
    settle(src)
    bucket = snap_env.bucket()
    store = f"s3://{bucket}/w"
    s3 = snap_env.s3()
    first = snap_env.start("snapshot", "create", str(src), "--store", store, "--model", "m", "--part-size", "1")
    try:
        wait_for(lambda: _count(s3, bucket, "w/blobs/") >= 10, what="some parts uploaded")
        os.kill(first.pid, signal.SIGSTOP)  # frozen mid-upload: alive, holding its lease
        other = model_dir(snap_env.tmp / "other")
        busy = snap_env.run("snapshot", "create", str(other), "--store", store, "--model", "m", "--json")
        assert busy.returncode == 4, busy.stdout + busy.stderr
        err = json.loads(busy.stdout)
        assert f"pid {first.pid}" in err["message"] and socket.gethostname() in err["message"]
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    finally:
        if first.poll() is None:
            first.kill()
    time.sleep(0.5)  # let requests that were in flight at the kill land (or not)
    stored = _count(s3, bucket, "w/blobs/")
    assert 10 <= stored < 128, "the kill must land while parts are being uploaded"
    assert snap_env.json("snapshot", "list", "--store", store)["snapshots"] == []

    # The dead run's lease names a pid that no longer exists on this host: taken over at once.
    rerun = snap_env.json("snapshot", "create", str(src), "--store", store, "--model", "m", "--part-size", "1")
    assert rerun["blobs_present"] == stored and rerun["blobs_uploaded"] == 128 - stored
    assert rerun["bytes_uploaded"] == (128 - stored) * MiB
    assert [s["id"] for s in snap_env.json("snapshot", "list", "--store", store)["snapshots"]] == [rerun["id"]]
    snap_env.json("snapshot", "verify", rerun["id"], "--store", store)


def test_expired_lease_is_taken_over_and_a_live_one_is_waited_for(snap_env):
    src = model_dir(snap_env.tmp / "src")
    store_root = snap_env.tmp / "store"
    store = f"file://{store_root}"
    lease = store_root / "leases" / "m.json"
    lease.parent.mkdir(parents=True)
    lease.write_bytes(_lease("dead-host", expires_in=-5))
    snap_env.json("snapshot", "create", str(src), "--store", store, "--model", "m")
    assert not lease.exists()

    lease.write_bytes(_lease("busy-host", expires_in=300))
    err = json.loads(snap_env.run("snapshot", "create", str(src), "--store", store, "--model", "m", "--json").stdout)
    assert err["exit_code"] == 4 and "busy-host" in err["message"] and "pid 4242" in err["message"]

    lease.write_bytes(_lease("slow-host", expires_in=1.5))
    t0 = time.monotonic()
    snap_env.json("snapshot", "create", str(src), "--store", store, "--model", "m", "--wait", "20")
    assert time.monotonic() - t0 >= 1.0
    assert len(snap_env.json("snapshot", "list", "--store", store)["snapshots"]) == 2


def test_prune_and_create_exclude_each_other(snap_env):
    src = model_dir(snap_env.tmp / "src")
    store_root = snap_env.tmp / "store"
    store = f"file://{store_root}"
    snap_env.json("snapshot", "create", str(src), "--store", store, "--model", "m")
    leases = store_root / "leases"

    (leases / "other-model.json").write_bytes(_lease("gpu-7", expires_in=300, purpose="snapshot create other-model"))
    err = json.loads(snap_env.run("snapshot", "prune", "--store", store, "--keep-last", "1", "--json").stdout)
    assert err["exit_code"] == 4 and "gpu-7" in err["message"] and "other-model" in err["message"]
    assert not (leases / "_prune.json").exists()  # it backed off
    dry = snap_env.json("snapshot", "prune", "--store", store, "--keep-last", "1", "--dry-run")  # reads only
    assert dry["removed"] == []
    (leases / "other-model.json").unlink()

    (leases / "_prune.json").write_bytes(_lease("ops-box", expires_in=300, purpose="snapshot prune"))
    err = json.loads(snap_env.run("snapshot", "create", str(src), "--store", store, "--model", "m", "--json").stdout)
    assert err["exit_code"] == 4 and "snapshot prune" in err["message"] and "ops-box" in err["message"]
    assert not (leases / "m.json").exists()


def _blob_key(prefix: str, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    return f"{prefix}/blobs/sha256/{digest[:2]}/{digest}"


def test_kill_9_during_prune_never_leaves_a_manifest_pointing_at_a_missing_blob(snap_env):
    bucket = snap_env.bucket()
    store = f"s3://{bucket}/w"
    s3 = snap_env.s3()
    src = snap_env.tmp / "src"
    ids = []
    for i in range(2):
        write_random(src / "changing.bin", 2000 + i)
        write_random(src / f"extra-{i}.bin", 3000)
        settle(src)
        ids.append(snap_env.json("snapshot", "create", str(src), "--store", store, "--model", "m")["id"])
    # Leftovers of crashed creates: blobs no manifest references. They make the sweep long enough to kill.
    for n in range(200):
        data = f"orphan {n}".encode()
        s3.put_object(Bucket=bucket, Key=_blob_key("w", data), Body=data)
    before = _count(s3, bucket, "w/blobs/")

    pruner = snap_env.start("snapshot", "prune", "--store", store, "--keep-last", "1")
    try:
        wait_for(lambda: _count(s3, bucket, "w/blobs/") < before - 20, what="the sweep to start")
        os.kill(pruner.pid, signal.SIGKILL)
        pruner.wait()
    finally:
        if pruner.poll() is None:
            pruner.kill()
    assert pruner.returncode == -signal.SIGKILL, "the kill must land while the sweep runs"
    time.sleep(0.5)  # let deletes that were in flight at the kill land (or not)
    left = _count(s3, bucket, "w/blobs/")
    listed = [s["id"] for s in snap_env.json("snapshot", "list", "--store", store)["snapshots"]]
    assert listed == [ids[-1]]
    for sid in listed:  # every remaining manifest's blobs are all there
        snap_env.json("snapshot", "verify", sid, "--store", store)

    finished = snap_env.json("snapshot", "prune", "--store", store, "--keep-last", "1")
    assert finished["removed"] == [] and finished["blobs_deleted"] == left - _count(s3, bucket, "w/blobs/")
    assert _count(s3, bucket, "w/blobs/") == 3  # the kept snapshot: changing.bin, extra-0, extra-1


def test_busy_message_names_the_lease_the_holder_holds(snap_env):
    src = model_dir(snap_env.tmp / "src")
    store_root = snap_env.tmp / "store"
    store = f"file://{store_root}"
    snap_env.json("snapshot", "create", str(src), "--store", store, "--model", "m")
    leases = store_root / "leases"

    (leases / "_prune.json").write_bytes(_lease("ops-box", expires_in=300, purpose="snapshot prune"))
    err = json.loads(snap_env.run("snapshot", "create", str(src), "--store", store, "--model", "m", "--json").stdout)
    assert err["exit_code"] == 4
    assert "holds leases/_prune.json" in err["message"] and "leases/m.json" not in err["message"]
    (leases / "_prune.json").unlink()

    (leases / "other.json").write_bytes(_lease("gpu-7", expires_in=300, purpose="snapshot create other"))
    err = json.loads(snap_env.run("snapshot", "prune", "--store", store, "--keep-last", "1", "--json").stdout)
    assert err["exit_code"] == 4
    assert "holds leases/other.json" in err["message"] and "_prune" not in err["message"]

    # The run's own lease, held by a live create of the same model, is still the one named.
    (leases / "other.json").unlink()
    (leases / "m.json").write_bytes(_lease("gpu-8", expires_in=300))
    err = json.loads(snap_env.run("snapshot", "create", str(src), "--store", store, "--model", "m", "--json").stdout)
    assert err["exit_code"] == 4 and "holds leases/m.json" in err["message"]


def _wait_exited_unreaped(pid: int) -> None:
    """Block until the child `pid` has exited, leaving it a zombie (WNOWAIT: its parent has not reaped it)."""
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    with open(f"/proc/{pid}/stat", "rb") as f:
        assert f.read().rpartition(b")")[2].split()[0] == b"Z"


def test_a_killed_create_its_parent_has_not_reaped_is_taken_over_at_once(snap_env, monkeypatch):
    from drtool.snapshot.cache import IncrementalCache

    src = model_dir(snap_env.tmp / "src")
    store_root = snap_env.tmp / "store"
    store = f"file://{store_root}"
    # The first create takes its lease, then opens its incremental cache: a FIFO here, so it blocks there, holding
    # the lease, until it is killed (no timing involved).
    held_cache = snap_env.tmp / "held-cache"
    monkeypatch.setenv("DRTOOL_CACHE_DIR", str(held_cache))
    fifo = IncrementalCache(store, "m", os.path.realpath(src), 16 * MiB).path
    os.makedirs(os.path.dirname(fifo))
    os.mkfifo(fifo)
    first = subprocess.Popen([DRTOOL, "snapshot", "create", str(src), "--store", store, "--model", "m", "--json"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env={**snap_env.vars, "DRTOOL_CACHE_DIR": str(held_cache)})
    try:
        lease = store_root / "leases" / "m.json"
        wait_for(lambda: lease.exists() and json.loads(lease.read_bytes() or b"{}").get("pid") == first.pid,
                 what="the first create to hold its lease")
        os.kill(first.pid, signal.SIGKILL)
        _wait_exited_unreaped(first.pid)

        t0 = time.monotonic()
        rerun = snap_env.json("snapshot", "create", str(src), "--store", store, "--model", "m")  # --wait 0
        assert rerun["files"] == 4
        assert time.monotonic() - t0 < 60  # not the lease's expiry (120 s)
        assert not lease.exists()
    finally:
        first.kill()
        first.wait()
