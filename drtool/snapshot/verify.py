"""snapshot verify: the manifest against its id, every blob present with its size, and with --read-data every byte."""

from __future__ import annotations  # PEP 563 (public), for type-checking imports

import hashlib
import os
import random
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from drtool.errors import VerificationError
from drtool.snapshot.catalog import load, resolve
from drtool.snapshot.chunking import DEFAULT_WORKERS, MiB, ordered_map
from drtool.snapshot.layout import find_strays
from drtool.snapshot.manifest import FileEntry, SnapshotManifest
from drtool.snapshot.progress import NO_PROGRESS
from drtool.snapshot.stores import BlobStore, MissingBlob

if TYPE_CHECKING:
    from drtool.snapshot.progress import ProgressSink

MAX_REPORTED = 50


def verify_snapshot(store: BlobStore, snapshot_id: str, read_data: bool = False, sample_percent: float | None = None,
                    progress: ProgressSink = NO_PROGRESS, workers: int = DEFAULT_WORKERS) -> dict:
    """Raise VerificationError listing every problem found; return what was checked when there is none."""
    t0 = time.monotonic()
    ref = resolve(store, snapshot_id)
    manifest, _ = load(store, ref)
    with ThreadPoolExecutor(workers, thread_name_prefix="verify") as executor:
        if read_data:
            mode, checked, nbytes, problems = "read-data", *_read_everything(store, manifest, executor, workers,
                                                                             progress)
        elif sample_percent is not None:
            mode, checked, nbytes, problems = "sample", *_read_sample(store, manifest, executor, sample_percent,
                                                                      progress)
        else:
            mode, checked, nbytes, problems = "exists", *_check_presence(store, manifest, executor)
    if problems:
        raise VerificationError(f"snapshot {ref.id[:12]} failed verification: {problems[0]}",
                                details=problems[:MAX_REPORTED] + ([f"... and {len(problems) - MAX_REPORTED} more"]
                                                                   if len(problems) > MAX_REPORTED else []),
                                hint="restore another snapshot; re-create this one from the source if it still exists")
    return {"id": ref.id, "model": manifest.model, "version": manifest.version, "mode": mode, "ok": True,
            "files": len(manifest.files), "blobs_checked": checked, "bytes_read": nbytes,
            "seconds": round(time.monotonic() - t0, 3)}


def _users(manifest: SnapshotManifest) -> dict[str, list[str]]:
    """Blob digest -> the files (and part numbers) that use it, for messages."""
    users: dict[str, list[str]] = {}
    for f in manifest.files:
        for i, p in enumerate(f.parts):
            users.setdefault(p.sha256, []).append(f"{f.path} part {i}")
    return users


def _check_presence(store: BlobStore, manifest: SnapshotManifest, executor: ThreadPoolExecutor):
    sizes = {p.sha256: p.size for f in manifest.files for p in f.parts}
    users = _users(manifest)
    problems = []
    for digest, got in zip(sizes, executor.map(lambda d: store.blob_size(d), sizes), strict=True):
        if got is None:
            problems.append(f"{users[digest][0]}: blob {digest} is missing")
        elif got != sizes[digest]:
            problems.append(f"{users[digest][0]}: blob {digest} has {got} bytes, expected {sizes[digest]}")
    return len(sizes), 0, problems


def _read_blob(store: BlobStore, digest: str) -> tuple[bytes | None, str]:
    try:
        data = store.read_blob(digest)
    except MissingBlob:
        return None, "missing"
    return data, hashlib.sha256(data).hexdigest()


def _read_sample(store: BlobStore, manifest: SnapshotManifest, executor: ThreadPoolExecutor, percent: float,
                 progress: ProgressSink):
    users = _users(manifest)
    digests = sorted(users)
    count = min(len(digests), max(1, round(len(digests) * percent / 100))) if digests else 0
    chosen = random.sample(digests, count)  # noqa: S311 - sampling, not security
    sizes = {p.sha256: p.size for f in manifest.files for p in f.parts}
    progress.start(f"verify sample {percent:g}%", sum(sizes[d] for d in chosen))
    problems, nbytes = [], 0
    for digest, (data, actual) in zip(chosen, executor.map(lambda d: _read_blob(store, d), chosen), strict=True):
        nbytes += len(data or b"")
        progress.advance(len(data or b""))
        if actual != digest:
            problems.append(_blob_problem(users[digest][0], digest, actual))
    return count, nbytes, problems


def _blob_problem(where: str, digest: str, actual: str) -> str:
    if actual == "missing":
        return f"{where}: blob {digest} is missing"
    return f"{where}: blob sha256 mismatch: expected {digest}, actual {actual}"


