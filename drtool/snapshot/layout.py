"""What a destination directory holds beside a snapshot (strays), and moving them out of it, kept, for `--exact`."""

from __future__ import annotations  # PEP 563 (public), for type-checking imports

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from drtool.errors import UsageError
from drtool.snapshot.scan import RESTORE_TEMP_PREFIX

if TYPE_CHECKING:
    from drtool.snapshot.manifest import SnapshotManifest

STRAYS_SUFFIX = ".drtool-strays"  # DEST's strays go to DEST.drtool-strays/<UTC time>/, beside DEST


def find_strays(root: Path, manifest: SnapshotManifest, temps: bool = False) -> list[str]:
    """The topmost entries under `root` that are not part of the snapshot, as relative paths (a directory's with a
    trailing '/'), sorted: files it does not list, directories none of its files is under, and, anywhere, symlinks
    and special files (a snapshot holds regular files and the directories they need, nothing else), a directory
    where it has a file and a file where it has a directory. A stray directory is one entry: nothing under it is
    looked at.

    A restore's temp files (`.drtool-restore-*`) count only with `temps`: a restore removes a dead writer's itself
    (restore.remove_leftover_temps) and must leave a live one's alone, while `verify --dest` reports them."""
    files = {f.path for f in manifest.files}
    dirs = {f.path[:i] for f in manifest.files for i, c in enumerate(f.path) if c == "/"}
    strays: list[str] = []
    pending = [(root, "")]
    while pending:
        dirpath, prefix = pending.pop()
        try:
            with os.scandir(dirpath) as it:
                entries = list(it)
        except FileNotFoundError:
            continue  # DEST not there yet: nothing beside the snapshot
        for entry in entries:
            rel = prefix + entry.name
            if entry.is_dir(follow_symlinks=False):
                if rel in dirs:
                    pending.append((Path(entry.path), rel + "/"))
                else:
                    strays.append(rel + "/")
            elif entry.is_file(follow_symlinks=False) and rel in files:
                continue
            elif not temps and entry.name.startswith(RESTORE_TEMP_PREFIX) and entry.is_file(follow_symlinks=False):
                continue
            else:
                strays.append(rel)
    return sorted(strays)


def under_stray(path: str, strays: set[str]) -> bool:
    """Whether manifest path `path`, or a directory on its way, is one of `strays` (find_strays' form)."""
    parts = path.split("/")
    for i in range(1, len(parts) + 1):
        prefix = "/".join(parts[:i])
        if prefix in strays or prefix + "/" in strays:  # a file, link or special file; or a directory
            return True
    return False


def strays_home(root: Path) -> Path:
    """Where DEST's strays go: a sibling, DEST.drtool-strays, so they are outside what is served from DEST (a model
    server that loads every *.safetensors it finds never sees them) and, DEST's parent being on DEST's file system,
    each move is one rename: no copy, no extra space, nothing half-moved."""
    return root.parent / f"{root.name}{STRAYS_SUFFIX}"


def check_movable(root: Path, strays: list[str]) -> None:
    """Refuse (before anything is written) when strays cannot be moved out of DEST by a rename."""
    if not strays:
        return
    if root.parent == root or os.stat(root).st_dev != os.stat(root.parent).st_dev:
        raise UsageError(f"{root} is a mount point: its {len(strays)} entries not in the snapshot cannot be moved "
                         "out of it without copying", details=strays,
                         hint="move or delete them yourself, or restore without --exact (they stay, reported); "
                              "better, restore into a directory below the mount point. Nothing was written")


def move_strays(root: Path, strays: list[str]) -> Path:
    """Move each stray under DEST.drtool-strays/<UTC time>/, at the same relative path; that directory."""
    base = strays_home(root)
    base.mkdir(mode=0o700, exist_ok=True)  # strays keep their own modes; the holder need not be readable to all
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target, n = base / stamp, 1
    while True:
        try:
            target.mkdir()
            break
        except FileExistsError:
            n += 1
            target = base / f"{stamp}-{n}"
    for rel in strays:
        path = rel.rstrip("/")
        dst = target / path
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.rename(root / path, dst)  # a symlink is moved as the link, never followed
    return target
