"""primary-down: every serving host of the primary powered off; the alert chain detects it and fails over."""

from drtool.drill.scenarios.base import Failover


class PrimaryDown(Failover):
    name = "primary-down"
    summary = "every serving host of the primary powered off"
    detected = True

    def inject(self, ctx):
        from drtool.drill import faults

        return faults.primary_down(ctx.config, ctx.primary)


SCENARIO = PrimaryDown()
