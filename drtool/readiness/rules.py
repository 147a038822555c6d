"""DR readiness rules: evidence about one DR site in, one result per service and rule out. Pure: no I/O, no clock.

Each rule says what it saw and, when it fails, what to do. A rule that could not be checked because another rule
failed first (an unreadable DR store leaves the snapshot, the DR registry copy and the drill history unread) is
`blocked`, naming that rule: the root cause fails once, where it is. A service is ready when every rule passes.

The rules, per service of the primary site(s) that fail over to the DR site:

- `image`: the production image, by digest, is in the DR site's container registry;
- `snapshot`: the snapshot a failover would restore (the first of `snapshot_candidates`) is in the DR store, its
  manifest loads and its blobs are there with their sizes (no data read), and it is younger than the RPO target;
- `registry`: the DR site's registry copy agrees with production's (version, snapshot, image, canary);
- `capacity`: the fleet planner places the service on a DR standby, GPUs counted;
- `dns`: the record's TTL is at most `dns.prepare_ttl`, and the DNS server accepts the credentials (a signed
  no-op update for RFC 2136, a zone read for Route 53);
- `store_credentials`: the DR store accepts the credentials a failover restores with (one read-only signed request);
- `drills`: the service's last passing failover drill at this site is younger than `readiness.drill_max_age_s`;
- `rto`: the predicted RTO (drtool/readiness/predict.py) is within the target.
"""

from __future__ import annotations  # PEP 563 (public), for Assessment in its own class

from dataclasses import dataclass, field

from drtool.fleet import planner
from drtool.readiness import predict

PASS, FAIL, BLOCKED = "pass", "fail", "blocked"
RULES = ("image", "snapshot", "registry", "capacity", "dns", "store_credentials", "drills", "rto")
# Drill scenarios that prove a failover to the DR site (the others are refused on purpose, or cured in the site).
FAILOVER_SCENARIOS = frozenset({"primary-down", "region-partition", "corrupt-latest-snapshot",
                                "standby-boot-failure", "region-down"})
SCHEMA = "drtool.readiness/v1"


@dataclass(frozen=True)
class Entry:
    """A registry entry as readiness compares it; `canary` is a fingerprint of the canary (input, output, tolerance)."""

    version: str
    snapshot_id: str
    image: str          # repository@sha256:...
    canary: str


@dataclass(frozen=True)
class SnapshotSeen:
    id: str
    created: float | None          # epoch seconds, from the manifest
    bytes: int | None
    problem: str | None = None     # not there, manifest refused, a blob missing: what verification said


@dataclass(frozen=True)
class ServiceEvidence:
    """What the action gathered for one service. `None` with an `*_error` means it could not be read."""

    service: str
    model: str
    site: str                       # its primary site
    priority: int
    gpus: int
    record: str
    alias: str = "production"
    production: Entry | None = None     # the primary's registry (the DR copy's when the primary could not be read)
    production_from: str = ""           # which site's registry `production` came from
    production_error: str | None = None
    dr_entry: Entry | None = None
    dr_entry_error: str | None = None
    image_ref: str | None = None        # the reference a failover pulls (DR registry/repository@digest)
    image_present: bool | None = None
    image_error: str | None = None
    snapshot: SnapshotSeen | None = None
    snapshot_error: str | None = None
    record_ttl: int | None = None
    record_addresses: tuple[str, ...] = ()
    record_error: str | None = None


@dataclass(frozen=True)
class SiteEvidence:
    """What the action gathered once for the DR site."""

    site: str
    registry_url: str
    store_url: str
    prepare_ttl: int
    standbys: tuple[planner.StandbyHost, ...]
    parallel: int
    engine: str                              # predict.SINGLE or predict.FLEET: what `drtool failover` would run
    now: float
    store_error: str | None = None
    dns_credentials_error: str | None = None
    dns_credentials_how: str = ""
    drill_reports: tuple[dict, ...] = ()     # report.json documents of this site's drills (the DR store)
    drill_error: str | None = None
    samples: tuple[predict.RunSample, ...] = ()
    detections: tuple[tuple[float, float], ...] = ()   # (ended, detection + decision seconds) of drills
    history_error: str | None = None


