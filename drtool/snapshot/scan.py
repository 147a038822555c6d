"""What a snapshot reads: the regular files under the source directory, each with its stat signature.

Lean on purpose (no dataclasses, pathlib or threads): an unchanged nightly re-run is this scan, a lookup per file
and one manifest write, and its whole process must fit in 2% of the first run (docs/benchmarks.md)."""

import errno
import os
import stat

from drtool.errors import OperationFailed, UsageError
from drtool.snapshot.manifest import is_safe_path_text

# A restore writes each file under a temporary name first: `.drtool-restore-<pid>-<hex>` (drtool.snapshot.restore).
RESTORE_TEMP_PREFIX = ".drtool-restore-"


def signature(st: os.stat_result) -> list[int]:
    """What says a file is unchanged since it was last read: size, mtime_ns, ctime_ns and inode (a list, as JSON
    gives it back from the incremental cache)."""
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


class SourceFile:
    __slots__ = ("path", "abspath", "signature", "mode")

    def __init__(self, path: str, abspath: str, sig: list[int], mode: int):
        self.path = path  # relative, '/'-separated: the manifest path
        self.abspath = abspath
        self.signature = sig
        self.mode = mode

    @property
    def size(self) -> int:
        return self.signature[0]


def scan_source(src: str, follow_outside_links: bool = False) -> tuple[list[SourceFile], list[str]]:
    """Regular files under src (symlinks to files are read through), sorted by manifest path; and what was skipped,
    with why. A restore's leftover temp files (`.drtool-restore-*`) are neither snapshotted nor listed.

    `src` is a resolved path (no symlink in it). A symlink whose target resolves outside src is refused (UsageError
    naming every such link) unless `follow_outside_links`: reading through it would put data from elsewhere on the
    host (another model, a secret) into the snapshot without anyone having asked for it. Links that stay inside src
    (a Hugging Face cache's snapshots/<rev>/* -> ../../blobs/*) are read through. A dangling link or a loop is
    skipped and listed, like the other entries a snapshot cannot hold.

    Only stats: whether a file can be read is checked by the caller for the files it will read (readable_or_fail),
    as a cached file whose signature (ctime included: chmod and ACL changes move it) is unchanged was read before."""
    files: list[SourceFile] = []
    skipped: list[str] = []
    outside: list[str] = []
    pending = [(src, "")]  # (directory, its manifest path prefix)
    inside = src.rstrip("/") + "/"  # a link's resolved target must start with this to stay inside src
    while pending:
        dirpath, prefix = pending.pop()
        try:
            with os.scandir(dirpath) as it:
                entries = list(it)
        except OSError as exc:
            raise OperationFailed(f"cannot read directory {dirpath}: {exc.strerror}",
                                  hint="fix its permissions, or snapshot a directory drtool can read") from None
        for entry in entries:
            name = entry.name
            rel = prefix + name
            if entry.is_dir(follow_symlinks=False):
                pending.append((entry.path, rel + "/"))
                continue
            if name.startswith(RESTORE_TEMP_PREFIX):
                continue  # an unfinished file of a killed restore (the next restore removes it): never content
            if not is_safe_path_text(rel):
                raise UsageError(f"file name {rel!r} has a control character or a backslash",
                                 hint="rename it: manifest paths must print as one line for `sha256sum -c`")
            try:
                st = entry.stat()  # follows a symlink: its target's content is what a snapshot holds
            except OSError as exc:
                if not entry.is_symlink():
                    if isinstance(exc, FileNotFoundError):
                        raise OperationFailed(f"{entry.path} vanished while scanning") from None
                    raise OperationFailed(f"cannot stat {entry.path}: {exc.strerror}") from None
                # Nothing to read behind it (ENOENT: dangling; ELOOP: a loop; EACCES: a directory on the way).
                why = {errno.ENOENT: "dangling symlink", errno.ELOOP: "symlink loop"}.get(exc.errno, exc.strerror)
                skipped.append(f"{rel}: {why} (-> {_link_text(entry.path)})")
                continue
            if stat.S_ISDIR(st.st_mode):
                skipped.append(f"{rel}: symlink to a directory")
                continue
            if not stat.S_ISREG(st.st_mode):
                skipped.append(f"{rel}: not a regular file")
                continue
            if entry.is_symlink() and not follow_outside_links:
                target = os.path.realpath(entry.path)
                if not target.startswith(inside):
                    outside.append(f"{rel} -> {target}")
                    continue
            files.append(SourceFile(rel, entry.path, signature(st), stat.S_IMODE(st.st_mode)))
    if outside:
        outside.sort()
        raise UsageError(f"{outside[0].replace(' -> ', ' is a symlink to ', 1)}, outside the source {src}"
                         + (f" (and {len(outside) - 1} more)" if len(outside) > 1 else ""), details=outside,
                         hint="pass --follow-outside-links to snapshot what such links point to, or snapshot the "
                              "directory that holds their targets; nothing was written")
    files.sort(key=lambda f: f.path)
    skipped.sort()
    return files, skipped


def _link_text(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return "?"


def readable_or_fail(files: list[SourceFile]) -> None:
    """Refuse, before anything is stored, to go on when one of the files to be read cannot be."""
    for sf in files:
        if not os.access(sf.abspath, os.R_OK):
            raise OperationFailed(f"cannot read {sf.abspath}: permission denied",
                                  hint="fix its permissions (nothing was uploaded yet)")
