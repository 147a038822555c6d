"""drtool drill: a game day on one DR site. For each scenario (drtool/drill/scenarios/, one module each): check
the steady state, inject the fault, let the system recover (one failover of the scenario's services, through the
real alert chain when the fault is an outage; the in-site escalation ladder), check the expected outcome, measure
RTO and RPO, load each recovered service, then clean up, always, undoing exactly what the drill changed, and compare
production with what it was before.

By default the drill fails over a drill record (`drill.<record>`) and leaves the production record alone;
`--live` moves the production record and fails back. Reports (JSON, JUnit, HTML) go to the report directory
and to the DR store, where `drtool drill history` finds them."""

import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import requests
import yaml

from drtool.actions import failover
from drtool.actions.registry import site_registry
from drtool.config import Config, Model, load_config
from drtool.drill import report as reports
from drtool.drill.alertchain import AlertChain
from drtool.drill.scenarios import DEFAULT, REGISTRY
from drtool.drill.scenarios.base import (
    Context,
    Scenario,
    ScenarioRun,
    drill_record,
    load_sentence,
    now,
    wait_failover_report,
)
from drtool.errors import DrtoolError, UsageError, VerificationError
from drtool.execute.dns import dns_for
from drtool.execute.serving import base_url, version
from drtool.fsutil import write_atomic
from drtool.output import Output
from drtool.paths import state_dir
from drtool.snapshot.stores import open_store

__all__ = ["Drill", "ScenarioRun", "history", "run"]

UNDER_LOAD_FACTOR = 60  # a load under the fault: drill.load.requests x this, so it outlasts detection and recovery
DRILLS = "drills"


@dataclass
class Changed:
    """What the drill itself changed in one scenario so far: cleanup undoes exactly this, and nothing else."""

    records: list[str] = field(default_factory=list)   # drill records created
    chain: bool = False                                # the alert chain started
    fault: bool = False                                # the fault injected: the recovery may have moved things

    def anything(self) -> bool:
        return bool(self.records) or self.chain or self.fault