@dataclass(frozen=True)
class Targets:
    rto_s: float
    rpo_s: float
    drill_max_age_s: float
    history_runs: int = predict.DEFAULT_RUNS


@dataclass(frozen=True)
class RuleResult:
    rule: str
    status: str            # pass | fail | blocked
    saw: str               # what the rule saw
    fix: str | None = None  # what to do (fail), or the rule it waits for (blocked)
    evidence: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"rule": self.rule, "status": self.status, "saw": self.saw, "fix": self.fix, "evidence": self.evidence}


@dataclass(frozen=True)
class ServiceResult:
    service: str
    model: str
    priority: int
    record: str
    rules: tuple[RuleResult, ...]
    predicted_rto_s: float | None
    standby: str | None
    wave: int | None

    @property
    def ready(self) -> bool:
        return all(r.status == PASS for r in self.rules)

    def rule(self, name: str) -> RuleResult:
        return next(r for r in self.rules if r.rule == name)

    def to_dict(self) -> dict:
        return {"service": self.service, "model": self.model, "priority": self.priority, "record": self.record,
                "ready": self.ready, "standby": self.standby, "wave": self.wave,
                "predicted_rto_s": self.predicted_rto_s, "rules": [r.to_dict() for r in self.rules]}


@dataclass(frozen=True)
class Assessment:
    site: SiteEvidence
    targets: Targets
    services: tuple[ServiceResult, ...]
    prediction: predict.Prediction

    @property
    def ready(self) -> bool:
        return bool(self.services) and all(s.ready for s in self.services)

    def failed(self) -> list[str]:
        return [f"{s.service}/{r.rule}" for s in self.services for r in s.rules if r.status == FAIL]

    def to_dict(self) -> dict:
        """The `--json` document (a stable contract: docs/readiness.md)."""
        p = self.prediction
        ready = sum(1 for s in self.services if s.ready)
        return {
            "schema": SCHEMA, "site": self.site.site, "checked_at": self.site.now, "ready": self.ready,
            "engine": p.engine, "parallel": self.site.parallel, "waves": len(p.wave_seconds),
            "targets": {"rto_s": self.targets.rto_s, "rpo_s": self.targets.rpo_s,
                        "drill_max_age_s": self.targets.drill_max_age_s},
            "rto": {"predicted_s": p.fleet_rto_s, "target_s": self.targets.rto_s,
                    "within_target": None if p.fleet_rto_s is None else p.fleet_rto_s <= self.targets.rto_s,
                    "statistic": p.statistic, "samples": p.samples, "detection_s": p.detection_s,
                    "wave_seconds": p.wave_seconds, "phases": p.phases, "notes": list(p.notes)},
            "summary": {"services": len(self.services), "ready": ready, "not_ready": len(self.services) - ready,
                        "failed": self.failed()},
            "services": [s.to_dict() for s in self.services],
        }


# -- the rules ----------------------------------------------------------------------------------------------------
def _blocked(rule: str, by: str, why: str) -> RuleResult:
    return RuleResult(rule, BLOCKED, f"not checked: {why}", f"fix rule {by} first")


def rule_image(ev: ServiceEvidence, site: SiteEvidence) -> RuleResult:
    if ev.production is None:
        return _blocked("image", "registry", f"no production entry of {ev.model} could be read")
    evidence = {"image": ev.image_ref, "from": ev.production_from}
    if ev.image_error:
        return RuleResult("image", FAIL, f"{site.registry_url} could not be asked: {ev.image_error}",
                          f"check that {site.registry_url} is up and trusted (container_registry.ca_file, tls.ca_file)",
                          evidence)
    if not ev.image_present:
        return RuleResult("image", FAIL, f"{ev.image_ref} is not in {site.registry_url}",
                          f"push it there: `drtool image build --model {ev.model} --version "
                          f"{ev.production.version} --push` pushes to every site's registry, by digest", evidence)
    return RuleResult("image", PASS, f"{ev.image_ref} present", None, evidence)


