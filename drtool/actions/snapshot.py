"""drtool snapshot ...: open the store, run the engine with a progress bar, return a result dict for the CLI."""

from __future__ import annotations  # PEP 563 (public), for ObjectStore, a type-checking import

import contextlib
from collections.abc import Iterator

from drtool.errors import UsageError
from drtool.snapshot.chunking import MiB
from drtool.snapshot.stores import BlobStore, open_store

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time, docs/benchmarks.md)
if TYPE_CHECKING:
    from drtool.config import ObjectStore
    from drtool.output import Output


def store_settings(url: str, config_path: str | None) -> ObjectStore | str:
    """An s3:// URL takes endpoint, region and credentials from the drtool config's matching object_stores entry
    when a config is found; otherwise the standard AWS variables (AWS_ENDPOINT_URL, AWS_PROFILE, ...) apply.
    A file:// URL needs nothing more (and so not the config module, which is slow to import)."""
    if not url.startswith("s3://"):
        return url
    from drtool.config import ObjectStore, load_config

    try:
        config = load_config(config_path)
    except UsageError:
        if config_path:
            raise
        return ObjectStore(url=url)
    for site in config.sites.values():
        for entry in site.object_stores:
            base = entry.url.rstrip("/")
            if url == base or url.startswith(base + "/"):
                return ObjectStore(url=url, endpoint_url=entry.endpoint_url, region=entry.region,
                                   credentials_file=entry.credentials_file, profile=entry.profile)
    return ObjectStore(url=url)


@contextlib.contextmanager
def opened(url: str, config_path: str | None, create: bool = False) -> Iterator[BlobStore]:
    store = open_store(store_settings(url, config_path), create=create)
    try:
        yield store
    finally:
        store.close()


class RichProgress:
    """A byte progress bar on stderr; hidden for --json and when stderr is not a terminal."""

    def __init__(self, out: Output):
        self._progress = None
        self._task = None
        if out.json_mode or not out.err.is_terminal:
            return  # hidden: and rich.progress is not even imported (it costs start-up time on every run)
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                  TransferSpeedColumn(), TimeRemainingColumn(), console=out.err)

    def __enter__(self) -> RichProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()

    def start(self, description: str, total_bytes: int) -> None:
        if self._progress is None:
            return
        if self._task is not None:
            self._progress.remove_task(self._task)
        self._task = self._progress.add_task(description, total=total_bytes)

    def advance(self, nbytes: int) -> None:
        if self._task is not None:
            self._progress.advance(self._task, nbytes)


def create(out: Output, config_path: str | None, src: str, store: str, model: str, version: str | None,
           source_host: str | None, wait: float, recheck_share: float, part_size_mib: int,
           verify_sample: float | None = None, metrics_file: str | None = None,
           version_from: str | None = None, follow_outside_links: bool = False) -> dict:
    import time

    from drtool.errors import DrtoolError, VerificationError
    from drtool.snapshot.create import CreateOptions, create_snapshot

    if metrics_file:
        from drtool.snapshot.metrics import write_backup_metrics  # prometheus_client: ~60 ms, only when asked
    opts = CreateOptions(source=src, model=model, version=version, source_host=source_host, wait=wait,
                         recheck_share=recheck_share, part_size=part_size_mib * MiB, version_from=version_from,
                         follow_outside_links=follow_outside_links)
    t0 = time.monotonic()
    result = None
    try:
        with opened(store, config_path, create=True) as blob_store, RichProgress(out) as progress:
            result = create_snapshot(blob_store, opts, progress)
            if verify_sample:
                from drtool.snapshot.verify import verify_snapshot

                result["verify"] = verify_snapshot(blob_store, result["id"], sample_percent=verify_sample)
    except DrtoolError as exc:
        if metrics_file:
            write_backup_metrics(metrics_file, model, False, time.monotonic() - t0, result,
                                 verify_failed=isinstance(exc, VerificationError) and result is not None)
        raise
    if metrics_file:
        write_backup_metrics(metrics_file, model, True, time.monotonic() - t0, result)
    for line in result["skipped"]:
        out.info(f"[yellow]skipped[/] {line}")
    for path in result["recheck_mismatches"]:
        out.info(f"[yellow]warning:[/] {path} changed content without a change to its size or times "
                 "(bit rot, or a write that kept its mtime); the snapshot holds what is on disk now")
    return result


def list_snapshots(out: Output, config_path: str | None, store: str, model: str | None) -> dict:
    from drtool.snapshot.catalog import list_refs, load_many

    with opened(store, config_path) as blob_store:
        loaded = load_many(blob_store, list_refs(blob_store, model))
    snapshots = [m.summary(ref.id) for ref, m, err in loaded if m is not None]
    invalid = [{"id": ref.id, "model": ref.model, "error": err.message} for ref, _, err in loaded if err is not None]
    snapshots.sort(key=lambda s: (s["model"], s["created"]))
    return {"store": store, "snapshots": snapshots, "invalid": invalid}


def show(out: Output, config_path: str | None, store: str, snapshot_id: str) -> dict:
    from drtool.snapshot.catalog import load, resolve

    with opened(store, config_path) as blob_store:
        ref = resolve(blob_store, snapshot_id)
        manifest, data = load(blob_store, ref)
    return {**manifest.summary(ref.id), "store": store, "manifest_bytes": len(data), "manifest": manifest.to_json()}


