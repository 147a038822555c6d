"""A blob damaged in a store (the same name, other bytes of the same length) is found by replicate (and so by `drtool
backup`, which replicates) and by create, repaired in the same run, and named; and a real S3 server's refusals (a body
that does not match its checksum) reach the operator as clear errors naming store, bucket and key."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess

import pytest

from .s3_proxy import S3Proxy
from .snapshot_helpers import DRTOOL, MiB, settle, write_random

pytest_plugins = ["tests.snapshot_fixtures"]  # the snap_env fixture (seaweed_s3 is in conftest)


def _model(root, seed: int):
    write_random(root / "model.bin", 3 * MiB + 17)
    write_random(root / "tokenizer.bin", 200_000)
    (root / "config.json").write_text(json.dumps({"seed": seed}) + "\n")
    settle(root)
    return root


def _parts(snap_env, snapshot_id: str, store: str) -> dict[str, int]:
    manifest = snap_env.json("snapshot", "show", snapshot_id, "--store", store)["manifest"]
    return {p["sha256"]: p["size"] for f in manifest["files"] for p in f["parts"]}


def _overwrite_s3(snap_env, store: str, digest: str, size: int, sha256_checksum: bool) -> None:
    """Random bytes of the same length under the blob's key, straight through boto3 (as a bad tool or a bad disk
    would leave it). With sha256_checksum the upload carries the new bytes' own SHA-256 (the server keeps it); without,
    boto3's default CRC32 only."""
    bucket, prefix = store[len("s3://"):].split("/", 1)
    extra = {"ChecksumAlgorithm": "SHA256"} if sha256_checksum else {}
    snap_env.s3().put_object(Bucket=bucket, Key=f"{prefix}/blobs/sha256/{digest[:2]}/{digest}",
                             Body=os.urandom(size), **extra)


@pytest.mark.parametrize("sha256_checksum", [True, False], ids=["overwritten-with-sha256", "overwritten-crc32-only"])
def test_replicate_repairs_a_blob_damaged_in_the_s3_target_and_the_new_snapshot_verifies(snap_env, sha256_checksum):
    src = _model(snap_env.tmp / "src", seed=1)
    source, target = snap_env.store("file"), snap_env.store("s3")
    first = snap_env.json("snapshot", "create", str(src), "--store", source, "--model", "m", "--part-size", "1")
    snap_env.json("snapshot", "replicate", first["id"], "--from", source, "--to", target)
    parts = _parts(snap_env, first["id"], source)
    damaged = hashlib.sha256((src / "model.bin").read_bytes()[MiB:2 * MiB]).hexdigest()  # the second part
    assert damaged in parts
    _overwrite_s3(snap_env, target, damaged, parts[damaged], sha256_checksum)

    (src / "config.json").write_text('{"seed": 2}\n')  # a new snapshot that needs every other blob again
    settle(src)
    second = snap_env.json("snapshot", "create", str(src), "--store", source, "--model", "m", "--part-size", "1")
    copied = snap_env.json("snapshot", "replicate", second["id"], "--from", source, "--to", target)
    assert (copied["blobs_repaired"], copied["repaired"]) == (1, [damaged])
    assert copied["blobs_copied"] == 2  # the damaged blob and the new config.json
    checks = copied["blobs_checked"]
    # SeaweedFS keeps each upload's SHA-256: every present blob is checked by a HEAD, none read back, except the
    # overwritten one when its writer sent only a CRC32 (it is then read back and hashed).
    assert checks == ({"by_checksum": len(parts) - 1, "by_reading": 0, "by_size": 1} if sha256_checksum else
                      {"by_checksum": len(parts) - 2, "by_reading": 1, "by_size": 1})
    verified = snap_env.json("snapshot", "verify", second["id"], "--store", target, "--read-data")
    assert verified["ok"] and verified["mode"] == "read-data"
    again = snap_env.json("snapshot", "replicate", second["id"], "--from", source, "--to", target)
    assert (again["blobs_repaired"], again["blobs_copied"], again["blobs_checked"]["by_reading"]) == (0, 0, 0)


