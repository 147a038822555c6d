"""snapshot replicate: copy the blobs a snapshot needs that another store lacks or holds damaged (each checked on the
way), then its manifest."""

from __future__ import annotations  # PEP 563 (public), for type-checking imports

import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from drtool.errors import DrtoolError, OperationFailed, VerificationError
from drtool.snapshot.catalog import load, resolve
from drtool.snapshot.chunking import DEFAULT_WORKERS
from drtool.snapshot.lease import Lease, live_prune
from drtool.snapshot.progress import NO_PROGRESS
from drtool.snapshot.stores import BY_CHECKSUM, BY_READING, BY_SIZE, DAMAGED, MISSING, BlobStore, MissingBlob

if TYPE_CHECKING:
    from drtool.snapshot.progress import ProgressSink


def replicate_snapshot(source: BlobStore, target: BlobStore, snapshot_id: str, wait: float = 0.0,
                       progress: ProgressSink = NO_PROGRESS, workers: int = DEFAULT_WORKERS) -> dict:
    """The same snapshot (same manifest bytes, so the same id) in `target`. Like a create, it holds the model's
    lease in the target, so a prune there cannot free blobs it copies before its manifest lands."""
    t0 = time.monotonic()
    ref = resolve(source, snapshot_id)
    manifest, data = load(source, ref)
    lease = Lease(target, manifest.model, f"snapshot replicate {ref.id[:12]} from {source.url}")
    lease.acquire(wait, blocked_by=lambda: live_prune(target))
    try:
        sizes = {p.sha256: p.size for f in manifest.files for p in f.parts}
        with ThreadPoolExecutor(workers, thread_name_prefix="replicate") as executor:
            # Every blob the snapshot needs is checked in the target, not only found: a copy damaged there (same
            # name, other bytes) would otherwise stay, and every later snapshot be built on it.
            checked = dict(zip(sizes, executor.map(lambda d: _check(target, d, sizes[d], ref.id), sizes),
                               strict=True))
            missing = [d for d in sizes if checked[d][0] == MISSING]
            damaged = [d for d in sizes if checked[d][0] == DAMAGED]
            damaged_set = set(damaged)
            progress.start(f"replicate {ref.id[:12]}", sum(sizes[d] for d in missing + damaged))

            def copy(digest: str) -> int:
                try:
                    blob = source.read_blob(digest)
                except MissingBlob:
                    raise VerificationError(f"blob {digest} of snapshot {ref.id[:12]} is missing from "
                                            f"{source.url}; nothing was replicated for it" + _also(digest)) from None
                actual = hashlib.sha256(blob).hexdigest()
                if actual != digest:
                    raise VerificationError(f"blob {digest} in {source.url} is damaged: expected sha256 {digest}, "
                                            f"actual {actual}; refusing to replicate it" + _also(digest))
                try:
                    target.put_blob(digest, memoryview(blob))
                except DrtoolError as exc:
                    exc.message = f"{exc.message} (copying blob {digest}{_also(digest)})"
                    raise
                except OSError as exc:
                    raise OperationFailed(f"store {target.url}: cannot write blob {digest}{_also(digest)}: "
                                          f"{exc.strerror}") from None
                progress.advance(len(blob))
                return len(blob)

            def _also(digest: str) -> str:
                return f"; its copy in {target.url} is damaged" if digest in damaged_set else ""

            copied = sum(executor.map(copy, missing + damaged))
        target.flush()
        lease.check_held()
        target.put_if_absent(ref.key, data)
    finally:
        lease.release()
    how = [checked[d][1] for d in sizes]
    return {"id": ref.id, "model": manifest.model, "from": source.url, "to": target.url,
            "blobs_copied": len(missing) + len(damaged), "blobs_present": len(sizes) - len(missing) - len(damaged),
            "blobs_repaired": len(damaged), "repaired": damaged, "bytes_copied": copied,
            "blobs_checked": {"by_checksum": how.count(BY_CHECKSUM), "by_reading": how.count(BY_READING),
                              "by_size": how.count(BY_SIZE)},
            "seconds": round(time.monotonic() - t0, 3)}


def _check(target: BlobStore, digest: str, size: int, snapshot_id: str) -> tuple[str, str]:
    try:
        return target.check_blob(digest, size)
    except DrtoolError as exc:
        exc.message = f"{exc.message} (checking blob {digest} of snapshot {snapshot_id[:12]})"
        raise
