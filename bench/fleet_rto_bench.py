"""Fleet RTO against single-service RTO on the lab, in the same run (issue #16): a region outage of six services.

    .venv/bin/python bench/fleet_rto_bench.py --runs 3

Needs the lab up with production set up (`make drill` leaves it so). Sets up the five other services of
drtool-fleet.yaml (drtool/lab/fleet.py), then for each run:

1. single: the image removed from every standby engine, both prod-west GPU hosts powered off, `drtool failover
   --site dr-east --yes` with the lab's drtool.yaml (one service: asr-demo); its RTO (command start to DNS
   confirmed) from its report; then production is put back (`drtool failback`);
2. fleet: the images removed again, both GPU hosts off, `drtool failover --site dr-east --yes --all` with
   drtool-fleet.yaml (six services to four standbys, failover.parallel 6); the fleet RTO is the time from the
   command's start to the last service's record confirmed at its verified standby; then everything is put back.

The peer is drtool's own single-service failover in the same run: the target is fleet RTO <= 1.5 x single RTO
in every run. Prints a table and writes JSON (bench/results/fleet_rto.json)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DRTOOL = str(Path(sys.executable).parent / "drtool")
TARGET_RATIO = 1.5


def cpu_times() -> tuple[int, int]:
    """Machine-wide (busy, total) jiffies from /proc/stat: what the lab's hosts, engines and drtool used."""
    fields = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    idle = fields[3] + fields[4]                      # idle + iowait
    return sum(fields) - idle, sum(fields)


def timed_cpu(*args: str):
    """cli(*args)'s result, the CPU-seconds the whole machine spent meanwhile, and its busy share of every core."""
    b0, t0 = cpu_times()
    result = cli(*args)
    b1, t1 = cpu_times()
    hz = os.sysconf("SC_CLK_TCK")
    return result, round((b1 - b0) / hz, 1), round(100 * (b1 - b0) / max(1, t1 - t0), 1)


def cli(*args: str, ok: tuple[int, ...] = (0,)) -> dict:
    proc = subprocess.run([DRTOOL, "--json", *args], capture_output=True, text=True, cwd=REPO)
    if proc.returncode not in ok:
        sys.exit(f"drtool {' '.join(args)} failed ({proc.returncode}): {proc.stdout[-2000:]} {proc.stderr[-2000:]}")
    return json.loads(proc.stdout) if proc.stdout.strip() else {}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "fleet_rto.json"))
    args = ap.parse_args()

    import docker

    from drtool.config import load_config
    from drtool.execute.dns import dns_for
    from drtool.lab import fleet as lab_fleet
    from drtool.lab.manager import Lab
    from drtool.lab.topology import FLEET_SERVICES, HOSTS

    config = load_config(None)
    lab = Lab(Path(config.lab_state_dir))
    fleet_path = lab.layout.fleet_config
    fleet_cfg = load_config(fleet_path)
    prod, dr = config.site("prod-west"), config.site("dr-east")
    shown = cli("registry", "show", "asr-demo")["models"]["asr-demo"]
    current = next((v for v in shown["versions"] if v["version"] == shown["production"]), None)
    if current is None:
        sys.exit("no production version: run `make drill` first (it builds, pushes and registers one)")
    t = time.monotonic()
    lab_fleet.set_up(lab, f"{prod.registry_url}/{current['image']}")
    print(f"set-up: six services in production ({time.monotonic() - t:.0f}s)", flush=True)

    def clear_standby_images() -> None:
        for host in dr.hosts:
            lab.power_on(host.name)
            engine = docker.DockerClient(base_url=lab.engine_url(host.name))
            for img in engine.images.list():
                engine.images.remove(img.id, force=True)
            engine.close()
            lab.power_off(host.name)

    def region_down() -> None:
        for h in ("pw-gpu1", "pw-gpu2"):
            lab.power_off(h)

    def put_back() -> None:
        for host in dr.hosts:
            if lab.is_powered(host.name):
                lab.power_off(host.name)
        for svc in FLEET_SERVICES:
            if svc.model != "asr-demo":
                dns_for(dataclasses.replace(dr.dns, record=svc.record)).replace_a(
                    [HOSTS["pw-gpu1"].address], dr.dns.ttl, record=svc.record)
        for h in ("pw-gpu1", "pw-gpu2"):
            lab.power_on(h)
        cli("failback", "--site", "prod-west", "--yes")
        lab_fleet.serve(fleet_cfg)

    runs = []
    for i in range(args.runs):
        clear_standby_images()
        region_down()
        single, single_cpu_s, single_busy = timed_cpu(
            "failover", "--site", "dr-east", "--yes", "--reason", f"fleet bench run {i + 1}: single")
        put_back()
        clear_standby_images()
        region_down()
        fleet, fleet_cpu_s, fleet_busy = timed_cpu(
            "--config", str(fleet_path), "failover", "--site", "dr-east", "--yes", "--all",
            "--reason", f"fleet bench run {i + 1}: fleet")
        put_back()
        moved = [r for r in fleet["services"] if r["status"] == "moved"]
        row = {"run": i + 1, "single_rto_s": single["rto_s"], "fleet_rto_s": fleet["rto_s"],
               "services_moved": len(moved), "ratio": round(fleet["rto_s"] / single["rto_s"], 3),
               "per_service_rto_s": {r["service"]: r["rto_s"] for r in moved},
               # the machine's CPU during each command (every lab host shares its cores)
               "single_cpu_s": single_cpu_s, "single_cpu_busy_pct": single_busy,
               "fleet_cpu_s": fleet_cpu_s, "fleet_cpu_busy_pct": fleet_busy,
               "single_steps": {s["name"]: s["seconds"] for s in single["services"][0]["steps"]}}
        runs.append(row)
        print(f"run {i + 1}: single {row['single_rto_s']:.1f}s ({single_cpu_s} CPU-s, {single_busy}% busy), "
              f"fleet of {row['services_moved']} {row['fleet_rto_s']:.1f}s ({fleet_cpu_s} CPU-s, {fleet_busy}% "
              f"busy), ratio {row['ratio']:.2f}", flush=True)

    ratios = [r["ratio"] for r in runs]
    met = max(ratios) <= TARGET_RATIO and all(r["services_moved"] == 6 for r in runs)
    result = {"runs": runs, "target_ratio": TARGET_RATIO, "cores": os.cpu_count(),
              "ratio_median": statistics.median(ratios), "ratio_max": max(ratios), "met": met}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"fleet/single RTO over {len(runs)} runs: median {result['ratio_median']:.2f}, max {result['ratio_max']:.2f}"
          f" (target <= {TARGET_RATIO}: {'met' if result['met'] else 'MISSED'}); {args.out}")
    return 0 if result["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
