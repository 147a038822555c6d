"""snapshot restore: refuse unsafe manifests before writing; write files to temp names, rename each once it matches."""

from __future__ import annotations  # PEP 563 (public), for type-checking imports

import contextlib
import errno
import hashlib
import os
import secrets
import stat
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from drtool.errors import DrtoolError, OperationFailed, UsageError, VerificationError
from drtool.pids import process_alive
from drtool.snapshot.catalog import load, resolve
from drtool.snapshot.chunking import DEFAULT_WORKERS, BufferPool, ordered_map
from drtool.snapshot.directio import ALIGN, MIN_DIRECT, direct_span, place, set_direct, write_at
from drtool.snapshot.layout import check_movable, find_strays, move_strays, under_stray
from drtool.snapshot.manifest import EMPTY_SHA256, FileEntry, SnapshotManifest
from drtool.snapshot.progress import NO_PROGRESS
from drtool.snapshot.scan import RESTORE_TEMP_PREFIX
from drtool.snapshot.stores import BlobStore, MissingBlob

if TYPE_CHECKING:
    from drtool.snapshot.progress import ProgressSink

TEMP_PREFIX = RESTORE_TEMP_PREFIX  # then the writer's pid, '-', a random token: `.drtool-restore-<pid>-<hex>`
MAX_OPEN_FILES = 64  # files written but not yet fsynced and renamed


def destination(dest: Path) -> Path:
    """The absolute destination, with DEST's own symlinks (the user's choice) resolved."""
    dest = Path(os.path.abspath(dest))
    if dest.exists() and not dest.is_dir():
        raise UsageError(f"destination {dest} exists and is not a directory")
    return dest.resolve()


def preflight(root: Path, manifest: SnapshotManifest, strays: frozenset[str] = frozenset()) -> None:
    """Check every target path before anything is written: no existing symlink anywhere on the way (it could lead
    outside DEST), no file where a directory must go and no directory where a file must go. Paths under `strays`
    (which --exact moves out of DEST before writing) are not looked at: they will not be there."""
    checked: set[Path] = set()
    for f in manifest.files:
        if strays and under_stray(f.path, strays):
            continue
        cur = root
        components = f.path.split("/")
        for i, name in enumerate(components):
            cur = cur / name
            last = i == len(components) - 1
            if cur in checked and not last:
                continue
            try:
                st = os.lstat(cur)
            except FileNotFoundError:
                break
            if stat.S_ISLNK(st.st_mode):
                raise VerificationError(f"refusing to restore {f.path}: {cur} is a symlink in the destination",
                                        hint="a symlink could lead the restore outside DEST; remove it or restore "
                                             "into an empty directory")
            if not last and not stat.S_ISDIR(st.st_mode):
                raise UsageError(f"cannot restore {f.path}: {cur} exists and is not a directory")
            if last and stat.S_ISDIR(st.st_mode):
                raise UsageError(f"cannot restore {f.path}: {cur} is a directory")
            checked.add(cur)


# Beyond the files' own blocks: directories created, file system metadata, a journal's slack.
SPACE_MARGIN = 1 << 20


