"""snapshot replicate: copy a snapshot's missing blobs to another store, each checked on the way, then its manifest."""

from __future__ import annotations  # PEP 563 (public), for type-checking imports

import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from drtool.errors import VerificationError
from drtool.snapshot.catalog import load, resolve
from drtool.snapshot.chunking import DEFAULT_WORKERS
from drtool.snapshot.lease import Lease, live_prune
from drtool.snapshot.progress import NO_PROGRESS
from drtool.snapshot.stores import BlobStore, MissingBlob

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
            have = dict(zip(sizes, executor.map(lambda d: target.blob_size(d), sizes), strict=True))
            missing = [d for d in sizes if have[d] != sizes[d]]
            progress.start(f"replicate {ref.id[:12]}", sum(sizes[d] for d in missing))

            def copy(digest: str) -> int:
                try:
                    blob = source.read_blob(digest)
                except MissingBlob:
                    raise VerificationError(f"blob {digest} of snapshot {ref.id[:12]} is missing from "
                                            f"{source.url}; nothing was replicated for it") from None
                actual = hashlib.sha256(blob).hexdigest()
                if actual != digest:
                    raise VerificationError(f"blob {digest} in {source.url} is damaged: expected sha256 {digest}, "
                                            f"actual {actual}; refusing to replicate it")
                target.put_blob(digest, memoryview(blob))
                progress.advance(len(blob))
                return len(blob)

            copied = sum(executor.map(copy, missing))
        target.flush()
        lease.check_held()
        target.put_if_absent(ref.key, data)
    finally:
        lease.release()
    return {"id": ref.id, "model": manifest.model, "from": source.url, "to": target.url,
            "blobs_copied": len(missing), "blobs_present": len(sizes) - len(missing), "bytes_copied": copied,
            "seconds": round(time.monotonic() - t0, 3)}
