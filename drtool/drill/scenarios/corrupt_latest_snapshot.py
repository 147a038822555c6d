"""corrupt-latest-snapshot: one byte flipped in the newest snapshot of the production version in the DR store; the
failover must refuse it and fall back to an older one that verifies (or refuse, when none can)."""

from drtool.drill.scenarios.base import Failover, no_dns_flip


class CorruptLatestSnapshot(Failover):
    name = "corrupt-latest-snapshot"
    summary = "one byte flipped in the newest snapshot of the production version in the DR store"
    planned = True   # no outage: the primary serves while the drill moves the record

    def inject(self, ctx):
        from drtool.drill import faults

        return faults.corrupt_latest_snapshot(ctx.config, ctx.dr, ctx.model.name, ctx.entry.version)

    def expect_first(self, ctx, sc, fo, fault, record_now) -> bool:
        snap = fo.get("snapshot") or {}
        refused = [r["id"] for r in snap.get("refused", [])]
        damaged = fault.info["newest"]
        sc.check("damaged_snapshot_refused", damaged in refused, {"damaged": damaged, "refused": refused},
                 summary=f"the damaged snapshot {damaged[:12]} was "
                         + ("refused by verification" if damaged in refused else "not refused"))
        if not (ctx.config.failover.fallback_to_older and not fault.info["shared"]):
            error = fo["error"]
            ok = error is not None and error["exit_code"] == 3
            sc.check("failover_refused_exit_3", ok, error,
                     "no snapshot of the production version verifies: nothing may be served",
                     summary=f"the failover refused with exit 3: {error['message']}" if ok else
                     "the failover did not refuse with exit 3 although no snapshot could be used")
            no_dns_flip(ctx, sc, record_now)
            return False
        done = fo["status"] == "done" and fo["error"] is None
        restored = snap.get("restored")
        fell_back = done and restored not in (None, damaged)
        sc.check("fell_back_to_an_older_snapshot", fell_back, {"restored": restored, "created": snap.get("created")},
                 summary=f"restored the older snapshot {restored[:12]} (created {snap.get('created')})"
                 if fell_back else f"restored {(restored or 'nothing')[:12]}, not an older snapshot")
        return True


SCENARIO = CorruptLatestSnapshot()
