"""Alerts about one serving instance climb the escalation ladder in `drtool serve`, as `drtool watch`
does for its probes: (1) restart the instance's container in place, (2) drain it from the site's Nginx, (3) only
when the site has no healthy undrained instance left, hand ONE alert for the site to the DecisionBook (firing time,
cooldown, policy, exactly once), the path every site-level alert takes.

An alert is about one instance when its `instance` label (`ADDRESS:PORT` as Prometheus writes it, or a bare host
name or address) names a serving host of a primary site and, by its port, one service that host serves: on a site
with several services (`services:`, each on its own port) an instance is one service on one host
(`drtool.ha.instances`), and a bare name means the service on the site's serving port.
Its name says what it means for the ladder (ops/prometheus/drtool-rules.yml):

- ModelInstanceDown, ModelServerNotReady: the instance does not serve: *down* (rung 1, restart);
- ModelGpuTemperatureHigh, ModelGpuMemoryHigh: *degraded* (straight to drain: a restart does not cool a GPU);
- ModelLatencyP95High, ModelErrorRateHigh and any other name: recorded, no rung (a slow or failing host is for
  people to look at: draining or failing over on latency could take a whole site out on a load peak).

The ladder keeps the instance alerts still firing (by fingerprint; a `resolved` one is dropped), and on every
batch that names a site's instance it observes EVERY instance of that site: one with no firing alert is
healthy (so a drained one is undrained once its alert resolves). The climb itself is `drtool.ha.executor.SiteLadder`,
the one `drtool watch` uses: same journal (`<state>/ladder/<site>.jsonl`) and the same persisted state
(`<state>/ladder/<site>.state.json`). The side effects are injected (`Remedies`); the alerts still firing are kept in
memory; one lock serialises batches from the receiver's threads."""

import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from drtool.alerts.decisions import Alert, DecisionBook
from drtool.config import Config, Site
from drtool.ha.executor import Remedies, SiteLadder
from drtool.ha.instances import ServingInstance
from drtool.ha.ladder import InstanceHealth

__all__ = ["AlertLadder", "Remedies"]

DOWN_ALERTS = frozenset({"ModelInstanceDown", "ModelServerNotReady"})
DEGRADED_ALERTS = frozenset({"ModelGpuTemperatureHigh", "ModelGpuMemoryHigh"})
FAILOVER_ALERT = "DrtoolServeLadderSiteDown"   # the site-level alert the failover rung hands to the book


@dataclass(frozen=True)
class _Firing:
    instance: str
    site: str
    name: str
    starts_at: float
    healthy: bool
    degraded_reason: str | None


def _split_instance(label: str) -> tuple[str, str | None]:
    """("host", "port" or None) from `host:port`, `[v6]:port`, a bare name or a bare (v4 or v6) address."""
    if label.startswith("["):
        host, _, rest = label[1:].partition("]")
        return host, rest[1:] if rest.startswith(":") else None
    if label.count(":") == 1:
        host, port = label.split(":")
        return host, port
    return label, None


