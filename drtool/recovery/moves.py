"""What a recovery run moves, and where: pure, no I/O.

A run is a list of moves. A move is one service brought up on its target host(s), in a wave: a DR standby for a
failover (one host), the service's home hosts for a failback (every host of the site for the service behind the
site's Nginx). One service is a fleet of one: the same move, the same steps, the same journal.
"""

from __future__ import annotations  # PEP 563 (public): Move names Journal before its import is used

import threading
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Protocol

from drtool.config import Config, Host, ServiceSpec, Site
from drtool.errors import UsageError
from drtool.fleet import planner
from drtool.recovery.journal import DONE, FAILED, SKIPPED, Journal, StepRecord

FAILOVER, FAILBACK = "failover", "failback"


class PrimaryServing(UsageError):
    """An unplanned failover found the record's current target answering ready: it refuses, changing nothing."""


class AlreadyDone(Exception):
    """A step found the service's work done already (it serves from the target): nothing more runs for it."""


@dataclass(frozen=True)
class Request:
    """One recovery asked for: the CLI, a drill or an alert builds it; the engine runs it."""

    kind: str                                  # failover | failback
    site: str                                  # where the services come up
    services: tuple[str, ...] | None = None    # only these (default: every service that needs it)
    everything: bool = False                   # failover: also the services whose primary still serves
    planned: bool = False                      # failover: a serving primary, moved gracefully (flip first)
    parallel: int | None = None                # services brought up at once per wave
    dry_run: bool = False
    resume: str | None = None                  # finish this run
    run_id: str | None = None                  # start under this id (serve, approvals)
    reason: str | None = None


@dataclass
class Move:
    """One service's move: its target host(s), its wave, its journal (the steps and the facts they found)."""

    spec: ServiceSpec
    hosts: tuple[Host, ...]
    wave: int
    journal: Journal
    entry: object = None     # the target registry's production entry (read by preflight, not journaled)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def host(self) -> Host:
        return self.hosts[0]

    @property
    def ctx(self) -> dict:
        return self.journal.context

    def rec(self, step: str) -> StepRecord:
        return self.journal.record(step)

    def failed(self) -> bool:
        return any(s.status == FAILED for s in self.journal.steps)

    def settled(self) -> bool:
        """Its work was found done already (preflight): nothing more runs for it."""
        return bool(self.ctx.get("settled"))

    def pending(self, step: str) -> bool:
        return not self.failed() and not self.settled() and self.rec(step).status not in (DONE, SKIPPED)

    def live(self) -> tuple[Host, ...]:
        """Its target hosts, less those drained after failing (a failback's second instance behind Nginx)."""
        drained = set(self.ctx.get("drained", []))
        return tuple(h for h in self.hosts if h.name not in drained)


class Run(Protocol):
    """What a step sees of its run (drtool/recovery/engine.Recovery)."""

    config: Config
    out: object                 # drtool.output.Output
    site: Site                  # where the services come up
    kind: str
    run_id: str
    planned: bool
    store: object               # the target site's BlobStore: lease, journal copies, saved records
    lease: object | None
    lock: threading.Lock
    cache: dict
    doc: dict                   # the run's record (failed standbys, ...)
    moves: dict[str, Move]

    def save(self, m: Move) -> None: ...

    def save_doc(self) -> None: ...


def split_rounds(items: Iterable, key: Callable[[object], Hashable]) -> list[list]:
    """`items` in rounds holding at most one item per `key` (a host): one play gives each host one set of role
    variables. Every item is kept, in order."""
    per_key: dict[Hashable, list] = {}
    for item in items:
        per_key.setdefault(key(item), []).append(item)
    depth = max((len(v) for v in per_key.values()), default=0)
    return [[v[k] for v in per_key.values() if len(v) > k] for k in range(depth)]


def waves(specs: list[ServiceSpec], parallel: int) -> dict[str, int]:
    """Wave of each service: priority order, at most `parallel` per wave."""
    ordered = sorted(specs, key=lambda s: (s.priority, s.name))
    return {s.name: i // max(1, parallel) for i, s in enumerate(ordered)}


def as_planner_service(spec: ServiceSpec, site: str | None = None) -> planner.Service:
    return planner.Service(spec.name, site or spec.site, spec.model, spec.record, spec.port, spec.priority,
                           spec.gpus, spec.alias)


def place(specs: list[ServiceSpec], hosts: list[Host], target_site: str, parallel: int,
          pinned: dict[str, Host] | None = None, refused: Iterable[str] = (),
          held: dict[str, int] | None = None) -> tuple[dict[str, tuple[Host, int]], list[planner.Left]]:
    """Standby placement of a failover: `pinned` services stay where they are (their record already points at a
    standby, wave 0); the others go to the planner, over the standbys not `refused`, less the GPUs that the
    pinned services and `held` ({host: GPUs}) already take. Returns {service: (host, wave)} and the left ones."""
    pinned = pinned or {}
    taken = dict(held or {})
    by_name = {s.name: s for s in specs}
    for name, host in pinned.items():
        taken[host.name] = taken.get(host.name, 0) + by_name[name].gpus
    refused = set(refused)
    free = [planner.StandbyHost(h.name, target_site, h.gpus - taken.get(h.name, 0), h.address)
            for h in hosts if h.name not in refused and h.gpus > taken.get(h.name, 0)]
    rest = [s for s in specs if s.name not in pinned]
    sources = "+".join(sorted({s.site for s in rest})) or "(none)"
    result = planner.plan([as_planner_service(s, sources) for s in rest], free, failed_site=sources,
                          target_site=target_site, parallel=max(1, parallel))
    by_host = {h.name: h for h in hosts}
    placed = {name: (host, 0) for name, host in pinned.items()}
    placed.update({a.service.name: (by_host[a.host.name], a.wave) for a in result.assignments})
    return placed, list(result.left)