def _read_everything(store: BlobStore, manifest: SnapshotManifest, executor: ThreadPoolExecutor, workers: int,
                     progress: ProgressSink):
    """Every part of every file, in order: each blob against its digest (in the workers, in parallel) and each
    multi-part file against its whole-file digest (here, as the parts arrive in order)."""
    progress.start("verify", manifest.bytes_total)
    items = [(f, i) for f in manifest.files for i in range(len(f.parts))]
    fetched = ordered_map(executor, lambda item: _read_blob(store, item[0].parts[item[1]].sha256), items,
                          window=workers + 2)
    problems: list[str] = []
    nbytes = 0
    for f in manifest.files:
        whole = hashlib.sha256() if len(f.parts) > 1 else None
        for i, part in enumerate(f.parts):
            data, actual = next(fetched)
            if actual != part.sha256:
                problems.append(_file_problem(f, i, part.sha256, actual))
                whole = None
            elif whole is not None:
                whole.update(data)
            nbytes += len(data or b"")
            progress.advance(len(data or b""))
        if whole is not None and whole.hexdigest() != f.sha256:
            problems.append(f"{f.path}: sha256 mismatch: expected {f.sha256}, actual {whole.hexdigest()} "
                            "(its parts are intact: the manifest's file digest is wrong)")
    return len({p.sha256 for f in manifest.files for p in f.parts}), nbytes, problems


def _file_problem(f: FileEntry, index: int, expected: str, actual: str) -> str:
    where = f.path if len(f.parts) == 1 else f"{f.path} (part {index})"
    if actual == "missing":
        return f"{where}: blob {expected} is missing"
    return f"{where}: sha256 mismatch: expected {expected}, actual {actual}"


def verify_directory(store: BlobStore, snapshot_id: str, dest: Path, progress: ProgressSink = NO_PROGRESS,
                     workers: int = DEFAULT_WORKERS) -> dict:
    """Check that directory `dest` holds exactly the snapshot: each file present, regular, with its size, mode and
    SHA-256 (every byte read), and nothing else (strays, a restore's leftover temp files included). Raise
    VerificationError listing every problem (its `result` has them sorted into missing, changed and extra)."""
    t0 = time.monotonic()
    ref = resolve(store, snapshot_id)
    manifest, _ = load(store, ref)
    root = Path(os.path.abspath(dest))
    if not root.is_dir():
        raise VerificationError(f"{root} is not a directory", hint="give the directory the snapshot was restored into")
    extra = find_strays(root, manifest, temps=True)
    progress.start(f"verify {root}", manifest.bytes_total)
    with ThreadPoolExecutor(workers, thread_name_prefix="verify") as executor:
        found = list(executor.map(lambda f: _check_file(root, f, progress), manifest.files))
    missing = [f.path for f, (problem, _) in zip(manifest.files, found, strict=True) if problem == "missing"]
    changed = [f"{f.path}: {problem}" for f, (problem, _) in zip(manifest.files, found, strict=True)
               if problem not in (None, "missing")]
    nbytes = sum(n for _, n in found)
    problems = ([f"{p}: missing" for p in missing] + changed
                + [f"{p}: not in the snapshot" for p in extra])
    result = {"id": ref.id, "model": manifest.model, "version": manifest.version, "mode": "dest", "dest": str(root),
              "ok": not problems, "files": len(manifest.files), "blobs_checked": 0, "bytes_read": nbytes,
              "missing": missing, "changed": changed, "extra": extra, "seconds": round(time.monotonic() - t0, 3)}
    if problems:
        raise VerificationError(f"{root} is not snapshot {ref.id[:12]}: {problems[0]}"
                                + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
                                details=problems[:MAX_REPORTED] + ([f"... and {len(problems) - MAX_REPORTED} more"]
                                                                   if len(problems) > MAX_REPORTED else []),
                                hint="restore the snapshot again with --exact (entries not in it are moved aside, "
                                     "kept)", result=result)
    return result


def _check_file(root: Path, f: FileEntry, progress: ProgressSink) -> tuple[str | None, int]:
    """(what is wrong with DEST's copy of `f`, or None; bytes read)."""
    path = root / f.path
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return "missing", 0
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file", 0
    if st.st_size != f.size:
        return f"{st.st_size} bytes, expected {f.size}", 0
    digest, nbytes = hashlib.sha256(), 0
    try:
        with open(path, "rb", buffering=0) as fh:
            while chunk := fh.read(16 * MiB):
                digest.update(chunk)
                nbytes += len(chunk)
                progress.advance(len(chunk))
    except OSError as exc:
        return f"cannot read: {exc.strerror}", nbytes
    if digest.hexdigest() != f.sha256:
        return f"sha256 mismatch: expected {f.sha256}, actual {digest.hexdigest()}", nbytes
    if stat.S_IMODE(st.st_mode) != f.mode:
        return f"mode {stat.S_IMODE(st.st_mode):o}, expected {f.mode:o}", nbytes
    return None, nbytes
