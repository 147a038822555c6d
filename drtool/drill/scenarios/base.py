"""What a drill scenario is, and the two families most scenarios belong to.

A scenario says: whether the alert chain detects its fault (`detected`); what it changes in the drill's
configuration (`configure`); which services must be in steady state before it starts (`steady_state`); how it
injects its fault (`inject`, a `Fault` carrying its undo); how the system recovers (`recover`: a failover, the
in-site escalation ladder, the fleet failover); what it expects (`expect`) and loads (`load`); and whether its
failover is a planned one (`planned`: the primary still serves). The drill (drtool/actions/drill.py) runs the same
flow for every scenario: steady state, inject, recover, expect, load, clean up, compare."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drtool.errors import DrtoolError, OperationFailed

if TYPE_CHECKING:
    from drtool.config import Config, Model, Site
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
    live: bool
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

    def steady_state(self, ctx: Context) -> list[Steady]:
        """Every service this scenario judges, checked: by default the drilled model at the primary."""
        return [primary_steady(ctx)]

    def drill_records(self, ctx: Context) -> dict[str, str]:
        """The drill records to create (not --live) and the address each starts at: the primary's front."""
        return {ctx.record: ctx.primary.front_address}

    def observe_before(self, ctx: Context, sc: ScenarioRun) -> None:
        """Record what `compare_after` compares, before the fault."""

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

    def compare_after(self, ctx: Context, sc: ScenarioRun) -> None:
        """Checks comparing production after the drill with `observe_before` (besides the drill's own)."""


def drill_record(record: str, live: bool, main: tuple[str, str] | None = None) -> str:
    """A service's record in the drill: its own with --live; else `drill.<record>`, except the site's own record,
    which becomes the drill's record (`main` = (production record, drill record))."""
    if live:
        return record
    if main and record == main[0]:
        return main[1]
    return f"drill.{record}"


# -- steady state -----------------------------------------------------------------------------------------------


