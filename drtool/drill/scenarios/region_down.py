"""region-down: every host of the primary site goes down at once (serving hosts and its Nginx), and every service
of the site must come back at the DR site through the fleet failover.

Needs a configuration that lists several services (`services:`, e.g. the lab's drtool-fleet.yaml). Every service
must serve its production version and canary through its own record before anything is injected. Outside a live
drill each service fails over its own drill record, `drill.<record>`, which the drill points at the service's home
first; production records are never touched and are compared after. The fleet failover starts through the real
alert chain: Prometheus sees every serving instance of the site down, Alertmanager posts once, and `drtool serve`
starts one `drtool failover --site DR` (every service whose record's target does not answer moves); detection and
decision are measured.
Then, per service: its record must point at the verified standby it moved to, the canary must be served through
that record (that moment is the service's RTO; the last one is the fleet RTO), the RPO is the age of the snapshot
it restored at the fault, and Locust runs the capacity check against it, after every canary. Cleanup is the fleet
failback (every service verified at home before its drill record moves back) and the standbys cold."""

import dataclasses
import time

from drtool.drill.scenarios.base import Scenario, Steady, drill_record, standbys_cold
from drtool.errors import DrtoolError, OperationFailed, UsageError, VerificationError

NAME = "region-down"


def services(config, primary) -> list:
    return sorted((s for s in config.services.values() if s.site == primary.name), key=lambda s: (s.priority, s.name))


def home_address(primary, spec) -> str:
    from drtool.fleet.plan import home_hosts

    return primary.front_address if spec.record == primary.dns.record else home_hosts(primary, spec)[0].address


def production_records(config, primary) -> dict:
    from drtool.execute.dns import dns_for

    return {s.record: dns_for(primary.dns).read_a(s.record).addresses for s in services(config, primary)}


def service_steady(config, primary, spec, registry) -> Steady:
    """One service in steady state: its production version and canary served through its own record."""
    from drtool.actions import deploy, failover
    from drtool.config import Host
    from drtool.execute.dns import dns_for

    try:
        entry = registry.production(spec.model)
        if entry is None:
            raise VerificationError(f"{spec.model} has no production version in the registry")
        addresses = dns_for(primary.dns).read_a(spec.record).addresses
        if not addresses:
            raise VerificationError(f"record {spec.record} has no address")
        view = dataclasses.replace(primary, serving_port=spec.port, proxy=None)
        host = Host(name=f"{spec.record} ({addresses[0]})", address=addresses[0], site=primary.name)
        evidence = deploy.check(view, host, failover.served_entry(view, host, entry))
    except DrtoolError as exc:
        return Steady(spec.name, False, exc.message, {"error": exc.message})
    return Steady(spec.name, True, f"{spec.name} serves {entry.model} {entry.version} and its canary through "
                                   f"{spec.record} ({addresses[0]}:{spec.port})", {"record": spec.record, **evidence})


