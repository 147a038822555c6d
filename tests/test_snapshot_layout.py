"""What DEST holds beside a snapshot: restore reports entries the snapshot does not have and, with --exact, moves
them out of DEST (kept, in DEST.drtool-strays/<time>/); `verify --dest` finds them; the weights role uses --exact."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import yaml

from .conftest import REPO
from .snapshot_helpers import DRTOOL, model_dir, write_random

pytest_plugins = ["tests.snapshot_fixtures"]  # the snap_env fixture (moto_server is in conftest)

TEMP_PREFIX = ".drtool-restore-"


def _tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in root.rglob("*") if p.is_file() and not p.is_symlink()}


def _error(proc: subprocess.CompletedProcess, code: int) -> dict:
    assert proc.returncode == code, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout)


def _plant_strays(dest: Path) -> None:
    """What an earlier version or a hand edit leaves: an extra shard, a stale directory, a file beside a snapshot
    file in a snapshot directory, a symlink."""
    write_random(dest / "model-00002-of-00002.bin", 5000)
    write_random(dest / "old-shards" / "a.bin", 100)
    (dest / "tokenizer" / "stale.txt").write_text("from the previous version\n")
    (dest / "peek").symlink_to("/etc/hostname")


STRAYS = ["model-00002-of-00002.bin", "old-shards/", "peek", "tokenizer/stale.txt"]


def test_restore_reports_strays_and_with_exact_moves_them_out_of_dest(snap_env):
    src = model_dir(snap_env.tmp / "src")
    store = snap_env.store("file")
    created = snap_env.json("snapshot", "create", str(src), "--store", store, "--model", "m")
    sid = created["id"]
    dest = snap_env.tmp / "dest"
    first = snap_env.json("snapshot", "restore", sid, str(dest), "--store", store)
    assert first["strays"] == [] and first["exact"] is True
    _plant_strays(dest)
    planted = _tree(dest)

    # Without --exact: left in place, but reported (JSON and console), never "exactly the snapshot".
    kept = snap_env.json("snapshot", "restore", sid, str(dest), "--store", store)
    assert kept["strays"] == STRAYS and kept["strays_moved_to"] is None and kept["exact"] is False
    console = snap_env.run("snapshot", "restore", sid, str(dest), "--store", store)
    assert console.returncode == 0, console.stderr
    assert "4 entries not in the snapshot left in DEST" in console.stdout
    assert "model-00002-of-00002.bin" in console.stderr and "--exact" in console.stderr
    assert _tree(dest) == planted

    # verify --dest names every one of them (exit 3).
    err = _error(snap_env.run("snapshot", "verify", sid, "--store", store, "--dest", str(dest), "--json"), 3)
    assert err["result"]["extra"] == STRAYS and err["result"]["missing"] == [] and err["result"]["changed"] == []
    assert "not in the snapshot" in err["message"]

    # --exact: moved beside DEST (same relative paths, same bytes), DEST is the snapshot, nothing stray is left.
    exact = snap_env.json("snapshot", "restore", sid, str(dest), "--store", store, "--exact")
    assert exact["strays"] == STRAYS and exact["exact"] is True
    moved = Path(exact["strays_moved_to"])
    assert moved.parent == snap_env.tmp / "dest.drtool-strays"
    assert _tree(dest) == _tree(src)
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")) == \
        sorted(p.relative_to(src).as_posix() for p in src.rglob("*"))
    assert _tree(moved) == {k: v for k, v in planted.items() if k not in _tree(src)}
    assert os.readlink(moved / "peek") == "/etc/hostname"
    checked = snap_env.json("snapshot", "verify", sid, "--store", store, "--dest", str(dest))
    assert checked["ok"] is True and checked["extra"] == [] and checked["bytes_read"] == created["bytes_total"]
    again = snap_env.json("snapshot", "restore", sid, str(dest), "--store", store, "--exact")
    assert again["strays"] == [] and again["strays_moved_to"] is None


def test_exact_moves_aside_what_would_block_the_restore(snap_env):
    src = model_dir(snap_env.tmp / "src")
    store = snap_env.store("file")
    sid = snap_env.json("snapshot", "create", str(src), "--store", store, "--model", "m")["id"]
    dest = snap_env.tmp / "dest"
    (dest / "config.json").mkdir(parents=True)  # a directory where the snapshot has a file
    (dest / "config.json" / "inner").write_text("x")
    elsewhere = snap_env.tmp / "elsewhere"
    elsewhere.mkdir()
    (dest / "tokenizer").symlink_to(elsewhere)  # a symlink where the snapshot has a directory
    err = _error(snap_env.run("snapshot", "restore", sid, str(dest), "--store", store, "--json"), 2)  # as before
    assert "is a directory" in err["message"]

    exact = snap_env.json("snapshot", "restore", sid, str(dest), "--store", store, "--exact")
    assert exact["strays"] == ["config.json/", "tokenizer"]
    assert _tree(dest) == _tree(src) and list(elsewhere.iterdir()) == []
    assert (Path(exact["strays_moved_to"]) / "config.json" / "inner").read_text() == "x"


def test_restore_temps_are_not_strays_but_verify_reports_them(snap_env):
    src = model_dir(snap_env.tmp / "src")
    store = snap_env.store("file")
    sid = snap_env.json("snapshot", "create", str(src), "--store", store, "--model", "m")["id"]
    dest = snap_env.tmp / "dest"
    (dest / "tokenizer").mkdir(parents=True)
    live = dest / "tokenizer" / f"{TEMP_PREFIX}{os.getppid()}-0123456789abcdef"  # pytest's parent: a live writer
    live.write_bytes(b"in progress")
    exact = snap_env.json("snapshot", "restore", sid, str(dest), "--store", store, "--exact")
    assert exact["strays"] == [] and live.exists()  # another restore's, still running: not ours to move
    err = _error(snap_env.run("snapshot", "verify", sid, "--store", store, "--dest", str(dest), "--json"), 3)
    assert err["result"]["extra"] == [f"tokenizer/{live.name}"]


def test_verify_dest_names_missing_and_changed_files(snap_env):
    src = model_dir(snap_env.tmp / "src")
    store = snap_env.store("file")
    sid = snap_env.json("snapshot", "create", str(src), "--store", store, "--model", "m")["id"]
    dest = snap_env.tmp / "dest"
    snap_env.json("snapshot", "restore", sid, str(dest), "--store", store)
    (dest / "EMPTY").unlink()
    data = bytearray((dest / "tokenizer" / "vocab.bin").read_bytes())
    data[7] ^= 1
    (dest / "tokenizer" / "vocab.bin").write_bytes(bytes(data))
    err = _error(snap_env.run("snapshot", "verify", sid, "--store", store, "--dest", str(dest), "--json"), 3)
    assert err["result"]["missing"] == ["EMPTY"]
    assert [c.split(":")[0] for c in err["result"]["changed"]] == ["tokenizer/vocab.bin"]
    assert "sha256 mismatch" in err["result"]["changed"][0]
    usage = _error(snap_env.run("snapshot", "verify", sid, "--store", store, "--dest", str(dest), "--read-data",
                                "--json"), 2)
    assert "--dest" in usage["message"]


def test_exact_refuses_to_copy_strays_off_a_mount_point(snap_env):
    src = model_dir(snap_env.tmp / "src")
    store = snap_env.store("file")
    sid = snap_env.json("snapshot", "create", str(src), "--store", store, "--model", "m")["id"]
    dest = snap_env.tmp / "mounted"
    dest.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(dest)], capture_output=True)
    assert mounted.returncode == 0, f"cannot mount a tmpfs (the suite runs as root): {mounted.stderr!r}"
    try:
        (dest / "stray.bin").write_bytes(b"x")
        err = _error(snap_env.run("snapshot", "restore", sid, str(dest), "--store", store, "--exact", "--json"), 2)
        assert "mount point" in err["message"] and err["details"] == ["stray.bin"]
        assert os.listdir(dest) == ["stray.bin"]  # nothing written, nothing moved
        assert not (snap_env.tmp / "mounted.drtool-strays").exists()
    finally:
        subprocess.run(["umount", str(dest)], check=True)


def test_the_weights_role_restores_exactly():
    """Failover, failback and deploy restore weights through this role: the weights directory must end up holding
    the snapshot and nothing else (a stray shard would be loaded by the model server)."""
    tasks = yaml.safe_load((REPO / "roles" / "model_weights" / "tasks" / "restore.yml").read_text())
    argv = next(t for t in tasks if "ansible.builtin.command" in t)["ansible.builtin.command"]["argv"]
    assert argv[2:4] == ["snapshot", "restore"] and "--exact" in argv
    assert DRTOOL  # the CLI the role runs accepts the flag:
    help_text = subprocess.run([DRTOOL, "snapshot", "restore", "--help"], capture_output=True, text=True).stdout
    assert "--exact" in help_text
