"""What a drill scenario is, and the two families most scenarios belong to.

A scenario says: whether the alert chain detects its fault (`detected`); what it changes in the drill's
configuration (`configure`); which services it judges and recovers (`services`), each of which must be in steady
state before it starts (`steady_state`); how it injects its fault (`inject`, a `Fault` carrying its undo); how the
system recovers (`recover`: one failover of its services, the in-site escalation ladder); what it expects
(`expect`) and loads (`load`); and whether its failover is a planned one (`planned`: the primary still serves).
The drill (drtool/actions/drill.py) runs the same flow for every scenario: steady state, inject, recover, expect,
load, clean up, compare."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drtool.errors import DrtoolError, OperationFailed, VerificationError

if TYPE_CHECKING:
    from drtool.config import Config, Model, ServiceSpec, Site
    from drtool.drill.alertchain import AlertChain
    from drtool.drill.faults import Fault
    from drtool.output import Output

FAILOVER_TIMEOUT_S = 900


def now() -> float:
    return time.time()


class ScenarioRun:
    """What one scenario did and saw; becomes one entry of report.json."""

    def __init__(self, name: str):
        self.doc = {"scenario": name, "passed": False, "error": None, "fault": None, "fault_at": None,
                    "rto_s": None, "rpo_s": None, "split": {}, "steps": [], "checks": [], "load": None,
                    "cleanup": [], "not_cleaned": []}

    def step(self, name: str, title: str, start: float, end: float, outcome: str = "done", evidence=None,
             error: str | None = None) -> None:
        self.doc["steps"].append({"name": name, "title": title, "start": start, "end": end,
                                  "seconds": round(end - start, 3), "outcome": outcome,
                                  "evidence": evidence or {}, "error": error})

    def check(self, name: str, passed: bool, evidence, message: str | None = None,
              summary: str | None = None) -> bool:
        """One expected outcome: `summary` is the sentence a person reads (what was seen), `evidence` the raw data
        behind it (kept whole in report.json, folded in report.html), `message` why it matters when it fails."""
        self.doc["checks"].append({"name": name, "passed": bool(passed), "summary": summary, "evidence": evidence,
                                   "message": message})
        return bool(passed)


@dataclass
class Context:
    """What a scenario is given of the drill: the sites, the model and record drilled, its production entry, where
    to write, the alert chain (detected scenarios) and the drill's capacity check."""

    config: Config              # the production configuration; the drill's own one is passed as `cfg`
    out: Output
    drill_id: str
    primary: Site
    dr: Site
    model: Model
    entry: Any                  # the model's production entry in the registry (a VersionEntry)
    record: str                 # the record the drill flips: drill.<record>, or production's own with --live
    workdir: Path               # this scenario's work directory (logs, Locust files)
    capacity: Callable[..., dict]   # (url, entry, workdir) -> the Locust result against drill.load
    chain: AlertChain | None = None


@dataclass
class Steady:
    """One service judged before (and after) a scenario: whether it serves its production version and canary,
    a sentence saying what was seen or why not, and the raw evidence."""

    service: str
    ok: bool
    summary: str
    evidence: Any = None


