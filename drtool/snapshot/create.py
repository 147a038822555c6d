"""snapshot create: read changed files once, hash whole and in parts, store missing parts, write the manifest last.

An unchanged re-run (the nightly case) is a scan, a lookup per file in the incremental cache and one manifest write;
its imports are kept to what that needs (thread pools, safetensors parsing and the like load only when a file must
be read), because its whole process must take at most 60 ms for a 2 GiB model, and its engine time at most 2% of
the first run's (docs/benchmarks.md)."""

from __future__ import annotations  # PEP 563 (public), for ProgressSink, a type-checking import

import hashlib
import json
import os
import threading
import time
from collections import namedtuple

from drtool.errors import OperationFailed, UsageError, VerificationError
from drtool.snapshot.cache import DEFAULT_RECHECK_SHARE, IncrementalCache, entry_json, in_recheck_bucket
from drtool.snapshot.chunking import DEFAULT_PART_SIZE, DEFAULT_WORKERS, BufferPool, part_sizes, read_into
from drtool.snapshot.lease import Lease, live_prune
from drtool.snapshot.manifest import (
    EMPTY_SHA256,
    FileEntry,
    PartRef,
    encode_manifest,
    is_model_name,
    snapshot_id,
)
from drtool.snapshot.progress import NO_PROGRESS
from drtool.snapshot.scan import SourceFile, readable_or_fail, scan_source, signature
from drtool.snapshot.stores import PRESENT, REPAIRED, BlobStore, manifest_key

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time, docs/benchmarks.md)
if TYPE_CHECKING:
    from concurrent.futures import Future, ThreadPoolExecutor

    from drtool.snapshot.progress import ProgressSink
    from drtool.snapshot.safetensors import TensorHasher

SAFETENSORS_SUFFIX = ".safetensors"


class CreateOptions(namedtuple("CreateOptions", "source model version source_host wait recheck_share part_size workers "
                                                "version_from follow_outside_links",
                               defaults=(None, None, 0.0, DEFAULT_RECHECK_SHARE, DEFAULT_PART_SIZE, DEFAULT_WORKERS,
                                         None, False))):
    """What to snapshot and how: source (a directory), model, version, source_host, wait (seconds for a busy lease),
    recheck_share, part_size (bytes), workers, version_from (a JSON file of the weights, relative to the source, whose
    "version" labels the snapshot), follow_outside_links (read through symlinks whose target is outside the source,
    refused otherwise)."""

    __slots__ = ()


class Counters:
    """Totals updated from worker threads."""

    def __init__(self) -> None:
        self.bytes_read = 0
        self.bytes_uploaded = 0
        self.blobs_uploaded = 0
        self.blobs_present = 0
        self.blobs_repaired = 0
        self.lock = threading.Lock()

    def stored(self, outcome: str, n: int) -> None:
        with self.lock:
            if outcome == PRESENT:
                self.blobs_present += 1
                return
            self.bytes_uploaded += n
            self.blobs_uploaded += 1
            self.blobs_repaired += outcome == REPAIRED


def validate_options(opts: CreateOptions) -> str:
    if not is_model_name(opts.model):
        raise UsageError(f"model name {opts.model!r} is not valid",
                         hint="letters, digits, '.', '_' and '-', starting with a letter or digit, at most 128")
    if not 0.0 <= opts.recheck_share <= 1.0:
        raise UsageError(f"--recheck-share {opts.recheck_share} is not between 0 and 1")
    if opts.part_size < 1 << 16:
        raise UsageError(f"part size {opts.part_size} is too small (at least 64 KiB)")
    src = os.path.expanduser(str(opts.source))
    if not os.path.exists(src):
        raise UsageError(f"source {src} does not exist")
    if not os.path.isdir(src):
        raise UsageError(f"source {src} is not a directory", hint="snapshot the directory that holds the weights")
    return os.path.realpath(src)


def utc_now() -> str:
    """The manifest's `created`: UTC with microseconds, e.g. 2026-11-22T03:04:05.123456Z."""
    ns = time.time_ns()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 10**9)) + f".{ns // 1000 % 10**6:06d}Z"


def create_snapshot(store: BlobStore, opts: CreateOptions, progress: ProgressSink = NO_PROGRESS) -> dict:
    t0 = time.monotonic()
    run_started = time.time()
    src = validate_options(opts)
    files, skipped = scan_source(src, opts.follow_outside_links)
    if not files:
        raise UsageError(f"source {src} holds no files", hint="point SRC at the directory with the weights")
    lease = Lease(store, opts.model, f"snapshot create {opts.model}")
    lease.acquire(opts.wait, blocked_by=lambda: live_prune(store))
    try:
        result = _create_holding_lease(store, opts, src, files, lease, run_started, progress)
    except BaseException:
        try:
            lease.release()
        except Exception:  # noqa: S110 - the original error matters more; a stale lease is taken over later
            pass
        raise
    lease.release()
    result.update(skipped=skipped, seconds=round(time.monotonic() - t0, 3))
    return result


