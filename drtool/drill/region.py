"""The `region-down` drill scenario: every host of the primary site goes down at once, and every service
of the site must come back at the DR site through the fleet failover.

Used by drtool/actions/drill.py with a configuration that lists several services (`services:`, e.g. the lab's
drtool-fleet.yaml). Outside a live drill each service fails over its own drill record, `drill.<record>`, which the
drill points at the service's home first; production records are never touched and are compared after. The fleet
failover is started the way the on-call engineer would (`drtool failover --site DR`: every service whose record's
target does not answer moves). Then, per service: its record must point at the verified standby it moved to, the
canary must be served through that record (that moment is the service's RTO; the last one is the fleet RTO), the
RPO is the age of the snapshot it restored at the fault, and Locust runs the capacity check against it. Cleanup is
the fleet failback (every service verified at home before its drill record moves back, standbys powered off)
and the drill records removed.
"""

import time

from drtool.config import Config, ServiceSpec, Site
from drtool.errors import DrtoolError, OperationFailed
from drtool.execute.dns import dns_for
from drtool.execute.serving import base_url, predict
from drtool.fleet.plan import home_hosts
from drtool.model_registry.entries import compare_output

SCENARIO = "region-down"


def services(config: Config, primary: Site) -> list[ServiceSpec]:
    from drtool.actions.fleet_failback import home_services

    return home_services(config, primary, None)


def drill_record(record: str, live: bool, main: tuple[str, str] | None = None) -> str:
    """A service's record in the drill: its own outside a live drill, `drill.<record>`, except the site's own
    record, which becomes the drill's record (`main` = (production record, drill record))."""
    if live:
        return record
    if main and record == main[0]:
        return main[1]
    return f"drill.{record}"


def rewrite(doc: dict, live: bool, main: tuple[str, str]) -> None:
    """The drill's configuration document: each service on its drill record."""
    for svc in (doc.get("services") or {}).values():
        svc["record"] = drill_record(svc["record"], live, main)


def home_address(primary: Site, spec: ServiceSpec) -> str:
    return primary.front_address if spec.record == primary.dns.record else home_hosts(primary, spec)[0].address


def point_records(config: Config, primary: Site, main: tuple[str, str]) -> dict:
    """Outside a live drill: each service's drill record at its home, as its production record is."""
    done = {}
    for spec in services(config, primary):
        rec, home = drill_record(spec.record, False, main), home_address(primary, spec)
        dns_for(primary.dns).replace_a([home], primary.dns.ttl, record=rec)
        done[rec] = home
    return done


def remove_records(config: Config, primary: Site, main: tuple[str, str]) -> str:
    gone = [drill_record(spec.record, False, main) for spec in services(config, primary)]
    for rec in gone:
        dns_for(primary.dns).delete_a(rec)
    return "removed " + ", ".join(gone)


def production_records(config: Config, primary: Site) -> dict:
    return {s.record: dns_for(primary.dns).read_a(s.record).addresses for s in services(config, primary)}


def region_down(config: Config, primary: Site):
    """The fault: every host of the site, serving hosts and its Nginx, powered off."""
    from drtool.drill.faults import Fault, lab_for

    lab = lab_for(config, SCENARIO)
    hosts = [h.name for h in primary.hosts] + ([primary.proxy.name] if primary.proxy else [])
    fault = Fault(SCENARIO, f"powered off every host of {primary.name}: {', '.join(hosts)}")
    for name in hosts:
        fault.undo_actions.append((f"power on {name}", lambda n=name: lab.power_on(n)))
        lab.power_off(name)
    return fault