class Scenario:
    """The base every scenario module's `SCENARIO` derives from (through `Failover` or `InSite` below, or
    directly). Only `name`, `summary` and `inject` have no default."""

    name = ""
    summary = ""                # the fault in a few words: help and docs
    detected = False            # an outage: Prometheus -> Alertmanager -> `drtool serve` start the failover
    planned = False             # the failover moves a primary that still serves (flip first, then fence)
    fences = False              # fencing on in a non-live drill (off by default: it would stop production)
    load_under_fault = False    # Locust runs through the record from before the fault until after the recovery

    def require(self, config: Config, primary: Site) -> None:
        """Raise UsageError when the configuration cannot run this scenario (checked before anything runs)."""

    def configure(self, doc: dict, ctx: Context) -> None:
        """Change the drill's configuration document (already on the drill record, fencing per `fences`)."""

    def services(self, config: Config, ctx: Context) -> list[ServiceSpec]:
        """The services this scenario judges and recovers, in priority order: by default the drilled model's."""
        return sorted((s for s in config.services.values() if s.model == ctx.model.name),
                      key=lambda s: (s.priority, s.name))

    def steady_state(self, ctx: Context) -> list[Steady]:
        """Every service this scenario judges, checked through its own record at the primary."""
        from drtool.actions.registry import site_registry

        registry = site_registry(ctx.config, ctx.primary)
        try:
            return [service_steady(ctx.primary, spec, registry) for spec in self.services(ctx.config, ctx)]
        finally:
            registry.store.close()

    def drill_records(self, ctx: Context) -> dict[str, str]:
        """The drill records to create (not --live), each at its service's home: the site's own record becomes the
        drill's record, at the primary's front."""
        from drtool.fleet.plan import home_hosts

        main = (ctx.dr.dns.record, ctx.record)
        return {drill_record(s.record, False, main): ctx.primary.front_address if s.record == ctx.primary.dns.record
                else home_hosts(ctx.primary, s)[0].address for s in self.services(ctx.config, ctx)}

    def inject(self, ctx: Context) -> Fault:
        raise NotImplementedError

    def recover(self, ctx: Context, sc: ScenarioRun, cfg: Config, fault: Fault, fault_at: float) -> Any:
        """Let the system recover, recording its steps; returns what `expect` judges."""

    def expect(self, ctx: Context, sc: ScenarioRun, result: Any, fault: Fault, cfg: Config) -> Any:
        """The expected outcome, as checks; returns what `load` loads."""

    def load(self, ctx: Context, sc: ScenarioRun, target: Any) -> None:
        """The capacity check after the recovery (nothing by default)."""

    def undo_recovery(self, ctx: Context, cfg: Config) -> list[tuple[str, Callable[[], Any]]]:
        """Cleanup once the fault was injected, after the fault's own undo: (label, action) in order."""
        return []



def drill_record(record: str, live: bool, main: tuple[str, str] | None = None) -> str:
    """A service's record in the drill: its own with --live; else `drill.<record>`, except the site's own record,
    which becomes the drill's record (`main` = (production record, drill record))."""
    if live:
        return record
    if main and record == main[0]:
        return main[1]
    return f"drill.{record}"


# -- steady state -----------------------------------------------------------------------------------------------


def service_steady(primary: Site, spec: ServiceSpec, registry) -> Steady:
    """One service in steady state: its production version (the snapshot it serves is one of that version, checked
    by the server against its manifest) and the registered canary output, served through its own record."""
    from drtool.actions import deploy, failover
    from drtool.config import Host
    from drtool.execute.dns import dns_for

    try:
        entry = registry.production(spec.model)
        if entry is None:
            raise VerificationError(f"{spec.model} has no production version in the registry")
        addresses = dns_for(primary.dns).read_a(spec.record).addresses
        if not addresses:
            raise VerificationError(f"record {spec.record} has no address")
        view = dataclasses.replace(primary, serving_port=spec.port, proxy=None)
        host = Host(name=f"{spec.record} ({addresses[0]})", address=addresses[0], site=primary.name)
        evidence = deploy.check(view, host, failover.served_entry(view, host, entry))
    except DrtoolError as exc:
        return Steady(spec.name, False, exc.message, {"error": exc.message})
    return Steady(spec.name, True, f"{spec.name} serves {entry.model} {entry.version} and its canary through "
                                   f"{spec.record} ({addresses[0]}:{spec.port})", {"record": spec.record, **evidence})


# -- the failover family ----------------------------------------------------------------------------------------


def wait_failover_report(run_id: str, workdir: Path) -> dict:
    """The report of failover `run_id` (started by `drtool serve`, runs/RUN.report.json) once the run has ended."""
    from drtool.actions import failover
    from drtool.paths import state_dir

    runs = state_dir() / failover.RUNS
    path = runs / f"{run_id}.report.json"
    deadline = time.monotonic() + FAILOVER_TIMEOUT_S
    while time.monotonic() < deadline:
        if path.exists():
            doc = json.loads(path.read_text())
            if doc.get("ended"):
                return doc
        time.sleep(0.5)
    raise OperationFailed(f"failover {run_id} wrote no report within {FAILOVER_TIMEOUT_S}s",
                          hint=f"see its log under {workdir} and its journal in {runs}")


