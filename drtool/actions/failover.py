"""drtool failover: from a dead primary to verified serving at a DR site, and only then DNS.

Ordered, individually timed steps, each journaled (locally and in the DR store) before the next starts:
preflight -> lease -> provision -> pull_image -> restore -> start -> wait_ready -> verify -> fence_primary
-> flip_dns -> confirm_dns. A crash at any step boundary is finished by `--resume RUN`; every step checks
before it acts, so nothing is done twice. DNS is never pointed at a target that has not passed `verify`."""

import contextlib
import dataclasses
import sys
import time
import uuid
from datetime import datetime

import click

from drtool.actions import deploy, dnsrecord
from drtool.actions.registry import site_registry
from drtool.actions.registry import verify as registry_verify
from drtool.config import Config, Host, Model, Site
from drtool.errors import DrtoolError, OperationFailed, UsageError, VerificationError
from drtool.execute.ansible import run_playbook
from drtool.execute.dns import dns_for
from drtool.execute.serving import answers_ready
from drtool.output import Output, table
from drtool.paths import state_dir
from drtool.providers import get_provider
from drtool.providers.base import ssh_banner
from drtool.runbook import DONE, PENDING, Journal, Step, run_steps
from drtool.snapshot import catalog
from drtool.snapshot.lease import Lease
from drtool.snapshot.stores import open_store

RUNS = "runs"


class AlreadyServing(Exception):
    """The site already serves the production version behind the record: nothing to change."""


class PrimaryServing(UsageError):
    """An unplanned failover found the record's current target answering ready: it refuses, changing nothing."""


def new_run_id(site: str) -> str:
    return f"fo-{site}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:6]}"


def pick_model(config: Config, name: str | None) -> Model:
    if name:
        return config.model(name)
    if len(config.models) != 1:
        raise UsageError("this configuration has several models", hint="choose one with --model")
    return next(iter(config.models.values()))