def rule_snapshot(ev: ServiceEvidence, site: SiteEvidence, targets: Targets) -> RuleResult:
    if site.store_error:
        return _blocked("snapshot", "store_credentials", f"{site.store_url} could not be read")
    if ev.production is None:
        return _blocked("snapshot", "registry", f"no production entry of {ev.model} could be read")
    snap = ev.snapshot
    copy = (f"`drtool backup` copies last night's snapshot to every DR store, or `drtool snapshot replicate "
            f"{ev.production.snapshot_id[:12]} --from <{ev.site}'s store> --to {site.store_url}`")
    if ev.snapshot_error or snap is None:
        return RuleResult("snapshot", FAIL, f"no snapshot of {ev.model} {ev.production.version} could be read in "
                                            f"{site.store_url}: {ev.snapshot_error or 'none found'}", copy)
    age = None if snap.created is None else round(site.now - snap.created, 3)
    evidence = {"id": snap.id, "age_s": age, "bytes": snap.bytes, "target_s": targets.rpo_s}
    if snap.problem:
        return RuleResult("snapshot", FAIL, f"snapshot {snap.id[:12]} in {site.store_url}: {snap.problem}",
                          f"replicate a good snapshot again: {copy}", evidence)
    if age is None or age > targets.rpo_s:
        shown = "unknown" if age is None else _duration(age)
        return RuleResult("snapshot", FAIL, f"snapshot {snap.id[:12]} is {shown} old, over the RPO target "
                                            f"{_duration(targets.rpo_s)}",
                          "is the nightly snapshot job running (`drtool backup --install-schedule`, alert "
                          "DrtoolBackupTooOld)? Take one now: `drtool backup`", evidence)
    return RuleResult("snapshot", PASS, f"snapshot {snap.id[:12]} verified (metadata), {_duration(age)} old "
                                        f"(RPO target {_duration(targets.rpo_s)})", None, evidence)


def rule_registry(ev: ServiceEvidence, site: SiteEvidence) -> RuleResult:
    if ev.production_error or ev.production_from != ev.site:
        return RuleResult("registry", FAIL, f"{ev.site}'s registry could not be read: {ev.production_error}",
                          f"check {ev.site}'s store (`drtool registry show --site {ev.site}`)",
                          {"production_from": ev.production_from})
    if site.store_error:
        return _blocked("registry", "store_credentials", f"{site.store_url} could not be read")
    if ev.production is None:
        return RuleResult("registry", FAIL, f"{ev.site}'s registry has no {ev.alias} version of {ev.model}",
                          f"register and promote one: `drtool registry register ...`, `drtool registry promote "
                          f"{ev.model} VERSION`")
    prod = ev.production
    evidence = {"production": _entry_doc(prod), "dr": _entry_doc(ev.dr_entry)}
    if ev.dr_entry is None:
        return RuleResult("registry", FAIL, f"{site.site}'s registry copy has no {ev.alias} entry for {ev.model} "
                                            f"{prod.version}: {ev.dr_entry_error or 'none'}",
                          f"`drtool registry promote {ev.model} {prod.version}` replicates the alias to every site",
                          evidence)
    differ = [f for f in ("version", "snapshot_id", "image", "canary") if getattr(prod, f) != getattr(ev.dr_entry, f)]
    if not differ:
        return RuleResult("registry", PASS, f"{site.site} agrees: {ev.model} {prod.version}", None, evidence)
    if "version" in differ:
        fix = (f"`drtool registry promote {ev.model} {prod.version}` replicates production's alias to every site "
               f"({site.site}'s {ev.alias} is {ev.dr_entry.version})")
    else:
        fix = (f"{site.site}'s copy of {ev.model} {prod.version} was changed; versions are immutable: delete "
               f"registry/{ev.model}/versions/{prod.version}.json in {site.store_url} and run the same `drtool "
               f"registry register` again, which copies production's entry to every site")
    return RuleResult("registry", FAIL, f"{site.site}'s registry disagrees with {ev.site}'s on "
                                        f"{', '.join(differ)}", fix, evidence)


def rule_capacity(ev: ServiceEvidence, site: SiteEvidence, placed: dict, left: dict) -> RuleResult:
    if ev.service in placed:
        a = placed[ev.service]
        return RuleResult("capacity", PASS, f"{a.host.name} GPU {','.join(map(str, a.gpu_indices))}, wave "
                                            f"{a.wave + 1}", None,
                          {"standby": a.host.name, "gpus": list(a.gpu_indices), "wave": a.wave})
    reason = left[ev.service].reason if ev.service in left else "not planned"
    free = sum(h.gpus for h in site.standbys)
    return RuleResult("capacity", FAIL, f"left out: {reason}; {len(site.standbys)} standby(s), {free} GPU slots for "
                                        f"the site's services",
                      f"add standby GPUs at {site.site} (sites.{site.site}.standby_pool.hosts: another host, or "
                      f"`gpus:`), or give this service a lower priority number than one that may wait",
                      {"reason": reason, "gpus": ev.gpus})


