"""Which services a site's recovery concerns, from the configuration alone (no I/O): the services that fail over
to a DR site, the hosts that serve a service at home, a named subset in priority order. The recovery engine
(drtool/recovery/) plans with them, and so do readiness, backup and the watch.
"""

from drtool.config import Config, ServiceSpec, Site
from drtool.errors import UsageError


def home_hosts(site: Site, spec: ServiceSpec) -> tuple:
    """The hosts of its primary `site` that serve a service: every one for the service on the site's own record
    (the one behind the site's Nginx), else the site's first host. Fleet failback brings a service back there, and
    `drtool backup` snapshots its weights there."""
    return tuple(site.hosts) if spec.record == site.dns.record else tuple(site.hosts[:1])


def failing_sites(config: Config, dr: Site) -> list[Site]:
    """The serving sites (with fixed hosts) whose failover target is `dr`, in configuration order."""
    return [s for s in config.sites.values()
            if s.name != dr.name and not s.is_standby and config.dr_site_for(s.name).name == dr.name]


def select_services(config: Config, dr_site_name: str, names: list[str] | None) -> list[ServiceSpec]:
    """The services that fail over to `dr_site_name` (all of them, or the named ones), in priority order.
    Raises UsageError for a name that is not such a service, listing the ones that are. No I/O."""
    dr = config.site(dr_site_name)
    if dr.role != "dr" or not dr.is_standby:
        raise UsageError(f"site {dr.name} is not a DR site with a standby pool",
                         hint="plan TO the DR site, e.g. `drtool failover --site dr-east --dry-run`")
    sources = {s.name for s in failing_sites(config, dr)}
    return pick_named({n: s for n, s in config.services.items() if s.site in sources}, names,
                      f"for a failover to {dr.name}", f"services that fail over to {dr.name}")


def pick_named(mine: dict[str, ServiceSpec], names: list[str] | None, where: str,
               listing: str) -> list[ServiceSpec]:
    """`mine`, or only the named ones, in priority order; UsageError naming every unknown name (`where`) and
    listing the known ones (`listing`)."""
    if names:
        unknown = sorted({n for n in names if n not in mine})
        if unknown:
            raise UsageError(f"unknown service(s) {', '.join(map(repr, unknown))} {where}",
                             hint=f"{listing}: {', '.join(sorted(mine)) or 'none'}")
        mine = {n: mine[n] for n in names}
    return sorted(mine.values(), key=lambda s: (s.priority, s.name))
