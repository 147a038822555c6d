"""drtool lab up|status|down: the embedded two-site lab on this machine."""

import os
from pathlib import Path

from drtool.errors import UsageError
from drtool.output import Output


def _lab(state_dir: str | None):
    if os.geteuid() != 0:
        raise UsageError("the embedded lab needs root (network namespaces, sshd, dockerd, BIND)",
                         hint="run as root, e.g. `sudo drtool lab up`")
    from drtool.lab import Lab

    return Lab(Path(state_dir) if state_dir else None)


def up(out: Output, state_dir: str | None = None) -> dict:
    lab = _lab(state_dir)
    with out.working("bringing the lab up"):
        parts = lab.up(progress=out.step)
    return {"state_dir": str(lab.state_dir), "config": str(lab.config_path), "parts": [p.to_dict() for p in parts]}


def status(out: Output, state_dir: str | None = None) -> dict:
    lab = _lab(state_dir)
    parts = lab.status()
    return {"state_dir": str(lab.state_dir), "config": str(lab.config_path), "parts": [p.to_dict() for p in parts]}


def down(out: Output, state_dir: str | None = None, purge: bool = False) -> dict:
    lab = _lab(state_dir)
    with out.working("tearing the lab down"):
        lab.down(purge=purge)
    return {"state_dir": str(lab.state_dir), "down": True, "purged": purge}


def power(out: Output, host: str, on: bool, state_dir: str | None = None) -> dict:
    lab = _lab(state_dir)
    with out.working(f"powering {host} {'on' if on else 'off'}"):
        lab.power_on(host) if on else lab.power_off(host)
    return {"host": host, "powered": lab.is_powered(host)}