class Failover:
    """One failover run: the plan, its journal, and the step functions."""

    kind = "failover"
    dry_run = False

    def __init__(self, config: Config, out: Output, site: Site, model: Model, run_id: str, reason: str | None,
                 planned: bool = False):
        self.check_site(site)
        self.config, self.out, self.site, self.model = config, out, site, model
        self.primary = config.primary
        self.dr_store = open_store(site.object_stores[0])
        self.dns = dns_for(site.dns)
        self.lease: Lease | None = None
        path = state_dir() / RUNS / f"{run_id}.json"
        if path.exists():
            self.journal = Journal.load(path)
        else:
            self.journal = Journal(run_id, self.kind, site.name, time.time(), reason=reason, path=path,
                                   context={"model": model.name, "tried": [], "planned": planned})
        self.journal.mirror = lambda data: self.dr_store.put(f"{RUNS}/{run_id}.json", data)

    @staticmethod
    def check_site(site: Site) -> None:
        if site.role != "dr" or not site.is_standby:
            raise UsageError(f"site {site.name} is not a DR site with a standby pool",
                             hint="fail over TO the DR site, e.g. `drtool failover --site dr-east`")

    @property
    def planned(self) -> bool:
        """A planned move of a serving primary (kept by a resume): flip and confirm first, then fence."""
        return bool(self.journal.context.get("planned"))

    # -- the plan -------------------------------------------------------------------------------------
    def steps(self) -> list[Step]:
        fence = Step("fence_primary", "Fence the primary (best effort)", self.fence_primary)
        flip = [Step("flip_dns", "Point the service record at the verified standby", self.flip_dns),
                Step("confirm_dns", "Confirm the authoritative server answers the new address", self.confirm_dns)]
        if self.planned:  # the old primary serves until resolvers have followed the record, then stops
            fence = Step("fence_primary", "Drain the old primary: wait out the old record's TTL, then stop it",
                         self.fence_primary)
        return [
            Step("preflight", "Preflight: DR registry, store and DNS reachable; registry verified", self.preflight,
                 changes_things=False),
            Step("lease", "Take the site's failover lease", self.take_lease),
            Step("provision", "Power on a standby and wait for SSH", self.provision),
            # Independent: the image pull and the weights restore run at the same time.
            Step("pull_image", "Pull the production image by digest from the DR registry", self.pull_image,
                 group="fetch"),
            Step("restore", "Restore the production snapshot from the DR store (every byte verified)", self.restore,
                 group="fetch"),
            Step("start", "Start the serving container", self.start),
            Step("wait_ready", "Wait for /readyz", self.wait_ready),
            Step("verify", "Verify /version against the registry and the canary output", self.verify),
            *([*flip, fence] if self.planned else [fence, *flip]),
        ]

    @property
    def ctx(self) -> dict:
        return self.journal.context

    def entry(self):
        """The production entry chosen in preflight, read once per run (each read opens the site's store), with
        the snapshot this run restores (the newest of that version that verifies) in place of the registered one."""
        if getattr(self, "_entry", None) is None or self._entry.version != self.ctx["version"]:
            self._entry = site_registry(self.config, self.site).require_version(self.model.name, self.ctx["version"])
        chosen = self.ctx.get("snapshot_id") or self._entry.snapshot_id
        return self._entry if chosen == self._entry.snapshot_id else dataclasses.replace(self._entry,
                                                                                          snapshot_id=chosen)

    def snapshot_candidates(self, registered: str) -> list[dict]:
        return snapshot_candidates(self.config, self.dr_store, self.model.name, self.ctx["version"], registered)

    def host(self) -> Host:
        return next(h for h in self.site.hosts if h.name == self.ctx["host"])

    def target_address(self) -> str:
        """Where the record points once this run is verified: the standby it brought up."""
        return self.host().address

    def verified_for_dns(self) -> bool:
        """Never point DNS at an unverified target: the steps that prove the target must all be done."""
        return self.journal.record("verify").status == DONE

    def already_serving_check(self) -> bool:
        return True

    # -- steps --------------------------------------------------------------------------------------
    def preflight(self, _ctx) -> dict:
        record = self.dns.read_a()
        self.dns.check_credentials()  # a wrong TSIG key fails here, before anything changes
        checked = registry_verify(self.config, self.out, self.site.name, self.model.name, read_data=False)
        info = checked["models"][self.model.name]
        self.ctx.setdefault("dns_before", {"addresses": record.addresses, "ttl": record.ttl})
        self.ctx["version"] = info["version"]
        entry = self.entry()
        self.ctx["image"] = entry.image.at(self.site.registry_url)
        self.ctx["registered_snapshot_id"] = entry.snapshot_id
        if "snapshot_candidates" not in self.ctx:
            self.ctx["snapshot_candidates"] = self.snapshot_candidates(entry.snapshot_id)
            self.ctx["snapshot_id"] = self.ctx["snapshot_candidates"][0]["id"]
        pool = {h.address: h for h in self.site.hosts}
        serving = [pool[a] for a in record.addresses if a in pool]
        primary_up = None
        if self.kind == "failover" and record.addresses and not serving and not self.ctx.get("host"):
            primary_up = answers_ready(record.addresses[0], self.primary.serving_port)
            if primary_up and not self.planned and not self.dry_run:
                raise PrimaryServing(
                    f"refusing an unplanned failover: {self.site.dns.record} points at {record.addresses[0]} and "
                    f"{primary_up}; the primary serves", hint=f"if this is a planned move of a healthy site, run "
                    f"`drtool failover --site {self.site.name} --planned` (it flips first, then drains and stops "
                    "the old primary); a failing instance behind a serving site is cured in the site (drtool watch)")
        if serving and not self.ctx.get("host") and self.already_serving_check():
            try:
                deploy.check(self.site, serving[0], self.entry())  # with the snapshot chosen above
            except DrtoolError:
                pass  # the record points at a standby that does not serve correctly: fail over properly
            else:
                raise AlreadyServing(f"{self.site.dns.record} already points at {serving[0].name}, which serves "
                                     f"{self.model.name} {entry.version} correctly")
        return {"dns_before": record.addresses, "production": info, "standby_pool": list(pool),
                "snapshot_candidates": self.ctx["snapshot_candidates"], "planned": self.planned,
                **({"primary_serving": f"{primary_up}: an unplanned failover would be refused (--planned moves it)"}
                   if primary_up and not self.planned else {})}

    def take_lease(self, _ctx) -> dict:
        self.lease = Lease(self.dr_store, f"failover-{self.site.name}", f"failover {self.journal.run_id}")
        self.lease.acquire(wait=0)
        return {"lease": f"failover-{self.site.name}"}

    def provision(self, _ctx) -> dict:
        provider = get_provider(self.config, self.site)
        tried = self.ctx.setdefault("tried", [])
        for host in self.site.hosts:
            if any(t["host"] == host.name and not t["ok"] for t in tried):
                continue
            t0 = time.monotonic()
            try:
                provider.power_on(host)
                waited = provider.wait_ready(host, timeout=120)
                run_playbook(self.config, "status.yml", extravars={"drtool_targets": host.name})
            except DrtoolError as exc:
                tried.append({"host": host.name, "ok": False, "error": exc.message})
                self.journal.save()
                self.out.step(f"standby {host.name} failed: {exc.message}; trying the next one")
                try:
                    provider.power_off(host)
                except DrtoolError:
                    pass
                continue
            tried.append({"host": host.name, "ok": True, "seconds": round(time.monotonic() - t0, 3)})
            self.ctx["host"] = host.name
            return {"host": host.name, "address": host.address, "ssh_wait_s": waited, "tried": tried}
        raise OperationFailed(f"no standby of {self.site.name} came up", details=[f"{t['host']}: {t.get('error')}"
                                                                                 for t in tried])

    def pull_image(self, _ctx) -> dict:
        return deploy.pull(self.config, self.site, self.host(), self.entry())

    def restore(self, _ctx) -> dict:
        """Restore the first candidate that verifies. A snapshot refused by verification (corrupt blob, bad
        manifest) is recorded and the next older one of the same version is tried, when the policy allows."""
        refused = self.ctx.setdefault("snapshots_refused", [])
        for cand in self.ctx["snapshot_candidates"]:
            if any(r["id"] == cand["id"] for r in refused):
                continue
            self.ctx["snapshot_id"] = cand["id"]
            self.journal.save()
            try:
                done = deploy.restore(self.config, self.site, self.host(), self.model, self.entry())
            except DrtoolError as exc:
                if not is_verification(exc):
                    raise
                error = "; ".join([exc.message, *(d for d in exc.details if d and d not in exc.message)])
                refused.append({"id": cand["id"], "created": cand["created"], "error": error})
                self.journal.save()
                self.out.step(f"snapshot {cand['id'][:12]} refused: {exc.message}; trying the next older one")
                continue
            self.ctx["snapshot_created"] = cand["created"]
            return {**done, "created": cand["created"], "refused": refused,
                    "fallback": bool(refused)}
        raise VerificationError(f"no snapshot of {self.model.name} {self.ctx['version']} in {self.dr_store.url} "
                                f"verifies: " + "; ".join(f"{r['id'][:12]}: {r['error']}" for r in refused),
                                hint="the DR copy is damaged: replicate a good snapshot again "
                                     "(`drtool backup`) before failing over",
                                details=[f"{r['id'][:12]}: {r['error']}" for r in refused])

    def start(self, _ctx) -> dict:
        return deploy.start(self.config, self.site, self.host(), self.model, self.entry())

    def wait_ready(self, _ctx) -> dict:
        return deploy.wait(self.site, self.host())

    def verify(self, _ctx) -> dict:
        return deploy.check(self.site, self.host(), self.entry())

    def fence_primary(self, _ctx) -> dict:
        if not self.config.failover.fence:
            return {"primary": self.primary.name, "fenced": {}, "skipped": "failover.fence is off"}
        drained_s = self.drain_old_record() if self.planned else None
        fenced = {}
        for host in self.primary.hosts:
            if not ssh_banner(host.address, host.port, timeout=3):
                fenced[host.name] = "unreachable: not fenced (down or partitioned); DNS moves anyway"
                continue
            res = run_playbook(self.config, "model_server.yml", raise_on_failure=False, extravars={
                "drtool_targets": host.name, "model_server_action": "stop", "model_server_model": self.model.name})
            fenced[host.name] = ("serving container stopped" if not res.failed and not res.unreachable
                                 else f"fencing failed: {(res.failed or [None])[0] or res.unreachable}")
        return {"primary": self.primary.name, "fenced": fenced,
                **({"drained_s": drained_s} if drained_s is not None else {})}

    def drain_old_record(self) -> float:
        """A planned move: resolvers may hold the old record for its TTL after the flip, so the old primary keeps
        serving until that TTL has passed since the record moved (lower it ahead with `failover --prepare`)."""
        flip = self.journal.record("flip_dns")
        ttl = (self.ctx.get("dns_before") or {}).get("ttl") or 0
        moved_at = flip.ended or time.time()
        left = moved_at + ttl - time.time()
        if left > 0:
            self.out.step(f"draining: the old record may be cached for {left:.0f}s more (TTL {ttl}s)")
            time.sleep(left)
        return round(max(0.0, left), 3)

    def flip_dns(self, _ctx) -> dict:
        if not self.verified_for_dns():  # never point DNS at an unverified target
            raise VerificationError("refusing to flip DNS: the target has not passed verify")
        target = self.target_address()
        before = self.dns.read_a()
        if before.addresses == [target]:
            return {"record": self.site.dns.record, "before": before.addresses, "after": [target], "changed": False}
        saved = dnsrecord.save_previous(self.site, self.dr_store, before, self.journal.run_id)
        self.dns.replace_a([target], self.site.dns.ttl)
        return {"record": self.site.dns.record, "before": before.addresses, "after": [target], "changed": True,
                "previous_saved": saved}

    def confirm_dns(self, _ctx) -> dict:
        target = self.target_address()
        deadline = time.monotonic() + 30
        while True:
            got = self.dns.read_a()
            if got.addresses == [target]:
                return {"server": f"{self.site.dns.server}:{self.site.dns.port}", "answer": got.addresses,
                        "ttl": got.ttl}
            if time.monotonic() > deadline:
                raise OperationFailed(f"{self.site.dns.server} still answers {got.addresses} for "
                                      f"{self.site.dns.record}, expected {target}")
            time.sleep(0.5)

    # -- running ------------------------------------------------------------------------------------
    def run(self, dry_run: bool) -> dict:
        def progress(kind, rec):
            if kind == "start":
                self.out.step(rec.title)
            elif kind == "done":
                self.out.info(f"  [green]done[/] {rec.name} [dim]{rec.seconds:.1f}s[/]")
            elif kind == "failed":
                self.out.info(f"  [red]failed[/] {rec.name}: {rec.error}")

        already = None
        self.dry_run = dry_run
        if dry_run:  # a dry run changes nothing, its own journal and report included: they stay in memory
            self.journal.path, self.journal.mirror = None, None
        lease = next((s for s in self.journal.steps if s.name == "lease"), None)
        if lease is not None and lease.status == DONE and self.journal.status != DONE and not dry_run:
            # A resumed run holds the lease like any other: it takes it again (over its dead holder) before any
            # further step, and releases it at the end.
            lease.status = PENDING
        try:
            run_steps(self.journal, self.steps(), {}, progress=progress, dry_run=dry_run)
        except DrtoolError:
            pass  # journaled as the failed step; run() turns it into the error and exit code
        except AlreadyServing as exc:
            already = str(exc)
            rec = self.journal.record("preflight")
            rec.status, rec.error, rec.evidence = DONE, None, {"already_serving": already}
            for other in self.journal.steps[1:]:
                other.status = "skipped"
            self.journal.status, self.journal.ended = "done", time.time()
            self.journal.context["already_serving"] = already
            self.journal.save()
        finally:
            if self.lease is not None:
                self.lease.release()
            report = self.report(dry_run)
            if not dry_run:
                self.write_report(report)
            self.dr_store.close()
        return report

    def report(self, dry_run: bool) -> dict:
        j = self.journal
        groups = {s.name: s.group for s in self.steps()}
        steps = [{"name": s.name, "title": s.title, "group": groups.get(s.name), "status": s.status,
                  "start": s.started, "end": s.ended,
                  "seconds": s.seconds, "evidence": s.evidence, "error": s.error, "error_class": s.error_class,
                  "attempts": s.attempts}
                 for s in j.steps]
        confirm = next((s for s in j.steps if s.name == "confirm_dns" and s.status == DONE), None)
        flip = next((s for s in j.steps if s.name == "flip_dns"), None)
        return {
            "run_id": j.run_id, "kind": j.kind, "site": j.site, "model": self.model.name, "status": j.status,
            "dry_run": dry_run, "reason": j.reason, "started": j.started, "ended": j.ended,
            "already_serving": j.context.get("already_serving"),
            "production": {"version": j.context.get("version"), "image": j.context.get("image"),
                           "snapshot_id": j.context.get("snapshot_id")},
            "standby": j.context.get("host"), "standbys_tried": j.context.get("tried", []),
            "dns": {"record": self.site.dns.record, "before": j.context.get("dns_before"),
                    "after": (flip.evidence.get("after") if flip and flip.status == DONE else None)},
            "rto_s": round(confirm.ended - j.started, 3) if confirm else None,
            "snapshot": {"restored": j.context.get("snapshot_id") if self.restored() else None,
                         "created": j.context.get("snapshot_created"),
                         "registered": j.context.get("registered_snapshot_id"),
                         "refused": j.context.get("snapshots_refused", []),
                         "age_at_start_s": snapshot_age(j.context.get("snapshot_created"), j.started)},
            "steps": steps,
            "journal": str(j.path) if j.path else None, "journal_mirror_error": j.mirror_error,
        }

    def restored(self) -> bool:
        rec = next((s for s in self.journal.steps if s.name == "restore"), None)
        return rec is not None and rec.status == DONE

    def write_report(self, report: dict) -> None:
        from drtool.fsutil import write_json_atomic

        write_json_atomic(state_dir() / RUNS / f"{self.journal.run_id}.report.json", report, 0o644)


