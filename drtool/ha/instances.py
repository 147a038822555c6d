"""What the escalation ladder watches at a serving site: one instance per (host, service).

A site may serve several services (`services:`), each on its own port and record. The service on the site's own
record is served by every host of the site behind its Nginx; every other service by the site's first host only
(`drtool.fleet.plan.home_hosts`). Each (host, service) is one instance of the ladder, named `HOST/SERVICE`; on a
site with a single service it is named by its host alone (`pw-gpu1`), as it always was, so saved ladder states and
journals keep their names.

Only the service behind the site's Nginx has a drain rung: draining one of its hosts leaves the others serving its
record. A service served by one host has nowhere else to go inside the site; it climbs as with the drain rung off
(restart in place, then nothing local is left). The failover rung stays ONE decision for the site, taken only when
no instance of the site serves at all (`decide_per_service`).

Everything here is pure: the configuration in, instances and ladder actions out.
"""

from __future__ import annotations  # PEP 563 (public), for ServingInstance in signatures

from collections.abc import Iterable
from dataclasses import dataclass, replace

from drtool.config import Config, Host, ServiceSpec, Site
from drtool.errors import UsageError
from drtool.fleet.plan import home_hosts
from drtool.ha.ladder import Action, InstanceHealth, LadderSettings, LadderState, decide


@dataclass(frozen=True)
class ServingInstance:
    """One service on one host: `name` is its ladder key. `model` is None only where several models share the
    site's one port and nothing says which one serves there (no `services:`): it cannot be restarted."""

    name: str
    host: Host
    port: int
    service: str
    model: str | None
    drainable: bool   # the service on the site's own record, behind its Nginx: the one with a drain rung


def instance_name(host: str, service: str, several: bool) -> str:
    """The ladder's key for a service on a host: `host/service` on a site with several services, else `host`."""
    return f"{host}/{service}" if several else host


def site_services(config: Config, site: Site) -> list[ServiceSpec]:
    """The services the site serves, in priority order (then name)."""
    return sorted((s for s in config.services.values() if s.site == site.name), key=lambda s: (s.priority, s.name))


def site_instances(config: Config, site: Site) -> tuple[ServingInstance, ...]:
    """Every (host, service) the site serves, services in priority order, each on its home hosts. Services that
    share one port (several models and no `services:`) are one instance per host with no model."""
    services = site_services(config, site)
    if not services:
        return ()
    if len({s.port for s in services}) < len(services):
        shared = ", ".join(s.name for s in services)
        return tuple(ServingInstance(h.name, h, site.serving_port, shared, None, True) for h in site.hosts)
    several = len(services) > 1
    return tuple(ServingInstance(instance_name(h.name, s.name, several), h, s.port, s.name, s.model,
                                 s.record == site.dns.record)
                 for s in services for h in home_hosts(site, s))


def restart_model(config: Config, site: Site, instance: ServingInstance):
    """The model whose container a restart of `instance` starts again; UsageError when the site does not say."""
    if instance.model is None:
        raise UsageError(f"site {site.name} has several models on port {instance.port} ({instance.service}): "
                         "which one serves there is not known",
                         hint="name each served model in `services:`, each with its own port")
    return config.model(instance.model)


def decide_per_service(state: LadderState, observations: Iterable[InstanceHealth],
                       instances: Iterable[ServingInstance], settings: LadderSettings, now: float) -> list[Action]:
    """`decide` for a site with several services. Each service climbs on its own: restarts per instance, and a
    drain only of the service behind the site's Nginx, while another of its own instances serves (never judged
    by another service's health); a service not behind Nginx climbs with its drain rung off. The site's failover
    rung is decided over every instance together: one action for the site, only when none of them serves.
    Observations of names not among `instances` climb together, as the site's Nginx service would. Pure."""
    obs = list(observations)
    known = {i.name: i for i in instances}
    groups: dict[str | None, list[InstanceHealth]] = {}
    for o in obs:
        groups.setdefault(known[o.name].service if o.name in known else None, []).append(o)
    no_drain = replace(settings, policy=replace(settings.policy, drain="off"))
    actions = [a for service, seen in groups.items()
               for a in decide(state, seen, settings if _drainable(seen, known) else no_drain, now)
               if a.instance is not None]
    actions += [a for a in decide(state, obs, settings, now) if a.instance is None]
    return sorted(actions, key=lambda a: (a.site, a.instance is None, a.instance or ""))


def _drainable(seen: list[InstanceHealth], known: dict[str, ServingInstance]) -> bool:
    return all(known[o.name].drainable for o in seen if o.name in known)
