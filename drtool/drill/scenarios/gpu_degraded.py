"""gpu-degraded: the primary upstream's GPU reads too hot (the model server's fault hook) under load through the
record; the escalation ladder must drain it at the site's Nginx (no restart, no failover, no DNS change) without
a single failed request."""

from drtool.drill.scenarios.base import InSite, no_failover

LADDER_PROBE_S = 0.5


class GpuDegraded(InSite):
    name = "gpu-degraded"
    summary = "the primary upstream's GPU reads 10 °C over its limit, under load through the record"
    load_under_fault = True   # the drain must not drop a request: Locust runs from before the fault to after

    def inject(self, ctx):
        from drtool.drill import faults

        return faults.gpu_degraded(ctx.config, ctx.primary)

    def recover(self, ctx, sc, cfg, fault, fault_at) -> dict:
        """`drtool watch` (the ladder, with the drill's configuration) sees the upstream degraded and drains it from
        the site's Nginx, so the site's other GPU serves. Cleanup clears the fault and undrains it."""
        from drtool.actions import deploy, proxy, watch
        from drtool.execute.dns import dns_for

        instance = fault.info["instance"]
        record_before = dns_for(ctx.dr.dns).read_a(ctx.record).addresses
        res = watch.run(cfg, ctx.out, ctx.primary.name, failures=2, interval=LADDER_PROBE_S, exit_on_trigger=True,
                        max_probes=int(120 / LADDER_PROBE_S), exit_on_recovery=True)
        sc.doc["ladder"] = res["ladder"]
        taken = [r for r in res["ladder"]["instances"].get(instance, {}).get("rungs", []) if r["kind"] != "none"]
        drain = next((r for r in taken if r["kind"] == "drain" and r["outcome"] == "ok"), None)
        if drain is not None:
            sc.step("detect", f"Detection: drtool watch, {instance} degraded for 2 probes {LADDER_PROBE_S:g}s apart",
                    fault_at, drain["decided_at"], evidence={"reason": drain["reason"]})
            sc.step("drain", f"Ladder rung 2: drain {instance} from {ctx.primary.proxy.name} (Nginx reload)",
                    drain["decided_at"], drain["outcome_at"], evidence={"policy": drain["policy"]})
            sc.doc["drained_at"] = drain["outcome_at"]
            sc.doc["rto_s"] = round(drain["outcome_at"] - fault_at, 3)   # fault to drained: the in-site switch
            sc.doc["split"].update(detection=round(drain["decided_at"] - fault_at, 3),
                                   drain=round(drain["outcome_at"] - drain["decided_at"], 3))

            def undrain() -> str:
                deploy.wait(ctx.primary, next(h for h in ctx.primary.hosts if h.name == instance), timeout=120)
                proxy.undrain(ctx.config, ctx.primary, instance)
                return f"{instance} ready again and undrained at {ctx.primary.proxy.name}"

            fault.undo_actions.insert(0, (f"undrain {instance} once it reports ready", undrain))
        return {"instance": instance, "taken": taken, "drain": drain, "record_before": record_before,
                "failing_streak": res["failing_streak"], "decisions": res["decisions"]}

    def expect(self, ctx, sc, seen, fault, cfg) -> None:
        from drtool.execute.dns import dns_for

        instance, taken = seen["instance"], seen["taken"]
        kinds = [r["kind"] for r in taken]
        ok = seen["drain"] is not None and kinds == ["drain"]
        sc.check("drained_not_restarted", ok, taken,
                 "a degraded GPU is drained straight away: restarting the container does not cool it",
                 summary=f"the ladder drained {instance} at {ctx.primary.proxy.name} without restarting it" if ok
                 else f"the ladder took {', '.join(kinds) or 'no rung'} for {instance}, not a drain alone")
        others = [h.name for h in ctx.primary.hosts if h.name != instance]
        serving = bool(others) and seen["failing_streak"] == 0
        sc.check("other_instance_serves", serving, {"failing_streak": seen["failing_streak"]},
                 summary=f"{', '.join(others)} kept serving through {ctx.primary.proxy.name}" if serving else
                 f"the site failed {seen['failing_streak']} probe(s) in a row at the end")
        no_failover(sc, seen["decisions"])
        before, after = seen["record_before"], dns_for(ctx.dr.dns).read_a(ctx.record).addresses
        same = after == before == [ctx.primary.front_address]
        sc.check("dns_unchanged", same, {"before": before, "after": after},
                 summary=f"record {ctx.record} answers {', '.join(after) or 'nothing'} before and after, the site's "
                         "Nginx" if same else
                 f"record {ctx.record} answered {', '.join(before) or 'nothing'}, now {', '.join(after) or 'nothing'}")
        if sc.doc["rto_s"] is not None:
            target = ctx.config.drill.rto_target_s
            within = sc.doc["rto_s"] <= target
            sc.check("drained_within_target", within, f"fault to drained {sc.doc['rto_s']:.1f}s, target {target:.0f}s",
                     summary=f"fault to drained: {sc.doc['rto_s']:.1f} s, {'within' if within else 'over'} the "
                             f"{target:.0f} s target")


SCENARIO = GpuDegraded()