def run(drill, sc, cfg: Config, fault_at: float) -> None:
    """The fleet failover, then every per-service check, into the scenario `sc`."""
    from drtool.actions import fleet
    from drtool.actions.failover import snapshot_age
    from drtool.actions.registry import site_registry
    from drtool.snapshot import catalog
    from drtool.snapshot.stores import open_store

    dr = cfg.site(drill.dr.name)
    run_id = fleet.new_fleet_run_id(dr.name)
    started = time.time()
    try:
        result = fleet.run(cfg, drill.out, dr.name, None, False, None, run_id, f"drill {drill.drill_id}: {SCENARIO}",
                           None)
        error = None
    except DrtoolError as exc:
        result, error = getattr(exc, "result", None) or {}, exc
    sc.doc["failover"] = {"run_id": run_id, "status": result.get("status"), "kind": "fleet-failover",
                          "error": None if error is None else {"message": error.message, "exit_code": error.exit_code}}
    rows = {r["service"]: r for r in result.get("services", [])}
    sc.step("fleet_failover", f"drtool failover --site {dr.name}: every service whose record's target does not answer",
            started, time.time(), "done" if error is None else "failed",
            {"run_id": run_id, "moved": sorted(n for n, r in rows.items() if r["status"] == "moved")},
            None if error is None else error.message)
    specs = services(cfg, drill.primary)
    sc.check("every_service_moved", error is None and all(rows.get(s.name, {}).get("status") == "moved"
                                                          for s in specs),
             {s.name: {k: rows.get(s.name, {}).get(k) for k in ("status", "standby", "reason")} for s in specs})

    registry, store = site_registry(cfg, dr), open_store(dr.object_stores[0])
    hosts = {h.name: h for h in dr.hosts}
    per, served, entries = {}, [], {}
    try:
        for spec in specs:
            row = rows.get(spec.name, {})
            out = per[spec.name] = {"status": row.get("status"), "standby": row.get("standby"),
                                    "record": spec.record, "moved_s": None, "rto_s": None, "rpo_s": None,
                                    "snapshot": row.get("snapshot"), "capacity": None, "error": row.get("reason")}
            if row.get("status") != "moved":
                continue
            if row.get("rto_s") is not None:
                out["moved_s"] = round(result["started"] + row["rto_s"] - fault_at, 3)   # fault -> record flipped
            try:
                entry = entries[spec.name] = registry.production(spec.model)
                now_at = dns_for(dr.dns).read_a(spec.record).addresses
                standby = hosts[row["standby"]]
                if now_at != [standby.address]:
                    raise OperationFailed(f"{spec.record} answers {now_at}, not its verified standby {standby.name}")
                url = base_url(now_at[0], spec.port)
                ok, evidence = compare_output(entry.canary.expected, predict(url, entry.canary.input)["outputs"],
                                              entry.canary.tolerance)
                if not ok:
                    raise OperationFailed(f"canary through {spec.record}: {evidence}")
                out["rto_s"] = round(time.time() - fault_at, 3)                       # fault -> canary served
                served.append(out["rto_s"])
                ref = catalog.resolve(store, row["snapshot"])
                manifest, _raw = catalog.load(store, ref)
                out["rpo_s"] = snapshot_age(manifest.created, fault_at)
            except DrtoolError as exc:
                out["error"] = exc.message
        # The capacity checks only after every canary: a service's RTO must not include the others' load.
        for spec in specs:
            out = per[spec.name]
            if out["rto_s"] is None:
                continue
            try:
                url = base_url(hosts[out["standby"]].address, spec.port)   # what its record answers (checked)
                load = drill.capacity(url, entries[spec.name], drill.dir / "work" / SCENARIO / "load" / spec.name)
                out["capacity"] = {k: load.get(k) for k in ("requests", "rps", "p95_ms", "error_rate", "passed",
                                                            "reasons")}
            except DrtoolError as exc:
                out["error"] = exc.message
    finally:
        registry.store.close()
        store.close()
    sc.doc["services"] = per
    t = drill.config.drill
    moved = [p for p in per.values() if p["status"] == "moved"]
    sc.check("canary_served_through_every_record", bool(moved) and len(served) == len(specs),
             {n: p["error"] or f"RTO {p['rto_s']}s" for n, p in per.items()})
    sc.doc["rto_s"] = max(served) if served and len(served) == len(specs) else None
    rpos = [p["rpo_s"] for p in moved if p["rpo_s"] is not None]
    sc.doc["rpo_s"] = max(rpos) if rpos else None
    sc.doc["split"].update(detection=0.0, decision=0.0,
                           fleet_failover=round(result.get("fleet_rto_s") or 0.0, 3))
    if sc.doc["rto_s"] is not None:
        sc.check("fleet_rto_within_target", sc.doc["rto_s"] <= t.rto_target_s,
                 f"fleet RTO {sc.doc['rto_s']:.1f}s (fault to the last service's canary through its record), "
                 f"target {t.rto_target_s:.0f}s")
    sc.check("rpo_within_target_for_every_service", len(rpos) == len(specs) and max(rpos) <= t.rpo_target_s,
             {n: p["rpo_s"] for n, p in per.items()})
    sc.check("capacity_within_slo_for_every_service",
             len(moved) == len(specs) and all((p["capacity"] or {}).get("passed") for p in moved),
             {n: p["capacity"] for n, p in per.items()})


def cleanup(drill, cfg: Config) -> str:
    """The fleet failback with the drill's configuration (drill records), then the drill records removed."""
    from drtool.actions import fleet_failback

    res = fleet_failback.run(cfg, drill.out, drill.primary.name, None, False, lambda rows: None,
                             f"drill {drill.drill_id} cleanup")
    return f"{res['status']}: " + ", ".join(f"{r['service']} {r['status']}" for r in res["services"])
