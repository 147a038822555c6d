"""The lab's fleet in production: the five services of drtool-fleet.yaml besides asr, each the demo
model under its own name and weights, snapshotted on pw-gpu1, replicated to dr-east, registered with the serving
image, promoted, and served on pw-gpu1 on its own port, each step one of drtool's own commands, printed as it runs.
Used by `make drill SCENARIO=region-down` (`python -m drtool.lab.fleet`), tests/test_fleet_lab.py and the benches;
the plain `make drill` does not need it."""

import argparse
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
    print(f"$ drtool --config {config} {' '.join(args)}", file=sys.stderr, flush=True)
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


def serve(cfg: Config, only: set[str] | None = None) -> dict:
    """Each of the five (or the `only` ones, by service name) on pw-gpu1 at its port, the way an operator brings a
    site's services home: `drtool failback --site prod-west` (each verified against the registry; one already
    serving is kept)."""
    names = sorted(only) if only is not None else [s.name for s in FLEET_SERVICES if s.model != MAIN_MODEL]
    return _cli(cfg.path, "failback", "--site", "prod-west", "--yes", *[a for n in names for a in ("--service", n)])


def main(argv: list[str] | None = None) -> int:
    """`python -m drtool.lab.fleet`: the five other services in production on the lab, after `make drill`'s set-up
    (the image asr-demo serves is theirs too)."""
    from drtool.actions.registry import site_registry
    from drtool.lab import Lab

    parser = argparse.ArgumentParser(prog="python -m drtool.lab.fleet", description=main.__doc__)
    parser.add_argument("--size-mb", type=float, default=8, help="each service's demo weights (default 8)")
    args = parser.parse_args(argv)
    lab = Lab()
    cfg = load_config(lab.config_path)
    prod = cfg.site("prod-west")
    registry = site_registry(cfg, prod)
    try:
        entry = registry.production(MAIN_MODEL)
    finally:
        registry.store.close()
    if entry is None:
        print(f"drtool: {MAIN_MODEL} has no production version yet; run `make drill` first", file=sys.stderr)
        return 2
    snapshots = set_up(lab, entry.image.at(prod.registry_url), size_mb=args.size_mb)
    print(json.dumps({"config": str(lab.layout.fleet_config), "snapshots": snapshots}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
