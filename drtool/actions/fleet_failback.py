"""drtool failback for a fleet: the services of a primary site, all or the named ones, back home.

The reverse of drtool/actions/fleet.py, per service: the site's registry names the production version; the service
is brought back on the site's first host at its own port (kept when it already serves that version correctly,
else: pull by digest, restore verified weights, start, ready, /version and canary); only then its record points
home, and its container and weights leave the DR standby that served it. The service on the site's own record
(the one behind the site's Nginx) goes through the single-service failback, which brings every serving host and
the Nginx back. A standby is powered off only when no service's record points at it any more: a failback of one
service never takes down another that still serves from the same standby.

A service that fails keeps its record where it is (at its verified standby) and never stops the others; the
command exits 1 with the table. It is idempotent: running it again brings back only what is not home yet.
The run's record: runs/<run>.fleet.json; the delegated failback keeps its own journal and report.
"""

import dataclasses
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from drtool.actions import deploy, dnsrecord, failover
from drtool.actions.dnsrecord import host_at
from drtool.actions.failover import RUNS, served_entry
from drtool.actions.registry import site_registry
from drtool.config import Config, Host, ServiceSpec, Site
from drtool.errors import DrtoolError, OperationFailed, UsageError
from drtool.execute.ansible import run_playbook
from drtool.execute.dns import dns_for
from drtool.fleet.plan import home_hosts, pick_named
from drtool.fsutil import write_json_atomic
from drtool.output import Output
from drtool.paths import state_dir
from drtool.providers.base import ssh_banner
from drtool.snapshot.lease import Lease
from drtool.snapshot.stores import open_store

BACK, HOME, FAILED = "back", "already home", "failed"


def home_services(config: Config, site: Site, names: list[str] | None) -> list[ServiceSpec]:
    """The services whose primary is `site` (all, or the named ones), in priority order; UsageError naming an
    unknown one and listing the site's services."""
    if site.role != "primary":
        raise UsageError(f"site {site.name} is not the primary", hint="fail back TO the primary site")
    return pick_named({n: s for n, s in config.services.items() if s.site == site.name}, names, f"of {site.name}",
                      f"services of {site.name}")


