"""Incremental state: per store + model + source, each file's stat signature and digests, and the weekly re-check."""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from drtool.snapshot.manifest import SNAPSHOT_ID_RE, FileEntry

CACHE_FORMAT = 1
DEFAULT_RECHECK_SHARE = 1 / 7
# A file modified this close to (or after) the start of a run may change again within the same timestamp tick
# without its signature changing ("racy" entries, as git calls them), so it is not trusted next time. Timestamps
# tick every few milliseconds on ext4 and xfs; one second also covers coarser filesystems.
RACY_SECONDS = 1.0


def cache_dir() -> Path:
    """$DRTOOL_CACHE_DIR, else $XDG_CACHE_HOME/drtool, else ~/.cache/drtool."""
    if os.environ.get("DRTOOL_CACHE_DIR"):
        return Path(os.environ["DRTOOL_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "drtool"


@dataclass(frozen=True)
class StatSignature:
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int

    @classmethod
    def of(cls, st: os.stat_result) -> StatSignature:
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)

    def to_json(self) -> list[int]:
        return [self.size, self.mtime_ns, self.ctime_ns, self.inode]


def in_recheck_bucket(path: str, share: float, day: int | None = None) -> bool:
    """Whether `path` is re-read today although unchanged. Files fall into round(1/share) buckets by the hash of
    their path; bucket (days since 1970-01-01 UTC) mod the bucket count is re-read today. With the default 1/7,
    every file is re-read once a week; 0 never re-reads, 1 always does."""
    if share <= 0:
        return False
    buckets = max(1, round(1 / min(share, 1.0)))
    if day is None:
        day = int(time.time() // 86400)
    return int.from_bytes(hashlib.sha256(path.encode()).digest()[:8], "big") % buckets == day % buckets


class IncrementalCache:
    """One JSON file per store + model + source; written atomically after a snapshot completes."""

    def __init__(self, store_url: str, model: str, source: Path, part_size: int):
        self.key = hashlib.sha256(json.dumps([store_url, model, str(source)]).encode()).hexdigest()[:32]
        self.path = cache_dir() / "snapshots" / f"{self.key}.json"
        self.header = {"format": CACHE_FORMAT, "store": store_url, "model": model, "source": str(source),
                       "part_size": part_size}
        self._old: dict[str, dict] = {}
        self.last_snapshot: str | None = None  # the snapshot the entries were recorded for
        self._new: dict[str, dict] = {}
        self.problem: str | None = None  # why an existing cache file was ignored

    def load(self) -> IncrementalCache:
        try:
            doc = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return self
        except (OSError, ValueError) as exc:
            self.problem = f"ignoring unreadable cache {self.path}: {exc}"
            return self
        if isinstance(doc, dict) and all(doc.get(k) == v for k, v in self.header.items()):
            self._old = doc.get("files", {}) if isinstance(doc.get("files"), dict) else {}
            last = doc.get("snapshot")
            self.last_snapshot = last if isinstance(last, str) and SNAPSHOT_ID_RE.match(last) else None
        return self

    def lookup(self, path: str, sig: StatSignature) -> FileEntry | None:
        item = self._old.get(path)
        if not isinstance(item, dict) or item.get("stat") != sig.to_json():
            return None
        try:
            return FileEntry.from_json({"path": path, **item["entry"]})
        except (KeyError, TypeError, IndexError):
            return None

    def record(self, entry: FileEntry, sig: StatSignature, run_started: float) -> None:
        if sig.mtime_ns / 1e9 >= run_started - RACY_SECONDS:
            return
        doc = entry.to_json()
        del doc["path"]
        self._new[entry.path] = {"stat": sig.to_json(), "entry": doc}

    def save(self, snapshot_id: str) -> None:
        """Replace the cache with this run's entries (files gone from the source drop out)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            doc = {**self.header, "snapshot": snapshot_id, "files": self._new}
            f.write(json.dumps(doc, separators=(",", ":")).encode())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
