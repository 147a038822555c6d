"""The lab's fleet in production: the five services of drtool-fleet.yaml besides asr, each the demo
model under its own name and weights, snapshotted on pw-gpu1, replicated to dr-east, registered with the serving
image, promoted, and served on pw-gpu1 on its own port. Used by tests/test_fleet_lab.py and bench/fleet_rto_bench.py;
`make drill` does not need it."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

from drtool.config import Config, load_config
from drtool.errors import OperationFailed
from drtool.lab.topology import FLEET_SERVICES

MAIN_MODEL = "asr-demo"          # the lab's production service: set up by `make drill` / the test fixture
VERSION = "1.0.0"


def _cli(config: Path, *args: str) -> dict:
    drtool = str(Path(sys.executable).parent / "drtool")
    proc = subprocess.run([drtool, "--json", "--config", str(config), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise OperationFailed(f"drtool {' '.join(args)} exited {proc.returncode}",
                              details=[proc.stdout[-2000:], proc.stderr[-2000:]])
    return json.loads(proc.stdout)


def set_up(lab, image: str, size_mb: float = 8) -> dict:
    """Register and serve the five other services; returns {service: snapshot id}. `image` is the serving image
    by digest in prod-west's registry (the one asr-demo serves). Idempotent enough to run again after the primary
    lost its containers: weights, snapshots and registrations are the same bytes, so only the containers change."""
    from drtool.model.demo import write_demo_weights

    path = lab.layout.fleet_config
    cfg = load_config(path)
    prod, dr = cfg.site("prod-west"), cfg.site("dr-east")
    snapshots = {}
    for seed, svc in enumerate(FLEET_SERVICES, start=1):
        if svc.model == MAIN_MODEL:
            continue
        weights = lab.state_dir / "hosts" / "pw-gpu1" / "srv" / "models" / svc.model
        write_demo_weights(weights, size_mb=size_mb, seed=seed, model=svc.model, version=VERSION, overwrite=True)
        snap = _cli(path, "snapshot", "create", str(weights), "--store", prod.object_stores[0].url,
                    "--model", svc.model, "--version", VERSION)
        _cli(path, "snapshot", "replicate", snap["id"], "--from", prod.object_stores[0].url,
             "--to", dr.object_stores[0].url)
        try:
            shown = _cli(path, "registry", "show", svc.model)["models"].get(svc.model) or {}
        except OperationFailed:   # not registered yet
            shown = {}
        if not any(v["version"] == VERSION for v in shown.get("versions", [])):
            _cli(path, "registry", "register", "--model", svc.model, "--version", VERSION, "--snapshot", snap["id"],
                 "--image", image)
        if shown.get("production") != VERSION:
            _cli(path, "registry", "promote", svc.model, VERSION, "--reason", "lab fleet")
        snapshots[svc.name] = snap["id"]
    serve(cfg)
    return snapshots


def serve(cfg: Config, only: set[str] | None = None) -> None:
    """Each of the five (or the `only` ones, by service name) on pw-gpu1 at its port, checked against the
    registry (a no-op for one already serving)."""
    from drtool.actions import deploy
    from drtool.actions.registry import site_registry

    prod = cfg.site("prod-west")
    host = next(h for h in prod.hosts if h.name == "pw-gpu1")
    registry = site_registry(cfg, prod)
    pulled = set()  # the services share one image: a second pull is a whole playbook for nothing
    try:
        for svc in FLEET_SERVICES:
            if svc.model == MAIN_MODEL or (only is not None and svc.name not in only):
                continue
            entry = registry.require_version(svc.model, VERSION)
            view = dataclasses.replace(prod, serving_port=svc.port, proxy=None)
            model = cfg.model(svc.model)
            if entry.image not in pulled:
                deploy.pull(cfg, view, host, entry)
                pulled.add(entry.image)
            deploy.restore(cfg, view, host, model, entry)
            deploy.start(cfg, view, host, model, entry)
            deploy.wait(view, host)
            deploy.check(view, host, entry)
    finally:
        registry.store.close()