def _blocks(n: int, block: int) -> int:
    return -(-n // block) * block


def space_plan(new_sizes: dict[str, int], old_bytes: dict[str, int], block: int) -> tuple[int, int]:
    """(bytes a restore needs free, the replacement budget), from each file's new size and what its existing copy
    in DEST occupies (only files whose blocks a rename over them frees: regular, one link).

    Every file is written to a temp file and renamed over its old copy, which frees the old copy's blocks. So the
    restore ends up using sum(new - old) more than now, counted per file as max(0, new - old): a file that shrinks
    frees space only once it is renamed, which is no help earlier. While a file replacing an old copy is being
    written both exist: the writer keeps those temps within a budget of the largest such file (it waits for earlier
    ones to be renamed first; restore._restore_files), so at most that much more is held at once. A file with no old
    copy is already counted whole. Need = growth + budget + SPACE_MARGIN: a re-restore of the same snapshot needs
    about its largest file, a restore into an empty DEST about the snapshot's size."""
    growth = budget = 0
    for path, size in new_sizes.items():
        new = _blocks(size, block)
        old = old_bytes.get(path, 0)
        growth += max(0, new - old)
        if old:
            budget = max(budget, new)
    return growth + budget + SPACE_MARGIN, budget


def existing_copies(root: Path, manifest: SnapshotManifest, strays: frozenset[str]) -> dict[str, int]:
    """Bytes each file's current copy in DEST occupies, where renaming the new one over it frees them: a regular
    file with no other hard link (one kept open by a running process frees its blocks only when closed; stop the
    model server before restoring under it). Files under `strays` are moved away first: they free nothing here."""
    old: dict[str, int] = {}
    for f in manifest.files:
        if strays and under_stray(f.path, strays):
            continue
        try:
            st = os.lstat(root / f.path)
        except (FileNotFoundError, NotADirectoryError):
            continue
        if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
            old[f.path] = st.st_blocks * 512
    return old


def _check_space(root: Path, manifest: SnapshotManifest, old: dict[str, int]) -> int:
    """Raise before anything is written when DEST's file system cannot take the restore; the replacement budget."""
    probe = root
    while not probe.exists():
        probe = probe.parent
    st = os.statvfs(probe)
    free = st.f_bavail * st.f_frsize
    needed, budget = space_plan({f.path: f.size for f in manifest.files}, old, st.f_frsize or 4096)
    if free < needed:
        raise OperationFailed(f"not enough space under {probe}: the restore needs {needed} bytes, {free} are free",
                              hint="free space or restore elsewhere; nothing was written")
    return budget


def restore_snapshot(store: BlobStore, snapshot_id: str, dest: Path, progress: ProgressSink = NO_PROGRESS,
                     workers: int = DEFAULT_WORKERS, exact: bool = False) -> dict:
    """Restore into `dest`. Entries of DEST that are not in the snapshot (strays) are reported; with `exact` they
    are moved to DEST.drtool-strays/<UTC time>/ (kept, outside DEST) before anything is written, so that DEST ends
    up holding exactly the snapshot."""
    t0 = time.monotonic()
    ref = resolve(store, snapshot_id)
    manifest, _ = load(store, ref)
    root = destination(dest)
    strays = find_strays(root, manifest)
    moving = frozenset(strays) if exact else frozenset()
    preflight(root, manifest, moving)
    if exact:
        check_movable(root, strays)
    old = existing_copies(root, manifest, moving)
    budget = _check_space(root, manifest, old)
    moved_to = move_strays(root, strays) if exact and strays else None
    root.mkdir(parents=True, exist_ok=True)
    removed = remove_leftover_temps(root, manifest)
    writer = _Writer(root)
    progress.start(f"restore {ref.id[:12]}", manifest.bytes_total)
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="restore") as executor:
            _restore_files(store, manifest, writer, executor, workers, progress, budget, set(old))
    except BaseException as exc:
        writer.discard()
        if moved_to and isinstance(exc, DrtoolError):
            exc.details.append(f"the {len(strays)} entries not in the snapshot were moved to {moved_to} first")
        raise
    writer.sync_dirs()
    return {"id": ref.id, "model": manifest.model, "version": manifest.version, "dest": str(root),
            "files": len(manifest.files), "bytes": manifest.bytes_total, "leftover_temps_removed": removed,
            "strays": strays, "strays_moved_to": str(moved_to) if moved_to else None, "exact": exact or not strays,
            "seconds": round(time.monotonic() - t0, 3)}


def remove_leftover_temps(root: Path, manifest: SnapshotManifest) -> int:
    """Delete the temp files an earlier restore into this DEST left when it was killed (kill -9, power loss): they
    are never renamed into place, so nothing else would remove them. Only in the directories this restore writes to,
    only regular files with our prefix, and not those of a restore that is still running on this host (the pid in
    the name is alive): two restores into one DEST at once are a mistake, but not one that should delete data."""
    removed = 0
    for d in sorted({(root / f.path).parent for f in manifest.files}):
        try:
            names = os.listdir(d)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for name in names:
            if not name.startswith(TEMP_PREFIX) or _writer_alive(name):
                continue
            path = d / name
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISREG(os.lstat(path).st_mode):
                    path.unlink()
                    removed += 1
    return removed


def _writer_alive(name: str) -> bool:
    pid = name[len(TEMP_PREFIX):].partition("-")[0]
    if not pid.isdigit() or int(pid) == os.getpid():
        return False  # an older name without a pid, or ours from an earlier restore in this same process
    return process_alive(int(pid))  # a killed restore its parent has not reaped yet is dead: its temps go


