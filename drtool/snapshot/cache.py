"""Incremental state: per store + model + source, each file's stat signature and manifest entry, and the weekly
re-check.

An entry is kept as its canonical JSON text, the very bytes the manifest holds for that file: an unchanged file
costs a stat and a list comparison, with nothing parsed or re-encoded (docs/benchmarks.md, unchanged re-run)."""

from __future__ import annotations  # PEP 563 (public), for IncrementalCache in its own class

import json
import os
import time
from hashlib import sha256

from drtool.snapshot.manifest import FileEntry, canonical_json, is_snapshot_id

# Format 1 was JSON with entries as objects: it is still read (and rewritten as 2), so an upgrade reads no data.
CACHE_FORMAT = 2
DEFAULT_RECHECK_SHARE = 1 / 7
# A file modified this close to (or after) the start of a run may change again within the same timestamp tick
# without its signature changing ("racy" entries, as git calls them), so it is not trusted next time. Timestamps
# tick every few milliseconds on ext4 and xfs; one second also covers coarser filesystems.
RACY_SECONDS = 1.0


def cache_dir() -> str:
    """$DRTOOL_CACHE_DIR, else $XDG_CACHE_HOME/drtool, else ~/.cache/drtool."""
    if os.environ.get("DRTOOL_CACHE_DIR"):
        return os.environ["DRTOOL_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "drtool")


def in_recheck_bucket(path: str, share: float, day: int | None = None) -> bool:
    """Whether `path` is re-read today although unchanged. Files fall into round(1/share) buckets by the hash of
    their path; bucket (days since 1970-01-01 UTC) mod the bucket count is re-read today. With the default 1/7,
    every file is re-read once a week; 0 never re-reads, 1 always does."""
    if share <= 0:
        return False
    buckets = max(1, round(1 / min(share, 1.0)))
    if day is None:
        day = int(time.time() // 86400)
    return int.from_bytes(sha256(path.encode()).digest()[:8], "big") % buckets == day % buckets


def entry_json(entry: FileEntry) -> str:
    """A file's manifest entry as canonical JSON text (what the manifest holds for it)."""
    return canonical_json(entry.to_json()).decode()


def _sig_text(sig: list[int]) -> str:
    return "%d,%d,%d,%d" % tuple(sig)  # noqa: UP031 - the fastest of the spellings, once per file per run


class IncrementalCache:
    """One file per store + model + source, replaced atomically after a snapshot completes. Its text format:

        drtool-snapshot-cache 2
        {"model": ..., "part_size": ..., "snapshot": ..., "source": ..., "store": ...}
        PATH<TAB>SIZE,MTIME_NS,CTIME_NS,INODE<TAB>ENTRY   (one line per file)

    ENTRY is the file's manifest entry as canonical JSON. Manifest paths and canonical JSON hold no tab and no
    newline, so a line splits in three; a file that does not is ignored whole (the run reads everything)."""

    def __init__(self, store_url: str, model: str, source: str, part_size: int):
        self.key = sha256(json.dumps([store_url, model, str(source)]).encode()).hexdigest()[:32]
        self.path = os.path.join(cache_dir(), "snapshots", f"{self.key}.json")
        self.header = {"store": store_url, "model": model, "source": str(source), "part_size": part_size}
        self._old: dict[str, tuple[str, str]] = {}  # path -> (signature text, entry JSON text)
        self.last_snapshot: str | None = None  # the snapshot the entries were recorded for
        self._new: list[str] = []
        self.problem: str | None = None  # why an existing cache file was ignored
        # What the --version-from file said, under its digest ({"file", "sha256", "version", "model"}): read from the
        # last run's cache, replaced by this run's (create.version_from_file), saved in the header.
        self.version_label: dict | None = None

    def load(self) -> IncrementalCache:
        try:
            with open(self.path, "rb") as f:
                data = f.read().decode()
            if data.startswith("{"):
                header, files = _parse_format_1(data)
            else:
                header, files = _parse(data)
        except FileNotFoundError:
            return self
        except (OSError, ValueError) as exc:
            self.problem = f"ignoring unreadable cache {self.path}: {exc}"
            return self
        if all(header.get(k) == v for k, v in self.header.items()):
            self._old = files
            last = header.get("snapshot")
            self.last_snapshot = last if isinstance(last, str) and is_snapshot_id(last) else None
            label = header.get("version_label")
            self.version_label = label if isinstance(label, dict) else None
        return self

    def lookup(self, path: str, sig: list[int]) -> str | None:
        """The manifest entry (canonical JSON text) recorded for `path` when its signature was `sig`, else None."""
        item = self._old.get(path)
        return item[1] if item is not None and item[0] == _sig_text(sig) else None

    def record(self, path: str, sig: list[int], entry: str, run_started: float) -> None:
        if sig[1] / 1e9 >= run_started - RACY_SECONDS:
            return
        self._new.append(f"{path}\t{_sig_text(sig)}\t{entry}")

    def save(self, snapshot_id: str) -> None:
        """Replace the cache with this run's entries (files gone from the source drop out). Not fsynced: a cache
        lost or torn in a crash is ignored by load() (the next run reads everything), never wrong."""
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = f"{self.path}.{os.getpid()}.tmp"
        extra = {"version_label": self.version_label} if self.version_label else {}
        header = json.dumps({**self.header, "snapshot": snapshot_id, **extra}, sort_keys=True)
        with open(tmp, "wb") as f:
            f.write("\n".join([MAGIC, header, *self._new, ""]).encode())
        os.replace(tmp, self.path)


MAGIC = f"drtool-snapshot-cache {CACHE_FORMAT}"


def _parse(data: str) -> tuple[dict, dict[str, tuple[str, str]]]:
    lines = data.split("\n")
    if lines[0] != MAGIC or len(lines) < 3 or lines[-1] != "":
        raise ValueError("not a drtool snapshot cache, or cut short")
    header = json.loads(lines[1])
    if not isinstance(header, dict):
        raise ValueError("header is not an object")
    files = {}
    for line in lines[2:-1]:
        path, sig, entry = line.split("\t")  # ValueError unless exactly three fields
        files[path] = (sig, entry)
    return header, files


def _parse_format_1(data: str) -> tuple[dict, dict[str, tuple[str, str]]]:
    """The JSON cache drtool wrote before (entries as objects): read, so that an upgrade re-reads no data."""
    doc = json.loads(data)
    if not isinstance(doc, dict) or doc.get("format") != 1 or not isinstance(doc.get("files"), dict):
        raise ValueError("not a drtool snapshot cache")
    files = {}
    for path, item in doc["files"].items():
        try:
            files[path] = (_sig_text(item["stat"]), entry_json(FileEntry.from_json({"path": path, **item["entry"]})))
        except (KeyError, TypeError, IndexError, ValueError):
            continue
    return doc, files