def test_replicate_repairs_a_blob_damaged_in_a_directory_target(snap_env):
    src = _model(snap_env.tmp / "src", seed=1)
    source = snap_env.store("s3")
    target_root = snap_env.tmp / "dr-store"
    target = f"file://{target_root}"
    first = snap_env.json("snapshot", "create", str(src), "--store", source, "--model", "m", "--part-size", "1")
    snap_env.json("snapshot", "replicate", first["id"], "--from", source, "--to", target)
    damaged = hashlib.sha256((src / "tokenizer.bin").read_bytes()).hexdigest()
    blob = target_root / "blobs" / "sha256" / damaged[:2] / damaged
    blob.write_bytes(os.urandom(blob.stat().st_size))

    (src / "config.json").write_text('{"seed": 2}\n')
    settle(src)
    second = snap_env.json("snapshot", "create", str(src), "--store", source, "--model", "m", "--part-size", "1")
    copied = snap_env.json("snapshot", "replicate", second["id"], "--from", source, "--to", target)
    assert (copied["blobs_repaired"], copied["repaired"]) == (1, [damaged])
    # A directory store keeps no checksum: every present blob is read back and hashed.
    assert copied["blobs_checked"]["by_checksum"] == 0 and copied["blobs_checked"]["by_reading"] >= 5
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == damaged
    snap_env.json("snapshot", "verify", second["id"], "--store", target, "--read-data")


def test_create_repairs_a_present_blob_whose_stored_checksum_differs(snap_env):
    """create's HEAD of a blob it finds present asks for the stored checksum too: a damaged copy is replaced by the
    next create that reads the file, not only by the rotating re-check."""
    src = _model(snap_env.tmp / "src", seed=1)
    store = snap_env.store("s3")
    first = snap_env.json("snapshot", "create", str(src), "--store", store, "--model", "m", "--part-size", "2")
    parts = _parts(snap_env, first["id"], store)
    damaged = hashlib.sha256((src / "model.bin").read_bytes()[: 2 * MiB]).hexdigest()  # a part over 1 MiB: HEAD first
    small = hashlib.sha256((src / "tokenizer.bin").read_bytes()).hexdigest()  # conditional PUT refused, then HEAD
    _overwrite_s3(snap_env, store, damaged, parts[damaged], sha256_checksum=True)
    _overwrite_s3(snap_env, store, small, parts[small], sha256_checksum=True)

    other = snap_env.tmp / "copy"  # the same files elsewhere: no incremental cache, every file read
    other.mkdir()
    for f in src.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    settle(other)
    again = snap_env.json("snapshot", "create", str(other), "--store", store, "--model", "m", "--part-size", "2",
                          "--recheck-share", "0")
    assert again["blobs_repaired"] == 2
    snap_env.json("snapshot", "verify", again["id"], "--store", store, "--read-data")
    snap_env.json("snapshot", "verify", first["id"], "--store", store, "--read-data")


def _error(proc: subprocess.CompletedProcess, code: int) -> dict:
    assert proc.returncode == code, f"exit {proc.returncode}, expected {code}\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout)


def test_a_body_changed_on_the_way_is_refused_by_the_server_and_reported_naming_the_key(snap_env):
    """A proxy flips bits in every request body: the server (which checks x-amz-checksum-sha256) refuses each blob
    upload with BadDigest, and drtool says so: exit 3, store, endpoint, bucket and key named, a hint."""
    src = snap_env.tmp / "src"
    src.mkdir()
    (src / "weights.bin").write_bytes(b"\xaa" * 300_000)  # no 0xAA byte in any HTTP header or lease JSON
    settle(src)
    digest = hashlib.sha256((src / "weights.bin").read_bytes()).hexdigest()
    bucket = snap_env.bucket()
    store = f"s3://{bucket}/w"
    proxy = S3Proxy(snap_env.endpoint, mutate=lambda body: body.replace(b"\xaa", b"\xab"))
    try:
        env = {**snap_env.vars, "AWS_ENDPOINT_URL": proxy.endpoint}
        proc = subprocess.run([DRTOOL, "snapshot", "create", str(src), "--store", store, "--model", "m", "--json"],
                              capture_output=True, text=True, env=env, timeout=120)
        err = _error(proc, 3)
        assert err["error"] == "VerificationError"
        key = f"w/blobs/sha256/{digest[:2]}/{digest}"
        assert err["message"] == (f"store {store} ({proxy.endpoint}): the server refused the upload on "
                                  f"s3://{bucket}/{key}: the bytes it received do not match the SHA-256 sent with "
                                  f"them (BadDigest)")
        assert "changed between drtool hashing it and the server receiving it" in err["hint"]
        refused = [r for r in proxy.requests() if r["method"] == "PUT" and r["path"].endswith(digest)]
        assert refused and all(r["status"] == 400 for r in refused), proxy.requests()
    finally:
        proxy.close()
    listed = snap_env.s3().list_objects_v2(Bucket=bucket, Prefix="w/blobs/")
    assert listed["KeyCount"] == 0, "nothing is stored under a refused key"
    assert snap_env.json("snapshot", "list", "--store", store)["snapshots"] == []
