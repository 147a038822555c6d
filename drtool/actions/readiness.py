"""drtool readiness: know before the disaster that failover to a DR site will work and how long it will take.

Gathers evidence through the existing layers (the model registry in each site's store, the container registry's
manifest HEAD, the snapshot catalog and metadata-level verification, DNS, the drill and failover history) with a
thread pool, in three rounds (what needs nothing; what needs the DR store; what needs the production entries), then
hands it to the pure rules (drtool/readiness/rules.py) and RTO predictor (drtool/readiness/predict.py).

Read-only: it powers nothing on and changes nothing. The DNS credential check is a signed update whose only
content is a prerequisite (the zone's SOA exists): the server authenticates it and applies nothing. `--record`
adds the result to the DR store's readiness history (`readiness/<check id>/result.json`, beside `drills/`), and
`--textfile` writes Prometheus metrics; both are the nightly job's, and neither touches what a failover uses."""

import dataclasses
import hashlib
import json
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

from drtool.actions.failover import RUNS, snapshot_candidates
from drtool.actions.registry import image_present
from drtool.config import Config, ServiceSpec, Site
from drtool.errors import DrtoolError, UsageError
from drtool.fleet import planner
from drtool.fleet.plan import failing_sites, select_services
from drtool.fsutil import write_atomic
from drtool.model_registry.entries import canonical
from drtool.model_registry.registry import ModelRegistry
from drtool.output import Output, table
from drtool.paths import state_dir
from drtool.readiness import metrics, predict, rules
from drtool.snapshot import catalog
from drtool.snapshot.stores import open_store
from drtool.snapshot.verify import verify_snapshot

HISTORY = "readiness"
DRILLS = "drills"     # where drills keep their reports in the DR store (drtool/actions/drill.py)


def _message(exc: DrtoolError) -> str:
    return exc.message + (f" ({exc.hint})" if exc.hint else "")


def _entry(version_entry) -> rules.Entry:
    canary = hashlib.sha256(canonical(dataclasses.asdict(version_entry.canary))).hexdigest()[:16]
    img = version_entry.image
    return rules.Entry(version_entry.version, version_entry.snapshot_id, f"{img.repository}@{img.digest}", canary)


def _epoch(created: str | None) -> float | None:
    if not created:
        return None
    return datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp()


