"""region-down: every host of the primary site goes down at once (serving hosts and its Nginx), and every service
of the site must come back at the DR site through one failover.

Needs a configuration that lists several services (`services:`, e.g. the lab's drtool-fleet.yaml). It is the
failover family's scenario with every service of the site instead of the drilled model's: every service must serve
its production version and canary through its own record before anything is injected; outside a live drill each
fails over its own drill record, `drill.<record>`, pointed at the service's home first, and production records are
never touched (the drill compares each one after). The failover starts through the real alert chain: Prometheus
sees every serving instance of the site down, Alertmanager posts once, and `drtool serve` starts one `drtool
failover --site DR` (every service whose record's target does not answer moves). Cleanup is the failback of every
service and the standbys cold."""

from drtool.drill.scenarios.base import Failover
from drtool.errors import UsageError

NAME = "region-down"


def site_services(config, primary) -> list:
    return sorted((s for s in config.services.values() if s.site == primary.name), key=lambda s: (s.priority, s.name))


class RegionDown(Failover):
    name = NAME
    summary = "every host of the primary site powered off at once; every service fails over (needs `services:`)"
    detected = True

    def require(self, config, primary) -> None:
        if len(site_services(config, primary)) < 2:
            raise UsageError(f"scenario {NAME} needs several services of {primary.name} in the configuration "
                             "(`services:`)", hint="on the lab: --config drtool-fleet.yaml")

    def services(self, config, ctx) -> list:
        return site_services(config, ctx.primary)

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


SCENARIO = RegionDown()