def _create_holding_lease(store: BlobStore, opts: CreateOptions, src: str, files: list[SourceFile], lease: Lease,
                          run_started: float, progress: ProgressSink) -> dict:
    cache = IncrementalCache(store.url, opts.model, src, opts.part_size).load()
    counters = Counters()
    texts: dict[str, str] = {}  # path -> the file's manifest entry as canonical JSON text
    rechecked: dict[str, str] = {}  # path -> the cached entry of an unchanged file read again (the re-check share)
    to_read: list[SourceFile] = []
    for sf in files:
        text = cache.lookup(sf.path, sf.signature)
        if text is None:
            to_read.append(sf)
        elif in_recheck_bucket(sf.path, opts.recheck_share):
            rechecked[sf.path] = text
            to_read.append(sf)
        else:
            texts[sf.path] = text
    # A cached file is reused only when all its blobs are still in the store (a prune may have freed them).
    # The cache's entries all come from its last snapshot; while that manifest exists its blobs do (prune
    # frees only unreferenced blobs), so one look at it replaces a look at every blob.
    if texts and not (cache.last_snapshot and store.size(manifest_key(opts.model, cache.last_snapshot)) is not None):
        by_path = {sf.path: sf for sf in files}
        for path in _entries_missing_blobs(store, texts, opts.workers):
            del texts[path]
            to_read.append(by_path[path])
    files_cached = len(texts)
    if to_read:
        readable_or_fail(to_read)
        new = _read_files(store, opts, sorted(to_read, key=lambda f: f.path), counters, progress, set(rechecked))
        texts.update((path, entry_json(entry)) for path, entry in new.items())
        mismatches = sorted(p for p, old in rechecked.items() if new[p].sha256 != json.loads(old)["sha256"])
    else:
        mismatches = []

    version = opts.version
    if opts.version_from:
        version = version_from_file(src, files, texts, opts, cache, counters)
    for sf in files:
        cache.record(sf.path, sf.signature, texts[sf.path], run_started)
    created = utc_now()
    data = encode_manifest({"model": opts.model, "version": version, "created": created,
                            "source_host": opts.source_host or os.uname().nodename, "source_path": src,
                            "part_size": opts.part_size}, [texts[sf.path] for sf in files])
    manifest_id = snapshot_id(data)
    store.flush()
    lease.check_held()
    # Conditional: an existing key holds these very bytes (the key is their digest), so losing the race is fine.
    store.put_if_absent(manifest_key(opts.model, manifest_id), data)
    cache.save(manifest_id)
    return {
        "id": manifest_id, "store": store.url, "model": opts.model, "version": version,
        "version_from": opts.version_from,
        "created": created, "files": len(files), "files_cached": files_cached,
        "files_read": len(files) - files_cached, "bytes_total": sum(sf.size for sf in files),
        "bytes_read": counters.bytes_read, "bytes_uploaded": counters.bytes_uploaded,
        "blobs_uploaded": counters.blobs_uploaded, "blobs_present": counters.blobs_present,
        "blobs_repaired": counters.blobs_repaired,
        "recheck_mismatches": mismatches, "cache_note": cache.problem,
    }


MAX_VERSION_FILE = 1 << 20


