"""pytest plugin for the snapshot tests (pytest_plugins): a moto S3 server over real HTTP, and an isolated
environment per test that runs the CLI as a subprocess. Helpers that tests import live in snapshot_helpers."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest

from .snapshot_helpers import DRTOOL


@dataclass
class SnapshotEnv:
    """One test's world: its own cache dir, AWS variables pointing at moto, no drtool config."""

    vars: dict
    tmp: Path
    endpoint: str

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
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def bucket(self) -> str:
        name = f"snap-{secrets.token_hex(6)}"
        self.s3().create_bucket(Bucket=name)
        return name

    def store(self, kind: str) -> str:
        if kind == "file":
            return f"file://{self.tmp / 'store'}"
        return f"s3://{self.bucket()}/weights"


@pytest.fixture
def snap_env(tmp_path, moto_server) -> SnapshotEnv:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DRTOOL_"))}
    env.update(AWS_ENDPOINT_URL=moto_server, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
               AWS_DEFAULT_REGION="us-east-1", DRTOOL_CACHE_DIR=str(tmp_path / "cache"),
               DRTOOL_LAB_DIR=str(tmp_path / "no-lab"))
    return SnapshotEnv(env, tmp_path, moto_server)
