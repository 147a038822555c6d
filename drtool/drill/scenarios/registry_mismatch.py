"""registry-mismatch: the production image's repository moved out of the DR registry; the failover must refuse in
preflight, naming the image, and DNS must not move."""

from drtool.drill.scenarios.base import Failover, no_dns_flip


class RegistryMismatch(Failover):
    name = "registry-mismatch"
    summary = "the production image's repository moved out of the DR registry"
    planned = True   # no outage: the primary serves while the drill tries to move the record

    def inject(self, ctx):
        from drtool.drill import faults

        return faults.registry_mismatch(ctx.config, ctx.dr, ctx.entry.image.repository)

    def expect_first(self, ctx, sc, fo, fault, record_now) -> bool:
        pre = next(s for s in fo["steps"] if s["name"] == "preflight")
        error = fo["error"]
        refused = error is not None and error["exit_code"] == 3
        sc.check("failover_refused_exit_3", refused, error,
                 "the DR registry lacks the production image: the failover must stop",
                 summary=f"the failover refused with exit 3: {error['message']}" if refused else
                 "the failover " + (f"stopped with exit {error['exit_code']}: {error['message']}" if error
                                    else "completed although the DR registry lacks the production image"))
        digest = ctx.entry.image.digest.split(":")[-1][:12]
        named = pre["status"] == "failed" and digest in (pre["error"] or "")
        sc.check("refused_in_preflight_naming_the_image", named, pre["error"],
                 summary=f"preflight failed naming the image digest {digest}" if named else
                 f"preflight {pre['status']}, its error does not name the digest {digest}")
        no_dns_flip(ctx, sc, record_now)
        return False


SCENARIO = RegistryMismatch()