def version_from_file(src: str, files: list[SourceFile], texts: dict[str, str], opts: CreateOptions,
                      cache: IncrementalCache, counters: Counters) -> str:
    """The version the weights say they are: the "version" string of the JSON file `opts.version_from` (relative to
    SRC, and part of this snapshot: its bytes are checked against the digest the manifest records). A "model" in it
    must be this model; a --version given too must agree. Nothing is written when they do not. The cache keeps what
    the file said under its digest, so an unchanged re-run reads nothing (the digest stands for the content)."""
    name = opts.version_from
    sf = next((f for f in files if f.path == name), None)
    if sf is None:
        raise UsageError(f"--version-from {name}: no such file in {src}",
                         hint="name the weights' JSON file that holds their \"version\" (relative to SRC), or pass "
                              "--version")
    digest = json.loads(texts[name])["sha256"]
    said = cache.version_label
    if not (said and said.get("file") == name and said.get("sha256") == digest):
        said = {"file": name, "sha256": digest, **_read_version_file(sf, digest, counters)}
    version, model = said.get("version"), said.get("model")
    if not isinstance(version, str) or not version.strip() or len(version) > 256:
        raise UsageError(f"{sf.abspath} has no \"version\" string (a JSON object's \"version\", at most 256 "
                         "characters)", hint="write the version into it, or pass --version instead of --version-from")
    if isinstance(model, str) and model != opts.model:
        raise VerificationError(f"{sf.abspath} is model {model!r}, not {opts.model!r}: refusing to label it",
                                hint="check SRC and --model; no snapshot was recorded")
    if opts.version is not None and opts.version != version:
        raise VerificationError(f"the weights in {src} are version {version!r} ({name}), not {opts.version!r}",
                                hint="a snapshot labelled with a version its weights are not would be restored for "
                                     "that version; check which version the host serves (no snapshot was recorded)")
    cache.version_label = said
    return version


def _read_version_file(sf: SourceFile, digest: str, counters: Counters) -> dict:
    """{"version": ..., "model": ...} as the file says (None where it says nothing usable); its bytes must hash to
    `digest`, the one the manifest records for it."""
    try:
        with open(sf.abspath, "rb") as f:
            data = f.read(MAX_VERSION_FILE + 1)
    except OSError as exc:
        raise OperationFailed(f"cannot read {sf.abspath}: {exc.strerror}") from None
    counters.bytes_read += len(data)
    if hashlib.sha256(data).hexdigest() != digest:
        raise _changed(sf)
    try:
        doc = json.loads(data)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        return {"version": None, "model": None}
    return {"version": doc.get("version"), "model": doc.get("model")}


def _entries_missing_blobs(store: BlobStore, texts: dict[str, str], workers: int) -> list[str]:
    """Paths of cached entries with a blob no longer in the store (checked one by one: the last manifest is gone)."""
    from concurrent.futures import ThreadPoolExecutor

    entries = {path: FileEntry.from_json(json.loads(text)) for path, text in texts.items()}
    needed = sorted({(p.sha256, p.size) for e in entries.values() for p in e.parts})
    with ThreadPoolExecutor(workers, thread_name_prefix="snapshot-check") as executor:
        sizes = executor.map(lambda ds: store.blob_size(ds[0]), needed)
        present = {d for (d, size), got in zip(needed, sizes, strict=True) if got == size}
    return [path for path, e in entries.items() if not all(p.sha256 in present for p in e.parts)]


def _read_files(store: BlobStore, opts: CreateOptions, to_read: list[SourceFile], counters: Counters,
                progress: ProgressSink, scrub_paths: set[str]) -> dict[str, FileEntry]:
    """Read, hash and store the given files; their manifest entries by path."""
    from concurrent.futures import ThreadPoolExecutor

    progress.start(f"snapshot {opts.model}", sum(sf.size for sf in to_read))
    with (ThreadPoolExecutor(opts.workers, thread_name_prefix="snapshot") as executor,
          ThreadPoolExecutor(1, thread_name_prefix="snapshot-whole") as whole_thread,
          ThreadPoolExecutor(1, thread_name_prefix="snapshot-tensors") as tensor_thread):
        reader = _PartWriter(store, executor, whole_thread, tensor_thread, opts, counters, progress, scrub_paths)
        return {sf.path: entry for sf, entry in reader.read_all(to_read)}