def primary_steady(ctx: Context) -> Steady:
    """The primary serves the production version (the snapshot it serves is one of that version, checked by the
    server against its manifest) and computes the registered canary output, as clients reach it."""
    from drtool.actions import deploy, failover, proxy

    host = proxy.front(ctx.primary) if ctx.primary.proxy else ctx.primary.hosts[0]
    try:
        evidence = deploy.check(ctx.primary, host, failover.served_entry(ctx.primary, host, ctx.entry))
    except DrtoolError as exc:
        return Steady(ctx.model.name, False, exc.message, {"error": exc.message})
    return Steady(ctx.model.name, True, f"{host.name} serves {ctx.entry.model} {ctx.entry.version} and the "
                                        "registered canary output", evidence)


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
    """A fault at the primary or at the DR site, recovered by a failover of the drilled model to the DR site: through
    the alert chain when `detected`, else started by the drill as the on-call engineer would. Expected: the failover
    completes, the record points at the verified standby and the canary is served through it (the RTO), within the
    targets, and the DR endpoint carries the load. A scenario adds its own checks through `expect_first` and
    `expect_moved`."""

    def recover(self, ctx, sc, cfg, fault, fault_at) -> dict:
        """Run the failover the way it would happen; returns the drilled service's row of the failover's report,
        with the run's id, status and start."""
        from drtool.actions import failover
        from drtool.paths import state_dir

        error = None
        if ctx.chain is not None:
            fo = through_alert_chain(ctx, sc, fault_at, "the failover")
        else:
            run_id = failover.new_run_id(failover.FAILOVER, ctx.dr.name)
            sc.doc["split"].update(detection=0.0, decision=0.0)
            try:
                failover.run(cfg, ctx.out, failover.Request(
                    failover.FAILOVER, ctx.dr.name, failover.services_of_model(cfg, ctx.model.name, None),
                    planned=self.planned, run_id=run_id, reason=f"drill {ctx.drill_id}: {self.name}"))
            except DrtoolError as exc:
                error = exc
            fo = json.loads((state_dir() / failover.RUNS / f"{run_id}.report.json").read_text())
        row = next((r for r in fo["services"] if r.get("steps")), {"steps": [], **(fo["services"] or [{}])[0]})
        fo = {**row, "run_id": fo["run_id"], "status": fo["status"], "started": fo["started"],
              "error": None if error is None else {"message": error.message, "exit_code": error.exit_code}}
        for s in fo["steps"]:
            if s["start"] is not None:
                outcome = {"done": "done", "failed": "failed", "skipped": "skipped"}.get(s["status"], "pending")
                sc.step(s["name"], s["title"], s["start"], s["end"] or s["start"], outcome, s["evidence"], s["error"])
        secs = {s["name"]: (s["seconds"] or 0.0) for s in fo["steps"]}
        sc.doc["split"].update(
            provisioning=round(secs.get("preflight", 0) + secs.get("lease", 0) + secs.get("provision", 0), 3),
            image_pull=secs.get("pull_image", 0.0), restore=secs.get("restore", 0.0),
            verify=round(secs.get("start", 0) + secs.get("wait_ready", 0) + secs.get("verify", 0), 3),
            dns=round(secs.get("fence_primary", 0) + secs.get("flip_dns", 0) + secs.get("confirm_dns", 0), 3))
        sc.doc["failover"] = {"run_id": fo["run_id"], "service": fo.get("service"), "status": fo["status"],
                              "error": fo["error"],
                              "snapshot": fo.get("snapshot"), "standby": fo.get("standby"),
                              "standbys_tried": fo.get("standbys_tried"), "dns": fo.get("dns")}
        return fo

    def expect_first(self, ctx: Context, sc: ScenarioRun, fo: dict, fault: Fault, record_now: list[str]) -> bool:
        """Checks of this scenario before the common ones; False when the failover is expected not to complete
        (then nothing else is checked)."""
        return True

    def expect_moved(self, ctx: Context, sc: ScenarioRun, fo: dict, standby) -> None:
        """Checks of this scenario once the failover moved the record."""

    def expect(self, ctx, sc, fo, fault, cfg) -> str | None:
        """Returns the URL the record answers (for the capacity check), None when nothing is to be loaded."""
        from drtool.actions import failover
        from drtool.execute.dns import dns_for
        from drtool.execute.serving import base_url, predict
        from drtool.model_registry.entries import compare_output

        done = fo["status"] == "done" and fo["error"] is None
        record_now = dns_for(ctx.dr.dns).read_a(ctx.record).addresses
        if not self.expect_first(ctx, sc, fo, fault, record_now):
            return None
        if not sc.check("failover_completed", done, {"status": fo["status"], "error": fo["error"]},
                        summary=f"failover {fo['run_id']} completed" if done else
                        f"failover {fo['run_id']} ended {fo['status']}"
                        + (f": {fo['error']['message']}" if fo["error"] else "")):
            return None
        standby = next(h for h in ctx.dr.hosts if h.name == fo["standby"])
        on_standby = record_now == [standby.address]
        sc.check("record_points_at_verified_standby", on_standby,
                 {"record": ctx.record, "answer": record_now, "standby": standby.name},
                 summary=f"record {ctx.record} answers {', '.join(record_now) or 'nothing'}"
                 + (f", the standby that passed verify ({standby.name})" if on_standby
                    else f", not {standby.address}, the standby that passed verify ({standby.name})"))
        self.expect_moved(ctx, sc, fo, standby)
        # Served correctly from the DR site, through the record: that moment ends the RTO.
        entry = ctx.entry
        url = base_url(record_now[0], ctx.dr.serving_port)
        outputs = predict(url, entry.canary.input)["outputs"]
        ok, evidence = compare_output(entry.canary.expected, outputs, entry.canary.tolerance)
        served_at = now()
        sc.check("canary_served_through_record", ok, {"url": url, "canary": evidence},
                 summary=f"the canary asked through {ctx.record} at {url} "
                 + ("matched the registered output" if ok else "did not match the registered output"))
        sc.doc["rto_s"] = round(served_at - sc.doc["fault_at"], 3)
        created = (fo.get("snapshot") or {}).get("created")
        sc.doc["rpo_s"] = failover.snapshot_age(created, sc.doc["fault_at"])
        t = ctx.config.drill
        within = sc.doc["rto_s"] <= t.rto_target_s
        sc.check("rto_within_target", within, f"RTO {sc.doc['rto_s']:.1f}s, target {t.rto_target_s:.0f}s",
                 summary=f"fault to canary served through the record: {sc.doc['rto_s']:.1f} s, "
                         f"{'within' if within else 'over'} the {t.rto_target_s:.0f} s target")
        restored = ((fo.get("snapshot") or {}).get("restored") or "?")[:12]
        rpo_ok = sc.doc["rpo_s"] is not None and sc.doc["rpo_s"] <= t.rpo_target_s
        sc.check("rpo_within_target", rpo_ok,
                 f"RPO {sc.doc['rpo_s']}s (snapshot {restored} created {created}), target {t.rpo_target_s:.0f}s",
                 summary=f"snapshot {restored} restored, {sc.doc['rpo_s']} s old at the fault, "
                         f"{'within' if rpo_ok else 'not within'} the {t.rpo_target_s:.0f} s target")
        return url

    def load(self, ctx, sc, target: str | None) -> None:
        if target is None:
            return
        t0 = now()
        settings = ctx.config.drill.load
        result = ctx.capacity(target, ctx.entry, ctx.workdir / "load")
        sc.doc["load"] = result
        keys = ("rps", "p50_ms", "p95_ms", "p99_ms", "error_rate")
        sc.step("load", f"Capacity: {settings.requests} requests, {settings.concurrency} concurrent (Locust)", t0,
                now(), "done" if result["passed"] else "failed", {k: result.get(k) for k in keys})
        sc.check("load_within_slo", result["passed"],
                 {k: result.get(k) for k in ("rps", "p95_ms", "error_rate", "canary_mismatches")},
                 "; ".join(result.get("reasons") or []) or None, summary=load_sentence(target, result))

    def undo_recovery(self, ctx, cfg):
        return [failback(ctx, cfg), standbys_cold(ctx)]


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