def rule_dns(ev: ServiceEvidence, site: SiteEvidence) -> RuleResult:
    evidence = {"record": ev.record, "ttl": ev.record_ttl, "prepare_ttl": site.prepare_ttl,
                "addresses": list(ev.record_addresses), "credentials": site.dns_credentials_how}
    if site.dns_credentials_error:
        return RuleResult("dns", FAIL, f"the DNS server refused the credentials: {site.dns_credentials_error}",
                          f"fix sites.{site.site}.dns (tsig_key_file, or the AWS credentials for Route 53): a "
                          "failover could not flip the record", evidence)
    if ev.record_error:
        return RuleResult("dns", FAIL, f"{ev.record} could not be read: {ev.record_error}",
                          "check that the authoritative server is up and reachable", evidence)
    if not ev.record_addresses or ev.record_ttl is None:
        return RuleResult("dns", FAIL, f"{ev.record} has no A record", f"create {ev.record} (its production "
                                                                       "address), then prepare its TTL", evidence)
    if ev.record_ttl > site.prepare_ttl:
        return RuleResult("dns", FAIL, f"{ev.record} TTL {ev.record_ttl}s > prepared TTL {site.prepare_ttl}s: "
                                       f"resolvers would keep the old address up to {ev.record_ttl}s after a flip",
                          f"`drtool failover --prepare --site {site.site}` lowers it to {site.prepare_ttl}s "
                          "(addresses unchanged)", evidence)
    return RuleResult("dns", PASS, f"{ev.record} TTL {ev.record_ttl}s <= {site.prepare_ttl}s; credentials "
                                   "accepted", None, evidence)


def rule_store_credentials(site: SiteEvidence) -> RuleResult:
    if site.store_error:
        return RuleResult("store_credentials", FAIL, f"{site.store_url} refused: {site.store_error}",
                          f"fix sites.{site.site}.object_stores[0] (credentials_file, profile, endpoint_url): a "
                          "failover restores with these credentials", {"store": site.store_url})
    return RuleResult("store_credentials", PASS, f"{site.store_url} accepts a signed read", None,
                      {"store": site.store_url})


def last_passing_drill(reports, site: str, service: str, model: str) -> dict | None:
    """The newest drill of `site` that moved `service` to it and passed: a failover scenario whose row of the
    service says moved, or, without such a row (a configuration that names it otherwise), one that moved a service
    of its model; a report without rows (before they were written): a drill of its model. {"drill_id", "scenario",
    "ended"} or None."""
    best = None
    for doc in reports:
        if doc.get("site") != site:
            continue
        for sc in doc.get("scenarios") or []:
            if not sc.get("passed") or sc.get("scenario") not in FAILOVER_SCENARIOS:
                continue
            moved = sc.get("services")
            if isinstance(moved, dict):
                rows = [moved[service]] if service in moved else [p for p in moved.values() if p.get("model") == model]
                if not any(p.get("status") == "moved" for p in rows):
                    continue
            elif doc.get("model") != model:
                continue
            ended = doc.get("ended") or doc.get("started")
            if isinstance(ended, int | float) and (best is None or ended > best["ended"]):
                best = {"drill_id": doc.get("drill_id"), "scenario": sc["scenario"], "ended": float(ended)}
    return best


