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