def diff(out: Output, config_path: str | None, store: str, a: str, b: str) -> dict:
    from drtool.snapshot.catalog import load, resolve
    from drtool.snapshot.diff import diff_manifests

    with opened(store, config_path) as blob_store:
        ref_a, ref_b = resolve(blob_store, a), resolve(blob_store, b)
        ma, mb = load(blob_store, ref_a)[0], load(blob_store, ref_b)[0]
    return {"from": ma.summary(ref_a.id), "to": mb.summary(ref_b.id), **diff_manifests(ma, mb)}


def verify(out: Output, config_path: str | None, store: str, snapshot_id: str, read_data: bool,
           sample: float | None, dest: str | None = None) -> dict:
    """The snapshot's blobs in the store; or, with `dest`, a directory against the snapshot (extra entries too)."""
    from drtool.snapshot.verify import verify_directory, verify_snapshot

    if read_data and sample is not None:
        raise UsageError("give --read-data or --sample, not both")
    if dest is not None and (read_data or sample is not None):
        raise UsageError("--dest checks a directory, --read-data and --sample the store: give one of them")
    if sample is not None and not 0 < sample <= 100:
        raise UsageError(f"--sample {sample} is not a percentage in (0, 100]")
    with opened(store, config_path) as blob_store, RichProgress(out) as progress:
        if dest is not None:
            from pathlib import Path

            return verify_directory(blob_store, snapshot_id, Path(dest), progress=progress)
        return verify_snapshot(blob_store, snapshot_id, read_data=read_data, sample_percent=sample,
                               progress=progress)


def restore(out: Output, config_path: str | None, store: str, snapshot_id: str, dest: str,
            manifest_out: str | None = None, exact: bool = False) -> dict:
    from pathlib import Path

    from drtool.fsutil import write_atomic
    from drtool.snapshot.catalog import load, resolve
    from drtool.snapshot.restore import restore_snapshot

    with opened(store, config_path) as blob_store, RichProgress(out) as progress:
        result = restore_snapshot(blob_store, snapshot_id, Path(dest), progress, exact=exact)
        if manifest_out:
            # The exact stored bytes: a model server checks the weights against them, and their SHA-256 is the id.
            _, data = load(blob_store, resolve(blob_store, result["id"]))
            write_atomic(Path(manifest_out), data, 0o644)
            result["manifest"] = manifest_out
    strays = result["strays"]
    shown = ", ".join(strays[:10]) + (f" and {len(strays) - 10} more" if len(strays) > 10 else "")
    if result["strays_moved_to"]:
        out.info(f"moved {len(strays)} entries not in the snapshot out of DEST to {result['strays_moved_to']}: "
                 f"{shown}")
    elif strays:
        out.info(f"[yellow]warning:[/] {len(strays)} entries in {result['dest']} are not in the snapshot and were left "
                 f"there: {shown} (--exact moves them aside)")
    return result


def sums(out: Output, config_path: str | None, store: str, snapshot_id: str) -> dict:
    from drtool.snapshot.catalog import load, resolve

    with opened(store, config_path) as blob_store:
        ref = resolve(blob_store, snapshot_id)
        manifest, _ = load(blob_store, ref)
    return {"id": ref.id, "lines": manifest.sha256sum_lines()}


def prune(out: Output, config_path: str | None, store: str, model: str | None, keep_last: int, keep_daily: int,
          keep_weekly: int, keep_monthly: int, protect: tuple[str, ...], dry_run: bool, wait: float) -> dict:
    from drtool.snapshot.prune import RetentionPolicy, prune_store

    policy = RetentionPolicy(last=keep_last, daily=keep_daily, weekly=keep_weekly, monthly=keep_monthly)
    with opened(store, config_path) as blob_store, out.working("pruning"):
        return prune_store(blob_store, policy, model=model, protect=protect, dry_run=dry_run, wait=wait)


def replicate(out: Output, config_path: str | None, snapshot_id: str, source: str, target: str, wait: float, *,
              target_endpoint: str | None = None, target_region: str | None = None,
              target_credentials_file: str | None = None, verify_sample: float | None = None) -> dict:
    """Copy a snapshot; the target's S3 settings given explicitly win over the config's. With verify_sample, a
    share of the copy's blobs is read back from the target and hashed (VerificationError, exit 3, if any differs)."""
    from drtool.snapshot.replicate import replicate_snapshot
    from drtool.snapshot.verify import verify_snapshot

    if source.rstrip("/") == target.rstrip("/"):
        raise UsageError("--from and --to are the same store")
    if target_endpoint or target_region or target_credentials_file:
        if not target.startswith("s3://"):
            raise UsageError(f"--to-endpoint, --to-region and --to-credentials-file are for s3:// stores "
                             f"(--to {target})")
        from drtool.config import ObjectStore

        target_settings = ObjectStore(url=target, endpoint_url=target_endpoint, region=target_region,
                                      credentials_file=target_credentials_file)
    else:
        target_settings = store_settings(target, config_path)
    dst = open_store(target_settings, create=True)
    try:
        with opened(source, config_path) as src, RichProgress(out) as progress:
            result = replicate_snapshot(src, dst, snapshot_id, wait=wait, progress=progress)
        if verify_sample is not None:
            result["verify"] = verify_snapshot(dst, result["id"], sample_percent=verify_sample)
        return result
    finally:
        dst.close()