class Gather:
    """The evidence of one check; each method is one network question, safe to run in a worker thread."""

    def __init__(self, config: Config, dr: Site, specs: list[ServiceSpec]):
        self.config, self.dr, self.specs = config, dr, specs
        self.registries: dict[str, ModelRegistry | DrtoolError] = {}
        self.dr_store = None

    # -- round 1: no dependencies ---------------------------------------------------------------------------------
    def store_credentials(self) -> str | None:
        store = self.dr.object_stores[0]
        try:
            if store.url.startswith("file:"):
                root = open_store(store).root
                if not os.access(root, os.R_OK | os.X_OK):
                    return f"{root} is not readable"
                return None
            from drtool.execute.s3 import check_credentials

            check_credentials(store)
        except DrtoolError as exc:
            return _message(exc)
        return None

    def dns_credentials(self) -> str | None:
        from drtool.execute.dns import dns_for

        try:
            dns_for(self.dr.dns).check_credentials()
        except DrtoolError as exc:
            return _message(exc)
        return None

    def record(self, dns, name: str) -> tuple[int | None, tuple[str, ...], str | None]:
        try:
            rec = dns.read_a(name)
        except DrtoolError as exc:
            return None, (), _message(exc)
        return rec.ttl, tuple(rec.addresses), None

    def open_registry(self, site: Site) -> ModelRegistry | DrtoolError:
        try:
            return ModelRegistry(open_store(site.object_stores[0]), site.name)
        except DrtoolError as exc:
            return exc

    def entry_at(self, site_name: str, model: str, alias: str) -> tuple[rules.Entry | None, str | None]:
        reg = self.registries[site_name]
        if isinstance(reg, DrtoolError):
            return None, _message(reg)
        try:
            a = reg.alias(model, alias)
            if a is None:
                return None, None
            v = reg.version(model, a.version)
            if v is None:
                return rules.Entry(a.version, "", "", ""), f"{alias} names version {a.version}, not registered there"
            return _entry(v), None
        except DrtoolError as exc:
            return None, _message(exc)

    # -- round 2: the DR store ------------------------------------------------------------------------------------
    def newest(self, prefix: str, suffix: str, limit: int) -> list[str]:
        objs = [o for o in self.dr_store.list(prefix) if o.key.endswith(suffix)]
        return [o.key for o in sorted(objs, key=lambda o: o.mtime, reverse=True)[:limit]]

    def get_json(self, key: str) -> dict | None:
        data = self.dr_store.get(key)
        try:
            return json.loads(data) if data is not None else None
        except json.JSONDecodeError:
            return None

    # -- round 3: the production entries --------------------------------------------------------------------------
    def image(self, entry: rules.Entry) -> tuple[bool | None, str | None]:
        from drtool.model_registry.entries import ImageRef

        repo, _, digest = entry.image.partition("@")
        try:
            return image_present(self.dr, ImageRef(repo, digest), self.config.ca_file), None
        except DrtoolError as exc:
            return None, _message(exc)

    def snapshot(self, model: str, version: str, registered: str) -> tuple[rules.SnapshotSeen | None, str | None]:
        try:
            first = snapshot_candidates(self.config, self.dr_store, model, version, registered)[0]
        except DrtoolError as exc:
            return None, _message(exc)
        problem, nbytes, created = None, None, _epoch(first["created"])
        try:
            verify_snapshot(self.dr_store, first["id"], read_data=False)
            manifest, _ = catalog.load(self.dr_store, catalog.SnapshotRef(first["id"], model))
            nbytes, created = manifest.bytes_total, _epoch(manifest.created)
        except DrtoolError as exc:
            problem = exc.message
        return rules.SnapshotSeen(first["id"], created, nbytes, problem), None


