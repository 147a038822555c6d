"""snapshot prune: choose snapshots by retention policy, delete their manifests first, then blobs no manifest uses."""

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

from drtool.errors import UsageError, VerificationError
from drtool.snapshot.catalog import MIN_PREFIX, SnapshotRef, list_refs, load_many
from drtool.snapshot.chunking import DEFAULT_WORKERS
from drtool.snapshot.lease import LEASE_TTL, PRUNE_LEASE, Lease, first_live_writer
from drtool.snapshot.manifest import SnapshotManifest, is_snapshot_id
from drtool.snapshot.stores import BLOBS, BlobStore, FileStore, blob_key, manifest_key


@dataclass(frozen=True)
class RetentionPolicy:
    """restic's rules: keep the N newest; and the newest snapshot of each of the N newest days, ISO weeks, months
    (UTC) that have one. A snapshot kept by any rule is kept."""

    last: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0

    def is_empty(self) -> bool:
        return not (self.last or self.daily or self.weekly or self.monthly)


def _created(manifest: SnapshotManifest) -> datetime:
    return datetime.strptime(manifest.created, "%Y-%m-%dT%H:%M:%S.%fZ")


def keep_reasons(snapshots: list[tuple[str, SnapshotManifest]], policy: RetentionPolicy) -> dict[str, list[str]]:
    """For one model's snapshots: id -> why it is kept (absent: not kept)."""
    newest_first = sorted(snapshots, key=lambda s: (_created(s[1]), s[0]), reverse=True)
    reasons: dict[str, list[str]] = {}
    for sid, _ in newest_first[:policy.last]:
        reasons.setdefault(sid, []).append("last")
    buckets = (("daily", policy.daily, lambda d: d.strftime("%Y-%m-%d")),
               ("weekly", policy.weekly, lambda d: "{}-W{:02d}".format(*d.isocalendar()[:2])),
               ("monthly", policy.monthly, lambda d: d.strftime("%Y-%m")))
    for name, count, bucket_of in buckets:
        seen: set[str] = set()
        for sid, manifest in newest_first:
            if len(seen) >= count:
                break
            bucket = bucket_of(_created(manifest))
            if bucket not in seen:
                seen.add(bucket)
                reasons.setdefault(sid, []).append(f"{name} {bucket}")
    return reasons


def prune_store(store: BlobStore, policy: RetentionPolicy, model: str | None = None, protect: tuple[str, ...] = (),
                dry_run: bool = False, wait: float = 0.0, workers: int = DEFAULT_WORKERS) -> dict:
    """Apply `policy` to each model's snapshots (only `model`'s if given), then free the blobs that no remaining
    manifest in the whole store references. Runs only while no create or replicate holds a lease in the store,
    and they wait for it: so no blob a running create has stored or found present can disappear under it."""
    if policy.is_empty():
        raise UsageError("no retention rule given", hint="pass at least one of --keep-last, --keep-daily, "
                                                         "--keep-weekly, --keep-monthly (prune never deletes all)")
    t0 = time.monotonic()
    lease = None
    if not dry_run:
        lease = Lease(store, PRUNE_LEASE, "snapshot prune")
        lease.acquire(wait, blocked_by=lambda: first_live_writer(store))
    try:
        result = _prune(store, policy, model, protect, dry_run, workers, lease)
    finally:
        if lease is not None:
            lease.release()
    result["seconds"] = round(time.monotonic() - t0, 3)
    return result


def _load_all(store: BlobStore, workers: int) -> dict[SnapshotRef, SnapshotManifest]:
    """Every manifest in the store, all valid: a manifest that cannot be read could reference any blob,
    so none may be freed until it is dealt with."""
    loaded = load_many(store, list_refs(store), workers)
    bad = [f"{ref.key}: {err.message}" for ref, _, err in loaded if err is not None]
    if bad:
        raise VerificationError(f"{len(bad)} manifest(s) in {store.url} cannot be read; nothing was deleted",
                                details=bad, hint="inspect them with `drtool snapshot show`; delete a damaged "
                                                  "manifest by hand once you know what it was")
    return {ref: manifest for ref, manifest, _ in loaded}


def _resolve_protected(protect: tuple[str, ...], refs: list[SnapshotRef]) -> set[str]:
    ids = set()
    for prefix in protect:
        p = prefix.strip().lower()
        matches = {r.id for r in refs if r.id.startswith(p)} if len(p) >= MIN_PREFIX else set()
        if len(matches) != 1:
            raise UsageError(f"--protect {prefix}: " + ("no such snapshot" if not matches else "ambiguous prefix"),
                             hint=f"give a snapshot id or a unique prefix of at least {MIN_PREFIX} hex digits")
        ids |= matches
    return ids


def registry_named(store: BlobStore) -> dict[str, str]:
    """Snapshots a model version in this store's registry copy names: never pruned while the version exists
    (a failover to that version must find its weights)."""
    from drtool.model_registry.registry import ModelRegistry

    registry = ModelRegistry(store, store.url)
    named: dict[str, str] = {}
    for model in registry.models():
        for entry in registry.versions(model):
            named.setdefault(entry.snapshot_id, f"{model} {entry.version}")
    return named


def _prune(store: BlobStore, policy: RetentionPolicy, model: str | None, protect: tuple[str, ...], dry_run: bool,
           workers: int, lease: Lease | None) -> dict:
    manifests = _load_all(store, workers)
    protected = _resolve_protected(protect, list(manifests))
    named = registry_named(store)
    by_model: dict[str, list[tuple[str, SnapshotManifest]]] = {}
    for ref, manifest in manifests.items():
        by_model.setdefault(ref.model, []).append((ref.id, manifest))
    kept, removed = [], []
    for name, snaps in sorted(by_model.items()):
        if model is not None and name != model:
            continue
        reasons = keep_reasons(snaps, policy)
        for sid, manifest in snaps:
            why = reasons.get(sid, []) + (["protected"] if sid in protected else []) + \
                ([f"registry: {named[sid]}"] if sid in named else [])
            (kept if why else removed).append({**manifest.summary(sid), "reasons": why})
    removed_ids = {s["id"] for s in removed}

    # 1. Manifests first: once one is gone its snapshot is no longer listed, and its blobs are merely unreferenced.
    if not dry_run:
        for s in removed:
            lease.check_held()
            store.delete(manifest_key(s["model"], s["id"]))
        manifests = _load_all(store, workers)  # mark from what the store holds now, not from memory
    # 2. Then blobs that no remaining manifest references.
    referenced = set()
    for ref, manifest in manifests.items():
        if ref.id not in removed_ids:
            referenced |= manifest.blob_digests()
    garbage = [(obj.key, obj.size) for obj in store.list(BLOBS)
               if is_snapshot_id(obj.key.rsplit("/", 1)[-1]) and obj.key.rsplit("/", 1)[-1] not in referenced
               and obj.key == blob_key(obj.key.rsplit("/", 1)[-1])]
    stale_temps = 0
    if not dry_run:
        def delete(key: str) -> None:
            lease.check_held()
            store.delete(key)

        with ThreadPoolExecutor(max(workers, 8), thread_name_prefix="prune") as executor:
            list(executor.map(delete, [key for key, _ in garbage]))
        store.flush()
        if isinstance(store, FileStore):
            stale_temps = store.remove_stale_temps(older_than=LEASE_TTL)
    return {"store": store.url, "dry_run": dry_run, "kept": kept, "removed": removed,
            "blobs_deleted": len(garbage), "bytes_freed": sum(size for _, size in garbage),
            "stale_temp_files_removed": stale_temps}