class Failback(Failover):
    """The reverse, as its own verified plan: the primary serves the production version again (current weights
    from its own store), DNS points back at it, and the standby returns to cold."""

    kind = "failback"

    @staticmethod
    def check_site(site: Site) -> None:
        if site.role != "primary":
            raise UsageError(f"site {site.name} is not the primary", hint="fail back TO the primary site")

    def steps(self) -> list[Step]:
        by_name = {s.name: s for s in super().steps()}
        # The site's other serving hosts come back at the same time as the first one's image and weights (one
        # group): every host of the site returns at once, not one after the other.
        others = [Step("instances", "Bring the site's other serving hosts back, each verified", self.other_instances,
                       group="fetch")] if self.site.proxy else []
        return [
            by_name["preflight"],
            by_name["lease"],
            Step("provision", "The primary host answers SSH and its engine", self.provision),
            by_name["pull_image"], by_name["restore"], *others, by_name["start"], by_name["wait_ready"],
            by_name["verify"],
            *([Step("proxy", "Deploy the site's Nginx over the verified instances; verify through it",
                    self.deploy_proxy)] if self.site.proxy else []),
            by_name["flip_dns"], by_name["confirm_dns"],
            Step("cool_standby", "Stop the standby's container, remove its weights, power it off", self.cool_standby),
        ]

    def provision(self, _ctx) -> dict:
        host = self.site.hosts[0]
        if self.site.is_standby:
            get_provider(self.config, self.site).power_on(host)
        run_playbook(self.config, "status.yml", extravars={"drtool_targets": host.name})
        self.ctx["host"] = host.name
        # A primary that came back serving the production version correctly (its container restarted with the
        # host) is kept as it is: redeploying it would only replace a verified container by an equal one (and
        # swap the snapshot it serves for the newest one). A running container gets a bounded time to turn ready:
        # it hashes its weights against their manifest first. A stopped or missing one (fenced) is redeployed.
        served, running, waited = self._serving(host), None, None
        if served is None:
            running = bool(deploy.probe(self.config, host, self.model).get("running"))
            if running:
                t0 = time.monotonic()
                with contextlib.suppress(DrtoolError):
                    deploy.wait(self.site, host, timeout=self.config.failover.primary_ready_wait_s)
                waited = round(time.monotonic() - t0, 3)
                served = self._serving(host)
        self.ctx["primary_ok"] = served is not None
        return {"host": host.name, "address": host.address, "already_serving": self.ctx["primary_ok"],
                "container_running": running, "waited_for_ready_s": waited}

    def target_address(self) -> str:
        return self.site.front_address

    def verified_for_dns(self) -> bool:
        return super().verified_for_dns() and (self.site.proxy is None
                                               or self.journal.record("proxy").status == DONE)

    def already_serving_check(self) -> bool:
        # Behind a proxy, the record at the proxy says nothing about each instance: every step runs (each keeps an
        # instance that already serves correctly) and the flip is a no-op when the record is already right.
        return self.site.proxy is None

    def other_instances(self, _ctx) -> dict:
        """Each further serving host of the site: kept when it already serves the production version correctly,
        else brought up like the first one (pull by digest, restore verified weights, start, ready, check). One
        that fails is reported and left drained at the proxy; the site serves through the verified ones."""
        done, failed = {}, {}
        for host in self.site.hosts[1:]:
            t0 = time.monotonic()
            try:
                if self._serving(host) is not None:
                    done[host.name] = {"kept": "already serves the production version correctly"}
                    continue
                run_playbook(self.config, "status.yml", extravars={"drtool_targets": host.name})
                entry = self.entry()
                deploy.pull(self.config, self.site, host, entry)
                deploy.restore(self.config, self.site, host, self.model, entry)
                deploy.start(self.config, self.site, host, self.model, entry)
                deploy.wait(self.site, host, timeout=self.config.failover.primary_ready_wait_s)
                done[host.name] = {**deploy.check(self.site, host, entry), "snapshot_id": entry.snapshot_id,
                                   "seconds": round(time.monotonic() - t0, 3)}
            except DrtoolError as exc:
                failed[host.name] = exc.message
                self.out.step(f"{host.name} did not come back: {exc.message}; it stays drained at the proxy")
        self.ctx["instances_failed"] = sorted(failed)
        return {"instances": done, "failed": failed}

    def deploy_proxy(self, _ctx) -> dict:
        from drtool.actions import proxy

        drained = self.ctx.get("instances_failed", [])
        deployed = proxy.deploy(self.config, self.site, drained=drained)
        front = proxy.front(self.site)
        deploy.wait(self.site, front, timeout=60)
        checked = deploy.check(self.site, front, served_entry(self.site, front, self.entry()))
        return {"proxy": front.name, "address": front.address, "drained": drained,
                "config_changed": deployed.get("config_changed"), "started": deployed.get("started"),
                "reloaded": deployed.get("reloaded"), "through_proxy": checked}

    def _serving(self, host: Host) -> dict | None:
        """deploy.check's evidence when the host serves the production version correctly, else None."""
        try:
            return deploy.check(self.site, host, self.served_entry(host))
        except DrtoolError:
            return None

    def served_entry(self, host: Host):
        return served_entry(self.site, host, self.entry())

    def _kept(self) -> dict | None:
        return {"skipped": "the primary already serves the production version correctly"} \
            if self.ctx.get("primary_ok") else None

    def pull_image(self, _ctx) -> dict:
        return self._kept() or super().pull_image(_ctx)

    def restore(self, _ctx) -> dict:
        return self._kept() or super().restore(_ctx)

    def start(self, _ctx) -> dict:
        return self._kept() or super().start(_ctx)

    def verify(self, _ctx) -> dict:
        if self.ctx.get("primary_ok"):
            host = self.host()
            entry = self.served_entry(host)
            self.ctx["snapshot_id"] = entry.snapshot_id
            return deploy.check(self.site, host, entry)
        return super().verify(_ctx)

    def cool_standby(self, _ctx) -> dict:
        return cool_standbys(self.config, self.model)


