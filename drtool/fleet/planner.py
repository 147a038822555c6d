"""The standby allocation plan for a region outage: pure, deterministic, no I/O.

A site serves many services; each DR site has a pool of standby hosts. When a site fails, its services go to the
standbys of one target site:

- services are taken in priority order: **lower `priority` number = more important** (0 before 1), ties broken by
  name (then by the remaining fields, so even invalid input with duplicate names gets one order);
- each service takes `gpus` GPU slots on one host; among the hosts with enough free GPUs, the one left with the
  fewest free GPUs afterwards wins (best fit), ties by host name. A host with several GPUs may take several
  services;
- a service no host can take is *left* with a reason, never silently dropped. Since hosts only lose free GPUs,
  a left service never has a lower priority number than an assigned one that needed as many GPUs or more;
- assigned services go in waves of at most `parallel`, in priority order (wave k = assigned services
  k*parallel .. k*parallel+parallel-1).

The same inputs always give the same plan, whatever their order. Hosts are bucketed by free GPU count (a heap of
names per count), so each service costs O(max GPUs per host * log hosts).
"""

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field

PRIORITY_MAX = 9999
GPUS_MAX = 64
PORT_MIN, PORT_MAX = 1, 65535


@dataclass(frozen=True)
class Service:
    """One served model at a site.

    `priority`: lower number = more important (0 is the most important); ties are broken by `name`.
    `gpus`: GPU slots the service needs on one standby host.
    """

    name: str
    site: str
    model: str
    record: str
    port: int
    priority: int
    gpus: int = 1
    alias: str = "production"

    def order_key(self) -> tuple:
        return (self.priority, self.name, self.site, self.model, self.record, self.port, self.gpus, self.alias)


@dataclass(frozen=True)
class StandbyHost:
    """A standby host of a DR site's pool; `gpus` GPU slots (one service per GPU by default)."""

    name: str
    site: str
    gpus: int = 1
    address: str = ""

    def order_key(self) -> tuple:
        return (self.name, self.gpus, self.address, self.site)


@dataclass(frozen=True)
class Assignment:
    service: Service
    host: StandbyHost
    gpu_indices: tuple[int, ...]
    wave: int

    def to_dict(self) -> dict:
        s = self.service
        return {
            "service": s.name,
            "priority": s.priority,
            "model": s.model,
            "alias": s.alias,
            "record": s.record,
            "port": s.port,
            "gpus": s.gpus,
            "host": self.host.name,
            "address": self.host.address,
            "gpu_indices": list(self.gpu_indices),
            "wave": self.wave,
        }


@dataclass(frozen=True)
class Left:
    service: Service
    reason: str

    def to_dict(self) -> dict:
        s = self.service
        return {"service": s.name, "priority": s.priority, "gpus": s.gpus, "record": s.record, "reason": self.reason}


@dataclass(frozen=True)
class Plan:
    failed_site: str
    target_site: str
    parallel: int
    assignments: list[Assignment] = field(default_factory=list)
    left: list[Left] = field(default_factory=list)

    @property
    def waves(self) -> int:
        return self.assignments[-1].wave + 1 if self.assignments else 0

    def to_dict(self) -> dict:
        return {
            "failed_site": self.failed_site,
            "target_site": self.target_site,
            "parallel": self.parallel,
            "waves": self.waves,
            "assigned": len(self.assignments),
            "left_count": len(self.left),
            "assignments": [a.to_dict() for a in self.assignments],
            "left": [x.to_dict() for x in self.left],
        }


