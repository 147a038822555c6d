"""Predicted against measured RTO on the lab: `drtool readiness` predicts, then a drill measures, in that order.

    .venv/bin/python bench/rto_prediction_bench.py --runs 3                 # primary-down, the lab's one service
    .venv/bin/python bench/rto_prediction_bench.py --runs 1 --region        # region-down, the six-service site

Needs the lab as `make drill` leaves it (production serving, one passing drill in the history). For --region the
five other services are set up first (drtool/lab/fleet.py, drtool's own commands). Each run: the readiness check's
predicted RTO (per service and for the fleet) is read, then `drtool drill --site dr-east --scenario S` runs and its
measured RTO (fault to the canary served through the record; for a region, the last service's) is read from the
drill report. The history the next prediction reads includes the drills before it. Prints a table and writes
JSON (`--out`). There is no peer tool: the goal is the prediction within +/-25 % of the measurement.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DRTOOL = str(Path(sys.executable).parent / "drtool")


def cli(*args: str, ok=(0,)) -> dict:
    proc = subprocess.run([DRTOOL, "--json", *args], capture_output=True, text=True, cwd=REPO)
    if proc.returncode not in ok:
        sys.exit(f"drtool {' '.join(args)} failed ({proc.returncode}): {proc.stdout[-2000:]} {proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--region", action="store_true", help="region-down on the lab's six-service configuration")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "rto_prediction.json")
    args = ap.parse_args()

    from drtool.lab import Lab

    lab = Lab()
    config = str(lab.config_path)
    scenario = "primary-down"
    if args.region:
        from drtool.actions.registry import site_registry
        from drtool.config import load_config
        from drtool.lab import fleet as lab_fleet

        cfg = load_config(lab.config_path)
        prod = cfg.site("prod-west")
        registry = site_registry(cfg, prod)
        try:
            image = registry.production("asr-demo").image.at(prod.registry_url)   # the image production serves
        finally:
            registry.store.close()
        lab_fleet.set_up(lab, image)
        config, scenario = str(lab.layout.fleet_config), "region-down"
    rows = []
    for i in range(args.runs):
        ready = cli("--config", config, "readiness", "--site", "dr-east", ok=(0, 3))
        predicted = {s["service"]: s.get("predicted_rto_s") for s in ready["services"]}
        fleet_predicted = (ready.get("rto") or {}).get("predicted_s")
        t0 = time.monotonic()
        drill = cli("--config", config, "drill", "--site", "dr-east", "--scenario", scenario, ok=(0, 3))
        sc = drill["scenarios"][0]
        measured = sc.get("rto_s")
        per = {n: p.get("rto_s") for n, p in (sc.get("services") or {}).items()}
        row = {"run": i + 1, "scenario": scenario, "passed": drill["passed"],
               "drill_s": round(time.monotonic() - t0, 1),
               "predicted": fleet_predicted if args.region else next(iter(predicted.values()), None),
               "measured": measured, "per_service_predicted": predicted, "per_service_measured": per,
               "ready": ready.get("ready"), "statistic": (ready.get("rto") or {}).get("statistic")}
        row["error_pct"] = (round(100 * (row["predicted"] - measured) / measured, 1)
                            if row["predicted"] is not None and measured else None)
        rows.append(row)
        print(f"run {i + 1} {scenario}: predicted {row['predicted']} s, measured {measured} s "
              f"({row['error_pct']} %), drill passed {drill['passed']}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
