"""region-partition: the primary's serving hosts cut off the network (they keep running); the alert chain detects
it, fencing cannot reach them and the journal says so, DNS moves by policy."""

from drtool.drill.scenarios.base import Failover


class RegionPartition(Failover):
    name = "region-partition"
    summary = "the primary's serving hosts cut off the network (they keep running)"
    detected = True
    fences = True   # the primary cannot be reached: the report shows what fencing did

    def inject(self, ctx):
        from drtool.drill import faults

        return faults.region_partition(ctx.config, ctx.primary)

    def expect_moved(self, ctx, sc, fo, standby) -> None:
        fence = next((s for s in fo["steps"] if s["name"] == "fence_primary"), {})
        fenced = (fence.get("evidence") or {}).get("fenced", {})
        ok = bool(fenced) and all("unreachable" in v for v in fenced.values())
        sc.check("fencing_recorded_unreachable", ok, fenced,
                 "partitioned: the primary could not be fenced; DNS moved anyway (policy)",
                 summary=("fencing could not reach " + ", ".join(sorted(fenced)) + " and the journal says so"
                          if ok else f"fencing recorded {fenced or 'nothing'}, not every primary host unreachable"))


SCENARIO = RegionPartition()