def plan(
    services: Iterable[Service],
    standbys: Iterable[StandbyHost],
    *,
    failed_site: str,
    target_site: str,
    parallel: int,
) -> Plan:
    """Allocate the services of `failed_site` to the standbys of `target_site` (see the module docstring)."""
    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
        raise ValueError(f"parallel must be an integer >= 1, got {parallel!r}")
    todo = sorted((s for s in services if s.site == failed_site), key=Service.order_key)
    hosts = sorted((h for h in standbys if h.site == target_site and h.gpus > 0), key=StandbyHost.order_key)

    # free GPU count -> heap of (host order index); the index order is the host-name order
    buckets: dict[int, list[int]] = {}
    used = [0] * len(hosts)
    for i, h in enumerate(hosts):
        buckets.setdefault(h.gpus, []).append(i)  # appended in increasing i: already a heap
    max_free = max(buckets, default=0)

    assignments: list[Assignment] = []
    left: list[Left] = []
    for s in todo:
        need = s.gpus
        chosen = -1
        if need >= 1:
            for free in range(need, max_free + 1):
                bucket = buckets.get(free)
                if bucket:
                    chosen = heapq.heappop(bucket)
                    rest = free - need
                    if rest > 0:
                        heapq.heappush(buckets.setdefault(rest, []), chosen)
                    break
        if chosen < 0:
            left.append(Left(s, f"no standby left at {target_site} ({need} GPUs needed)"))
            continue
        start = used[chosen]
        used[chosen] = start + need
        wave = len(assignments) // parallel
        assignments.append(Assignment(s, hosts[chosen], tuple(range(start, start + need)), wave))
    return Plan(failed_site, target_site, parallel, assignments, left)


def _int_in(value: object, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def validate(services: Iterable[Service], standbys: Iterable[StandbyHost]) -> list[str]:
    """Every mistake at once, as messages (empty list: valid). Never raises.

    Checks: duplicate service names, duplicate records, duplicate standby names; priority (0..9999), gpus
    (1..64) and port (1..65535) in range; every service fits on the largest standby of every DR site (a site
    with standbys other than the service's own).
    """
    services = list(services)
    standbys = list(standbys)
    errors: list[str] = []

    def dupes(values: list[str]) -> list[str]:
        seen: set[str] = set()
        out: set[str] = set()
        for v in values:
            (out if v in seen else seen).add(v)
        return sorted(out)

    for name in dupes([s.name for s in services]):
        errors.append(f"duplicate service name {name!r}")
    for record in dupes([s.record for s in services]):
        owners = sorted(s.name for s in services if s.record == record)
        errors.append(f"duplicate record {record!r} (services {', '.join(owners)})")
    for name in dupes([h.name for h in standbys]):
        errors.append(f"duplicate standby host name {name!r}")

    for s in sorted(services, key=Service.order_key):
        if not _int_in(s.priority, 0, PRIORITY_MAX):
            errors.append(f"service {s.name}: priority {s.priority!r} out of range 0..{PRIORITY_MAX}")
        if not _int_in(s.gpus, 1, GPUS_MAX):
            errors.append(f"service {s.name}: gpus {s.gpus!r} out of range 1..{GPUS_MAX}")
        if not _int_in(s.port, PORT_MIN, PORT_MAX):
            errors.append(f"service {s.name}: port {s.port!r} out of range {PORT_MIN}..{PORT_MAX}")
    for h in sorted(standbys, key=StandbyHost.order_key):
        if not _int_in(h.gpus, 1, GPUS_MAX):
            errors.append(f"standby {h.name}: gpus {h.gpus!r} out of range 1..{GPUS_MAX}")

    # largest standby per site (ties: host name)
    largest: dict[str, StandbyHost] = {}
    for h in sorted(standbys, key=StandbyHost.order_key):
        if not _int_in(h.gpus, 1, GPUS_MAX):
            continue
        best = largest.get(h.site)
        if best is None or h.gpus > best.gpus:
            largest[h.site] = h
    for s in sorted(services, key=Service.order_key):
        if not _int_in(s.gpus, 1, GPUS_MAX):
            continue
        dr_sites = sorted(site for site in largest if site != s.site)
        if not dr_sites:
            errors.append(f"service {s.name} needs {s.gpus} GPUs; no DR site has a standby (site {s.site})")
            continue
        for site in dr_sites:
            big = largest[site]
            if big.gpus < s.gpus:
                errors.append(
                    f"service {s.name} needs {s.gpus} GPUs; the largest standby at {site} ({big.name}) has {big.gpus}"
                )
    return errors