def failback(ctx: Context, cfg: Config) -> tuple[str, Callable[[], Any]]:
    """The failback with the drill's configuration: the record back at a verified primary (one that already serves
    correctly is kept as it is)."""
    from drtool.actions import failover

    return (f"fail back to {ctx.primary.name} (primary verified, record back)", lambda: failover.run(
        cfg, ctx.out, failover.Request(failover.FAILBACK, ctx.primary.name,
                                       failover.services_of_model(cfg, ctx.model.name, None),
                                       reason=f"drill {ctx.drill_id} cleanup"))["status"])


def standbys_cold(ctx: Context) -> tuple[str, Callable[[], Any]]:
    """Every DR standby the recovery powered on: its container stopped, its weights removed, powered off."""
    from drtool.actions import failover

    return ("standbys cold", lambda: failover.cool_standbys(
        ctx.config, [s for s in ctx.config.services.values() if s.model == ctx.model.name]))


# -- the in-site family -----------------------------------------------------------------------------------------


class InSite(Scenario):
    """A fault the primary site cures itself: `drtool watch`'s escalation ladder (restart in place, drain at the
    site's Nginx), with the drill's configuration. A failover the ladder would decide is only queued for approval,
    never started, and fails the scenario's `no_failover` check."""

    def configure(self, doc, ctx) -> None:
        doc["alerts"] = {"policy": "approve", "firing_for_s": 0, "cooldown_s": 3600,
                         "state_dir": str(ctx.workdir / "alerts")}

    def undo_recovery(self, ctx, cfg):
        return [failback(ctx, cfg)]   # the primary verified (a primary the ladder did not cure is redeployed)


def no_failover(sc: ScenarioRun, decisions: list) -> bool:
    return sc.check("no_failover", decisions == [], decisions,
                    "an in-site fault must be cured in the site: no cross-site failover",
                    summary="no failover was decided: the site cured it" if not decisions else
                    f"{len(decisions)} failover decision(s) taken for an in-site fault")
