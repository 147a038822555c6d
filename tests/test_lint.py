"""Ansible content and Python code pass the linters the project's CI requires."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .conftest import REPO

BIN = Path(sys.executable).parent


def _run(*argv: str) -> subprocess.CompletedProcess:
    env_path = f"{BIN}:/usr/bin:/bin:/usr/sbin:/sbin"
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={"PATH": env_path, "HOME": str(Path.home()), "ANSIBLE_ROLES_PATH": str(REPO / "roles")})


def test_yamllint():
    proc = _run(str(BIN / "yamllint"), "-s", "playbooks", "roles", "inventory")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ansible_lint_production_profile():
    proc = _run(str(BIN / "ansible-lint"), "--offline", "--profile", "production", "playbooks", "roles")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


def test_ruff():
    proc = _run(str(BIN / "ruff"), "check", "drtool", "tests", "inventory", "images", "bench")
    assert proc.returncode == 0, proc.stdout