class RegionDown(Scenario):
    name = NAME
    summary = "every host of the primary site powered off at once; every service fails over (needs `services:`)"
    detected = True

    def require(self, config, primary) -> None:
        if len(services(config, primary)) < 2:
            raise UsageError(f"scenario {NAME} needs several services of {primary.name} in the configuration "
                             "(`services:`)", hint="on the lab: --config drtool-fleet.yaml")

    def steady_state(self, ctx) -> list[Steady]:
        from drtool.actions.registry import site_registry

        registry = site_registry(ctx.config, ctx.primary)
        try:
            return [service_steady(ctx.config, ctx.primary, spec, registry)
                    for spec in services(ctx.config, ctx.primary)]
        finally:
            registry.store.close()

    def drill_records(self, ctx) -> dict[str, str]:
        main = (ctx.dr.dns.record, ctx.record)
        return {drill_record(spec.record, False, main): home_address(ctx.primary, spec)
                for spec in services(ctx.config, ctx.primary)}

    def observe_before(self, ctx, sc) -> None:
        sc.doc["production_records_before"] = production_records(ctx.config, ctx.primary)

    def inject(self, ctx):
        """Every host of the site, serving hosts and its Nginx, powered off."""
        from drtool.drill.faults import Fault, lab_for

        lab = lab_for(ctx.config, NAME)
        primary = ctx.primary
        hosts = [h.name for h in primary.hosts] + ([primary.proxy.name] if primary.proxy else [])
        fault = Fault(NAME, f"powered off every host of {primary.name}: {', '.join(hosts)}")
        for name in hosts:
            fault.undo_actions.append((f"power on {name}", lambda n=name: lab.power_on(n)))
            lab.power_off(name)
        return fault

    def recover(self, ctx, sc, cfg, fault, fault_at) -> dict:
        """The fleet failover, the way a region outage starts one: Prometheus sees every serving instance of the
        site down, Alertmanager posts once, and `drtool serve` starts one failover of the site, which moves every
        service whose record's target does not answer."""
        from drtool.drill.scenarios.base import through_alert_chain
        from drtool.recovery.engine import ALREADY, MOVED

        dr = cfg.site(ctx.dr.name)
        result = through_alert_chain(ctx, sc, fault_at, "one failover of the site")
        run_id = result["run_id"]
        rows = {r["service"]: r for r in result.get("services", [])}
        bad = [n for n, r in rows.items() if r["status"] not in (MOVED, ALREADY)]
        error = None if result.get("status") == "done" else OperationFailed(
            f"fleet failover {run_id} ended {result.get('status')}: {len(bad)} of {len(rows)} service(s) did not "
            f"move ({', '.join(bad)})")
        sc.doc["failover"] = {"run_id": run_id, "status": result.get("status"), "kind": "fleet-failover",
                              "error": None if error is None else {"message": error.message,
                                                                   "exit_code": error.exit_code}}
        sc.step("fleet_failover", f"drtool failover --site {dr.name} (started by drtool serve): every service "
                "whose record's target does not answer", result["started"], result.get("ended") or time.time(),
                "done" if error is None else "failed",
                {"run_id": run_id, "moved": sorted(n for n, r in rows.items() if r["status"] == MOVED)},
                None if error is None else error.message)
        sc.doc["split"].update(fleet_failover=round(result.get("rto_s") or 0.0, 3))
        return {"result": result, "rows": rows, "error": error}

    def expect(self, ctx, sc, fo, fault, cfg) -> dict:
        """Per service: moved, its record at its verified standby, the canary through it (RTO), its RPO."""
        from drtool.actions.failover import snapshot_age
        from drtool.actions.registry import site_registry
        from drtool.execute.dns import dns_for
        from drtool.execute.serving import base_url, predict
        from drtool.model_registry.entries import compare_output

        result, rows, error, fault_at = fo["result"], fo["rows"], fo["error"], sc.doc["fault_at"]
        dr = cfg.site(ctx.dr.name)
        specs = services(cfg, ctx.primary)
        moved_all = error is None and all(rows.get(s.name, {}).get("status") == "moved" for s in specs)
        not_moved = [s.name for s in specs if rows.get(s.name, {}).get("status") != "moved"]
        sc.check("every_service_moved", moved_all,
                 {s.name: {k: rows.get(s.name, {}).get(k) for k in ("status", "standby", "reason")} for s in specs},
                 summary=f"all {len(specs)} services moved to {dr.name}" if moved_all else
                 f"not moved: {', '.join(not_moved) or 'none'}" + (f" (the fleet failover: {error.message})"
                                                                  if error is not None else ""))
        registry = site_registry(cfg, dr)
        hosts = {h.name: h for h in dr.hosts}
        per, served, entries = {}, [], {}
        try:
            for spec in specs:
                row = rows.get(spec.name, {})
                out = per[spec.name] = {"status": row.get("status"), "standby": row.get("standby"),
                                        "record": spec.record, "moved_s": None, "rto_s": None, "rpo_s": None,
                                        "snapshot": (row.get("production") or {}).get("snapshot_id"),
                                        "capacity": None, "error": row.get("reason"),
                                        "standbys_tried": row.get("standbys_tried") or [],
                                        "fallback": row.get("fallback")}
                if row.get("status") != "moved":
                    continue
                if row.get("rto_s") is not None:
                    out["moved_s"] = round(result["started"] + row["rto_s"] - fault_at, 3)   # fault -> flipped
                try:
                    entry = entries[spec.name] = registry.production(spec.model)
                    now_at = dns_for(dr.dns).read_a(spec.record).addresses
                    standby = hosts[row["standby"]]
                    if now_at != [standby.address]:
                        raise OperationFailed(f"{spec.record} answers {now_at}, not its verified standby "
                                              f"{standby.name}")
                    url = base_url(now_at[0], spec.port)
                    ok, evidence = compare_output(entry.canary.expected, predict(url, entry.canary.input)["outputs"],
                                                  entry.canary.tolerance)
                    if not ok:
                        raise OperationFailed(f"canary through {spec.record}: {evidence}")
                    out["rto_s"] = round(time.time() - fault_at, 3)                       # fault -> canary served
                    served.append(out["rto_s"])
                    # the restored snapshot's `created`, as the failover read it from the DR store's manifest
                    out["rpo_s"] = snapshot_age((row.get("snapshot") or {}).get("created"), fault_at)
                except DrtoolError as exc:
                    out["error"] = exc.message
        finally:
            registry.store.close()
        sc.doc["services"] = per
        t = ctx.config.drill
        moved = [p for p in per.values() if p["status"] == "moved"]
        through_all = bool(moved) and len(served) == len(specs)
        sc.check("canary_served_through_every_record", through_all,
                 {n: p["error"] or f"RTO {p['rto_s']}s" for n, p in per.items()},
                 summary="every record answers its verified standby and serves the registered canary" if through_all
                 else "not served through its record: " + "; ".join(
                     f"{n} ({p['error'] or p['status']})" for n, p in per.items() if p["rto_s"] is None))
        sc.doc["rto_s"] = max(served) if through_all else None
        rpos = [p["rpo_s"] for p in moved if p["rpo_s"] is not None]
        sc.doc["rpo_s"] = max(rpos) if rpos else None
        if sc.doc["rto_s"] is not None:
            within = sc.doc["rto_s"] <= t.rto_target_s
            sc.check("fleet_rto_within_target", within,
                     f"fleet RTO {sc.doc['rto_s']:.1f}s (fault to the last service's canary through its record), "
                     f"target {t.rto_target_s:.0f}s",
                     summary=f"fault to the last service's canary through its record: {sc.doc['rto_s']:.1f} s, "
                             f"{'within' if within else 'over'} the {t.rto_target_s:.0f} s target")
        rpo_ok = len(rpos) == len(specs) and max(rpos) <= t.rpo_target_s
        sc.check("rpo_within_target_for_every_service", rpo_ok, {n: p["rpo_s"] for n, p in per.items()},
                 summary=(f"every service restored a snapshot at most {max(rpos):.0f} s old at the fault "
                          f"(target {t.rpo_target_s:.0f} s)" if rpo_ok else
                          f"not every service restored a snapshot within {t.rpo_target_s:.0f} s: " + ", ".join(
                              f"{n} {p['rpo_s'] if p['rpo_s'] is not None else 'unknown'}"
                              for n, p in per.items())))
        return {"per": per, "entries": entries, "specs": specs, "hosts": hosts}

    def load(self, ctx, sc, target) -> None:
        """The capacity checks only after every canary: a service's RTO must not include the others' load."""
        from drtool.execute.serving import base_url

        per, specs = target["per"], target["specs"]
        for spec in specs:
            out = per[spec.name]
            if out["rto_s"] is None:
                continue
            try:
                url = base_url(target["hosts"][out["standby"]].address, spec.port)  # what its record answers
                load = ctx.capacity(url, target["entries"][spec.name], ctx.workdir / "load" / spec.name)
                out["capacity"] = {k: load.get(k) for k in ("requests", "rps", "p95_ms", "error_rate", "passed",
                                                            "reasons")}
            except DrtoolError as exc:
                out["error"] = exc.message
        moved = [p for p in per.values() if p["status"] == "moved"]
        ok = len(moved) == len(specs) and all((p["capacity"] or {}).get("passed") for p in moved)
        sc.check("capacity_within_slo_for_every_service", ok, {n: p["capacity"] for n, p in per.items()},
                 summary="every moved service carried the drill's load within the SLO" if ok else
                 "outside the SLO or not loaded: " + ", ".join(
                     n for n, p in per.items() if not (p["capacity"] or {}).get("passed")))

    def undo_recovery(self, ctx, cfg):
        def fleet_failback() -> str:
            from drtool.actions import failover

            res = failover.run(cfg, ctx.out, failover.Request(failover.FAILBACK, ctx.primary.name,
                                                              reason=f"drill {ctx.drill_id} cleanup"))
            return f"{res['status']}: " + ", ".join(f"{r['service']} {r['status']}" for r in res["services"])

        return [(f"fleet failback to {ctx.primary.name} (every service verified at home, records back)",
                 fleet_failback), standbys_cold(ctx)]

    def compare_after(self, ctx, sc) -> None:
        if "production_records_before" not in sc.doc:
            return
        before, after = sc.doc["production_records_before"], production_records(ctx.config, ctx.primary)
        same = after == before
        sc.check("every_production_record_unchanged", same, {"before": before, "after": after},
                 summary=f"all {len(after)} production records answer as before the drill" if same else
                 "changed: " + ", ".join(f"{r} {before.get(r)} -> {a}" for r, a in after.items()
                                         if before.get(r) != a))


SCENARIO = RegionDown()
