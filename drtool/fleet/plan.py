"""The fleet plan of a region outage, read-only: which standby of a DR site takes which service, in
which wave, and what each would restore (the production version in the DR site's own registry, its image digest
and its registered snapshot). Nothing is changed; `drtool failover --dry-run` prints it.

The allocation itself is `drtool.fleet.planner.plan` (pure); this module only turns the configuration into its
inputs and resolves each assigned service against the DR registry.
"""

from collections.abc import Callable

from drtool.config import Config, ServiceSpec, Site
from drtool.errors import UsageError
from drtool.fleet import planner


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


def fleet_plan(config: Config, dr_site_name: str, services: list[str] | None, parallel: int | None,
               production: Callable[[str], object | None] | None = None) -> dict:
    """The read-only fleet plan of a failover to `dr_site_name` (see the module docstring).

    `production(model)` returns the DR registry's production entry of a model, or None (default: read from the
    DR site's own registry copy; injectable so the plan is testable without a store)."""
    chosen = select_services(config, dr_site_name, services)
    dr = config.site(dr_site_name)
    parallel = config.failover.parallel if parallel is None else parallel
    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
        raise UsageError(f"--parallel must be an integer >= 1, got {parallel!r}")
    # the planner takes one failed site; several sources that fail over to the same DR site share its pool
    sources = sorted({s.site for s in chosen})
    failed = "+".join(sources) or "(none)"
    specs = {s.name: s for s in chosen}
    result = planner.plan(
        [planner.Service(s.name, failed, s.model, s.record, s.port, s.priority, s.gpus, s.alias) for s in chosen],
        [planner.StandbyHost(h.name, dr.name, h.gpus, h.address) for h in dr.hosts],
        failed_site=failed, target_site=dr.name, parallel=parallel,
    )

    registry = None
    if production is None:
        from drtool.actions.registry import site_registry

        registry = site_registry(config, dr)
        production = registry.production
    entries: dict[str, object | None] = {}
    try:
        rows = []
        for a in result.assignments:
            spec = specs[a.service.name]
            if spec.model not in entries:
                entries[spec.model] = production(spec.model)
            entry = entries[spec.model]
            rows.append({
                "service": spec.name, "site": spec.site, "priority": spec.priority, "model": spec.model,
                "alias": spec.alias,
                "version": getattr(entry, "version", None),
                "standby": a.host.name, "address": a.host.address, "gpus": list(a.gpu_indices), "wave": a.wave,
                "snapshot": getattr(entry, "snapshot_id", None),
                "image": entry.image.at(dr.registry_url) if entry is not None else None,
                "record": spec.record, "port": spec.port,
                "problem": None if entry is not None else
                f"no production version of {spec.model} in {dr.name}'s registry",
            })
    finally:
        if registry is not None:
            registry.store.close()
    return {
        "site": dr.name,
        "from": sources,
        "parallel": parallel,
        "waves": result.waves,
        "services": rows,
        "left": [{"service": x.service.name, "priority": x.service.priority, "gpus": x.service.gpus,
                  "reason": x.reason} for x in result.left],
        "changes": "none (dry run)",
    }