def local_samples(limit: int) -> list[predict.RunSample]:
    """Finished failovers in this controller's state dir: the per-service journals of its runs (the newest
    `limit`)."""
    runs = state_dir() / RUNS
    out = []
    for path in sorted(runs.glob("*/*.json"), key=lambda p: p.stat().st_mtime, reverse=True)[:limit]:
        try:
            s = predict.sample_from_run(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
        if s is not None:
            out.append(s)
    return out


def gather(config: Config, dr: Site, specs: list[ServiceSpec], now: float) -> tuple[rules.SiteEvidence, list]:
    from drtool.execute.dns import dns_for

    g = Gather(config, dr, specs)
    settings = config.readiness
    runs = settings.history_runs
    sources = {s.site for s in specs}
    with ThreadPoolExecutor(settings.workers, thread_name_prefix="readiness") as pool:
        # round 1: credentials, records, the primaries' registries
        store_f = pool.submit(g.store_credentials)
        dns_f = pool.submit(g.dns_credentials)
        try:
            dns = dns_for(dr.dns)
            rec_f = {s.record: pool.submit(g.record, dns, s.record) for s in specs}
        except DrtoolError as exc:
            rec_f = {s.record: None for s in specs}
            dns_err = _message(exc)
        else:
            dns_err = None
        for site_name, reg in zip(sources, pool.map(lambda n: g.open_registry(config.site(n)), sources),
                                  strict=True):
            g.registries[site_name] = reg
        keys = {(s.site, s.model, s.alias) for s in specs}
        prod = dict(zip(keys, pool.map(lambda k: g.entry_at(*k), keys), strict=True))
        store_error = store_f.result()
        # round 2: the DR store (its registry copy, the drill and failover history)
        dr_entries, reports, samples, detections, history_error = {}, [], [], [], None
        if store_error is None:
            try:
                g.dr_store = open_store(dr.object_stores[0])
                g.registries[dr.name] = ModelRegistry(g.dr_store, dr.name)
                dr_keys = {(dr.name, s.model, s.alias) for s in specs}
                dr_f = {k: pool.submit(g.entry_at, *k) for k in dr_keys}
                drill_keys = g.newest(f"{DRILLS}/", "/report.json", config.drill.history_keep)
                run_keys = g.newest(f"{RUNS}/", ".json", 4 * runs)
                docs = list(pool.map(g.get_json, drill_keys + run_keys))
                reports = [d for d in docs[:len(drill_keys)] if d and d.get("site") == dr.name]
                detections = [d for r in reports for d in predict.detections_from_drill(r)]
                samples += [s for s in map(predict.sample_from_run, docs[len(drill_keys):]) if s is not None]
                dr_entries = {k[1:]: f.result() for k, f in dr_f.items()}
            except DrtoolError as exc:
                history_error = _message(exc)
        samples += local_samples(4 * runs)
        # round 3: the production entry of each service (the primary's; the DR copy's when the primary is unreadable)
        chosen: dict[str, tuple] = {}
        for s in specs:
            entry, err = prod[(s.site, s.model, s.alias)]
            source = s.site
            if err and entry is None and (s.model, s.alias) in dr_entries and dr_entries[(s.model, s.alias)][0]:
                entry, source = dr_entries[(s.model, s.alias)][0], dr.name
            chosen[s.name] = (entry if entry is not None and entry.image else None, source, err)
        images = {c[0].image for c in chosen.values() if c[0]}
        image_f = {i: pool.submit(g.image, next(c[0] for c in chosen.values() if c[0] and c[0].image == i))
                   for i in images}
        snap_keys = {(s.model, chosen[s.name][0].version, chosen[s.name][0].snapshot_id) for s in specs
                     if chosen[s.name][0]} if g.dr_store is not None else set()
        snap_f = {k: pool.submit(g.snapshot, *k) for k in snap_keys}
        evidence = []
        for s in specs:
            entry, source, err = chosen[s.name]
            dr_entry, dr_err = dr_entries.get((s.model, s.alias), (None, None))
            present, image_err = image_f[entry.image].result() if entry else (None, None)
            snap, snap_err = snap_f[(s.model, entry.version, entry.snapshot_id)].result() \
                if entry and g.dr_store is not None else (None, None)
            ttl, addrs, rec_err = rec_f[s.record].result() if rec_f[s.record] else (None, (), dns_err)
            evidence.append(rules.ServiceEvidence(
                service=s.name, model=s.model, site=s.site, priority=s.priority, gpus=s.gpus, record=s.record,
                alias=s.alias, production=entry, production_from=source, production_error=err,
                dr_entry=dr_entry if dr_entry and dr_entry.image else None, dr_entry_error=dr_err,
                image_ref=f"{dr.registry_url}/{entry.image}" if entry else None, image_present=present,
                image_error=image_err, snapshot=snap, snapshot_error=snap_err, record_ttl=ttl,
                record_addresses=addrs, record_error=rec_err))
        dns_cred_err = dns_f.result()
    for reg in g.registries.values():
        if isinstance(reg, ModelRegistry):
            reg.store.close()
    site = rules.SiteEvidence(
        site=dr.name, registry_url=dr.registry_url, store_url=dr.object_stores[0].url, prepare_ttl=dr.dns.prepare_ttl,
        standbys=tuple(planner.StandbyHost(h.name, dr.name, h.gpus, h.address) for h in dr.hosts),
        parallel=config.failover.parallel, engine=predict.FLEET if len(config.services) > 1 else predict.SINGLE,
        now=now, store_error=store_error, dns_credentials_error=dns_cred_err,
        dns_credentials_how=("signed no-op update (prerequisite only: the zone's SOA exists)"
                             if dr.dns.provider == "rfc2136" else "zone read (GetHostedZone)"),
        drill_reports=tuple(reports), drill_error=history_error, samples=tuple(samples),
        detections=tuple(detections), history_error=history_error)
    return site, evidence


def run(config: Config, out: Output, site_name: str, record: bool = False, textfile: str | None = None) -> dict:
    """Check every service that fails over to `site_name`; the result is the `--json` document."""
    t0 = time.monotonic()
    dr = config.site(site_name)
    if dr.role != "dr" or not dr.is_standby:
        raise UsageError(f"site {dr.name} is not a DR site with a standby pool",
                         hint="check the site that is failed over TO, e.g. `drtool readiness --site dr-east`")
    specs = select_services(config, dr.name, None)
    if not specs:
        raise UsageError(f"no service fails over to {dr.name}",
                         hint="see alerts.failover_to and services: in the configuration")
    s = config.readiness
    targets = rules.Targets(rto_s=s.rto_target_s or config.drill.rto_target_s,
                            rpo_s=s.rpo_target_s or config.drill.rpo_target_s,
                            drill_max_age_s=s.drill_max_age_s, history_runs=s.history_runs)
    now = time.time()
    with out.working(f"checking {len(specs)} service(s) at {dr.name}"):
        site, evidence = gather(config, dr, specs, now)
    doc = rules.assess(site, evidence, targets).to_dict()
    check_id = f"ready-{dr.name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(now))}-{uuid.uuid4().hex[:6]}"
    doc.update(check_id=check_id, sources=sorted(x.name for x in failing_sites(config, dr)),
               seconds=round(time.monotonic() - t0, 3), history=None, textfile=None)
    if record:
        doc["history"] = keep(dr, check_id, doc, out)
    path = textfile or s.textfile
    if path:
        write_atomic(Path(path), metrics.render(doc), 0o644)
        doc["textfile"] = str(path)
    return doc


def keep(dr: Site, check_id: str, doc: dict, out: Output) -> str | None:
    """The result in the DR store's readiness history (beside the drill reports); None when it could not be put."""
    key = f"{HISTORY}/{check_id}/result.json"
    try:
        store = open_store(dr.object_stores[0])
        try:
            store.put(key, json.dumps(doc, sort_keys=True).encode())
        finally:
            store.close()
    except DrtoolError as exc:
        out.info(f"[yellow]result not kept in the DR store:[/] {exc.message}")
        return None
    return f"{dr.object_stores[0].url}/{key}"


def render(result: dict):
    """The console tables: one row per service, one per failing rule with its fix."""

    def draw(console) -> None:
        rto = result["rto"]
        console.print(table(
            f"DR readiness of {result['site']} ({result['summary']['ready']}/{result['summary']['services']} ready; "
            f"{result['engine']} failover, {result['waves']} wave(s))",
            ["service", "priority", "ready", *rules.RULES[:-1], "predicted RTO"],
            [[s["service"], s["priority"], "yes" if s["ready"] else "NO",
              *[_mark(r["status"]) for r in s["rules"][:-1]],
              (f"{s['predicted_rto_s']:.0f}s " if s["predicted_rto_s"] is not None else "? ")
              + _mark(s["rules"][-1]["status"])] for s in result["services"]]))
        bad = [(s["service"], r) for s in result["services"] for r in s["rules"] if r["status"] != rules.PASS]
        if bad:
            console.print(table("What to do", ["service", "rule", "status", "saw", "fix"],
                                [[n, r["rule"], r["status"], r["saw"], r["fix"]] for n, r in bad]))
        predicted = "unknown" if rto["predicted_s"] is None else f"{rto['predicted_s']:.1f}s"
        console.print(f"fleet RTO {predicted} (target {rto['target_s']:.0f}s; {rto['statistic']}, "
                      f"{rto['samples']} run(s)); {'[green]READY[/]' if result['ready'] else '[red]NOT READY[/]'}")

    return draw


def _mark(status: str) -> str:
    return {"pass": "ok", "fail": "FAIL", "blocked": "blocked"}[status]