def served_entry(site: Site, host: Host, entry):
    """The production entry with the snapshot the host serves: the server checked those weights against that
    snapshot's manifest before turning ready; deploy.check then compares the version and the canary output."""
    from drtool.execute.serving import base_url, version

    served = version(base_url(host.address, site.serving_port)).get("snapshot_id")
    return dataclasses.replace(entry, snapshot_id=served) if served else entry


def cool_standbys(config: Config, model: Model | None) -> dict:
    """Every DR standby that is on: `model`'s container stopped and its weights removed (none: a fleet failback,
    which removed each service's already); then powered off, unless some other service's record still points at
    it (a fleet: that service still serves from it)."""
    mine = {s.name for s in config.services.values() if model and s.model == model.name}
    in_use = dnsrecord.standbys_in_use(config, exclude=mine)
    cooled = {}
    for dr in (s for s in config.sites.values() if s.role == "dr" and s.is_standby):
        provider = get_provider(config, dr)
        for host in dr.hosts:
            if provider.state(host) != "on":
                continue
            done = []
            if model is not None and ssh_banner(host.address, host.port, timeout=3):
                deploy.stop(config, host, model)
                deploy.remove_weights(config, host, model.weights_path)
                done.append("container stopped, weights removed")
            if host.address in in_use:
                cooled[host.name] = "; ".join([*done, f"left on: {', '.join(in_use[host.address])} still served "
                                                      "from it"])
                continue
            provider.power_off(host)
            cooled[host.name] = ", ".join([*done, "powered off"])
    return {"cooled": cooled}


