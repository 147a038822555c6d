"""Shared fixtures. Lab tests use the real embedded lab, brought up once per test session."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def lab():
    """The embedded lab, up for the whole session and torn down at its end.

    Lab tests need root (namespaces, sshd, dockerd, BIND). CI runs as root; a developer without root
    gets a hard failure rather than a silent skip, so a broken lab never hides.
    """
    if os.geteuid() != 0:
        pytest.fail("lab tests need root: run `make test` as root")
    from drtool.lab import Lab

    the_lab = Lab()
    the_lab.up()
    yield the_lab
    if not os.environ.get("DRTOOL_KEEP_LAB"):
        the_lab.down()


@pytest.fixture(scope="session")
def lab_config(lab):
    from drtool.config import load_config

    return load_config(lab.config_path)


def run_cli(*args: str, env: dict | None = None, check: bool = False) -> subprocess.CompletedProcess:
    """Run the installed `drtool` console script as a user would."""
    exe = shutil.which("drtool") or str(REPO / ".venv" / "bin" / "drtool")
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([exe, *args], capture_output=True, text=True, env=full_env, check=check, timeout=600)


@pytest.fixture(scope="session")
def moto_server():
    """moto's AWS API server over real HTTP on loopback (EC2, Route 53, S3 ...); yields its endpoint URL."""
    import socket

    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def aws_env(moto_server, monkeypatch):
    """Point the standard AWS environment at the moto server (what an operator's env would do for AWS)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return moto_server
