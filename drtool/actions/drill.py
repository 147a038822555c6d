"""drtool drill: a game day on one DR site. For each scenario: check the steady state, inject the fault, let the
failover happen (through the real alert chain when the fault is an outage), check the expected outcome, measure
RTO and RPO, load the DR endpoint, then clean up, always, and compare production with what it was before.

By default the drill fails over a drill record (`drill.<record>`) and leaves the production record alone;
`--live` moves the production record and fails back. Reports (JSON, JUnit, HTML) go to the report directory
and to the DR store, where `drtool drill history` finds them."""

import json
import time
import uuid
from pathlib import Path

import requests
import yaml

from drtool.actions import deploy, failover, proxy
from drtool.actions.registry import site_registry
from drtool.config import Config, Model, load_config
from drtool.drill import faults, region
from drtool.drill import report as reports
from drtool.drill.alertchain import AlertChain
from drtool.errors import DrtoolError, OperationFailed, UsageError
from drtool.execute.dns import dns_for
from drtool.execute.serving import base_url, predict, version
from drtool.fsutil import write_atomic
from drtool.model_registry.entries import compare_output
from drtool.output import Output
from drtool.paths import state_dir
from drtool.snapshot.stores import open_store

SCENARIOS = ("primary-down", "region-partition", "corrupt-latest-snapshot", "standby-boot-failure",
             "registry-mismatch", "process-crash", "gpu-degraded", "region-down")
DETECTED = ("primary-down", "region-partition")   # outages: detected through Prometheus -> Alertmanager -> serve
IN_SITE = ("process-crash", "gpu-degraded")  # cured at the primary site by the escalation ladder: no failover
LADDER_PROBE_S = 0.5
UNDER_LOAD_FACTOR = 60  # gpu-degraded: drill.load.requests x this, so the load outlasts detection and the drain
DRILLS = "drills"
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

    def check(self, name: str, passed: bool, evidence, message: str | None = None) -> bool:
        self.doc["checks"].append({"name": name, "passed": bool(passed), "evidence": evidence, "message": message})
        return bool(passed)