def snapshot_candidates(config: Config, store, model: str, version: str, registered: str) -> list[dict]:
    """Snapshots of `version` of `model` in the DR `store`, in the order a restore tries them: the newest first
    (failover.snapshot `newest`) or the registered one first (`registered`); older ones follow only when
    failover.fallback_to_older lets a failover fall back to them. Each {"id", "created"}."""
    refs = catalog.list_refs(store, model)
    found = []
    for ref, manifest, _err in catalog.load_many(store, refs):
        if manifest is not None and (manifest.version == version or ref.id == registered):
            found.append({"id": ref.id, "created": manifest.created})
    if not any(c["id"] == registered for c in found):  # unreadable manifest: restore names the problem
        found.append({"id": registered, "created": None})
    found.sort(key=lambda c: c["created"] or "", reverse=True)
    if config.failover.snapshot == "registered":
        found.sort(key=lambda c: c["id"] != registered)  # stable: the registered one first, then newest first
    return found if config.failover.fallback_to_older else found[:1]


def is_verification(exc: DrtoolError) -> bool:
    """A remote drtool that exited 3 (verification) surfaces through Ansible as a failed task naming the code."""
    return isinstance(exc, VerificationError) or "(exit 3)" in exc.message


def snapshot_age(created: str | None, at: float) -> float | None:
    """Seconds between a manifest's `created` and `at` (epoch): the RPO when `at` is the fault."""
    if not created:
        return None
    return round(at - datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp(), 3)