class AlertLadder:
    def __init__(self, config: Config, book: DecisionBook, journal_dir: Path, remedies: Remedies,
                 clock: Callable[[], float] = time.time):
        self.config, self.book, self.remedies, self.clock = config, book, remedies, clock
        self.state_dir = Path(journal_dir).parent   # journal_dir is <state>/ladder
        self.firing: dict[str, _Firing] = {}       # fingerprint -> an instance alert still firing
        self.ladders: dict[str, SiteLadder] = {}
        self.lock = threading.Lock()

    def ladder(self, site: Site) -> SiteLadder:
        if site.name not in self.ladders:
            fingerprint = hashlib.sha256(f"drtool-serve-ladder:{site.name}".encode()).hexdigest()[:16]
            self.ladders[site.name] = SiteLadder(self.config, site, self.book, self.state_dir, self.remedies,
                                                 FAILOVER_ALERT, "drtool serve ladder", fingerprint, self.clock)
        return self.ladders[site.name]

    def instance_of(self, alert: Alert) -> tuple[Site, ServingInstance] | None:
        """The primary site's serving instance the alert's `instance` label names (its host by name or address, its
        service by port; no port: the site's serving port), or None (a site-level alert)."""
        label = alert.labels.get("instance")
        if not label:
            return None
        name, port = _split_instance(label)
        for site in self.config.sites.values():
            if site.role != "primary":
                continue
            want = port if port is not None else str(site.serving_port)
            for inst in self.ladder(site).instances.values():
                if name in (inst.host.name, inst.host.address) and want == str(inst.port):
                    return site, inst
        return None

    def split(self, alerts: list[Alert]) -> tuple[list[Alert], list[Alert]]:
        """(alerts about one instance: for handle(), the others: for the DecisionBook as before)."""
        mine, rest = [], []
        for a in alerts:
            (mine if self.instance_of(a) is not None else rest).append(a)
        return mine, rest

    def handle(self, alerts: list[Alert]) -> list[dict]:
        """Observe the instance alerts, climb the ladder for every site they name; one dict per alert, per ladder
        action and per decision the book took for a failover rung."""
        with self.lock:
            now = self.clock()
            out, sites = [], []
            for alert in alerts:
                found = self.instance_of(alert)
                if found is None:
                    continue
                site, inst = found
                if site.name not in sites:
                    sites.append(site.name)
                out.append(self._observe(alert, site, inst))
            for name in sites:
                out.extend(self._climb(self.config.sites[name], now))
            return out

    def _observe(self, alert: Alert, site: Site, inst: ServingInstance) -> dict:
        rec = {"fingerprint": alert.fingerprint, "alert": alert.name, "site": site.name, "instance": inst.name}
        if alert.status == "resolved":
            gone = self.firing.pop(alert.fingerprint, None)
            return {**rec, "action": "resolved", "why": f"{inst.name}: {alert.name} resolved"
                    + ("" if gone else " (was not firing here)")}
        if alert.name in DOWN_ALERTS:
            healthy, reason = False, None
        elif alert.name in DEGRADED_ALERTS:
            summary = (getattr(alert, "annotations", None) or {}).get("summary")
            healthy, reason = True, f"{alert.name}: {summary}" if summary else alert.name
        else:
            return {**rec, "action": "ignored",
                    "why": f"{alert.name} is not an instance-health alert the ladder acts on"}
        self.firing[alert.fingerprint] = _Firing(inst.name, site.name, alert.name, alert.starts_at, healthy, reason)
        return {**rec, "action": "observed", "why": f"{inst.name} {'degraded' if healthy else 'down'} "
                                                   f"({reason or alert.name})"}

    def _health(self, site: Site, inst: ServingInstance, now: float) -> InstanceHealth:
        alerts = [f for f in self.firing.values() if f.site == site.name and f.instance == inst.name]
        down = [f for f in alerts if not f.healthy]
        if down:
            return InstanceHealth(inst.name, site.name, False, None, now,
                                  host_reachable=bool(self.remedies.reachable(inst.host)))
        if alerts:
            reasons = "; ".join(sorted({f.degraded_reason or f.name for f in alerts}))
            return InstanceHealth(inst.name, site.name, True, reasons, now)
        return InstanceHealth(inst.name, site.name, True, None, now)

    def _climb(self, site: Site, now: float) -> list[dict]:
        """One round of the site's ladder on what its instance alerts say; the alert of the site's first firing
        instance alert starts its outage (the failover alert's start, so repeats are one outage to the book)."""
        ladder = self.ladder(site)
        observations = [self._health(site, inst, now) for inst in ladder.instances.values()]
        since = min((f.starts_at for f in self.firing.values() if f.site == site.name), default=now)
        result = ladder.climb(observations, now, since)
        out = [{"fingerprint": d["fingerprint"], "alert": d["alert"], "site": site.name, "instance": None,
                "action": d["action"], "why": d.get("why", "")} for d in result.resolved]
        for step in result.steps:
            action = step.action
            rec = {"fingerprint": "-", "alert": "ladder", "site": site.name, "instance": action.instance,
                   "action": f"ladder_{action.kind}", "rung": action.rung, "policy": action.policy,
                   "why": action.reason, **({"awaits": action.awaits} if action.awaits else {})}
            if step.outcome is not None:
                rec["outcome"] = step.outcome
            if step.outcome == "failed":
                rec["detail"] = step.detail
            if action.kind == "failover":
                rec["decisions"] = step.decisions
            out.append(rec)
        return out