def _fetch(store: BlobStore, f: FileEntry, index: int, offset: int,
           buffers: BufferPool) -> tuple[memoryview, bytearray, str | None]:
    """A part's bytes (in a buffer of the pool, which the caller releases); for a one-part file also their digest
    (which is the file's), computed here in parallel. A part of a large file that starts at an unaligned offset (a
    safetensors tensor's) is moved to the same offset modulo ALIGN in its buffer, so most of it can still be written
    around the page cache (directio.place)."""
    part = f.parts[index]
    buf = buffers.acquire(1 if len(f.parts) == 1 else 2)  # a multi-part file's part is also hashed in order (_hash)
    try:
        data = memoryview(store.read_blob(part.sha256, into=buf))
        if offset % ALIGN and f.size >= MIN_DIRECT and len(data) >= 2 * ALIGN and len(data) + ALIGN <= len(buf):
            data = place(buf, data, offset)
    except MissingBlob:
        buffers.release(buf, all_users=True)
        raise VerificationError(f"{f.path}: blob {part.sha256} (part {index}) is missing from the store",
                                hint="restore another snapshot; run `drtool snapshot verify` on this one") from None
    except BaseException:
        buffers.release(buf, all_users=True)
        raise
    return data, buf, hashlib.sha256(data).hexdigest() if len(f.parts) == 1 else None


def _hash(whole, data: memoryview, buf, buffers: BufferPool) -> None:
    try:
        whole.update(data)
    finally:
        buffers.release(buf)


def _restore_files(store: BlobStore, manifest: SnapshotManifest, writer: _Writer, executor: ThreadPoolExecutor,
                   workers: int, progress: ProgressSink, budget: int, replacing_paths: set[str]) -> None:
    items = [(f, i, offset) for f in manifest.files for i, offset in enumerate(_part_offsets(f))]
    window = workers + 2
    # Part-sized buffers, reused: at most `window` parts are fetched ahead, one is being written, and a few wait for
    # the in-order whole-file hash. Fresh memory for every part cost more than the copy itself on our VMs (page
    # faults; docs/benchmarks.md).
    largest = max((p.size for f in manifest.files for p in f.parts), default=0)
    buffers = BufferPool(window + 3, largest + ALIGN)  # + ALIGN: room to move a part (directio.place)
    fetched = ordered_map(executor, lambda item: _fetch(store, *item, buffers), items, window=window)
    finals: list[Future] = []
    # Temps of files that replace an existing copy, not yet renamed over it: both copies take space meanwhile, so
    # their sizes are kept within `budget`, which the space check counted (space_plan).
    replacing: deque[tuple[Future, int]] = deque()
    held = 0
    # A multi-part file's digest is computed in part order on its own thread while this one writes the parts.
    with ThreadPoolExecutor(1, thread_name_prefix="restore-hash") as hasher:
        for f in manifest.files:
            replaces = f.path in replacing_paths
            while replacing and replaces and held + f.size > budget:
                done, size = replacing.popleft()
                done.result()
                held -= size
            tmp = writer.open(f)
            whole = hashlib.sha256() if len(f.parts) > 1 else None
            actual = EMPTY_SHA256
            for part in f.parts:
                data, buf, digest = next(fetched)
                handed = False
                try:
                    if len(data) != part.size:
                        raise _mismatch(f, f"(a {len(data)}-byte part where {part.size} bytes were expected)",
                                        [f"blob {part.sha256} has the wrong size"])
                    if whole is not None:
                        hasher.submit(_hash, whole, data, buf, buffers)
                        handed = True
                    else:
                        actual = digest
                    writer.write(tmp, data)
                finally:
                    buffers.release(buf, all_users=not handed)
                progress.advance(part.size)
            if whole is not None:
                actual = hasher.submit(whole.hexdigest).result()
            if actual != f.sha256:
                raise _mismatch(f, actual, writer.bad_parts(tmp, f))
            finals.append(executor.submit(writer.commit, tmp, f))
            if replaces:
                replacing.append((finals[-1], f.size))
                held += f.size
    for fut in finals:
        fut.result()


def _part_offsets(f: FileEntry) -> list[int]:
    """Where each part of the file starts."""
    offsets, at = [], 0
    for p in f.parts:
        offsets.append(at)
        at += p.size
    return offsets


def _mismatch(f: FileEntry, actual: str, bad_parts: list[str]) -> VerificationError:
    return VerificationError(f"{f.path}: sha256 mismatch: expected {f.sha256}, actual {actual}",
                             details=bad_parts, hint="the store holds damaged data for this file; nothing was "
                                                     "renamed into place for it. Restore another snapshot")


