"""Helpers for the snapshot tests: the drtool executable, and small model directories made of real files."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from .conftest import REPO

DRTOOL = shutil.which("drtool") or str(REPO / ".venv" / "bin" / "drtool")
MiB = 1 << 20


def write_random(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    return path


def settle(root: Path) -> None:
    """Move every file's mtime a minute back, so the incremental cache trusts it (fresh files are 'racy')."""
    past = time.time() - 60
    for p in root.rglob("*"):
        if p.is_file():
            os.utime(p, (past, past))


def model_dir(root: Path) -> Path:
    """A small model: a two-part shard, a config, a tokenizer, an empty file, a nested file."""
    write_random(root / "model-00001-of-00001.bin", 3 * MiB + 123)
    (root / "config.json").write_text('{"hidden": 64}\n')
    write_random(root / "tokenizer" / "vocab.bin", 200_000)
    (root / "EMPTY").write_bytes(b"")
    settle(root)
    return root


def lean_path(auth_s3, bucket: str, prefix: str, credentials=None):
    """The lean S3 path as drtool learns it from botocore (a HEAD of a blob key), optionally with other
    credentials; `auth_s3` is a test server fixture with client() and credentials()."""
    from drtool.snapshot import s3blobs

    fast = s3blobs.BlobRequests.learn(auth_s3.client(), bucket, f"{prefix}/blobs/sha256/00/{'0' * 64}",
                                      credentials=auth_s3.credentials(), ca_bundle=True)
    assert fast is not None, "the lean path should apply to a plain HTTP endpoint"
    if credentials is not None:
        fast.credentials = credentials
    return fast
