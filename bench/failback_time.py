"""`drtool failback --site prod-west` on the lab, timed: one service (the lab's drtool.yaml) and the six-service
site (drtool-fleet.yaml), each the median of N runs, for one or more drtool source trees in the same session (the
tree before the one recovery engine, and after). Each run: prod-west's GPU hosts powered off, `drtool failover
--site dr-east --yes` (with `--all` for the six), the hosts back on, then the timed failback (wall clock of the whole
command, as an operator sees it).

Needs the lab up with the production service (`make drill`) and, for the six, the five other services
(`python -m drtool.lab.fleet`). Usage:

    .venv/bin/python bench/failback_time.py --tree after=. --tree before=/tmp/drtool-before --repeat 3 \\
        --out bench/results/failback_time.json

A tree is a checkout of this repository; each is run as `python -m drtool` with that tree first on PYTHONPATH and
this venv's packages.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from statistics import median

LAB_CONFIG = Path("/var/lib/drtool-lab/drtool.yaml")
FLEET_CONFIG = Path("/var/lib/drtool-lab/drtool-fleet.yaml")
PRIMARY_GPUS = ("pw-gpu1", "pw-gpu2")


def drtool(tree: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(tree.resolve())}
    proc = subprocess.run([sys.executable, "-m", "drtool", *args], capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise SystemExit(f"drtool {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n"
                         f"{proc.stderr[-3000:]}")
    return proc


def one(tree: Path, config: Path, fleet: bool) -> float:
    for h in PRIMARY_GPUS:
        drtool(tree, "lab", "power", h, "off")
    drtool(tree, "--config", str(config), "failover", "--site", "dr-east", "--yes", *(["--all"] if fleet else []))
    for h in PRIMARY_GPUS:
        drtool(tree, "lab", "power", h, "on")
    t0 = time.monotonic()
    drtool(tree, "--config", str(config), "failback", "--site", "prod-west", "--yes")
    return round(time.monotonic() - t0, 3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", action="append", required=True, metavar="NAME=PATH")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", choices=("one", "six"), help="only this site shape")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    trees = dict(t.split("=", 1) for t in args.tree)
    shapes = {"one": (LAB_CONFIG, False), "six": (FLEET_CONFIG, True)}
    if args.only:
        shapes = {args.only: shapes[args.only]}
    results: dict = {"repeat": args.repeat, "trees": {}, "started": time.time()}
    for shape, (config, fleet) in shapes.items():
        for name, path in trees.items():   # interleaved per shape: both trees see the same lab state
            runs = [one(Path(path), config, fleet) for _ in range(args.repeat)]
            results["trees"].setdefault(name, {})[shape] = {"runs_s": runs, "median_s": median(runs)}
            print(f"{shape} service(s), {name}: median {median(runs):.1f} s of {runs}", file=sys.stderr, flush=True)
    results["ended"] = time.time()
    text = json.dumps(results, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