class _TempFile:
    def __init__(self, fd: int, path: Path, final: Path, direct: bool):
        self.fd = fd
        self.path = path
        self.final = final
        self.can_direct = direct  # the file system takes O_DIRECT for this (large) file
        self.direct = direct  # O_DIRECT is on now: aligned spans of parts go around the page cache (directio)
        self.offset = 0  # bytes written so far


class _Writer:
    """Temp files in their final directory; renamed into place only after fsync. Tracks them to clean up on error."""

    def __init__(self, root: Path):
        self.root = root
        self._open: dict[Path, _TempFile] = {}
        self._dirs: set[Path] = set()
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(MAX_OPEN_FILES)

    def open(self, f: FileEntry) -> _TempFile:
        final = self.root / f.path
        parent = final.parent
        try:
            if parent not in self._dirs:
                parent.mkdir(parents=True, exist_ok=True)
                if Path(os.path.realpath(parent)) != parent:
                    raise VerificationError(f"refusing to restore {f.path}: {parent} resolves elsewhere "
                                            f"({os.path.realpath(parent)})")
                self._dirs.add(parent)
            self._slots.acquire()
            path = parent / f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(8)}"
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise _write_error(f.path, exc) from None
        tmp = _TempFile(fd, path, final, f.size >= MIN_DIRECT and set_direct(fd, True))
        with self._lock:
            self._open[path] = tmp
        return tmp

    def write(self, tmp: _TempFile, data: memoryview) -> None:
        """Append a part: its aligned span with O_DIRECT, the bytes before and after it (which share file blocks
        with the neighbouring parts) through the page cache."""
        start, end = direct_span(tmp.offset, data) if tmp.can_direct else (0, 0)
        try:
            for lo, hi, direct in ((0, start, False), (start, end, True), (end, len(data), False)):
                if lo == hi:
                    continue  # with no span (start == end == 0), only the last piece, the whole part, is written
                direct = direct and tmp.can_direct
                if direct != tmp.direct:
                    if not set_direct(tmp.fd, direct) and direct:
                        tmp.can_direct = direct = False  # refused (EINVAL): this and the rest through the cache
                    tmp.direct = direct
                if direct:
                    tmp.can_direct = tmp.direct = write_at(tmp.fd, data[lo:hi], tmp.offset + lo, True)
                else:
                    write_at(tmp.fd, data[lo:hi], tmp.offset + lo, False)
            tmp.offset += len(data)
        except OSError as exc:
            raise _write_error(str(tmp.final.relative_to(self.root)), exc) from None

    def commit(self, tmp: _TempFile, f: FileEntry) -> None:
        try:
            os.fchmod(tmp.fd, f.mode)
            os.fsync(tmp.fd)
            os.close(tmp.fd)
            os.replace(tmp.path, tmp.final)
        except OSError as exc:
            raise _write_error(f.path, exc) from None
        finally:
            self._slots.release()
        with self._lock:
            del self._open[tmp.path]

    def bad_parts(self, tmp: _TempFile, f: FileEntry) -> list[str]:
        """Which parts of a mismatching multi-part file differ from their blob digest (read back from the temp)."""
        if len(f.parts) < 2:
            return []  # the file digest is the part digest: the message already names both
        if tmp.direct:
            tmp.direct = False
            set_direct(tmp.fd, False)  # read back into ordinary buffers
        found = []
        for i, (part, offset) in enumerate(zip(f.parts, _part_offsets(f), strict=True)):
            got = hashlib.sha256(os.pread(tmp.fd, part.size, offset)).hexdigest()
            if got != part.sha256:
                found.append(f"part {i} at offset {offset} (blob {part.sha256}): expected {part.sha256}, actual {got}")
        return found

    def discard(self) -> None:
        with self._lock:
            leftovers = list(self._open.values())
            self._open.clear()
        for tmp in leftovers:
            with contextlib.suppress(OSError):
                os.close(tmp.fd)
            tmp.path.unlink(missing_ok=True)

    def sync_dirs(self) -> None:
        for d in sorted(self._dirs | {self.root}):
            fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _write_error(path: str, exc: OSError) -> OperationFailed:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return OperationFailed(f"disk full while restoring {path}: {exc.strerror}",
                               hint="free space and run the restore again; unfinished files were removed")
    return OperationFailed(f"cannot write {path}: {exc.strerror}")
