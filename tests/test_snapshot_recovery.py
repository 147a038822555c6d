"""Recovering from damage and crashes: a restore killed with SIGKILL leaves temp files that the next restore into
the same DEST removes; a damaged blob already in the store is replaced by the next create that reads its file."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .snapshot_helpers import DRTOOL, MiB, model_dir, settle, write_random

pytest_plugins = ["tests.snapshot_fixtures"]  # the snap_env fixture (seaweed_s3 is in conftest)

TEMP_PREFIX = ".drtool-restore-"


def _temps(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob(f"{TEMP_PREFIX}*"))


def _tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in root.rglob("*") if p.is_file()}


def _kill_restore_midway(snap_env, snapshot_id: str, store: str, dest: Path) -> list[Path]:
    """Start a real `drtool snapshot restore` and SIGKILL it as soon as it has temp files in DEST; the temps left."""
    for _ in range(5):
        proc = subprocess.Popen([DRTOOL, "snapshot", "restore", snapshot_id, str(dest), "--store", store, "--json"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=snap_env.vars)
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            if dest.is_dir() and _temps(dest):
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
        proc.wait()
        left = _temps(dest)
        if proc.returncode == -signal.SIGKILL and left:
            return left
    pytest.fail("could not kill a restore while it had temp files in DEST")


def test_restore_after_sigkill_removes_leftover_temps_and_dest_verifies(snap_env):
    src = snap_env.tmp / "src"
    for i in range(24):
        write_random(src / f"shard-{i:02d}.bin", 6 * MiB + i)
    write_random(src / "sub" / "small.bin", 1000)
    settle(src)
    store = snap_env.store("file")
    created = snap_env.json("snapshot", "create", str(src), "--store", store, "--model", "m")
    dest = snap_env.tmp / "dest"

    left = _kill_restore_midway(snap_env, created["id"], store, dest)
    assert all(p.name.startswith(f"{TEMP_PREFIX}") and p.is_file() for p in left)

    # A snapshot of a directory holding such leftovers neither includes nor lists them.
    marker = dest / "sub" / "marker.txt"
    marker.parent.mkdir(exist_ok=True)
    marker.write_text("not from the snapshot\n")
    again = snap_env.json("snapshot", "create", str(dest), "--store", store, "--model", "of-dest")
    shown = snap_env.json("snapshot", "show", again["id"], "--store", store)
    assert not [f for f in shown["manifest"]["files"] if TEMP_PREFIX in f["path"]]
    assert not [s for s in again["skipped"] if TEMP_PREFIX in s]
    assert [f["path"] for f in shown["manifest"]["files"]] == ["sub/marker.txt"]
    marker.unlink()

    result = snap_env.json("snapshot", "restore", created["id"], str(dest), "--store", store)
    assert result["leftover_temps_removed"] >= len(left)
    assert _temps(dest) == []
    assert _tree(dest) == _tree(src)
    sums = snap_env.json("snapshot", "sums", created["id"], "--store", store)["lines"]
    check = subprocess.run(["sha256sum", "--quiet", "-c"], input="\n".join(sums) + "\n", text=True, cwd=dest,
                           capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_restore_keeps_temps_of_a_restore_that_is_still_running(snap_env):
    src = model_dir(snap_env.tmp / "src")
    store = snap_env.store("file")
    created = snap_env.json("snapshot", "create", str(src), "--store", store, "--model", "m")
    dest = snap_env.tmp / "dest"
    (dest / "tokenizer").mkdir(parents=True)
    live = dest / "tokenizer" / f"{TEMP_PREFIX}{os.getppid()}-0123456789abcdef"  # pytest's parent: alive
    dead = dest / f"{TEMP_PREFIX}99999999-0123456789abcdef"  # above pid_max: never a live process
    live.write_bytes(b"in progress")
    dead.write_bytes(b"half a file")
    result = snap_env.json("snapshot", "restore", created["id"], str(dest), "--store", store)
    assert result["leftover_temps_removed"] == 1
    assert live.exists() and not dead.exists()


def _blob_path(store_url: str, digest: str) -> Path:
    return Path(store_url.removeprefix("file://")) / "blobs" / "sha256" / digest[:2] / digest


@pytest.mark.parametrize("kind", ["file", "s3"])
def test_create_replaces_a_damaged_small_blob(snap_env, kind):
    src = model_dir(snap_env.tmp / "src")
    store = snap_env.store(kind)
    first = snap_env.json("snapshot", "create", str(src), "--store", store, "--model", "m", "--recheck-share", "0")
    manifest = snap_env.json("snapshot", "show", first["id"], "--store", store)["manifest"]
    small = next(f for f in manifest["files"] if f["path"] == "tokenizer/vocab.bin")["parts"][0]["sha256"]

    def damage(truncate: bool) -> None:
        if kind == "file":
            path = _blob_path(store, small)
            data = bytearray(path.read_bytes())
            data[100] ^= 0xFF
            path.write_bytes(data[:-1] if truncate else data)
        else:
            bucket, prefix = store.removeprefix("s3://").split("/", 1)
            key = f"{prefix}/blobs/sha256/{small[:2]}/{small}"
            s3 = snap_env.s3()
            data = bytearray(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
            data[100] ^= 0xFF
            s3.put_object(Bucket=bucket, Key=key, Body=bytes(data[:-1] if truncate else data))

    # Same size, one byte flipped: found by the re-check share, which re-hashes the stored copies of its files.
    damage(truncate=False)
    snap_env.json("snapshot", "verify", first["id"], "--store", store, "--read-data", code=3)
    again = snap_env.json("snapshot", "create", str(src), "--store", store, "--model", "m", "--recheck-share", "1")
    assert again["blobs_repaired"] == 1
    assert snap_env.json("snapshot", "verify", first["id"], "--store", store, "--read-data")["ok"]

    # Wrong size: any create that reads the file replaces it (here a new host: no incremental cache).
    damage(truncate=True)
    snap_env.json("snapshot", "verify", first["id"], "--store", store, "--read-data", code=3)
    snap_env.vars["DRTOOL_CACHE_DIR"] = str(snap_env.tmp / "other-cache")
    again = snap_env.json("snapshot", "create", str(src), "--store", store, "--model", "m", "--recheck-share", "0")
    assert again["blobs_repaired"] == 1
    assert snap_env.json("snapshot", "verify", first["id"], "--store", store, "--read-data")["ok"]


def test_restore_removes_temps_of_a_killed_restore_its_parent_has_not_reaped(snap_env):
    src = model_dir(snap_env.tmp / "src")
    store = snap_env.store("file")
    created = snap_env.json("snapshot", "create", str(src), "--store", store, "--model", "m")
    dest = snap_env.tmp / "dest"
    dest.mkdir()
    killed = subprocess.Popen(["sleep", "600"])
    try:
        killed.kill()
        os.waitid(os.P_PID, killed.pid, os.WEXITED | os.WNOWAIT)  # exited, left a zombie: not reaped
        zombie_temp = dest / f"{TEMP_PREFIX}{killed.pid}-0123456789abcdef"
        zombie_temp.write_bytes(b"half a file")
        result = snap_env.json("snapshot", "restore", created["id"], str(dest), "--store", store)
        assert result["leftover_temps_removed"] == 1
        assert not zombie_temp.exists()
    finally:
        killed.wait()