class _PartWriter:
    """Reads files in order on the calling thread (one pass, large buffers) and hands each part to the workers,
    which hash it, check whether the store has it and store it if not. The whole-file digest of a multi-part file
    and the per-tensor digests of a safetensors file need the bytes in file order: each is fed by its own
    single-thread executor (FIFO, so in order), so that neither serial chain is longer than half the work and
    both cores stay busy (hashlib releases the GIL; measured in docs/benchmarks.md)."""

    def __init__(self, store: BlobStore, executor: ThreadPoolExecutor, whole_thread: ThreadPoolExecutor,
                 tensor_thread: ThreadPoolExecutor, opts: CreateOptions, counters: Counters, progress: ProgressSink,
                 scrub_paths: set[str]):
        self.store = store
        self.executor = executor
        self.whole_thread = whole_thread
        self.tensor_thread = tensor_thread
        self.part_size = opts.part_size
        self.counters = counters
        self.progress = progress
        self.pool = BufferPool(opts.workers + 2, opts.part_size)
        self.failed = threading.Event()
        self.scrub_paths = scrub_paths  # the re-check share: their stored blobs are read back and hashed too
        self.sha256 = hashlib.sha256

    def _store_part(self, buf: bytearray, length: int, scrub: bool) -> str:
        try:
            view = memoryview(buf)[:length]
            digest = self.sha256(view).hexdigest()
            self.counters.stored(self.store.store_blob(digest, view, scrub), length)
            return digest
        except BaseException:
            self.failed.set()
            raise
        finally:
            self.pool.release(buf)

    def _update_whole(self, whole, buf: bytearray, length: int) -> None:
        try:
            whole.update(memoryview(buf)[:length])
        finally:
            self.pool.release(buf)

    def _update_tensors(self, tensor_hasher: TensorHasher, buf: bytearray, offset: int, length: int) -> None:
        try:
            tensor_hasher.update(offset, memoryview(buf)[:length])
        finally:
            self.pool.release(buf)

    def read_all(self, files: list[SourceFile]):
        pending = []
        for sf in files:
            if self.failed.is_set():
                break
            pending.append(self._read_file(sf))
        for sf, sizes, whole, tensors, futures in pending:
            digests = [f.result() for f in futures]
            sha = whole.result() if whole else (digests[0] if digests else EMPTY_SHA256)
            refs = None
            if tensors is not None:
                from drtool.snapshot.safetensors import tensor_refs

                layout, aligned, hashed = tensors  # hashed: None when every tensor is large (none hashed apart)
                refs = tensor_refs(layout, hashed.result() if hashed else {}, aligned, digests)
            yield sf, FileEntry(sf.path, sf.size, sf.mode, sha,
                                tuple(PartRef(d, s) for d, s in zip(digests, sizes, strict=True)), refs)

    def _read_file(self, sf: SourceFile):
        try:
            fd = os.open(sf.abspath, os.O_RDONLY | getattr(os, "O_NOATIME", 0))
        except PermissionError:
            fd = os.open(sf.abspath, os.O_RDONLY)  # O_NOATIME needs ownership; it only saves an inode write
        except OSError as exc:
            raise OperationFailed(f"cannot read {sf.abspath}: {exc.strerror}") from None
        try:
            scrub = sf.path in self.scrub_paths
            before = signature(os.fstat(fd))
            if before != sf.signature:
                raise _changed(sf)
            sizes = part_sizes(sf.size, self.part_size)
            tensor_hasher = layout = aligned = None
            if sf.path.endswith(SAFETENSORS_SUFFIX):
                from drtool.snapshot.safetensors import TensorHasher, part_plan, read_layout

                layout, header_bytes = read_layout(fd, sf.size, sf.abspath)
                self._count_read(header_bytes)
                # Large tensors get parts of their own, which identify them: only the small ones are hashed apart.
                sizes, aligned = part_plan(layout, sf.size, self.part_size)
                if len(aligned) < len(layout.tensors):
                    tensor_hasher = TensorHasher(layout, skip=set(aligned))
            whole = self.sha256() if len(sizes) > 1 else None  # one part: its digest is the file's
            users = 1 + (whole is not None) + (tensor_hasher is not None)
            futures: list[Future[str]] = []
            offset = 0
            for size in sizes:
                buf = self.pool.acquire(users)
                try:
                    got = len(read_into(fd, buf, offset, size))
                except BaseException:
                    for _ in range(users):
                        self.pool.release(buf)
                    raise
                if whole is not None:
                    self.whole_thread.submit(self._update_whole, whole, buf, size)
                if tensor_hasher is not None:
                    self.tensor_thread.submit(self._update_tensors, tensor_hasher, buf, offset, size)
                futures.append(self.executor.submit(self._store_part, buf, size, scrub))
                if got != size:
                    raise _changed(sf)
                self._count_read(size)
                self.progress.advance(size)
                offset += size
            if signature(os.fstat(fd)) != before:
                raise _changed(sf)
        except OSError as exc:
            raise OperationFailed(f"cannot read {sf.abspath}: {exc.strerror}") from None
        finally:
            os.close(fd)
        if layout is None:
            tensors = None
        else:
            tensors = (layout, aligned, self.tensor_thread.submit(tensor_hasher.digests) if tensor_hasher else None)
        return sf, sizes, self.whole_thread.submit(whole.hexdigest) if whole else None, tensors, futures

    def _count_read(self, n: int) -> None:
        self.counters.bytes_read += n  # only the reading thread writes this counter


def _changed(sf: SourceFile) -> OperationFailed:
    return OperationFailed(f"{sf.abspath} changed while it was being snapshotted",
                           hint="snapshot weights that are not being written; no snapshot was recorded")