class FleetFailback:
    kind = "fleet-failback"

    def __init__(self, config: Config, out: Output, site: Site, run_id: str, reason: str | None):
        self.config, self.out, self.site, self.run_id, self.reason = config, out, site, run_id, reason
        self.path = state_dir() / RUNS / f"{run_id}.fleet.json"
        self.lock = threading.Lock()
        self.doc: dict = {}

    def home(self, spec: ServiceSpec) -> tuple[Site, Host]:
        """The site as this service sees it (its first host, its port, its record; no proxy) and that host."""
        host = home_hosts(self.site, spec)[0]
        view = dataclasses.replace(self.site, hosts=(host,), serving_port=spec.port, proxy=None,
                                   dns=dataclasses.replace(self.site.dns, record=spec.record))
        return view, host

    def delegated(self, spec: ServiceSpec) -> bool:
        """The service on the site's own record: the single-service failback (every host, the Nginx)."""
        return spec.record == self.site.dns.record

    def plan(self, specs: list[ServiceSpec]) -> list[dict]:
        """Read-only: each service's record now and where it goes."""
        rows = []
        for spec in specs:
            view, host = self.home(spec)
            now = dns_for(view.dns).read_a().addresses
            target = self.site.front_address if self.delegated(spec) else host.address
            rows.append({"service": spec.name, "priority": spec.priority, "record": spec.record, "before": now,
                         "home": (f"{self.site.proxy.name} (Nginx over {', '.join(h.name for h in self.site.hosts)})"
                                  if self.delegated(spec) and self.site.proxy else f"{host.name}:{spec.port}"),
                         "target": target, "status": HOME if now == [target] else "to bring back",
                         "how": "drtool failback (single service)" if self.delegated(spec) else "fleet failback"})
        return rows

    def save(self) -> None:
        with self.lock:
            write_json_atomic(self.path, self.doc)

    def row(self, spec: ServiceSpec, **fields) -> None:
        with self.lock:
            self.doc["services"][spec.name].update(fields)
        self.save()

    def run(self, specs: list[ServiceSpec], rows: list[dict]) -> dict:
        """`rows`: this run's plan (fb.plan(specs)), as shown before the first change."""
        self.doc = {"run_id": self.run_id, "kind": self.kind, "site": self.site.name, "reason": self.reason,
                    "started": time.time(), "ended": None, "status": "running",
                    "services": {r["service"]: {**r, "after": None, "reason": None, "seconds": None} for r in rows}}
        self.save()
        main = [s for s in specs if self.delegated(s)]
        rest = [s for s in specs if not self.delegated(s)]
        for spec in main:   # first: it takes the site's lease itself
            self.bring_back_main(spec)
        if rest:
            lease = Lease(open_store(self.site.object_stores[0]), f"failover-{self.site.name}",
                          f"fleet failback {self.run_id}")
            lease.acquire(wait=0)
            try:
                self.bring_back(rest)
            finally:
                lease.release()
                lease.store.close()
        self.doc["cooled"] = failover.cool_standbys(self.config, None)["cooled"]   # none a record points at
        self.doc["ended"] = time.time()
        rows = self.doc["services"].values()
        self.doc["status"] = "done" if all(r["status"] in (BACK, HOME) for r in rows) else "partial"
        self.save()
        return {**self.doc, "services": sorted(self.doc["services"].values(), key=lambda r: (r["priority"],
                                                                                              r["service"])),
                "journal": str(self.path)}

    def bring_back_main(self, spec: ServiceSpec) -> None:
        t0 = time.monotonic()
        self.out.step(f"{spec.name}: drtool failback --site {self.site.name} --model {spec.model}")
        try:
            rep = failover.run(self.config, self.out, self.site.name, spec.model, False, True, None, self.reason,
                               f"{self.run_id}.{spec.name}", None, plan=failover.Failback)
        except DrtoolError as exc:
            self.row(spec, status=FAILED, reason=exc.message, seconds=round(time.monotonic() - t0, 3))
            return
        after = dns_for(self.home(spec)[0].dns).read_a().addresses
        self.row(spec, status=HOME if rep.get("already_serving") else BACK, after=after,
                 seconds=round(time.monotonic() - t0, 3), journal=rep.get("journal"))

    def bring_back(self, specs: list[ServiceSpec]) -> None:
        hosts = sorted({self.home(s)[1].name for s in specs})
        try:   # the home host answers SSH and its engine, once for all
            run_playbook(self.config, "status.yml", extravars={"drtool_targets": ",".join(hosts)})
        except DrtoolError as exc:
            for spec in specs:
                self.row(spec, status=FAILED, reason=f"provision: {exc.message}")
            return
        registry = site_registry(self.config, self.site)
        try:
            entries = {}
            for spec in specs:
                try:
                    entries[spec.name] = registry.production(spec.model)
                except DrtoolError as exc:
                    entries[spec.name] = exc
        finally:
            registry.store.close()

        def one(spec: ServiceSpec) -> None:
            t0 = time.monotonic()
            entry = entries[spec.name]
            step = "registry"
            try:
                if entry is None or isinstance(entry, DrtoolError):
                    raise OperationFailed(f"{spec.model} has no production version in {self.site.name}'s registry"
                                          + (f": {entry.message}" if isinstance(entry, DrtoolError) else ""))
                view, host = self.home(spec)
                model = self.config.model(spec.model)
                step = "verify"
                kept = self.serving(view, host, entry)
                if kept is None:
                    for name, act in (("pull_image", lambda: deploy.pull(self.config, view, host, entry)),
                                      ("restore", lambda: deploy.restore(self.config, view, host, model, entry)),
                                      ("start", lambda: deploy.start(self.config, view, host, model, entry)),
                                      ("wait_ready", lambda: deploy.wait(view, host, timeout=300))):
                        step = name   # named in the error when this one fails
                        act()
                    step = "verify"
                    deploy.check(view, host, served_entry(view, host, entry))
                step = "flip_dns"   # only now: the home instance passed readiness, /version and the canary
                dns = dns_for(view.dns)
                record = dns.read_a()
                before, saved = record.addresses, None
                if before != [host.address]:   # every change saves the record it replaces first
                    store = open_store(self.site.object_stores[0])
                    try:
                        saved = dnsrecord.save_previous(view, store, record, self.run_id)
                    finally:
                        store.close()
                    dns.replace_a([host.address], view.dns.ttl)
                after = dns.read_a().addresses
                if after != [host.address]:
                    raise OperationFailed(f"{view.dns.server} answers {after} for {spec.record}")
                step = "cool_standby"
                left = self.leave_standby(spec, before)
                self.row(spec, status=HOME if kept is not None and before == [host.address] else BACK, after=after,
                         seconds=round(time.monotonic() - t0, 3), standby=left, previous_saved=saved)
            except DrtoolError as exc:
                self.row(spec, status=FAILED, reason=f"{step}: {exc.message}", seconds=round(time.monotonic() - t0, 3))
                self.out.info(f"  [red]failed[/] {spec.name} at {step}: {exc.message}")

        workers = max(1, self.config.failover.parallel)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="failback") as pool:
            list(pool.map(one, specs))

    @staticmethod
    def serving(view: Site, host: Host, entry) -> dict | None:
        try:
            return deploy.check(view, host, served_entry(view, host, entry))
        except DrtoolError:
            return None

    def leave_standby(self, spec: ServiceSpec, before: list[str]) -> str | None:
        """The service's container and weights off the DR standby its record pointed at (when it is up)."""
        found = host_at(self.config, before[0]) if before else None
        if found is None or found[0].role != "dr" or not found[0].is_standby:
            return None
        host = found[1]
        if not ssh_banner(host.address, host.port, timeout=3):
            return f"{host.name} (not reachable: nothing to stop)"
        model = self.config.model(spec.model)
        deploy.stop(self.config, host, model)
        deploy.remove_weights(self.config, host, model.weights_path)
        return f"{host.name}: container stopped, weights removed"


def new_run_id(site: str) -> str:
    return f"fleet-fb-{site}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:6]}"


def run(config: Config, out: Output, site_name: str, names: list[str] | None, dry_run: bool, confirm,
        reason: str | None) -> dict:
    """`confirm(rows)` is called with the plan before the first change (the CLI asks or checks --yes)."""
    site = config.site(site_name)
    specs = home_services(config, site, names)
    fb = FleetFailback(config, out, site, new_run_id(site.name), reason)
    rows = fb.plan(specs)
    if dry_run:
        return {"run_id": None, "kind": fb.kind, "site": site.name, "dry_run": True, "changes": "none (dry run)",
                "services": rows}
    confirm(rows)
    out.info(f"fleet failback run [bold]{fb.run_id}[/] to {site.name}; record {fb.path}")
    result = fb.run(specs, rows)
    bad = [r for r in result["services"] if r["status"] == FAILED]
    if bad:
        raise OperationFailed(
            f"fleet failback {fb.run_id}: {len(bad)} of {len(result['services'])} service(s) did not come back",
            hint="each of their records still points where it did (its verified standby); fix the cause and run "
                 f"the same `drtool failback --site {site.name}` again (what is home is kept)",
            details=[f"{r['service']}: {r['reason']}" for r in bad] + [f"record: {fb.path}"], result=result)
    return result