class Drill:
    def __init__(self, config: Config, out: Output, site: str, scenarios: tuple[str, ...], live: bool,
                 report_dir: str | None, model: str | None):
        self.config, self.out, self.live = config, out, live
        self.dr = config.site(site)
        if self.dr.role != "dr" or not self.dr.is_standby:
            raise UsageError(f"site {site} is not a DR site with a standby pool", hint="drill a DR site, e.g. dr-east")
        unknown = [s for s in scenarios if s not in SCENARIOS]
        if unknown:
            raise UsageError(f"unknown scenario {', '.join(unknown)}", hint=f"scenarios: {', '.join(SCENARIOS)}")
        self.scenarios = scenarios or ("primary-down",)
        self.primary = config.primary
        if model is None and len(config.models) > 1:   # several services: the one on the site's own record
            model = next((s.model for s in config.services.values() if s.record == self.dr.dns.record), None)
        if "region-down" in self.scenarios and len(region.services(config, self.primary)) < 2:
            raise UsageError(f"scenario region-down needs several services of {self.primary.name} in the "
                             "configuration (`services:`)", hint="on the lab: --config drtool-fleet.yaml")
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
        """What must be exactly the same after the drill: the production record and what the primary serves."""
        rec = self.prod_dns.read_a()
        served = {}
        for h in self.primary.hosts:
            try:
                served[h.name] = version(base_url(h.address, self.primary.serving_port))
            except DrtoolError as exc:
                served[h.name] = {"error": exc.message}
        return {"dns": {"record": self.dr.dns.record, "addresses": rec.addresses, "ttl": rec.ttl}, "primary": served}

    def steady(self) -> dict:
        """The primary serves the production version (the snapshot it serves is one of that version, checked by
        the server against its manifest) and computes the registered canary output."""
        host = proxy.front(self.primary) if self.primary.proxy else self.primary.hosts[0]  # as clients reach it
        return deploy.check(self.primary, host, failover.served_entry(self.primary, host, self.production_entry()))

    # -- the drill's own configuration ------------------------------------------------------------------------
    def drill_config(self, scenario: str, chain: AlertChain | None) -> Path:
        """The configuration the drill's failover, failback and serve run with: the drill record instead of the
        production one (unless --live), and its own alert settings. Fencing stays off in a non-live drill
        (stopping the primary's container would touch production), except in region-partition, where the
        primary cannot be reached and the drill shows what fencing did."""
        doc = json.loads(json.dumps(self.config.raw))
        if not self.live:
            for s in doc["sites"].values():
                s["dns"]["record"] = self.record
            region.rewrite(doc, self.live, (self.dr.dns.record, self.record))
        doc.setdefault("failover", {})["fence"] = self.live or scenario == "region-partition"
        if chain is not None:
            doc["alerts"] = chain.drtool_alerts(self.dr.name)
        if scenario in IN_SITE:  # a failover the ladder would decide is only queued for approval, never started
            doc["alerts"] = {"policy": "approve", "firing_for_s": 0, "cooldown_s": 3600,
                             "state_dir": str(self.dir / "work" / scenario / "alerts")}
        path = self.dir / "work" / scenario / "drtool.yaml"
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
            doc["paths"] = self.publish(doc)
        return doc

    def scenario(self, sc: ScenarioRun, entry) -> None:
        name = sc.doc["scenario"]
        chain = AlertChain(self.config, self.primary, self.dir / "work" / name) if name in DETECTED else None
        fault = None
        drill_cfg: Config | None = None
        before = None
        try:
            t0 = now()
            before = self.production_state()
            try:
                sc.check("steady_state_before", True, self.steady())
            except DrtoolError as exc:
                sc.check("steady_state_before", False, exc.message, "the primary does not serve correctly: "
                         "a drill starts from a healthy production")
                raise
            cfg_path = self.drill_config(name, chain)
            drill_cfg = load_config(cfg_path)
            if not self.live:
                dns_for(self.dr.dns).replace_a([self.primary.front_address], self.dr.dns.ttl, record=self.record)
                if name == region.SCENARIO:
                    region.point_records(self.config, self.primary, (self.dr.dns.record, self.record))
            if name == region.SCENARIO:
                sc.doc["production_records_before"] = region.production_records(self.config, self.primary)
            if chain is not None:
                chain.start(cfg_path)
                chain.wait_scraped_up()
            sc.step("steady_state", "Steady state: the primary serves the canary; drill record and alert chain ready",
                    t0, now(), evidence={"production_before": before, "record": self.record})
            load = self.background_load(sc, entry) if name == "gpu-degraded" else None
            try:
                fault, fault_at = self.inject(name, entry), now()
                sc.doc["fault"], sc.doc["fault_at"] = fault.description, fault_at
                sc.step("fault", f"Fault: {fault.description}", fault_at, now())
                if name == "gpu-degraded":
                    self.drain_ladder(sc, drill_cfg, fault, fault_at)
            finally:
                if load is not None:
                    self.finish_load(sc, load)
            if name == "process-crash":
                self.ladder(sc, drill_cfg, fault_at)
            elif name == region.SCENARIO:
                region.run(self, sc, drill_cfg, fault_at)
            elif name not in IN_SITE:
                fo = self.failover(sc, name, chain, drill_cfg, fault_at)
                self.expect(sc, name, fo, fault, drill_cfg, entry)
        except (DrtoolError, OSError) as exc:
            sc.doc["error"] = getattr(exc, "message", None) or str(exc)
            self.out.info(f"  [red]scenario {name} stopped:[/] {sc.doc['error']}")
        except BaseException as exc:  # Ctrl-C, or a bug: production is put back before the drill stops
            sc.doc["error"] = ("interrupted (Ctrl-C): cleaned up" if isinstance(exc, KeyboardInterrupt)
                               else f"stopped by {type(exc).__name__}: {exc}; cleaned up")
            self.cleanup(sc, fault, chain, drill_cfg, before)
            raise
        self.cleanup(sc, fault, chain, drill_cfg, before)
        sc.doc["passed"] = sc.doc["error"] is None and all(c["passed"] for c in sc.doc["checks"]) \
            and not sc.doc["not_cleaned"]

    def inject(self, name: str, entry):
        if name == "primary-down":
            return faults.primary_down(self.config, self.primary)
        if name == "region-partition":
            return faults.region_partition(self.config, self.primary)
        if name == "standby-boot-failure":
            return faults.standby_boot_failure(self.config, self.dr)
        if name == "corrupt-latest-snapshot":
            return faults.corrupt_latest_snapshot(self.config, self.dr, self.model.name, entry.version)
        if name == "process-crash":
            return faults.process_crash(self.config, self.primary, f"drtool-{self.model.name}")
        if name == "gpu-degraded":
            return faults.gpu_degraded(self.config, self.primary)
        if name == region.SCENARIO:
            return region.region_down(self.config, self.primary)
        return faults.registry_mismatch(self.config, self.dr, entry.image.repository)

    def failover(self, sc: ScenarioRun, name: str, chain: AlertChain | None, cfg: Config, fault_at: float) -> dict:
        """Run the failover the way it would happen: an outage through the alert chain, anything else as the
        on-call engineer would (the same command, started by the drill). Returns the failover's report."""
        if chain is not None:
            firing = chain.wait_firing(timeout=120)
            sc.step("detect", "Detection: Prometheus fires ModelPrimaryDown", fault_at, firing,
                    evidence={"rule_for_s": self.config.drill.detection_for_s,
                              "scrape_interval_s": self.config.drill.scrape_interval_s})
            decision = chain.wait_decision(timeout=60, since=fault_at)
            run_id, error = decision["run_id"], None
            fo = self.wait_report(run_id)
            sc.step("decide", "Decision: Alertmanager posts to drtool serve, which starts the failover", firing,
                    fo["started"], evidence={"run_id": run_id, "decided_at": decision.get("decided_at")})
            sc.doc["split"].update(detection=round(firing - fault_at, 3), decision=round(fo["started"] - firing, 3))
        else:
            run_id = failover.new_run_id(self.dr.name)
            sc.doc["split"].update(detection=0.0, decision=0.0)
            error = None
            try:
                # No outage here (a bad standby, snapshot or registry at DR): the primary serves, so the drill's
                # move is a planned one; a failover that refused a serving primary would test nothing.
                failover.run(cfg, self.out, self.dr.name, self.model.name, False, True, None,
                             f"drill {self.drill_id}: {name}", run_id, None, planned=True)
            except DrtoolError as exc:
                error = exc
            fo = json.loads((state_dir() / failover.RUNS / f"{run_id}.report.json").read_text())
        fo["error"] = None if error is None else {"message": error.message, "exit_code": error.exit_code}
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
        sc.doc["failover"] = {"run_id": fo["run_id"], "status": fo["status"], "error": fo["error"],
                              "snapshot": fo.get("snapshot"), "standby": fo.get("standby"),
                              "standbys_tried": fo.get("standbys_tried"), "dns": fo.get("dns")}
        return fo

    def ladder(self, sc: ScenarioRun, cfg: Config, fault_at: float) -> None:
        """An in-site fault: `drtool watch` (the escalation ladder, with the drill's configuration) probes the
        primary from here, restarts the instance in place and stops once it serves again. Expected: serving again
        within ha.ready_timeout_s, no failover decided, production as before (checked at cleanup)."""
        from drtool.actions import watch

        host = self.primary.hosts[0]
        budget = cfg.ha.restart_attempts * cfg.ha.ready_timeout_s + 30
        res = watch.run(cfg, self.out, self.primary.name, failures=2, interval=LADDER_PROBE_S, exit_on_trigger=True,
                        max_probes=int(budget / LADDER_PROBE_S), exit_on_recovery=True)
        summary = res["ladder"]
        sc.doc["ladder"] = summary
        taken = [r for r in summary["instances"].get(host.name, {}).get("rungs", []) if r["kind"] != "none"]
        restarts = [r for r in taken if r["kind"] == "restart"]
        recovery = next((r for r in res["recoveries"] if r["instance"] == host.name), None)
        if restarts:
            first = restarts[0]
            sc.step("detect", f"Detection: drtool watch, {host.name} failing 2 probes {LADDER_PROBE_S:g}s apart",
                    fault_at, first["decided_at"], evidence={"reason": first["reason"]})
            sc.step("restart", "Ladder rung 1: restart the container in place", first["decided_at"],
                    first["outcome_at"] or first["decided_at"], "done" if first["outcome"] == "ok" else "failed",
                    {"policy": first["policy"], "outcome": first["outcome"], "detail": first["detail"]})
            sc.doc["split"].update(detection=round(first["decided_at"] - fault_at, 3))
        if recovery is not None:  # only a restarted instance has one, so `restarts` is not empty here
            ready_at = restarts[-1]["decided_at"] + recovery["ready_after_s"]
            sc.step("ready", "The restarted instance verified its weights and serves again (/readyz)",
                    restarts[-1]["outcome_at"] or ready_at, ready_at)
            sc.doc["rto_s"] = round(ready_at - fault_at, 3)
            sc.doc["split"].update(restart_to_ready=round(recovery["ready_after_s"], 3))
        sc.check("restarted_in_place", bool(restarts) and restarts[0]["outcome"] == "ok" and
                 [r["kind"] for r in taken] == ["restart"] * len(taken), taken)
        sc.check("serving_again_within_ready_timeout", recovery is not None
                 and recovery["ready_after_s"] <= cfg.ha.ready_timeout_s,
                 {"recovery": recovery, "ready_timeout_s": cfg.ha.ready_timeout_s})
        sc.check("no_failover", res["decisions"] == [], res["decisions"],
                 "an in-site fault must be cured in the site: no cross-site failover")
        t = self.config.drill
        if sc.doc["rto_s"] is not None:
            sc.check("rto_within_target", sc.doc["rto_s"] <= t.rto_target_s,
                     f"RTO {sc.doc['rto_s']:.1f}s (fault to serving again), target {t.rto_target_s:.0f}s")

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
                 {k: result.get(k) for k in keys}, "; ".join(result.get("reasons") or []) or None)
        drained_at = sc.doc.get("drained_at")
        sc.check("load_spanned_the_switch", load["flowing_at"] <= sc.doc.get("fault_at", 0) and drained_at is not None
                 and ended > drained_at, {"load_flowing_at": load["flowing_at"], "fault_at": sc.doc.get("fault_at"),
                                          "drained_at": drained_at, "load_ended": ended},
                 "the load must be flowing before the fault and still running after the drain")

    def drain_ladder(self, sc: ScenarioRun, cfg: Config, fault, fault_at: float) -> None:
        """gpu-degraded: `drtool watch` (the ladder, with the drill's configuration) sees the primary upstream
        degraded and drains it from the site's Nginx, so the site's other GPU serves; no restart (a restart does
        not cool a GPU), no failover, no DNS change. Cleanup clears the fault and undrains it."""
        from drtool.actions import watch

        instance = fault.info["instance"]
        record_before = dns_for(self.dr.dns).read_a(self.record).addresses
        res = watch.run(cfg, self.out, self.primary.name, failures=2, interval=LADDER_PROBE_S, exit_on_trigger=True,
                        max_probes=int(120 / LADDER_PROBE_S), exit_on_recovery=True)
        summary = res["ladder"]
        sc.doc["ladder"] = summary
        taken = [r for r in summary["instances"].get(instance, {}).get("rungs", []) if r["kind"] != "none"]
        drain = next((r for r in taken if r["kind"] == "drain" and r["outcome"] == "ok"), None)
        if drain is not None:
            sc.step("detect", f"Detection: drtool watch, {instance} degraded for 2 probes {LADDER_PROBE_S:g}s apart",
                    fault_at, drain["decided_at"], evidence={"reason": drain["reason"]})
            sc.step("drain", f"Ladder rung 2: drain {instance} from {self.primary.proxy.name} (Nginx reload)",
                    drain["decided_at"], drain["outcome_at"], evidence={"policy": drain["policy"]})
            sc.doc["drained_at"] = drain["outcome_at"]
            sc.doc["rto_s"] = round(drain["outcome_at"] - fault_at, 3)   # fault to drained: the in-site switch
            sc.doc["split"].update(detection=round(drain["decided_at"] - fault_at, 3),
                                   drain=round(drain["outcome_at"] - drain["decided_at"], 3))

            def undrain() -> str:
                deploy.wait(self.primary, next(h for h in self.primary.hosts if h.name == instance), timeout=120)
                proxy.undrain(self.config, self.primary, instance)
                return f"{instance} ready again and undrained at {self.primary.proxy.name}"

            fault.undo_actions.insert(0, (f"undrain {instance} once it reports ready", undrain))
        sc.check("drained_not_restarted", drain is not None and [r["kind"] for r in taken] == ["drain"], taken,
                 "a degraded GPU is drained straight away: restarting the container does not cool it")
        sc.check("other_instance_serves", any(h.name != instance for h in self.primary.hosts)
                 and res["failing_streak"] == 0, {"failing_streak": res["failing_streak"]})
        sc.check("no_failover", res["decisions"] == [], res["decisions"],
                 "an in-site fault must be cured in the site: no cross-site failover")
        record_after = dns_for(self.dr.dns).read_a(self.record).addresses
        sc.check("dns_unchanged", record_after == record_before == [self.primary.front_address],
                 {"before": record_before, "after": record_after})
        if sc.doc["rto_s"] is not None:
            sc.check("drained_within_target", sc.doc["rto_s"] <= self.config.drill.rto_target_s,
                     f"fault to drained {sc.doc['rto_s']:.1f}s, target {self.config.drill.rto_target_s:.0f}s")

    def wait_report(self, run_id: str) -> dict:
        path = state_dir() / failover.RUNS / f"{run_id}.report.json"
        deadline = time.monotonic() + FAILOVER_TIMEOUT_S
        while time.monotonic() < deadline:
            if path.exists():
                return json.loads(path.read_text())
            time.sleep(0.5)
        raise OperationFailed(f"failover {run_id} wrote no report within {FAILOVER_TIMEOUT_S}s",
                              hint=f"see its log under {self.dir / 'work'} and its journal in {path.parent}")

    # -- expected outcomes ------------------------------------------------------------------------------------
    def expect(self, sc: ScenarioRun, name: str, fo: dict, fault, cfg: Config, entry) -> None:
        done = fo["status"] == "done" and fo["error"] is None
        record_now = dns_for(self.dr.dns).read_a(self.record).addresses
        if name == "registry-mismatch":
            pre = next(s for s in fo["steps"] if s["name"] == "preflight")
            sc.check("failover_refused_exit_3", fo["error"] is not None and fo["error"]["exit_code"] == 3,
                     fo["error"], "the DR registry lacks the production image: the failover must stop")
            sc.check("refused_in_preflight_naming_the_image", pre["status"] == "failed"
                     and entry.image.digest.split(":")[-1][:12] in (pre["error"] or ""), pre["error"])
            sc.check("no_dns_flip", record_now == [self.primary.front_address],
                     {"record": self.record, "answer": record_now})
            return
        if name == "corrupt-latest-snapshot":
            snap = fo.get("snapshot") or {}
            refused = [r["id"] for r in snap.get("refused", [])]
            sc.check("damaged_snapshot_refused", fault.info["newest"] in refused,
                     {"damaged": fault.info["newest"], "refused": refused})
            can_fall_back = self.config.failover.fallback_to_older and not fault.info["shared"]
            if not can_fall_back:
                sc.check("failover_refused_exit_3", fo["error"] is not None and fo["error"]["exit_code"] == 3,
                         fo["error"], "no snapshot of the production version verifies: nothing may be served")
                sc.check("no_dns_flip", record_now == [self.primary.front_address],
                         {"record": self.record, "answer": record_now})
                return
            fell_back = done and snap.get("restored") not in (None, fault.info["newest"])
            sc.check("fell_back_to_an_older_snapshot", fell_back,
                     {"restored": snap.get("restored"), "created": snap.get("created")})
        if not sc.check("failover_completed", done, {"status": fo["status"], "error": fo["error"]}):
            return
        standby = next(h for h in self.dr.hosts if h.name == fo["standby"])
        sc.check("record_points_at_verified_standby", record_now == [standby.address],
                 {"record": self.record, "answer": record_now, "standby": standby.name})
        if name == "standby-boot-failure":
            tried = fo.get("standbys_tried") or []
            sc.check("first_standby_failed_next_serves", len(tried) >= 2 and not tried[0]["ok"] and tried[-1]["ok"],
                     tried)
        if name == "region-partition":
            fence = next((s for s in fo["steps"] if s["name"] == "fence_primary"), {})
            fenced = (fence.get("evidence") or {}).get("fenced", {})
            sc.check("fencing_recorded_unreachable", bool(fenced) and all("unreachable" in v for v in fenced.values()),
                     fenced, "partitioned: the primary could not be fenced; DNS moved anyway (policy)")
        # Served correctly from the DR site, through the record: that moment ends the RTO.
        url = base_url(record_now[0], self.dr.serving_port)
        outputs = predict(url, entry.canary.input)["outputs"]
        ok, evidence = compare_output(entry.canary.expected, outputs, entry.canary.tolerance)
        served_at = now()
        sc.check("canary_served_through_record", ok, {"url": url, "canary": evidence})
        sc.doc["rto_s"] = round(served_at - sc.doc["fault_at"], 3)
        created = (fo.get("snapshot") or {}).get("created")
        sc.doc["rpo_s"] = failover.snapshot_age(created, sc.doc["fault_at"])
        t = self.config.drill
        sc.check("rto_within_target", sc.doc["rto_s"] <= t.rto_target_s,
                 f"RTO {sc.doc['rto_s']:.1f}s, target {t.rto_target_s:.0f}s")
        sc.check("rpo_within_target", sc.doc["rpo_s"] is not None and sc.doc["rpo_s"] <= t.rpo_target_s,
                 f"RPO {sc.doc['rpo_s']}s (snapshot {((fo.get('snapshot') or {}).get('restored') or '?')[:12]} "
                 f"created {created}), target {t.rpo_target_s:.0f}s")
        self.load(sc, url, entry)

    def capacity(self, url: str, entry, workdir: Path) -> dict:
        """The drill's Locust capacity check against `url`, with `entry`'s canary mixed in (drill.load settings)."""
        from drtool.drill.capacity import run_load
        from drtool.model.demo import demo_inputs

        settings = self.config.drill.load
        inputs = [{"inputs": demo_inputs(frames=20, seed=s)} for s in range(1, 9)]
        return run_load(url, requests_total=settings.requests, concurrency=settings.concurrency, inputs=inputs,
                        canary=entry.canary, slo=settings.slo, workdir=workdir)

    def load(self, sc: ScenarioRun, url: str, entry) -> None:
        t0 = now()
        settings = self.config.drill.load
        result = self.capacity(url, entry, self.dir / "work" / sc.doc["scenario"] / "load")
        sc.doc["load"] = result
        sc.step("load", f"Capacity: {settings.requests} requests, {settings.concurrency} concurrent (Locust)", t0,
                now(), "done" if result["passed"] else "failed", {k: result.get(k) for k in
                                                                 ("rps", "p50_ms", "p95_ms", "p99_ms", "error_rate")})
        sc.check("load_within_slo", result["passed"], {k: result.get(k) for k in
                                                        ("rps", "p95_ms", "error_rate", "canary_mismatches")},
                 "; ".join(result.get("reasons") or []) or None)

    # -- cleanup, always --------------------------------------------------------------------------------------
    def cleanup(self, sc: ScenarioRun, fault, chain: AlertChain | None, cfg: Config | None, before: dict | None):
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
        if chain is not None:
            attempt("stop the alert chain", lambda: chain.stop() or "prometheus, alertmanager, serve stopped")
            for run_id in chain.launched_runs():  # a failover already started finishes before anything is undone
                attempt(f"let failover {run_id} finish", lambda r=run_id: self.wait_report(r)["status"])
        fleet = sc.doc["scenario"] == region.SCENARIO
        if cfg is not None and fleet:
            attempt(f"fleet failback to {self.primary.name} (every service verified at home, records back)",
                    lambda: region.cleanup(self, cfg))
        elif cfg is not None:
            attempt(f"fail back to {self.primary.name} (primary verified, record back)", lambda: failover.run(
                cfg, self.out, self.primary.name, self.model.name, False, True, None,
                f"drill {self.drill_id} cleanup", None, None, plan=failover.Failback)["status"])
        if cfg is not None:
            attempt("standbys cold", lambda: failover.cool_standbys(self.config, self.model))
            if not self.live and fleet:
                attempt("remove the drill records",
                        lambda: region.remove_records(self.config, self.primary, (self.dr.dns.record, self.record)))
            elif not self.live:
                attempt(f"remove the drill record {self.record}",
                        lambda: dns_for(self.dr.dns).delete_a(self.record))
        sc.doc["not_cleaned"] = [c["action"] + ": " + c["detail"] for c in log if not c["ok"]]
        sc.step("cleanup", "Cleanup: fault undone, primary verified, drill record removed, standbys cold", t0,
                now(), "done" if not sc.doc["not_cleaned"] else "failed")
        if before is not None:
            after = self.production_state()
            # A live drill moved production and failed back: the same addresses must be back (the TTL may be the
            # one failback writes). In every drill the primary must serve the same model, version and image; a
            # primary that lost its container (powered off, fenced) is redeployed by failback from the newest
            # verified snapshot of that version (the nightly one), which may be newer than the one it served.
            same_dns = after["dns"] == before["dns"] or (
                self.live and after["dns"]["addresses"] == before["dns"]["addresses"])
            sc.check("production_dns_unchanged", same_dns, {"before": before["dns"], "after": after["dns"]})
            if fleet and "production_records_before" in sc.doc:
                records = region.production_records(self.config, self.primary)
                sc.check("every_production_record_unchanged", records == sc.doc["production_records_before"],
                         {"before": sc.doc["production_records_before"], "after": records})
            changed = sorted(h for h, s in after["primary"].items()
                             if s.get("snapshot_id") != before["primary"].get(h, {}).get("snapshot_id"))
            same_primary = _without_snapshot(after["primary"]) == _without_snapshot(before["primary"])
            sc.check("primary_unchanged", same_primary,
                     {"before": before["primary"], "after": after["primary"], "snapshot_changed_on": changed})
            try:
                sc.check("steady_state_after", True, self.steady())
            except DrtoolError as exc:
                sc.check("steady_state_after", False, exc.message)

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