def through_alert_chain(ctx: Context, sc: ScenarioRun, fault_at: float, what: str) -> dict:
    """The failover the alert chain starts: Prometheus fires, Alertmanager posts, `drtool serve` decides and launches
    it. Records the detect and decide steps and their split; returns the failover's report once it has ended."""
    chain = ctx.chain
    firing = chain.wait_firing(timeout=120)
    sc.step("detect", "Detection: Prometheus fires ModelPrimaryDown", fault_at, firing,
            evidence={"rule_for_s": ctx.config.drill.detection_for_s,
                      "scrape_interval_s": ctx.config.drill.scrape_interval_s})
    decision = chain.wait_decision(timeout=60, since=fault_at)
    run_id = decision["run_id"]
    report = wait_failover_report(run_id, ctx.workdir)
    sc.step("decide", f"Decision: Alertmanager posts to drtool serve, which starts {what}", firing,
            report["started"], evidence={"run_id": run_id, "decided_at": decision.get("decided_at")})
    sc.doc["split"].update(detection=round(firing - fault_at, 3), decision=round(report["started"] - firing, 3))
    return report


class Failover(Scenario):
    """A fault at the primary or at the DR site, recovered by one failover to the DR site of every service the
    scenario recovers (`services`): through the alert chain when `detected`, else started by the drill as the
    on-call engineer would. Expected, per service: moved, its record at the verified standby it moved to, and the
    canary served through that record (its RTO; the scenario's is the last service's); its RPO is the age of the
    snapshot it restored, at the fault (the scenario's is the oldest); then, after every canary so that no RTO
    includes another service's load, Locust through each record. A scenario adds its own checks through
    `expect_first` and `expect_moved`, given its first service's row."""

    def recover(self, ctx, sc, cfg, fault, fault_at) -> dict:
        """Run the failover the way it would happen; returns its report, with `error` (what it stopped with)."""
        from drtool.actions import failover
        from drtool.paths import state_dir
        from drtool.recovery.engine import ALREADY, MOVED

        error = None
        if ctx.chain is not None:
            report = through_alert_chain(ctx, sc, fault_at, f"drtool failover --site {ctx.dr.name}")
        else:
            run_id = failover.new_run_id(failover.FAILOVER, ctx.dr.name)
            sc.doc["split"].update(detection=0.0, decision=0.0)
            try:
                failover.run(cfg, ctx.out, failover.Request(
                    failover.FAILOVER, ctx.dr.name, tuple(s.name for s in self.services(cfg, ctx)),
                    planned=self.planned, run_id=run_id, reason=f"drill {ctx.drill_id}: {self.name}"))
            except DrtoolError as exc:
                error = {"message": exc.message, "exit_code": exc.exit_code}
            report = json.loads((state_dir() / failover.RUNS / f"{run_id}.report.json").read_text())
        rows = report["services"]
        if error is None and report["status"] != "done":
            bad = [r["service"] for r in rows if r["status"] not in (MOVED, ALREADY)]
            error = {"message": f"failover {report['run_id']} ended {report['status']}: {len(bad)} of {len(rows)} "
                                f"service(s) did not move ({', '.join(bad)})", "exit_code": 1}
        steps = [(r["service"], s) for r in rows for s in r.get("steps") or []]   # left and not moved: none
        for name, title in dict.fromkeys((s["name"], s["title"]) for _, s in steps):
            ran = [(n, s) for n, s in steps if s["name"] == name and s["start"]]
            if ran:   # one step of every service: from its first start to its last end
                outcome = next((o for o in ("failed", "done", "skipped") if any(s["status"] == o for _, s in ran)),
                               "pending")
                sc.step(name, title, min(s["start"] for _, s in ran), max(s["end"] or s["start"] for _, s in ran),
                        outcome, ran[0][1]["evidence"] if len(rows) == 1 else {n: s["evidence"] for n, s in ran},
                        next((s["error"] for _, s in ran if s["error"]), None))
        secs = {}   # each step's seconds: the slowest service's
        for _, s in steps:
            secs[s["name"]] = max(secs.get(s["name"], 0.0), s["seconds"] or 0.0)
        sc.doc["split"].update(
            provisioning=round(secs.get("preflight", 0) + secs.get("lease", 0) + secs.get("provision", 0), 3),
            image_pull=secs.get("pull_image", 0.0), restore=secs.get("restore", 0.0),
            verify=round(secs.get("start", 0) + secs.get("wait_ready", 0) + secs.get("verify", 0), 3),
            dns=round(secs.get("fence_primary", 0) + secs.get("flip_dns", 0) + secs.get("confirm_dns", 0), 3))
        sc.doc["failover"] = {"run_id": report["run_id"], "status": report["status"], "error": error,
                              "services": [r["service"] for r in rows]}
        return {**report, "error": error}

    def expect_first(self, ctx: Context, sc: ScenarioRun, fo: dict, fault: Fault, record_now: list[str]) -> bool:
        """Checks of this scenario before the common ones; False when the failover is expected not to complete
        (then nothing else is checked)."""
        return True

    def expect_moved(self, ctx: Context, sc: ScenarioRun, fo: dict, standby) -> None:
        """Checks of this scenario once the failover moved its first service's record."""

    def expect(self, ctx, sc, fo, fault, cfg) -> list:
        """Returns (service, URL its record answers, production entry) for each service served through its record."""
        from drtool.actions.failover import snapshot_age
        from drtool.actions.registry import site_registry
        from drtool.execute.dns import dns_for
        from drtool.execute.serving import base_url, predict
        from drtool.model_registry.entries import compare_output
        from drtool.recovery.engine import MOVED

        specs, fault_at, dr = self.services(cfg, ctx), sc.doc["fault_at"], cfg.site(ctx.dr.name)
        rows = {r["service"]: r for r in fo["services"]}
        answers = {s.name: dns_for(dr.dns).read_a(s.record).addresses for s in specs}
        first = {"steps": [], **rows.get(specs[0].name, {}), "run_id": fo["run_id"], "status": fo["status"],
                 "error": fo["error"]}
        if not self.expect_first(ctx, sc, first, fault, answers[specs[0].name]):
            return []
        moved = [s for s in specs if rows.get(s.name, {}).get("status") == MOVED]
        done = fo["error"] is None and len(moved) == len(specs)
        sc.check("failover_completed", done,
                 {"run_id": fo["run_id"], "status": fo["status"], "error": fo["error"], "services": {
                     s.name: {k: rows.get(s.name, {}).get(k) for k in ("status", "standby", "reason")} for s in specs}},
                 summary=f"failover {fo['run_id']} completed: {', '.join(s.name for s in specs)} moved to {dr.name}"
                 if done else f"failover {fo['run_id']} ended {fo['status']}"
                 + (f": {fo['error']['message']}" if fo["error"] else ""))
        if not moved:
            return []
        hosts = {h.name: h for h in dr.hosts}
        per = sc.doc["services"] = {}
        targets, wrong, unserved = [], [], []
        registry = site_registry(cfg, dr)
        try:
            for spec in specs:
                row = rows.get(spec.name, {})
                out = per[spec.name] = {"model": spec.model, "status": row.get("status"),
                                        "standby": row.get("standby"), "record": spec.record, "moved_s": None,
                                        "rto_s": None, "rpo_s": None, "snapshot": row.get("snapshot"),
                                        "capacity": None, "error": row.get("reason"),
                                        "standbys_tried": row.get("standbys_tried") or [],
                                        "fallback": row.get("fallback")}
                if spec not in moved:
                    unserved.append(f"{spec.name} ({row.get('status') or 'not in the run'}: {row.get('reason')})")
                    continue
                if row.get("rto_s") is not None:
                    out["moved_s"] = round(fo["started"] + row["rto_s"] - fault_at, 3)   # fault -> record flipped
                out["rpo_s"] = snapshot_age((row.get("snapshot") or {}).get("created"), fault_at)
                standby, now_at = hosts[row["standby"]], answers[spec.name]
                if spec is specs[0]:
                    self.expect_moved(ctx, sc, first, standby)
                if now_at != [standby.address]:
                    wrong.append(f"{spec.record} answers {', '.join(now_at) or 'nothing'}, not {standby.address}, "
                                 f"the standby that passed verify ({standby.name})")
                try:   # served correctly from the DR site, through its record: that moment ends its RTO
                    entry = registry.production(spec.model)
                    url = base_url(now_at[0], spec.port) if now_at else None
                    ok, evidence = (False, "no address") if url is None else compare_output(
                        entry.canary.expected, predict(url, entry.canary.input)["outputs"], entry.canary.tolerance)
                    if not ok:
                        raise OperationFailed(f"canary through {spec.record} at {url}: {evidence}")
                    out["rto_s"] = round(now() - fault_at, 3)
                    targets.append((spec.name, url, entry))
                except DrtoolError as exc:
                    out["error"] = exc.message
                    unserved.append(f"{spec.name} ({exc.message})")
        finally:
            registry.store.close()
        sc.check("record_points_at_verified_standby", not wrong,
                 {n: {"record": p["record"], "answer": answers[n], "standby": p["standby"]} for n, p in per.items()},
                 summary="; ".join(wrong) or ", ".join(f"{p['record']} answers {', '.join(answers[n])}"
                                                       for n, p in per.items() if p["status"] == MOVED)
                 + (": the standby that passed verify" if len(per) == 1 else ": each the standby that passed verify"))
        sc.check("canary_served_through_record", not unserved,
                 {n: p["error"] or f"RTO {p['rto_s']} s" for n, p in per.items()},
                 summary="not served through its record: " + "; ".join(unserved) if unserved else
                 f"the canary asked through {', '.join(p['record'] for p in per.values() if p['rto_s'] is not None)} "
                 "matched the registered output")
        t = ctx.config.drill
        served = [p["rto_s"] for p in per.values() if p["rto_s"] is not None]
        sc.doc["rto_s"] = max(served) if len(served) == len(specs) else None
        if sc.doc["rto_s"] is not None:
            within = sc.doc["rto_s"] <= t.rto_target_s
            sc.check("rto_within_target", within, f"RTO {sc.doc['rto_s']:.1f}s, target {t.rto_target_s:.0f}s",
                     summary=f"fault to the canary served through {'the last' if len(specs) > 1 else 'the'} "
                             f"record: {sc.doc['rto_s']:.1f} s, {'within' if within else 'over'} the "
                             f"{t.rto_target_s:.0f} s target")
        rpos = {n: p["rpo_s"] for n, p in per.items()}
        known = [r for r in rpos.values() if r is not None]
        sc.doc["rpo_s"] = max(known) if known else None
        rpo_ok = len(known) == len(specs) and max(known) <= t.rpo_target_s
        sc.check("rpo_within_target", rpo_ok, rpos,
                 summary=", ".join(f"{n} restored snapshot {((p['snapshot'] or {}).get('restored') or '?')[:12]}, "
                                   f"{p['rpo_s']} s old at the fault" for n, p in per.items())
                 + f"; {'within' if rpo_ok else 'not within'} the {t.rpo_target_s:.0f} s target")
        return targets

    def load(self, ctx, sc, targets: list) -> None:
        """Locust through each record served, once every canary was: no service's RTO includes another's load."""
        if not targets:
            return
        t0, settings, per = now(), ctx.config.drill.load, sc.doc["services"]
        for name, url, entry in targets:
            try:
                per[name]["capacity"] = ctx.capacity(url, entry, ctx.workdir / "load" / name)
            except DrtoolError as exc:
                per[name]["error"] = exc.message
        keys = ("requests", "rps", "p50_ms", "p95_ms", "p99_ms", "error_rate", "canary_mismatches")
        ok = len(targets) == len(per) and all((per[n]["capacity"] or {}).get("passed") for n, _u, _e in targets)
        sc.step("load", f"Capacity: {settings.requests} requests, {settings.concurrency} concurrent, through each "
                "record (Locust)", t0, now(), "done" if ok else "failed",
                {n: {k: (p["capacity"] or {}).get(k) for k in keys} for n, p in per.items()})
        sc.check("load_within_slo", ok, {n: p["capacity"] for n, p in per.items()},
                 "; ".join(r for p in per.values() for r in (p["capacity"] or {}).get("reasons") or []) or None,
                 summary="; ".join(f"{n}: " + (load_sentence(url, per[n]["capacity"]) if per[n]["capacity"] else
                                              f"not loaded ({per[n]['error']})") for n, url, _e in targets))

    def undo_recovery(self, ctx, cfg):
        return [failback(ctx, cfg, self.services(cfg, ctx)), standbys_cold(ctx, self.services(ctx.config, ctx))]


