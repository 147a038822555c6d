"""standby-boot-failure: the first DR standby's Docker engine will not start; the failover must use the next one."""

from drtool.drill.scenarios.base import Failover


class StandbyBootFailure(Failover):
    name = "standby-boot-failure"
    summary = "the first DR standby's Docker engine will not start"
    planned = True   # no outage: the primary serves while the drill moves the record

    def inject(self, ctx):
        from drtool.drill import faults

        return faults.standby_boot_failure(ctx.config, ctx.dr)

    def expect_moved(self, ctx, sc, fo, standby) -> None:
        tried = fo.get("standbys_tried") or []
        ok = len(tried) >= 2 and not tried[0]["ok"] and tried[-1]["ok"]
        refused = [t for t in tried if not t["ok"]]
        sc.check("first_standby_failed_next_serves", ok, tried,
                 summary=(f"{refused[0]['host']} refused ({refused[0].get('error')}); {tried[-1]['host']} "
                          "came up and serves" if ok else
                          f"standbys tried: {', '.join(t['host'] for t in tried) or 'none'}; "
                          "expected the first to fail and a later one to serve"))


SCENARIO = StandbyBootFailure()