def confirm_plan(out: Output, fo: Failover, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise UsageError(f"{fo.kind} changes things and needs confirmation",
                         hint="re-run with --yes (non-interactive), or --dry-run to see the plan")
    if not click.confirm(f"{fo.kind.capitalize()} {fo.model.name} to {fo.site.name} and point "
                         f"{fo.site.dns.record} there?", err=True):
        raise UsageError(f"{fo.kind} not confirmed; nothing was changed")


def run(config: Config, out: Output, site_name: str, model: str | None, dry_run: bool, yes: bool,
        resume: str | None, reason: str | None, run_id: str | None, approve: str | None,
        plan: type[Failover] = Failover, services: list[str] | None = None, parallel: int | None = None,
        planned: bool = False) -> dict:
    from drtool.fleet.plan import fleet_plan, select_services

    site = config.site(site_name)
    fleet = services is not None or parallel is not None or (dry_run and not issubclass(plan, Failback))
    picked = select_services(config, site.name, services) if fleet else []  # names checked before any I/O
    if model is None and picked:
        model = picked[0].model  # the most important service's model: the one the steps below preflight
    chosen = pick_model(config, model)
    if approve:
        from drtool.alerts.decisions import approved_reason

        run_id, reason = approve, reason or approved_reason(config, approve, record=not dry_run)
    if resume:
        path = state_dir() / RUNS / f"{resume}.json"
        if not path.exists():
            raise UsageError(f"no journal for run {resume} in {path.parent}",
                             hint="give the run id printed by the interrupted failover")
        run_id = resume
    run_id = run_id or new_run_id(site.name).replace("fo-", "fb-" if plan is Failback else "fo-", 1)
    fo = plan(config, out, site, chosen, run_id, reason, planned=planned)
    out.info(f"{fo.kind} run [bold]{run_id}[/] to {site.name} ({chosen.name}); journal {fo.journal.path}")
    if not dry_run and not resume:
        out.err.print(table("Plan", ["#", "step"], [[i + 1, s.title] for i, s in enumerate(fo.steps())]))
        confirm_plan(out, fo, yes)
    report = fo.run(dry_run)
    failed = next((s for s in report["steps"] if s["status"] == "failed"), None)
    if dry_run and fleet and not failed:
        report["fleet_plan"] = fleet_plan(config, site.name, services, parallel)
    if failed and failed["error_class"] == PrimaryServing.__name__:
        raise PrimaryServing(f"{fo.kind} {run_id} refused, nothing changed: {failed['error']}",
                             hint=f"a planned move of a serving site: `drtool failover --site {site.name} --planned`")
    if failed:
        verification = failed["name"] in ("verify", "wait_ready") or "(exit 3)" in (failed["error"] or "") or \
            failed["error_class"] in ("VerificationError", "HostKeyError")
        cls = VerificationError if verification else OperationFailed
        raise cls(f"{fo.kind} {run_id} stopped at step {failed['name']}: {failed['error']}",
                  hint=f"DNS was {'changed' if report['dns']['after'] else 'NOT changed'}; fix the cause and run "
                       f"`drtool {fo.kind} --site {site.name} --resume {run_id}`",
                  details=[f"report: {state_dir() / RUNS / (run_id + '.report.json')}"])
    return report
