"""DR readiness, the pure/CPU part over a generated 500-service site: the rules, the capacity plan, the RTO
predictor, the --json document and the metrics textfile (drtool/readiness/). The network part (registry HEADs,
store reads, DNS) is not in here: docs/readiness.md says how it scales.

    .venv/bin/python bench/readiness_bench.py [--services 500] [--repeat 5]

Goal: at most 10 s for 500 services on the 2-core CI machine (docs/benchmarks.md)."""

import argparse
import json
import statistics
import time

from drtool.fleet import planner
from drtool.readiness import metrics, predict, rules

NOW = 1_800_000_000.0


def run_doc(i: int) -> dict:
    secs = {"preflight": 1.0, "lease": 0.2, "provision": 10.0 + i % 3, "pull_image": 10.0, "restore": 6.0 + i % 5,
            "start": 2.0, "wait_ready": 3.0, "verify": 4.0, "fence_primary": 0.5, "flip_dns": 0.1, "confirm_dns": 0.1}
    ev = {"pull_image": {"image": f"reg/img{i % 7}@sha256:{i:064x}", "pulled": i % 2 == 0},
          "restore": {"restore": {"bytes": (1 + i % 4) * 10**9}}}
    return {"run_id": f"fo-{i}", "kind": "failover", "status": "done", "ended": NOW - i * 3600,
            "context": {"host": f"de-{i % 125}", "fleet": True},
            "steps": [{"name": n, "status": "done", "seconds": s, "evidence": ev.get(n, {})} for n, s in secs.items()]}


def site_and_services(n: int) -> tuple[rules.SiteEvidence, list[rules.ServiceEvidence]]:
    reports = tuple({"drill_id": f"d{i}", "site": "dr-east", "ended": NOW - i * 86400, "model": f"m{i}",
                     "scenarios": [{"scenario": "region-down", "passed": True,
                                    "services": {f"svc{j}": {"status": "moved"} for j in range(n)}}]}
                    for i in range(100))
    site = rules.SiteEvidence(
        site="dr-east", registry_url="reg.dr", store_url="s3://dr/x", prepare_ttl=30,
        standbys=tuple(planner.StandbyHost(f"de-{i}", "dr-east", 4) for i in range(125)), parallel=8,
        engine=predict.FLEET, now=NOW, drill_reports=reports,
        samples=tuple(predict.sample_from_run(run_doc(i)) for i in range(200)), detections=((NOW, 5.0),))
    entry = rules.Entry("1.0", "b" * 64, "img@sha256:" + "a" * 64, "c")
    services = [rules.ServiceEvidence(
        service=f"svc{i}", model=f"m{i}", site="prod-west", priority=i % 100, gpus=1 + i % 2, record=f"s{i}.example",
        production=entry, production_from="prod-west", dr_entry=entry, image_ref="reg.dr/img", image_present=True,
        snapshot=rules.SnapshotSeen("b" * 64, NOW - 3600, (1 + i % 9) * 10**9), record_ttl=30,
        record_addresses=("10.0.0.1",)) for i in range(n)]
    return site, services


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--services", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    site, services = site_and_services(args.services)
    targets = rules.Targets(300, 93600, 35 * 86400)
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        doc = rules.assess(site, services, targets).to_dict()
        text = metrics.render(doc)
        json.dumps(doc)
        times.append(time.perf_counter() - t0)
    print(json.dumps({"services": args.services, "standbys": len(site.standbys), "samples": len(site.samples),
                      "drill_reports": len(site.drill_reports), "waves": doc["waves"],
                      "ready": doc["summary"]["ready"], "metrics_lines": text.count("\n"),
                      "seconds_median": round(statistics.median(times), 3), "seconds_max": round(max(times), 3)}))


if __name__ == "__main__":
    main()
