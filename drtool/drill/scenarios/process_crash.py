"""process-crash: the primary's serving container stopped and left stopped by its engine; the escalation ladder
must restart it in place, with no failover, within ha.ready_timeout_s."""

from drtool.drill.scenarios.base import InSite, no_failover

LADDER_PROBE_S = 0.5


class ProcessCrash(InSite):
    name = "process-crash"
    summary = "the primary's serving container stopped, and left stopped by its engine"

    def inject(self, ctx):
        from drtool.drill import faults

        return faults.process_crash(ctx.config, ctx.primary, f"drtool-{ctx.model.name}")

    def recover(self, ctx, sc, cfg, fault, fault_at) -> dict:
        """`drtool watch` (the ladder, with the drill's configuration) probes the primary from here, restarts the
        instance in place and stops once it serves again."""
        from drtool.actions import watch

        host = ctx.primary.hosts[0]
        budget = cfg.ha.restart_attempts * cfg.ha.ready_timeout_s + 30
        res = watch.run(cfg, ctx.out, ctx.primary.name, failures=2, interval=LADDER_PROBE_S, exit_on_trigger=True,
                        max_probes=int(budget / LADDER_PROBE_S), exit_on_recovery=True)
        sc.doc["ladder"] = res["ladder"]
        taken = [r for r in res["ladder"]["instances"].get(host.name, {}).get("rungs", []) if r["kind"] != "none"]
        restarts = [r for r in taken if r["kind"] == "restart"]
        recovery = next((r for r in res["recoveries"] if r["instance"] == host.name), None)
        if restarts:
            first = restarts[0]
            sc.step("detect", f"Detection: drtool watch, {host.name} failing 2 probes {LADDER_PROBE_S:g}s apart",
                    fault_at, first["decided_at"], evidence={"reason": first["reason"]})
            sc.step("restart", "Ladder rung 1: restart the container in place", first["decided_at"],
                    first["outcome_at"] or first["decided_at"], "done" if first["outcome"] == "ok" else "failed",
                    {"policy": first["policy"], "outcome": first["outcome"], "detail": first["detail"]})
            sc.doc["split"].update(detection=round(first["decided_at"] - fault_at, 3))
        if recovery is not None:  # only a restarted instance has one, so `restarts` is not empty here
            ready_at = restarts[-1]["decided_at"] + recovery["ready_after_s"]
            sc.step("ready", "The restarted instance verified its weights and serves again (/readyz)",
                    restarts[-1]["outcome_at"] or ready_at, ready_at)
            sc.doc["rto_s"] = round(ready_at - fault_at, 3)
            sc.doc["split"].update(restart_to_ready=round(recovery["ready_after_s"], 3))
        return {"host": host.name, "taken": taken, "restarts": restarts, "recovery": recovery,
                "decisions": res["decisions"]}

    def expect(self, ctx, sc, seen, fault, cfg) -> None:
        taken, restarts, recovery = seen["taken"], seen["restarts"], seen["recovery"]
        kinds = [r["kind"] for r in taken]
        ok = bool(restarts) and restarts[0]["outcome"] == "ok" and kinds == ["restart"] * len(taken)
        sc.check("restarted_in_place", ok, taken,
                 summary=f"the ladder restarted {seen['host']}'s container in place ({len(restarts)} restart(s))"
                 if ok else f"the ladder took {', '.join(kinds) or 'no rung'} for {seen['host']}, "
                            "not a successful restart alone")
        timeout = cfg.ha.ready_timeout_s
        in_time = recovery is not None and recovery["ready_after_s"] <= timeout
        sc.check("serving_again_within_ready_timeout", in_time, {"recovery": recovery, "ready_timeout_s": timeout},
                 summary=f"{seen['host']} served again {recovery['ready_after_s']:.1f} s after its restart "
                         f"(ha.ready_timeout_s {timeout:g} s)" if recovery is not None else
                 f"{seen['host']} did not serve again after a restart")
        no_failover(sc, seen["decisions"])
        t = ctx.config.drill
        if sc.doc["rto_s"] is not None:
            within = sc.doc["rto_s"] <= t.rto_target_s
            sc.check("rto_within_target", within,
                     f"RTO {sc.doc['rto_s']:.1f}s (fault to serving again), target {t.rto_target_s:.0f}s",
                     summary=f"fault to serving again: {sc.doc['rto_s']:.1f} s, "
                             f"{'within' if within else 'over'} the {t.rto_target_s:.0f} s target")


SCENARIO = ProcessCrash()
