"""Benchmark the fleet planner (issue #16): 500 services across 3 sites, 1,000 standbys, target < 2 s.

    .venv/bin/python bench/planner_bench.py

Builds a seeded fleet (services and standbys spread over 3 sites, 1-8 GPUs each), then times with
time.perf_counter, --repeats times each (median reported):
  one_site    plan() for one failed site (site-a -> site-b)
  all_sites   plan() for each site failing in turn (site-a -> site-b, site-b -> site-c, site-c -> site-a)
and the same two against a peer measured in the same run: a naive allocator (first fit over the unsorted standby
list, services in priority order, in this file). The target is absolute (every median < 2 s); the ratio to the
naive allocator is reported beside it. Prints a JSON result; exit 1 if a median is over the target.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from drtool.fleet.planner import Service, StandbyHost, plan, validate  # noqa: E402

TARGET_S = 2.0
SITES = ["site-a", "site-b", "site-c"]
ROTATION = [(SITES[i], SITES[(i + 1) % len(SITES)]) for i in range(len(SITES))]


def build_fleet(n_services: int, n_standbys: int, seed: int) -> tuple[list[Service], list[StandbyHost]]:
    rng = random.Random(seed)  # noqa: S311 (a seeded fleet, not a secret)
    services = []
    for i in range(n_services):
        site = SITES[i % len(SITES)]
        services.append(
            Service(
                name=f"svc-{i:04d}",
                site=site,
                model=f"model-{i % 37}",
                record=f"svc-{i:04d}.{site}.models.example.com",
                port=8000 + i,
                priority=rng.randrange(100),
                gpus=rng.choice([1, 1, 1, 1, 2, 2, 4, 8]),
            )
        )
    standbys = [
        StandbyHost(
            name=f"gpu-{i:04d}", site=SITES[i % len(SITES)], gpus=rng.choice([1, 1, 2, 4, 8]), address=f"10.{i}"
        )
        for i in range(n_standbys)
    ]
    rng.shuffle(services)
    rng.shuffle(standbys)
    return services, standbys


def naive_plan(services, standbys, *, failed_site: str, target_site: str, parallel: int) -> tuple[int, int]:
    """The peer: services in priority order, first fit over the standby list as given (no sorting, no buckets)."""
    todo = sorted((s for s in services if s.site == failed_site), key=lambda s: (s.priority, s.name))
    hosts = [h for h in standbys if h.site == target_site]
    free = [h.gpus for h in hosts]
    assigned = left = 0
    for s in todo:
        for i in range(len(hosts)):
            if free[i] >= s.gpus:
                free[i] -= s.gpus
                assigned += 1
                break
        else:
            left += 1
    return assigned, left


def timed(fn, repeats: int) -> tuple[float, list[float]]:
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs), runs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--services", type=int, default=500)
    ap.add_argument("--standbys", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument("--out", type=Path, help="also write the JSON result here")
    args = ap.parse_args()

    t0 = time.perf_counter()
    services, standbys = build_fleet(args.services, args.standbys, args.seed)
    build_s = time.perf_counter() - t0
    problems = validate(services, standbys)

    def one(alloc):
        failed, target = ROTATION[0]
        return alloc(services, standbys, failed_site=failed, target_site=target, parallel=args.parallel)

    def all_sites(alloc):
        return [alloc(services, standbys, failed_site=f, target_site=t, parallel=args.parallel) for f, t in ROTATION]

    one_s, one_runs = timed(lambda: one(plan), args.repeats)
    all_s, all_runs = timed(lambda: all_sites(plan), args.repeats)
    naive_one_s, _ = timed(lambda: one(naive_plan), args.repeats)
    naive_all_s, _ = timed(lambda: all_sites(naive_plan), args.repeats)

    plans = all_sites(plan)
    naive = all_sites(naive_plan)
    met = one_s < TARGET_S and all_s < TARGET_S
    result = {
        "bench": "planner",
        "services": args.services,
        "standbys": args.standbys,
        "sites": len(SITES),
        "parallel": args.parallel,
        "seed": args.seed,
        "repeats": args.repeats,
        "fleet_build_s": round(build_s, 6),
        "validation_problems": len(problems),
        "target_s": TARGET_S,
        "one_site": {
            "median_s": round(one_s, 6),
            "runs_s": [round(r, 6) for r in one_runs],
            "naive_median_s": round(naive_one_s, 6),
            "ratio_to_naive": round(one_s / naive_one_s, 3) if naive_one_s else None,
        },
        "all_sites": {
            "median_s": round(all_s, 6),
            "runs_s": [round(r, 6) for r in all_runs],
            "naive_median_s": round(naive_all_s, 6),
            "ratio_to_naive": round(all_s / naive_all_s, 3) if naive_all_s else None,
        },
        "per_site": [
            {
                "failed_site": p.failed_site,
                "target_site": p.target_site,
                "assigned": len(p.assignments),
                "left": len(p.left),
                "waves": p.waves,
                "naive_assigned": n[0],
                "naive_left": n[1],
            }
            for p, n in zip(plans, naive, strict=True)
        ],
        "met": met,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
