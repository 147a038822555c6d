"""Lab files: written only when changed (atomically, via drtool.fsutil), log tails and rotation."""

import os
from pathlib import Path

from drtool.fsutil import write_atomic


def write_if_changed(path: Path, data: str, mode: int = 0o644) -> bool:
    """Write only when the content differs (keeps configs stable across idempotent runs)."""
    try:
        if path.read_text() == data and (path.stat().st_mode & 0o777) == mode:
            return False
    except OSError:
        pass
    write_atomic(path, data, mode)
    return True


def tail(path: Path, lines: int = 12) -> str:
    """The last lines of a log file, for error messages."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 16384))
            text = f.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    out = [ln if len(ln) <= 300 else ln[:297] + "..." for ln in text.splitlines()[-lines:]]
    return "\n".join(out) or "(log is empty)"


def rotate(path: Path, max_bytes: int = 10 << 20) -> None:
    """Keep one previous generation of a log once it grows past max_bytes."""
    try:
        if path.stat().st_size > max_bytes:
            os.replace(path, path.with_name(path.name + ".1"))
    except FileNotFoundError:
        pass
