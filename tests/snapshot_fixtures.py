"""pytest plugin for the snapshot tests (pytest_plugins): an isolated environment per test that runs the CLI as a
subprocess against the session's SeaweedFS S3 server (conftest.seaweed_s3: a real server, which checks signatures and
checksums). Helpers that tests import live in snapshot_helpers."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import S3Server
from .snapshot_helpers import DRTOOL


@dataclass
class SnapshotEnv:
    """One test's world: its own cache dir, AWS variables pointing at the S3 server, no drtool config."""

    vars: dict
    tmp: Path
    server: S3Server

    @property
    def endpoint(self) -> str:
        return self.server.endpoint

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([DRTOOL, *args], capture_output=True, text=True, env=self.vars, timeout=timeout)

    def json(self, *args: str, code: int = 0) -> dict:
        proc = self.run(*args, "--json")
        if proc.returncode != code:
            raise AssertionError(f"exit {proc.returncode}, expected {code}\n{proc.stdout}\n{proc.stderr}")
        return json.loads(proc.stdout)

    def start(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([DRTOOL, *args, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=self.vars)

    def s3(self):
        return self.server.client()

    def bucket(self) -> str:
        name = f"snap-{secrets.token_hex(6)}"
        self.s3().create_bucket(Bucket=name)
        return name

    def store(self, kind: str) -> str:
        if kind == "file":
            return f"file://{self.tmp / 'store'}"
        return f"s3://{self.bucket()}/weights"


@pytest.fixture
def snap_env(tmp_path, seaweed_s3) -> SnapshotEnv:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DRTOOL_"))}
    env.update(AWS_ENDPOINT_URL=seaweed_s3.endpoint, AWS_ACCESS_KEY_ID=seaweed_s3.key_id,
               AWS_SECRET_ACCESS_KEY=seaweed_s3.secret, AWS_DEFAULT_REGION=seaweed_s3.region,
               AWS_CONFIG_FILE=str(tmp_path / "no-aws-config"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-aws-credentials"),
               DRTOOL_CACHE_DIR=str(tmp_path / "cache"), DRTOOL_LAB_DIR=str(tmp_path / "no-lab"))
    return SnapshotEnv(env, tmp_path, seaweed_s3)