class Drill:
    def __init__(self, config: Config, out: Output, site: str, scenarios: tuple[str, ...], live: bool,
                 report_dir: str | None, model: str | None):
        self.config, self.out, self.live = config, out, live
        self.dr = config.site(site)
        if self.dr.role != "dr" or not self.dr.is_standby:
            raise UsageError(f"site {site} is not a DR site with a standby pool", hint="drill a DR site, e.g. dr-east")
        unknown = [s for s in scenarios if s not in REGISTRY]
        if unknown:
            raise UsageError(f"unknown scenario {', '.join(unknown)}", hint=f"scenarios: {', '.join(REGISTRY)}")
        self.scenarios = scenarios or (DEFAULT,)
        self.primary = config.primary
        if model is None and len(config.models) > 1:   # several services: the one on the site's own record
            model = next((s.model for s in config.services.values() if s.record == self.dr.dns.record), None)
        for name in self.scenarios:
            REGISTRY[name].require(config, self.primary)
        self.model: Model = failover.pick_model(config, model)
        self.drill_id = f"drill-{site}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:6]}"
        self.dir = (Path(report_dir) if report_dir else state_dir() / DRILLS / self.drill_id).resolve()
        self.record = self.dr.dns.record if live else (config.drill.record or f"drill.{self.dr.dns.record}")
        self.prod_dns = dns_for(self.dr.dns)

    # -- production as it is --------------------------------------------------------------------------------
    def production_entry(self):
        entry = site_registry(self.config, self.primary).production(self.model.name)
        if entry is None:
            raise UsageError(f"{self.model.name} has no production version", hint="`drtool registry promote` first")
        return entry

    def production_state(self) -> dict:
        """What must be exactly the same after the drill: the production record of every service of the primary
        (its addresses and TTL) and what the primary serves."""
        records = sorted({s.record for s in self.config.services.values() if s.site == self.primary.name})
        dns = {}
        for r in records:
            rec = self.prod_dns.read_a(r)
            dns[r] = {"addresses": rec.addresses, "ttl": rec.ttl}
        served = {}
        for h in self.primary.hosts:
            try:
                served[h.name] = version(base_url(h.address, self.primary.serving_port))
            except DrtoolError as exc:
                served[h.name] = {"error": exc.message}
        return {"dns": dns, "primary": served}

    def context(self, name: str, entry, chain: AlertChain | None) -> Context:
        return Context(config=self.config, out=self.out, drill_id=self.drill_id, primary=self.primary, dr=self.dr,
                       model=self.model, entry=entry, record=self.record, workdir=self.dir / "work" / name,
                       capacity=self.capacity, chain=chain)

    def steady_state(self, sc: ScenarioRun, spec: Scenario, ctx: Context, check: str) -> list:
        """Every service the scenario judges, as one check naming each one not in steady state and why; returns
        those not in steady state."""
        seen = spec.steady_state(ctx)
        bad = [s for s in seen if not s.ok]
        summary = ("; ".join(s.summary for s in seen) if not bad else
                   f"not in steady state ({len(bad)} of {len(seen)}): " + "; ".join(f"{s.service}: {s.summary}"
                                                                                    for s in bad))
        sc.check(check, not bad, {s.service: s.evidence for s in seen},
                 "a drill starts from a healthy production" if bad and check == "steady_state_before" else None,
                 summary)
        return bad

    # -- the drill's own configuration ------------------------------------------------------------------------
    def drill_config(self, spec: Scenario, ctx: Context) -> Path:
        """The configuration the drill's failover, failback and serve run with: the drill record instead of the
        production one (unless --live), each service on its drill record, its own alert settings, and what the
        scenario overrides. Fencing stays off in a non-live drill (stopping the primary's container would touch
        production), unless the scenario asks for it."""
        doc = json.loads(json.dumps(self.config.raw))
        if not self.live:
            for s in doc["sites"].values():
                s["dns"]["record"] = self.record
            for svc in (doc.get("services") or {}).values():
                svc["record"] = drill_record(svc["record"], self.live, (self.dr.dns.record, self.record))
        doc.setdefault("failover", {})["fence"] = self.live or spec.fences
        if ctx.chain is not None:
            doc["alerts"] = ctx.chain.drtool_alerts(self.dr.name)
        spec.configure(doc, ctx)
        path = ctx.workdir / "drtool.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, yaml.safe_dump(doc, sort_keys=False), 0o600)
        return path

    # -- running ----------------------------------------------------------------------------------------------
    def run(self) -> dict:
        self.dir.mkdir(parents=True, exist_ok=True)
        entry = self.production_entry()
        doc = {"schema": reports.SCHEMA_ID, "drill_id": self.drill_id, "site": self.dr.name,
               "primary": self.primary.name, "live": self.live, "record": self.record, "model": self.model.name,
               "version": entry.version, "started": now(), "ended": None, "passed": False,
               "targets": {"rto_s": self.config.drill.rto_target_s, "rpo_s": self.config.drill.rpo_target_s},
               "scenarios": []}
        try:
            for name in self.scenarios:
                self.out.step(f"drill scenario {name} at {self.dr.name} (record {self.record})")
                sc = ScenarioRun(name)
                doc["scenarios"].append(sc.doc)
                self.scenario(sc, entry)
        finally:
            doc["ended"] = now()
            doc["passed"] = bool(doc["scenarios"]) and all(s["passed"] for s in doc["scenarios"])
            doc["exit_code"] = reports.exit_code(doc)
            doc["paths"] = self.publish(doc)
        return doc

    def scenario(self, sc: ScenarioRun, entry) -> None:
        """The one flow of every scenario: steady state, inject, recover, expect, load, clean up, compare."""
        name = sc.doc["scenario"]
        spec = REGISTRY[name]
        chain = AlertChain(self.config, self.primary, self.dir / "work" / name) if spec.detected else None
        ctx = self.context(name, entry, chain)
        changed = Changed()
        fault = None
        drill_cfg: Config | None = None
        before = None
        try:
            t0 = now()
            before = self.production_state()
            bad = self.steady_state(sc, spec, ctx, "steady_state_before")
            if bad:
                raise VerificationError(
                    "not in steady state, so nothing was injected: " + "; ".join(f"{s.service} ({s.summary})"
                                                                                  for s in bad),
                    hint="bring each service named back to its production version, serving through its record, "
                         "then drill again")
            cfg_path = self.drill_config(spec, ctx)
            drill_cfg = load_config(cfg_path)
            if not self.live:
                for record, address in spec.drill_records(ctx).items():
                    dns_for(self.dr.dns).replace_a([address], self.dr.dns.ttl, record=record)
                    changed.records.append(record)
            if chain is not None:
                changed.chain = True   # before start: whatever part of it started is stopped by cleanup
                chain.start(cfg_path)
                chain.wait_scraped_up()
            sc.step("steady_state", "Steady state: production serves the canary; drill record and alert chain ready",
                    t0, now(), evidence={"production_before": before, "record": self.record})
            load = self.background_load(sc, entry) if spec.load_under_fault else None
            try:
                fault, fault_at = spec.inject(ctx), now()
                changed.fault = True
                sc.doc["fault"], sc.doc["fault_at"] = fault.description, fault_at
                sc.step("fault", f"Fault: {fault.description}", fault_at, now())
                result = spec.recover(ctx, sc, drill_cfg, fault, fault_at)
            finally:
                if load is not None:
                    self.finish_load(sc, load)
            spec.load(ctx, sc, spec.expect(ctx, sc, result, fault, drill_cfg))
        except (DrtoolError, OSError) as exc:
            sc.doc["error"] = getattr(exc, "message", None) or str(exc)
            sc.doc["error_hint"] = getattr(exc, "hint", None)
            sc.doc["error_exit_code"] = getattr(exc, "exit_code", 1)
            self.out.info(f"  [red]scenario {name} stopped:[/] {sc.doc['error']}")
        except BaseException as exc:  # Ctrl-C, or a bug: production is put back before the drill stops
            sc.doc["error"] = ("interrupted (Ctrl-C): cleaned up" if isinstance(exc, KeyboardInterrupt)
                               else f"stopped by {type(exc).__name__}: {exc}; cleaned up")
            self.cleanup(sc, spec, ctx, changed, fault, drill_cfg, before)
            raise
        self.cleanup(sc, spec, ctx, changed, fault, drill_cfg, before)
        sc.doc["passed"] = sc.doc["error"] is None and all(c["passed"] for c in sc.doc["checks"]) \
            and not sc.doc["not_cleaned"]

    # -- cleanup, always --------------------------------------------------------------------------------------
    def cleanup(self, sc: ScenarioRun, spec: Scenario, ctx: Context, changed: Changed, fault, cfg: Config | None,
                before: dict | None) -> None:
        """Undo exactly what the drill changed, in this order: the fault, the alert chain (a failover it already
        started finishes first), the recovery (the scenario's failback), the drill records. Then compare
        production with what it was before."""
        t0 = now()
        log = sc.doc["cleanup"]

        def attempt(label: str, fn) -> None:
            try:
                detail = fn()
                log.append({"action": label, "ok": True, "detail": str(detail or "done")[:300]})
            except (DrtoolError, OSError) as exc:
                log.append({"action": label, "ok": False, "detail": getattr(exc, "message", None) or str(exc)})

        if fault is not None:
            log.extend(fault.undo())
        if changed.chain:
            attempt("stop the alert chain", lambda: ctx.chain.stop() or "prometheus, alertmanager, serve stopped")
            for run_id in ctx.chain.launched_runs():  # a failover already started finishes before anything is undone
                attempt(f"let failover {run_id} finish",
                        lambda r=run_id: wait_failover_report(r, ctx.workdir)["status"])
        if changed.fault and cfg is not None:
            for label, fn in spec.undo_recovery(ctx, cfg):
                attempt(label, fn)
        if changed.records:
            records = list(changed.records)

            def remove() -> str:
                for record in records:
                    dns_for(self.dr.dns).delete_a(record)
                return "removed " + ", ".join(records)

            attempt(f"remove the drill record {records[0]}" if len(records) == 1 else "remove the drill records",
                    remove)
        sc.doc["not_cleaned"] = [c["action"] + ": " + c["detail"] for c in log if not c["ok"]]
        sc.step("cleanup", "Cleanup: " + ("; ".join(c["action"] for c in log) if log else
                                          "nothing to undo, the drill changed nothing"),
                t0, now(), "done" if not sc.doc["not_cleaned"] else "failed")
        if before is None or not changed.anything():
            return   # nothing changed: production is as it was by construction
        after = self.production_state()
        # A live drill moved production and failed back: the same addresses must be back (the TTL may be the one
        # failback writes). In every drill the primary must serve the same model, version and image; a primary that
        # lost its container (powered off, fenced) is redeployed by failback from the newest verified snapshot of
        # that version (the nightly one), which may be newer than the one it served.
        def said(rec: dict) -> str:
            return f"{', '.join(rec['addresses']) or 'nothing'} (TTL {rec['ttl']})"

        moved = [r for r, b in before["dns"].items() if after["dns"][r] != b
                 and not (self.live and after["dns"][r]["addresses"] == b["addresses"])]
        sc.check("production_dns_unchanged", not moved, {"before": before["dns"], "after": after["dns"]},
                 summary="; ".join(f"production record {r} answers {said(after['dns'][r])}, not "
                                   f"{said(before['dns'][r])} as before" for r in moved) or
                 ", ".join(f"production record {r} answers {said(a)}" for r, a in after["dns"].items())
                 + ", as before the drill")
        changed_on = sorted(h for h, s in after["primary"].items()
                            if s.get("snapshot_id") != before["primary"].get(h, {}).get("snapshot_id"))
        same_primary = _without_snapshot(after["primary"]) == _without_snapshot(before["primary"])
        sc.check("primary_unchanged", same_primary,
                 {"before": before["primary"], "after": after["primary"], "snapshot_changed_on": changed_on},
                 summary=(f"{', '.join(after['primary'])} serve the same model, version and image as before"
                          + (f" (redeployed from a newer snapshot of that version on {', '.join(changed_on)})"
                             if changed_on else "")) if same_primary else
                 "what the primary serves changed: " + ", ".join(
                     h for h in after["primary"] if _without_snapshot(after["primary"]).get(h)
                     != _without_snapshot(before["primary"]).get(h)))
        self.steady_state(sc, spec, ctx, "steady_state_after")

    # -- load under the fault (a scenario with load_under_fault) ------------------------------------------------
    def background_load(self, sc: ScenarioRun, entry) -> dict:
        """Locust on /predict through the drill record (the site's Nginx) for the whole switch, started before the
        fault; returns once the primary upstream has answered some of it."""
        from concurrent.futures import ThreadPoolExecutor

        from drtool.drill.capacity import run_load
        from drtool.model.demo import demo_inputs

        settings = self.config.drill.load
        url = base_url(dns_for(self.dr.dns).read_a(self.record).addresses[0], self.primary.serving_port)
        first = self.primary.hosts[0]
        counted = self.requests_served(first)
        inputs = [{"inputs": demo_inputs(frames=20, seed=s)} for s in range(1, 9)]
        slo = {**settings.slo, "error_rate": 0.0}   # a drain must not drop a single request
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="drill-load")
        t0 = now()
        future = pool.submit(run_load, url, requests_total=settings.requests * UNDER_LOAD_FACTOR,
                             concurrency=settings.concurrency, inputs=inputs,
                             canary={"input": entry.canary.input, "expected": entry.canary.expected,
                                     "tolerance": entry.canary.tolerance},
                             slo=slo, timeout_s=240, workdir=self.dir / "work" / sc.doc["scenario"] / "load")
        deadline = time.monotonic() + 60
        while not future.done() and self.requests_served(first) <= counted + settings.concurrency:
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        return {"future": future, "pool": pool, "url": url, "started": t0, "flowing_at": now(),
                "requests": settings.requests * UNDER_LOAD_FACTOR, "concurrency": settings.concurrency}

    def requests_served(self, host) -> float:
        """The model server's own count of /predict requests it answered (its /metrics), -1 when unreadable."""
        try:
            text = requests.get(base_url(host.address, self.primary.serving_port) + "/metrics", timeout=3).text
        except requests.RequestException:
            return -1.0
        from prometheus_client.parser import text_string_to_metric_families

        return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
                   if sample.name == "drtool_model_server_requests_total"
                   and sample.labels.get("endpoint") == "/predict")

    def finish_load(self, sc: ScenarioRun, load: dict) -> None:
        try:
            result = load["future"].result()
        except DrtoolError as exc:   # no figures: the report still carries a (schema-valid) failed load
            result = {"requests": 0, "concurrency": load["concurrency"], "passed": False, "reasons": [exc.message]}
        finally:
            load["pool"].shutdown(wait=True)
        ended = now()
        sc.doc["load"] = result
        keys = ("requests", "rps", "p50_ms", "p95_ms", "p99_ms", "error_rate", "canary_mismatches", "failures")
        sc.step("load", f"Load through the record during the switch: {load['requests']} requests, "
                f"{load['concurrency']} concurrent (Locust)", load["started"], ended,
                "done" if result.get("passed") else "failed", {k: result.get(k) for k in keys})
        sc.check("zero_errors_and_p95_within_slo_under_load", bool(result.get("passed")),
                 {k: result.get(k) for k in keys}, "; ".join(result.get("reasons") or []) or None,
                 summary=load_sentence(load.get("url") or "the record", result))
        drained_at = sc.doc.get("drained_at")   # the end of the in-site switch
        fault_at = sc.doc.get("fault_at")
        spanned = load["flowing_at"] <= (fault_at or 0) and drained_at is not None and ended > drained_at
        sc.check("load_spanned_the_switch", spanned, {"load_flowing_at": load["flowing_at"], "fault_at": fault_at,
                                                      "drained_at": drained_at, "load_ended": ended},
                 "the load must be flowing before the fault and still running after the drain",
                 summary=f"the load flowed {(fault_at or 0) - load['flowing_at']:.1f} s before the fault and ended "
                         f"{ended - drained_at:.1f} s after the drain" if spanned else
                 "the load did not span the switch: " + ("no drain happened" if drained_at is None else
                                                         "it started after the fault or ended before the drain"))

    def capacity(self, url: str, entry, workdir: Path) -> dict:
        """The drill's Locust capacity check against `url`, with `entry`'s canary mixed in (drill.load settings)."""
        from drtool.drill.capacity import run_load
        from drtool.model.demo import demo_inputs

        settings = self.config.drill.load
        inputs = [{"inputs": demo_inputs(frames=20, seed=s)} for s in range(1, 9)]
        return run_load(url, requests_total=settings.requests, concurrency=settings.concurrency, inputs=inputs,
                        canary=entry.canary, slo=settings.slo, workdir=workdir)

    # -- reports ------------------------------------------------------------------------------------------------
    def publish(self, doc: dict) -> dict:
        paths = {}
        try:
            paths = reports.write_reports(doc, self.dir)
        except DrtoolError as exc:  # keep what the drill saw all the same, beside the reason
            from drtool.fsutil import write_json_atomic

            write_json_atomic(self.dir / "report.invalid.json", doc, 0o644)
            self.out.info(f"[red]report.json not written ({exc.message}); raw: {self.dir / 'report.invalid.json'}[/]")
            return {"invalid": str(self.dir / "report.invalid.json")}
        if self.config.drill.metrics_file:
            reports.write_metrics(doc, Path(self.config.drill.metrics_file))
        try:
            store = open_store(self.dr.object_stores[0])
            try:
                store.put(f"{DRILLS}/{self.drill_id}/report.json", json.dumps(doc, sort_keys=True).encode())
            finally:
                store.close()
            paths["store"] = f"{self.dr.object_stores[0].url}/{DRILLS}/{self.drill_id}/report.json"
        except DrtoolError as exc:
            self.out.info(f"[yellow]report not copied to the DR store:[/] {exc.message}")
        return paths


def run(config: Config, out: Output, site: str, scenarios: tuple[str, ...], live: bool, report_dir: str | None,
        model: str | None) -> dict:
    drill = Drill(config, out, site, scenarios, live, report_dir, model)
    out.info(f"drill [bold]{drill.drill_id}[/]: {', '.join(drill.scenarios)} at {site}; "
             f"{'LIVE: the production record moves' if live else f'drill record {drill.record}'}; "
             f"reports in {drill.dir}")
    return drill.run()


def history(config: Config, site: str, limit: int) -> list[dict]:
    dr = config.site(site)
    store = open_store(dr.object_stores[0])
    try:
        docs = []
        for obj in store.list(f"{DRILLS}/"):
            if obj.key.endswith("/report.json"):
                data = store.get(obj.key)
                if data is not None:
                    docs.append(json.loads(data))
    finally:
        store.close()
    docs = [d for d in docs if d.get("site") == dr.name]
    return reports.history_rows(docs)[-limit:]


def _without_snapshot(served: dict) -> dict:
    return {host: {k: v for k, v in state.items() if k != "snapshot_id"} for host, state in served.items()}