def no_dns_flip(ctx: Context, sc: ScenarioRun, record_now: list[str]) -> bool:
    home = [ctx.primary.front_address]
    return sc.check("no_dns_flip", record_now == home, {"record": ctx.record, "answer": record_now},
                    summary=f"record {ctx.record} still answers {', '.join(record_now) or 'nothing'}, the primary"
                    if record_now == home else f"record {ctx.record} answers {', '.join(record_now) or 'nothing'}, "
                    f"not the primary's {home[0]}")


def load_sentence(url: str, result: dict) -> str:
    return (f"{result.get('requests')} requests to {url}: {result.get('rps')} req/s, p95 {result.get('p95_ms')} ms, "
            f"error rate {result.get('error_rate')}, {result.get('canary_mismatches', 0)} canary mismatches; "
            + ("within the SLO" if result.get("passed") else "outside the SLO: "
               + ("; ".join(result.get("reasons") or []) or "see the figures")))


def failback(ctx: Context, cfg: Config, specs: list) -> tuple[str, Callable[[], Any]]:
    """The failback of `specs` with the drill's configuration: each record back at a verified primary (one that
    already serves correctly is kept as it is)."""
    from drtool.actions import failover

    def run() -> str:
        res = failover.run(cfg, ctx.out, failover.Request(failover.FAILBACK, ctx.primary.name,
                                                          tuple(s.name for s in specs),
                                                          reason=f"drill {ctx.drill_id} cleanup"))
        return f"{res['status']}: " + ", ".join(f"{r['service']} {r['status']}" for r in res["services"])

    return (f"fail back to {ctx.primary.name} (each service verified at home, its record back)", run)


