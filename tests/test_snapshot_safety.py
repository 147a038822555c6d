"""What a snapshot must refuse: hostile or damaged manifests, corrupted blobs, bad sources and stores.
Every refusal exits with its code and writes nothing outside (or inside) the destination."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import subprocess
from pathlib import Path

import pytest

from drtool.snapshot.manifest import (
    FORMAT,
    MODEL_NAME_PATTERN,
    PATH_PATTERN,
    SNAPSHOT_ID_PATTERN,
    canonical_json,
    is_model_name,
    is_safe_path_text,
    is_snapshot_id,
)

from .snapshot_helpers import DRTOOL, MiB, model_dir, write_random

pytest_plugins = ["tests.snapshot_fixtures"]  # the snap_env fixture (seaweed_s3 is in conftest)

PAYLOAD = b"pwned\n"
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


def _entry(path: str) -> dict:
    return {"path": path, "size": len(PAYLOAD), "mode": 0o644, "sha256": PAYLOAD_SHA,
            "parts": [{"sha256": PAYLOAD_SHA, "size": len(PAYLOAD)}]}


def _plant(store_root, files: list[dict] | None = None, raw: bytes | None = None, as_id: str | None = None) -> str:
    """Write a manifest (and the payload blob) straight into a directory store, as an attacker with write access
    to the bucket could. Returns the id it is stored under."""
    doc = {"format": FORMAT, "model": "evil", "version": None, "created": "2024-01-01T00:00:00.000000Z",
           "source_host": "attacker", "source_path": "/x", "part_size": 16 * MiB, "files": files or []}
    data = raw if raw is not None else canonical_json(doc)
    sid = as_id or hashlib.sha256(data).hexdigest()
    (store_root / "snapshots" / "evil").mkdir(parents=True, exist_ok=True)
    (store_root / "snapshots" / "evil" / f"{sid}.json").write_bytes(data)
    blob = store_root / "blobs" / "sha256" / PAYLOAD_SHA[:2] / PAYLOAD_SHA
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(PAYLOAD)
    return sid


def _error(proc: subprocess.CompletedProcess, code: int) -> dict:
    assert proc.returncode == code, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout)


@pytest.fixture
def outside(snap_env):
    d = snap_env.tmp / "outside"
    d.mkdir()
    return d


@pytest.mark.parametrize("hostile", ["absolute", "dotdot", "nested-dotdot", "duplicate", "file-and-dir",
                                     "final-newline"])
def test_hostile_manifest_paths_exit_3_before_writing_anything(snap_env, outside, hostile):
    store_root = snap_env.tmp / "store"
    files = {
        "absolute": [_entry(str(outside / "evil.txt"))],
        "dotdot": [_entry("../outside/evil.txt")],
        "nested-dotdot": [_entry("a/../../outside/evil.txt")],
        "duplicate": [_entry("a.txt"), _entry("a.txt")],
        "file-and-dir": [_entry("a"), _entry("a/b")],
        # a name `sha256sum -c` would misread; the schema's pattern lets a final newline through (Python's `$`)
        "final-newline": [_entry("evil.txt\n")],
    }[hostile]
    sid = _plant(store_root, files)
    dest = snap_env.tmp / "dest"
    err = _error(snap_env.run("snapshot", "restore", sid, str(dest), "--store", f"file://{store_root}", "--json"), 3)
    assert err["error"] == "VerificationError"
    assert list(outside.iterdir()) == [] and not dest.exists()
    _error(snap_env.run("snapshot", "verify", sid, "--store", f"file://{store_root}", "--json"), 3)


def test_symlink_in_dest_is_refused_before_writing(snap_env, outside):
    store_root = snap_env.tmp / "store"
    sid = _plant(store_root, [_entry("a-first.txt"), _entry("link/evil.txt")])
    dest = snap_env.tmp / "dest"
    dest.mkdir()
    (dest / "link").symlink_to(outside)
    err = _error(snap_env.run("snapshot", "restore", sid, str(dest), "--store", f"file://{store_root}", "--json"), 3)
    assert "symlink" in err["message"] and "link/evil.txt" in err["message"]
    assert list(outside.iterdir()) == []
    assert sorted(p.name for p in dest.iterdir()) == ["link"]  # not even the harmless first file


def test_manifest_not_json_or_not_matching_its_id_exits_3(snap_env):
    store_root = snap_env.tmp / "store"
    store = f"file://{store_root}"
    garbage = _plant(store_root, raw=b"this is not json {")
    err = _error(snap_env.run("snapshot", "restore", garbage, str(snap_env.tmp / "d1"), "--store", store, "--json"), 3)
    assert "not valid JSON" in err["message"]

    honest = canonical_json({"format": FORMAT, "model": "evil", "version": None, "source_host": "h",
                             "created": "2024-01-01T00:00:00.000000Z", "source_path": "/x", "part_size": 1 << 20,
                             "files": [_entry("ok.txt")]})
    forged_id = hashlib.sha256(b"something else").hexdigest()
    _plant(store_root, raw=honest, as_id=forged_id)
    err = _error(snap_env.run("snapshot", "restore", forged_id, str(snap_env.tmp / "d2"), "--store", store, "--json"),
                 3)
    assert "sha256 mismatch" in err["message"] and forged_id in err["message"]
    assert not (snap_env.tmp / "d1").exists() and not (snap_env.tmp / "d2").exists()
    listed = snap_env.json("snapshot", "list", "--store", store)
    assert {b["id"] for b in listed["invalid"]} == {garbage, forged_id} and listed["snapshots"] == []


def _blob_path(store_root, digest: str):
    return store_root / "blobs" / "sha256" / digest[:2] / digest


def _flip(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_flipped_byte_in_a_blob_fails_verify_and_restore_naming_file_and_digests(snap_env):
    src = model_dir(snap_env.tmp / "src")
    store_root = snap_env.tmp / "store"
    store = f"file://{store_root}"
    created = snap_env.json("snapshot", "create", str(src), "--store", store, "--model", "m", "--part-size", "1")
    manifest = snap_env.json("snapshot", "show", created["id"], "--store", store)["manifest"]
    vocab = next(f for f in manifest["files"] if f["path"] == "tokenizer/vocab.bin")
    blob = _blob_path(store_root, vocab["sha256"])
    _flip(blob)
    actual = hashlib.sha256(blob.read_bytes()).hexdigest()

    snap_env.json("snapshot", "verify", created["id"], "--store", store)  # sizes alone cannot see it
    err = _error(snap_env.run("snapshot", "verify", created["id"], "--store", store, "--read-data", "--json"), 3)
    assert "tokenizer/vocab.bin" in err["message"]
    assert vocab["sha256"] in err["message"] and actual in err["message"]
    sample = snap_env.run("snapshot", "verify", created["id"], "--store", store, "--sample", "100")
    assert sample.returncode == 3 and actual in sample.stderr

    dest = snap_env.tmp / "dest"
    err = _error(snap_env.run("snapshot", "restore", created["id"], str(dest), "--store", store, "--json"), 3)
    assert "tokenizer/vocab.bin" in err["message"]
    assert f"expected {vocab['sha256']}" in err["message"] and f"actual {actual}" in err["message"]
    assert not (dest / "tokenizer" / "vocab.bin").exists()
    assert not [p for p in dest.rglob(".drtool-restore-*")]


def test_flipped_byte_in_a_multi_part_file_names_file_part_and_digests(snap_env):
    src = model_dir(snap_env.tmp / "src")
    store_root = snap_env.tmp / "store"
    store = f"file://{store_root}"
    created = snap_env.json("snapshot", "create", str(src), "--store", store, "--model", "m", "--part-size", "1")
    manifest = snap_env.json("snapshot", "show", created["id"], "--store", store)["manifest"]
    shard = next(f for f in manifest["files"] if f["path"].startswith("model-"))
    part = shard["parts"][2]["sha256"]
    _flip(_blob_path(store_root, part))
    actual_part = hashlib.sha256(_blob_path(store_root, part).read_bytes()).hexdigest()

    err = _error(snap_env.run("snapshot", "verify", created["id"], "--store", store, "--read-data", "--json"), 3)
    assert shard["path"] in err["message"] and "part 2" in err["message"]
    assert part in err["message"] and actual_part in err["message"]

    dest = snap_env.tmp / "dest"
    err = _error(snap_env.run("snapshot", "restore", created["id"], str(dest), "--store", store, "--json"), 3)
    assert shard["path"] in err["message"] and f"expected {shard['sha256']}" in err["message"]
    assert any(part in d and actual_part in d for d in err["details"])
    assert not (dest / shard["path"]).exists() and not [p for p in dest.rglob(".drtool-restore-*")]


def test_missing_blob_fails_plain_verify(snap_env):
    src = model_dir(snap_env.tmp / "src")
    store_root = snap_env.tmp / "store"
    created = snap_env.json("snapshot", "create", str(src), "--store", f"file://{store_root}", "--model", "m")
    manifest = snap_env.json("snapshot", "show", created["id"], "--store", f"file://{store_root}")["manifest"]
    cfg = next(f for f in manifest["files"] if f["path"] == "config.json")
    _blob_path(store_root, cfg["sha256"]).unlink()
    err = _error(snap_env.run("snapshot", "verify", created["id"], "--store", f"file://{store_root}", "--json"), 3)
    assert "config.json" in err["message"] and "missing" in err["message"]


def test_malformed_safetensors_header_is_named(snap_env):
    src = snap_env.tmp / "src"
    write_random(src / "ok.bin", 100)
    bad = src / "model.safetensors"
    header = (b'{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},'
              b'"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}')
    bad.write_bytes(len(header).to_bytes(8, "little") + header + bytes(16))
    store = snap_env.store("file")
    err = _error(snap_env.run("snapshot", "create", str(src), "--store", store, "--model", "m", "--json"), 3)
    assert "model.safetensors" in err["message"] and "overlaps" in err["message"]
    bad.write_bytes((10**6).to_bytes(8, "little") + b"{}")
    err = _error(snap_env.run("snapshot", "create", str(src), "--store", store, "--model", "m", "--json"), 3)
    assert "model.safetensors" in err["message"] and "header length" in err["message"]
    assert snap_env.json("snapshot", "list", "--store", store)["snapshots"] == []


def test_source_and_store_errors(snap_env):
    empty = snap_env.tmp / "empty"
    (empty / "only-dirs").mkdir(parents=True)
    store = snap_env.store("file")
    err = _error(snap_env.run("snapshot", "create", str(empty), "--store", store, "--model", "m", "--json"), 2)
    assert "holds no files" in err["message"]
    err = _error(snap_env.run("snapshot", "create", str(snap_env.tmp / "nope"), "--store", store, "--model", "m",
                              "--json"), 2)
    assert "does not exist" in err["message"]
    err = _error(snap_env.run("snapshot", "list", "--store", f"file://{snap_env.tmp / 'no-store'}", "--json"), 2)
    assert "does not exist" in err["message"]
    err = _error(snap_env.run("snapshot", "restore", "0123456789", str(snap_env.tmp / "d"), "--store", store,
                              "--json"), 2)

    src = model_dir(snap_env.tmp / "src")
    err = _error(snap_env.run("snapshot", "create", str(src), "--store", "s3://no-such-bucket-here/x", "--model", "m",
                              "--json"), 2)
    assert "no-such-bucket-here" in err["message"] and "does not exist" in err["message"]
    unreachable = {**snap_env.vars, "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_MAX_ATTEMPTS": "1"}
    proc = subprocess.run([DRTOOL, "snapshot", "list", "--store", "s3://b/x", "--json"], capture_output=True,
                          text=True, env=unreachable, timeout=120)
    err = _error(proc, 1)
    assert "cannot reach" in err["message"] and "127.0.0.1:9" in err["message"]
    assert snap_env.server.secret not in proc.stdout + proc.stderr  # the secret key never shows


def test_restore_without_room_fails_cleanly(snap_env):
    small = snap_env.tmp / "small-fs"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], capture_output=True)
    # The suite runs as root (make test, CI): a mount that fails is a broken environment, not a reason to skip.
    assert mounted.returncode == 0, f"cannot mount a 1 MiB tmpfs for the disk-full case: {mounted.stderr!r}"
    try:
        src = snap_env.tmp / "src"
        write_random(src / "weights.bin", 3 * MiB)
        store = snap_env.store("file")
        created = snap_env.json("snapshot", "create", str(src), "--store", store, "--model", "m")
        err = _error(snap_env.run("snapshot", "restore", created["id"], str(small / "dest"), "--store", store,
                                  "--json"), 1)
        assert "space" in err["message"]
        assert os.listdir(small) == []
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_re_restore_into_a_nearly_full_file_system_needs_only_room_for_its_largest_file(snap_env):
    """Each file is written to a temp file and renamed over its old copy: re-restoring the same snapshot needs about
    its largest file free (plus a margin), not the whole snapshot again."""
    small = snap_env.tmp / "small-fs"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(small)], capture_output=True)
    assert mounted.returncode == 0, f"cannot mount a 24 MiB tmpfs (the suite runs as root): {mounted.stderr!r}"
    try:
        src = snap_env.tmp / "src"
        for i in range(5):
            write_random(src / f"shard-{i}.bin", 3 * MiB)
        store = snap_env.store("file")
        created = snap_env.json("snapshot", "create", str(src), "--store", store, "--model", "m")
        dest = small / "dest"
        snap_env.json("snapshot", "restore", created["id"], str(dest), "--store", store)
        # Fill the file system until 5.5 MiB are free: less than the snapshot (15 MiB), more than one file + margin.
        st = os.statvfs(small)
        (small / "filler").write_bytes(b"\0" * (st.f_bavail * st.f_frsize - 11 * MiB // 2))
        again = snap_env.json("snapshot", "restore", created["id"], str(dest), "--store", store)
        assert again["files"] == 5
        assert sorted(os.listdir(dest)) == [f"shard-{i}.bin" for i in range(5)]
        for i in range(5):
            assert (dest / f"shard-{i}.bin").read_bytes() == (src / f"shard-{i}.bin").read_bytes()
        # A new file of the snapshot that is not in DEST yet still needs its whole size.
        (dest / "shard-4.bin").unlink()
        (small / "filler").unlink()
        st = os.statvfs(small)
        (small / "filler").write_bytes(b"\0" * (st.f_bavail * st.f_frsize - 7 * MiB // 2))
        err = _error(snap_env.run("snapshot", "restore", created["id"], str(dest), "--store", store, "--json"), 1)
        assert "space" in err["message"]
        assert sorted(os.listdir(dest)) == [f"shard-{i}.bin" for i in range(4)]
    finally:
        subprocess.run(["umount", str(small)], check=True)


def _without_root_file_access(argv: list[str]) -> list[str]:
    """argv run as root without the capabilities that let root read any file (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
    a mode-000 file is then unreadable, as it is to any other user, while drtool and its venv stay readable."""
    drop = "-dac_override,-dac_read_search"
    return ["setpriv", f"--bounding-set={drop}", f"--inh-caps={drop}", *argv]


def test_unreadable_source_file_exits_1_before_storing_anything(snap_env):
    src = model_dir(snap_env.tmp / "src")
    store = snap_env.store("file")
    first = snap_env.json("snapshot", "create", str(src), "--store", store, "--model", "m", "--recheck-share", "0")
    blobs_before = sorted(p.name for p in (snap_env.tmp / "store").rglob("*") if p.is_file())

    def create(source: Path) -> subprocess.CompletedProcess:
        return subprocess.run(_without_root_file_access([DRTOOL, "snapshot", "create", str(source), "--store", store,
                                                         "--model", "m", "--recheck-share", "0", "--json"]),
                              capture_output=True, text=True, env=snap_env.vars, timeout=120)

    # A file the last snapshot read that is now unreadable (chmod moves its ctime: the cache does not trust it).
    (src / "config.json").chmod(0)
    err = _error(create(src), 1)
    assert "cannot read" in err["message"] and "config.json" in err["message"]
    assert "permission denied" in err["message"]
    # A new file nobody can read, beside new content that would otherwise be uploaded first.
    write_random(src / "new-shard.bin", 2 * MiB)
    (src / "zz-secret.bin").write_bytes(b"x" * 100)
    (src / "zz-secret.bin").chmod(0)
    err = _error(create(src), 1)
    assert "cannot read" in err["message"]
    listed = snap_env.json("snapshot", "list", "--store", store, "--model", "m")["snapshots"]
    assert [s["id"] for s in listed] == [first["id"]]
    assert sorted(p.name for p in (snap_env.tmp / "store").rglob("*") if p.is_file()) == blobs_before
    # Readable again: the next run goes ahead.
    (src / "config.json").chmod(0o644)
    (src / "zz-secret.bin").chmod(0o600)
    again = create(src)
    assert again.returncode == 0, again.stdout + again.stderr


def test_what_create_reads_skips_and_refuses_in_the_source(snap_env):
    src = model_dir(snap_env.tmp / "src")
    outside = write_random(snap_env.tmp / "elsewhere" / "shared.bin", 1000)
    (src / "deep" / "er").mkdir(parents=True)
    (src / "deep" / "er" / "leaf.txt").write_text("leaf\n")
    (src / "linked.bin").symlink_to(outside)  # read through, as asked: the snapshot holds the content
    (src / "linked-dir").symlink_to(outside.parent, target_is_directory=True)
    os.mkfifo(src / "a-fifo")
    (src / ".drtool-restore-123-abcd").write_bytes(b"half a restored file")
    store = snap_env.store("file")
    created = snap_env.json("snapshot", "create", str(src), "--store", store, "--model", "m",
                            "--follow-outside-links")
    assert sorted(created["skipped"]) == ["a-fifo: not a regular file", "linked-dir: symlink to a directory"]
    shown = snap_env.json("snapshot", "show", created["id"], "--store", store)
    paths = [f["path"] for f in shown["manifest"]["files"]]
    assert paths == sorted(paths)
    assert {"deep/er/leaf.txt", "linked.bin", "tokenizer/vocab.bin", "EMPTY"} <= set(paths)
    assert not any(p.startswith(("a-fifo", "linked-dir", ".drtool-restore-")) for p in paths)
    linked = next(f for f in shown["manifest"]["files"] if f["path"] == "linked.bin")
    assert linked["sha256"] == hashlib.sha256(outside.read_bytes()).hexdigest()

    (src / "bad\tname.bin").write_bytes(b"x")
    err = _error(snap_env.run("snapshot", "create", str(src), "--store", store, "--model", "m", "--json"), 2)
    assert "control character" in err["message"]
    assert [s["id"] for s in snap_env.json("snapshot", "list", "--store", store)["snapshots"]] == [created["id"]]


def _store_files(store: str) -> list[Path]:
    return sorted(p for p in Path(store.removeprefix("file://")).rglob("*") if p.is_file())


def test_symlinks_leaving_the_source_are_refused_unless_asked(snap_env):
    src = model_dir(snap_env.tmp / "src")
    secret = write_random(snap_env.tmp / "elsewhere" / "id_rsa", 100)
    (src / "extra").mkdir()
    (src / "extra" / "key.bin").symlink_to(secret)  # absolute, to a file outside SRC
    (src / "escape.json").symlink_to("../elsewhere/id_rsa")  # relative, leaving SRC with ..
    (src / "inside.json").symlink_to("config.json")  # stays inside: fine
    store = snap_env.store("file")
    proc = snap_env.run("snapshot", "create", str(src), "--store", store, "--model", "m", "--json")
    err = _error(proc, 2)
    assert f"escape.json is a symlink to {secret}, outside the source {src}" in err["message"]
    assert "--follow-outside-links" in err["hint"]
    assert err["details"] == [f"escape.json -> {secret}", f"extra/key.bin -> {secret}"]
    assert _store_files(store) == []  # nothing written: no blob, lease or manifest

    created = snap_env.json("snapshot", "create", str(src), "--store", store, "--model", "m",
                            "--follow-outside-links")
    shown = snap_env.json("snapshot", "show", created["id"], "--store", store)
    files = {f["path"]: f for f in shown["manifest"]["files"]}
    assert files["extra/key.bin"]["sha256"] == files["escape.json"]["sha256"] == hashlib.sha256(
        secret.read_bytes()).hexdigest()
    assert files["inside.json"]["sha256"] == files["config.json"]["sha256"]


@pytest.mark.parametrize("level", ["hub", "model"])
def test_hugging_face_cache_layout_restores_byte_identical(snap_env, level):
    """The hub cache: snapshots/<rev>/<file> are relative links into ../../blobs/<sha>; inside SRC when SRC is the
    hub directory or the model's directory, so they are read through without any option."""
    hub = snap_env.tmp / "hub"
    model = hub / "models--org--name"
    (model / "refs").mkdir(parents=True)
    (model / "refs" / "main").write_text("0123abcd" * 5)
    rev = model / "snapshots" / ("0123abcd" * 5)
    contents = {"config.json": b'{"hidden": 64}\n', "model-00001-of-00001.bin": os.urandom(3 * MiB + 5),
                "tokenizer/vocab.txt": b"a\nb\n"}
    for name, data in contents.items():
        blob = model / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = rev / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    src = hub if level == "hub" else model
    store = snap_env.store("file")
    created = snap_env.json("snapshot", "create", str(src), "--store", store, "--model", "m")
    assert created["skipped"] == []
    dest = snap_env.tmp / "dest"
    snap_env.json("snapshot", "restore", created["id"], str(dest), "--store", store)
    expected = {p.relative_to(src).as_posix(): p.read_bytes() for p in src.rglob("*") if p.is_file()}
    restored = {p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    assert restored == expected
    prefix = "" if level == "model" else "models--org--name/"
    for name, data in contents.items():
        assert restored[f"{prefix}snapshots/{'0123abcd' * 5}/{name}"] == data


def test_dangling_symlinks_and_loops_are_skipped_and_listed(snap_env):
    src = model_dir(snap_env.tmp / "src")
    (src / "dangling").symlink_to(snap_env.tmp / "gone")
    (src / "sub").mkdir()
    (src / "sub" / "loop-a").symlink_to("loop-b")
    (src / "sub" / "loop-b").symlink_to("loop-a")
    (src / "self").symlink_to("self")
    store = snap_env.store("file")
    proc = snap_env.run("snapshot", "create", str(src), "--store", store, "--model", "m")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "skipped" in proc.stderr and "dangling" in proc.stderr
    created = snap_env.json("snapshot", "create", str(src), "--store", store, "--model", "m")
    assert created["skipped"] == [f"dangling: dangling symlink (-> {snap_env.tmp / 'gone'})",
                                  "self: symlink loop (-> self)", "sub/loop-a: symlink loop (-> loop-b)",
                                  "sub/loop-b: symlink loop (-> loop-a)"]
    assert created["files"] == 4


@pytest.mark.parametrize("form", ["file://{}", "file://localhost{}", "file://{}?", "file://{}#"])
def test_file_store_urls_name_the_directory_with_or_without_urllib(tmp_path, form):
    from drtool.snapshot.stores import open_store

    root = tmp_path / "a store" / "with%"
    root.mkdir(parents=True)
    plain = open_store(f"file://{root}".replace("%", "%25").replace(" ", "%20"))  # percent-encoded: urllib's path
    assert plain.root == str(root)
    spaced = tmp_path / "a store"
    assert open_store(form.format(spaced)).root == str(spaced)


@pytest.mark.parametrize("url", ["file://host/x", "file:relative/x", "ftp:///x", "/no/scheme"])
def test_store_urls_that_are_not_a_local_directory_are_usage_errors(url):
    from drtool.errors import UsageError
    from drtool.snapshot.stores import open_store

    with pytest.raises(UsageError):
        open_store(url)


CHECKS = [(is_model_name, MODEL_NAME_PATTERN), (is_snapshot_id, SNAPSHOT_ID_PATTERN), (is_safe_path_text, PATH_PATTERN)]
NAME_ALPHABET = "aZ09f._-/ \\\n\t\x00\x1f\x7f\x80\u00a0\u00e9\u200b\u2028"


@pytest.mark.parametrize(("check", "pattern"), CHECKS, ids=["model", "snapshot-id", "path"])
def test_string_checks_accept_exactly_what_their_pattern_matches_whole(check, pattern):
    """The create path checks model names, snapshot ids and source paths with string methods, not the schema: they
    must refuse exactly what the schema's patterns refuse (read as whole-string matches)."""
    whole = re.compile(pattern.removesuffix("$") + r"\Z").match
    rng = random.Random(11)
    samples = ["", "a", "a" * 128, "a" * 129, "e" * 64, "e" * 63, "E" * 64, "model\n", "f" * 64 + "\n", "-a", ".a"]
    for _ in range(20000):
        samples.append("".join(rng.choice(NAME_ALPHABET) for _ in range(rng.choice([1, 2, 5, 64, 130]))))
    for text in samples:
        assert check(text) == bool(whole(text)), repr(text)