def rule_drills(ev: ServiceEvidence, site: SiteEvidence, targets: Targets) -> RuleResult:
    if site.store_error:
        return _blocked("drills", "store_credentials", f"the drill history in {site.store_url} could not be read")
    fix = (f"run a drill: `drtool drill --site {site.site}`" + (" --scenario region-down" if site.engine ==
                                                                 predict.FLEET else ""))
    if site.drill_error:
        return RuleResult("drills", FAIL, f"the drill history could not be read: {site.drill_error}", fix)
    last = last_passing_drill(site.drill_reports, site.site, ev.service, ev.model)
    if last is None:
        return RuleResult("drills", FAIL, f"no passing failover drill of {ev.service} at {site.site} in the history "
                                          f"({len(site.drill_reports)} report(s))", fix,
                          {"max_age_s": targets.drill_max_age_s})
    age = round(site.now - last["ended"], 3)
    evidence = {**last, "age_s": age, "max_age_s": targets.drill_max_age_s}
    if age > targets.drill_max_age_s:
        return RuleResult("drills", FAIL, f"last passing drill {last['drill_id']} ({last['scenario']}) is "
                                          f"{_duration(age)} old, over {_duration(targets.drill_max_age_s)}",
                          fix, evidence)
    return RuleResult("drills", PASS, f"{last['drill_id']} ({last['scenario']}) passed {_duration(age)} ago",
                      None, evidence)


def rule_rto(ev: ServiceEvidence, site: SiteEvidence, targets: Targets, pred: predict.Prediction,
             placed: dict) -> RuleResult:
    if site.store_error:
        return _blocked("rto", "store_credentials", "the drill and failover history could not be read")
    if ev.service not in placed:
        return _blocked("rto", "capacity", "the service has no standby, so no failover time")
    sp = pred.services.get(ev.service)
    evidence = {"target_s": targets.rto_s, "statistic": pred.statistic, "samples": pred.samples,
                **({"phases": sp.phases, "notes": list(sp.notes)} if sp else {})}
    if sp is None or sp.rto_s is None:
        return RuleResult("rto", FAIL, "no measured failover or drill step times to predict from",
                          f"run a drill (`drtool drill --site {site.site}`): its failover's step times are measured",
                          evidence)
    if sp.rto_s > targets.rto_s:
        slowest = max(sp.phases, key=lambda k: sp.phases[k] or 0)
        return RuleResult("rto", FAIL, f"predicted RTO {sp.rto_s:.1f}s > target {targets.rto_s:.0f}s (slowest "
                                       f"phase {slowest}: {sp.phases[slowest]:.1f}s)",
                          "fewer waves (more standbys, failover.parallel), the image kept on the standbys (pull), "
                          "smaller or faster snapshots (restore), or a target that matches", evidence)
    return RuleResult("rto", PASS, f"predicted RTO {sp.rto_s:.1f}s <= target {targets.rto_s:.0f}s", None, evidence)


def assess(site: SiteEvidence, services: list[ServiceEvidence], targets: Targets) -> Assessment:
    """Every rule for every service, in priority order, with the capacity plan and the RTO prediction."""
    services = sorted(services, key=lambda s: (s.priority, s.service))
    failed = "+".join(sorted({s.site for s in services})) or "(none)"
    plan = planner.plan([planner.Service(s.service, failed, s.model, s.record, 1, s.priority, s.gpus, s.alias)
                         for s in services], site.standbys, failed_site=failed, target_site=site.site,
                        parallel=site.parallel)
    placed = {a.service.name: a for a in plan.assignments}
    left = {x.service.name: x for x in plan.left}
    needs = [predict.Need(s.service, placed[s.service].host.name if s.service in placed else None,
                          placed[s.service].wave if s.service in placed else None, s.image_ref,
                          s.snapshot.bytes if s.snapshot else None) for s in services]
    pred = predict.predict(needs, list(site.samples), list(site.detections), site.engine, targets.history_runs)
    store = rule_store_credentials(site)
    results = []
    for ev in services:
        rules = (rule_image(ev, site), rule_snapshot(ev, site, targets), rule_registry(ev, site),
                 rule_capacity(ev, site, placed, left), rule_dns(ev, site), store,
                 rule_drills(ev, site, targets), rule_rto(ev, site, targets, pred, placed))
        a = placed.get(ev.service)
        sp = pred.services.get(ev.service)
        results.append(ServiceResult(ev.service, ev.model, ev.priority, ev.record, rules,
                                     sp.rto_s if sp else None, a.host.name if a else None, a.wave if a else None))
    return Assessment(site, targets, tuple(results), pred)


def _entry_doc(e: Entry | None) -> dict | None:
    return None if e is None else {"version": e.version, "snapshot_id": e.snapshot_id, "image": e.image,
                                   "canary": e.canary}


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 2 * 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"