def standbys_cold(ctx: Context, specs: list) -> tuple[str, Callable[[], Any]]:
    """Every DR standby the recovery powered on: the services' containers stopped, weights removed, powered off."""
    from drtool.actions import failover

    return ("standbys cold", lambda: failover.cool_standbys(ctx.config, specs))


# -- the in-site family -----------------------------------------------------------------------------------------


class InSite(Scenario):
    """A fault the primary site cures itself: `drtool watch`'s escalation ladder (restart in place, drain at the
    site's Nginx), with the drill's configuration. A failover the ladder would decide is only queued for approval,
    never started, and fails the scenario's `no_failover` check."""

    def configure(self, doc, ctx) -> None:
        doc["alerts"] = {"policy": "approve", "firing_for_s": 0, "cooldown_s": 3600,
                         "state_dir": str(ctx.workdir / "alerts")}

    def undo_recovery(self, ctx, cfg):
        # the primary verified (a primary the ladder did not cure is redeployed)
        return [failback(ctx, cfg, self.services(cfg, ctx))]


def no_failover(sc: ScenarioRun, decisions: list) -> bool:
    return sc.check("no_failover", decisions == [], decisions,
                    "an in-site fault must be cured in the site: no cross-site failover",
                    summary="no failover was decided: the site cured it" if not decisions else
                    f"{len(decisions)} failover decision(s) taken for an in-site fault")
