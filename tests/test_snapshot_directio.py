"""Direct I/O for large parts (drtool.snapshot.directio): what is written and read is byte-exact whether or not the
file system takes O_DIRECT, unaligned tails and small files go through the page cache, and a store on a file
system that refuses O_DIRECT still works."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from drtool.snapshot import directio
from drtool.snapshot.directio import (
    ALIGN,
    MIN_DIRECT,
    aligned_buffer,
    direct_span,
    is_aligned,
    place,
    read_file_into,
    write_new_file,
)

from .snapshot_helpers import model_dir, settle

pytest_plugins = ["tests.snapshot_fixtures"]


def _filled(size: int):
    buf = aligned_buffer(size)
    buf[:size] = os.urandom(size)
    return buf


@pytest.mark.parametrize("size", [0, 100, MIN_DIRECT - 1, MIN_DIRECT, 3 * MIN_DIRECT + 123])
def test_write_then_read_is_byte_exact(tmp_path, size):
    buf = _filled(max(size, 1))
    data = memoryview(buf)[:size]
    path = str(tmp_path / "blob")
    direct = write_new_file(path, data)
    with open(path, "rb") as f:
        assert f.read() == bytes(data)
    # Only the aligned head of a large buffer goes around the page cache; ext4 (where tests run) takes O_DIRECT.
    assert direct == (size - size % ALIGN if size >= MIN_DIRECT else 0)
    into = aligned_buffer(size + ALIGN)
    fd = os.open(path, os.O_RDONLY)
    try:
        got = read_file_into(fd, os.fstat(fd).st_size, into)
    finally:
        os.close(fd)
    assert bytes(got) == bytes(data)


def test_unaligned_or_readonly_buffers_are_written_through_the_page_cache(tmp_path):
    raw = os.urandom(2 * MIN_DIRECT)
    assert not is_aligned(memoryview(raw))  # bytes are read-only: never ours
    assert write_new_file(str(tmp_path / "a"), raw) == 0
    buf = _filled(2 * MIN_DIRECT + ALIGN)
    off = memoryview(buf)[1:2 * MIN_DIRECT + 1]
    assert write_new_file(str(tmp_path / "b"), off) == 0
    assert (tmp_path / "a").read_bytes() == raw and (tmp_path / "b").read_bytes() == bytes(off)


def test_a_buffer_too_small_reads_nothing(tmp_path):
    path = tmp_path / "big"
    path.write_bytes(os.urandom(2 * ALIGN + 1))
    fd = os.open(path, os.O_RDONLY)
    try:
        assert read_file_into(fd, 2 * ALIGN + 1, aligned_buffer(2 * ALIGN)) is None
    finally:
        os.close(fd)


def test_an_existing_file_is_never_overwritten_and_a_failed_write_leaves_nothing(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(b"keep")
    with pytest.raises(FileExistsError):
        write_new_file(str(path), b"other")
    assert path.read_bytes() == b"keep"


def test_a_file_system_refusing_o_direct_gets_ordinary_writes_and_reads(tmp_path, monkeypatch):
    """A file system that refuses O_DIRECT (EINVAL from fcntl, as tmpfs or some FUSE file systems): byte-exact."""
    real_fcntl = __import__("fcntl").fcntl

    def refusing(fd, cmd, arg=0):
        if cmd == __import__("fcntl").F_SETFL and arg & directio.O_DIRECT:
            raise OSError(22, "Invalid argument")
        return real_fcntl(fd, cmd, arg)

    monkeypatch.setattr("fcntl.fcntl", refusing)
    buf = _filled(3 * MIN_DIRECT)
    path = tmp_path / "nodirect"
    assert write_new_file(str(path), memoryview(buf)[:3 * MIN_DIRECT]) == 0
    assert path.read_bytes() == bytes(memoryview(buf)[:3 * MIN_DIRECT])
    fd = os.open(path, os.O_RDONLY)
    try:
        got = read_file_into(fd, 3 * MIN_DIRECT, aligned_buffer(3 * MIN_DIRECT))
    finally:
        os.close(fd)
    assert bytes(got) == path.read_bytes()


def test_restored_tree_passes_sha256sum_with_direct_io(snap_env):
    """End to end through the CLI on the tests' ext4: large parts written and read with O_DIRECT, every byte checked
    by sha256sum -c against `snapshot sums`."""
    src = model_dir(snap_env.tmp / "src")
    store = snap_env.store("file")
    made = snap_env.json("snapshot", "create", str(src), "--store", store, "--model", "m", "--part-size", "1")
    dest = snap_env.tmp / "dest"
    snap_env.json("snapshot", "restore", made["id"], str(dest), "--store", store)
    sums = snap_env.run("snapshot", "sums", made["id"], "--store", store).stdout
    check = subprocess.run(["sha256sum", "-c", "--strict", "-"], input=sums, text=True, cwd=dest, capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_direct_span_is_aligned_in_the_file_and_in_memory():
    buf = aligned_buffer(4 * ALIGN)
    view = memoryview(buf)
    assert direct_span(0, view[:4 * ALIGN]) == (0, 4 * ALIGN)
    assert direct_span(100, view[:4 * ALIGN]) == (0, 0)  # memory at offset 0, file at 100: they never line up
    placed = view[100:100 + 3 * ALIGN]
    assert direct_span(100, placed) == (ALIGN - 100, 3 * ALIGN - 100)  # the whole blocks between two partial ones
    assert direct_span(ALIGN + 100, placed) == (ALIGN - 100, 3 * ALIGN - 100)
    assert direct_span(100, view[100:100 + ALIGN]) == (0, 0)  # no whole block inside
    assert direct_span(0, memoryview(bytes(4 * ALIGN))) == (0, 0)  # read-only: not ours


def test_place_moves_a_part_to_its_file_offset_modulo_align():
    buf = aligned_buffer(3 * ALIGN)
    data = os.urandom(2 * ALIGN + 5)
    buf[:len(data)] = data
    moved = place(buf, memoryview(buf)[:len(data)], 7 * ALIGN + 123)  # overlapping: a forward move in place
    assert bytes(moved) == data and direct_span(7 * ALIGN + 123, moved) == (ALIGN - 123, 2 * ALIGN - 123)


def _resident_bytes(path) -> int:
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)], check=True,
                         capture_output=True, text=True).stdout
    return int(out.split()[0])


def _unaligned_snapshot(snap_env, kind: str):
    """A snapshot of one safetensors file whose large tensors' parts start at unaligned offsets (1 MiB parts):
    (source dir, store URL, create's JSON, the file's manifest entry)."""
    import torch
    from safetensors.torch import save_file

    src = snap_env.tmp / "src"
    src.mkdir()
    torch.manual_seed(1)
    tensors = {f"layers.{i}.weight": torch.randn(1024, 1024 + 3 * i) for i in range(6)}  # 4 MiB and a bit, each
    tensors["norm.weight"] = torch.ones(333)
    save_file(tensors, str(src / "model.safetensors"), metadata={"note": "x" * 77})  # an odd-sized header
    settle(src)
    store = snap_env.store(kind)
    made = snap_env.json("snapshot", "create", str(src), "--store", store, "--model", "m", "--part-size", "1")
    (entry,) = json.loads(snap_env.run("snapshot", "show", made["id"], "--store", store, "--json").stdout)[
        "manifest"]["files"]
    return src, store, made, entry


@pytest.mark.parametrize("kind", ["file", "s3"])
def test_restore_of_parts_at_unaligned_offsets_writes_them_around_the_page_cache(snap_env, kind):
    """A safetensors file's parts start where its large tensors do, at offsets that are not block-aligned: restore
    still writes their whole blocks with O_DIRECT (only the partial blocks at each part's ends go through the page
    cache), which on our VMs is what keeps a restore's system time low (docs/benchmarks.md). Byte-exact."""
    src, store, made, entry = _unaligned_snapshot(snap_env, kind)
    offsets, at = [], 0
    for p in entry["parts"]:
        offsets.append(at)
        at += p["size"]
    assert sum(1 for o in offsets if o % ALIGN) >= 6  # the tensors' parts really are unaligned
    dest = snap_env.tmp / "dest"
    snap_env.json("snapshot", "restore", made["id"], str(dest), "--store", store)
    restored = dest / "model.safetensors"
    # Before anything reads it back: in the page cache are at most the two partial blocks at each part's ends.
    assert _resident_bytes(restored) <= 2 * len(entry["parts"]) * ALIGN, restored.stat().st_size
    assert restored.read_bytes() == (src / "model.safetensors").read_bytes()


def test_a_restore_where_o_direct_is_refused_writes_unaligned_parts_through_the_page_cache(snap_env, monkeypatch):
    """The file system refuses O_DIRECT (EINVAL from fcntl, as tmpfs): the same restore, in this process, is still
    byte-exact and complete."""
    from drtool.snapshot.restore import restore_snapshot
    from drtool.snapshot.stores import open_store

    src, store, made, _ = _unaligned_snapshot(snap_env, "file")
    real_fcntl = __import__("fcntl").fcntl
    refused = []

    def refusing(fd, cmd, arg=0):
        if cmd == __import__("fcntl").F_SETFL and arg & directio.O_DIRECT:
            refused.append(fd)
            raise OSError(22, "Invalid argument")
        return real_fcntl(fd, cmd, arg)

    monkeypatch.setattr("fcntl.fcntl", refusing)
    dest = snap_env.tmp / "dest"
    restore_snapshot(open_store(store), made["id"], dest)
    assert refused  # O_DIRECT was asked for, and refused
    assert (dest / "model.safetensors").read_bytes() == (src / "model.safetensors").read_bytes()
