"""Failover RTO on the lab, over several runs: the image NOT pre-pulled on the standby, 500 MB of weights.

    .venv/bin/python bench/rto_bench.py --runs 3 --size-mb 500

Needs the lab up (`drtool lab up`) with the serving image built and pushed (as `make drill` leaves it). Sets up
a production version whose snapshot holds --size-mb of weights (written on pw-gpu1, snapshotted, replicated to
dr-east, registered with its canary, promoted, served on the primary), then for each run: removes the image from
every standby engine, powers pw-gpu1 off, times `drtool failover --site dr-east --yes` (RTO = command start to
DNS confirmed, from its report), checks `dig`, then fails back. Prints a table and writes a JSON report.

There is no peer tool for a whole failover, so this is an absolute measure against issue #5's target (60 s),
with the per-step split so the dominant step is visible."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DRTOOL = str(Path(sys.executable).parent / "drtool")
MODEL = "asr-demo"


def cli(*args: str) -> dict:
    proc = subprocess.run([DRTOOL, "--json", *args], capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        sys.exit(f"drtool {' '.join(args)} failed ({proc.returncode}): {proc.stdout[-2000:]} {proc.stderr[-2000:]}")
    return json.loads(proc.stdout) if proc.stdout.strip() else {}


def dig() -> str:
    return subprocess.run(["dig", "@10.77.0.2", "model.drlab.test", "A", "+short"], capture_output=True, text=True,
                          check=True).stdout.strip()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--size-mb", type=float, default=500)
    ap.add_argument("--version", default="rto-bench-1")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "rto.json"))
    args = ap.parse_args()

    import docker

    from drtool.config import load_config
    from drtool.lab.manager import Lab
    from drtool.model.demo import write_demo_weights

    config = load_config(None)
    lab = Lab(Path(config.lab_state_dir))
    prod, dr = config.site("prod-west"), config.site("dr-east")
    shown = cli("registry", "show", MODEL)["models"][MODEL]
    current = next((v for v in shown["versions"] if v["version"] == shown["production"]), None)
    if current is None:
        sys.exit("no production version: run `make drill` first (it builds, pushes and registers one)")
    image = f"{prod.registry_url}/{current['image']}"  # repository@digest

    weights = lab.state_dir / "hosts" / "pw-gpu1" / "srv" / "models" / MODEL
    t = time.monotonic()
    write_demo_weights(weights, size_mb=args.size_mb, seed=11, model=MODEL, version=args.version, overwrite=True)
    snap = cli("snapshot", "create", str(weights), "--store", prod.object_stores[0].url, "--model", MODEL,
               "--version", args.version)
    cli("snapshot", "replicate", snap["id"], "--from", prod.object_stores[0].url, "--to", dr.object_stores[0].url)
    cli("registry", "register", "--model", MODEL, "--version", args.version, "--snapshot", snap["id"],
        "--image", image)
    cli("registry", "promote", MODEL, args.version, "--reason", "rto bench")
    cli("failback", "--site", "prod-west", "--yes")
    print(f"set-up: {args.size_mb:.0f} MB version {args.version} serving on pw-gpu1 "
          f"({time.monotonic() - t:.0f}s)", flush=True)

    runs = []
    for i in range(args.runs):
        for host in dr.hosts:  # image NOT pre-pulled: remove it from every standby engine
            lab.power_on(host.name)
            engine = docker.DockerClient(base_url=lab.engine_url(host.name))
            for img in engine.images.list():
                engine.images.remove(img.id, force=True)
            engine.close()
            lab.power_off(host.name)
        lab.power_off("pw-gpu1")
        report = cli("failover", "--site", "dr-east", "--yes", "--reason", f"rto bench run {i + 1}")
        answer = dig()
        steps = {s["name"]: s["seconds"] for s in report["services"][0]["steps"]}
        runs.append({"run": i + 1, "rto_s": report["rto_s"], "dig": answer, "steps": steps})
        print(f"run {i + 1}: RTO {report['rto_s']:.1f}s  dig {answer}  " +
              "  ".join(f"{k} {v:.1f}" for k, v in steps.items() if v), flush=True)
        lab.power_on("pw-gpu1")
        cli("failback", "--site", "prod-west", "--yes")

    rtos = [r["rto_s"] for r in runs]
    result = {"runs": runs, "size_mb": args.size_mb, "image": image, "rto_median_s": statistics.median(rtos),
              "rto_max_s": max(rtos), "target_s": 60.0, "met": max(rtos) <= 60.0}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"RTO over {len(rtos)} runs: median {result['rto_median_s']:.1f}s, max {result['rto_max_s']:.1f}s "
          f"(target 60s: {'met' if result['met'] else 'MISSED'}); {args.out}")
    return 0 if result["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
