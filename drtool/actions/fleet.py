"""drtool failover for a fleet: every service of a failed site to the DR site's standbys at once.

The planner (drtool/fleet/planner.py) gives each service a standby host and a wave (priority order, at most
`--parallel` services per wave). A wave's host work is one Ansible play per step over all of its hosts, each host
with its own variables (Ansible's fan-out: forks): power on, pull (each image once per host), restore (every byte
verified; a snapshot that fails verification is replaced by the next older one of the same version), start. Then
each service is checked over HTTP (readiness, /version against the registry, canary output); its home instances
are fenced, best effort (failover.fence: the container stopped where the host still answers SSH), and only a
verified service's record is pointed at its standby. A service that fails never flips its record and never stops
the others.

Each service has its own journal (runs/<fleet run>/<service>.json, the steps of `drtool failover`); the fleet run
has its own (runs/<fleet run>.fleet.json). `--resume RUN` moves again only the services that did not move.
"""

import contextlib
import dataclasses
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from drtool.actions import deploy, dnsrecord
from drtool.actions.deploy import store_vars
from drtool.actions.failover import RUNS, is_verification, snapshot_candidates
from drtool.actions.registry import site_registry
from drtool.config import Config, Host, ServiceSpec, Site
from drtool.errors import DrtoolError, OperationFailed, UsageError
from drtool.execute.ansible import run_playbook
from drtool.execute.dns import dns_for
from drtool.execute.serving import answers_ready
from drtool.fleet import planner
from drtool.fleet.plan import select_services
from drtool.fsutil import write_json_atomic
from drtool.output import Output
from drtool.paths import state_dir
from drtool.providers import get_provider
from drtool.runbook import DONE, FAILED, PENDING, Journal, StepRecord, crash_point
from drtool.snapshot.lease import Lease
from drtool.snapshot.stores import open_store

STEPS = (("provision", "Power on the standby and wait for SSH"),
         ("pull_image", "Pull the production image by digest (once per host)"),
         ("restore", "Restore the newest verifying snapshot of the production version"),
         ("start", "Start the serving container on the service's port"),
         ("verify", "Readiness, /version against the registry, canary output"),
         ("flip_dns", "Point the service's record at its verified standby"))
MOVED, ALREADY, FAILED_S, LEFT, PRIMARY_UP = "moved", "already serving", "failed", "left", "primary serving"
PROBE_TIMEOUT_S = 3.0


@dataclass
class Move:
    """One service's move: its standby, what it restores, and its own journal."""

    spec: ServiceSpec
    host: Host
    wave: int
    journal: Journal
    entry: object = None                       # the DR registry's production entry, snapshot set to the one tried
    candidates: list[str] = field(default_factory=list)

    @property
    def ctx(self) -> dict:
        return self.journal.context

    def failed(self) -> bool:
        return any(s.status == FAILED for s in self.journal.steps)

    def step(self, name: str) -> StepRecord:
        return self.journal.record(name)

    def begin(self, name: str) -> None:
        rec = self.step(name)
        rec.status, rec.started, rec.error, rec.attempts = "running", time.time(), None, rec.attempts + 1
        self.journal.save()

    def done(self, name: str, evidence: dict | None = None) -> None:
        rec = self.step(name)
        rec.status, rec.ended, rec.evidence = DONE, time.time(), evidence or {}
        rec.seconds = round(rec.ended - (rec.started or rec.ended), 3)
        self.journal.save()

    def fail(self, name: str, error: str, cls: str = "OperationFailed") -> None:
        rec = self.step(name)
        rec.status, rec.ended, rec.error, rec.error_class = FAILED, time.time(), error, cls
        self.journal.status, self.journal.ended = "failed", rec.ended
        self.journal.save()


class FleetFailover:
    kind = "fleet-failover"

    def __init__(self, config: Config, out: Output, site: Site, run_id: str, reason: str | None,
                 parallel: int | None):
        self.config, self.out, self.site, self.run_id, self.reason = config, out, site, run_id, reason
        self.parallel = parallel or config.failover.parallel
        self.dir = state_dir() / RUNS / run_id
        self.path = state_dir() / RUNS / f"{run_id}.fleet.json"
        self.moves: dict[str, Move] = {}
        self.doc: dict = {}

    # -- choosing what moves ----------------------------------------------------------------------------------
    def serving_at(self, spec: ServiceSpec) -> tuple[list[str], bool]:
        """The service record's addresses and whether the first answers /readyz on the service's port."""
        target = dataclasses.replace(self.site.dns, record=spec.record)
        addresses = dns_for(target).read_a(spec.record).addresses
        if not addresses:
            return addresses, False
        return addresses, answers_ready(addresses[0], spec.port, PROBE_TIMEOUT_S) is not None

    def select(self, names: list[str] | None, everything: bool) -> tuple[list[ServiceSpec], list[dict]]:
        """The services to move: the named ones, or all (`--all`), or those whose record's target does not serve.
        Returns them and a row for each service not moved (primary serving, or already at a DR standby)."""
        specs = select_services(self.config, self.site.name, names)
        standby_addresses = {h.address for h in self.site.hosts}
        chosen, rows = [], []
        for spec in specs:
            addresses, serving = self.serving_at(spec)
            at_dr = bool(addresses) and addresses[0] in standby_addresses
            if serving and at_dr:
                rows.append({"service": spec.name, "priority": spec.priority, "status": ALREADY,
                             "standby": next(h.name for h in self.site.hosts if h.address == addresses[0]),
                             "record": spec.record, "reason": f"{spec.record} already points at a DR standby that "
                                                              "answers ready"})
            elif serving and not names and not everything:
                rows.append({"service": spec.name, "priority": spec.priority, "status": PRIMARY_UP,
                             "standby": None, "record": spec.record,
                             "reason": f"{addresses[0]}:{spec.port} answers ready (use --all or --service to move "
                                       "it anyway)"})
            else:
                chosen.append(spec)
        return chosen, rows

    # -- the run ----------------------------------------------------------------------------------------------
    def begin(self, names: list[str] | None, everything: bool) -> dict:
        chosen, rows = self.select(names, everything)
        plan = planner.plan(
            [planner.Service(s.name, s.site, s.model, s.record, s.port, s.priority, s.gpus, s.alias) for s in chosen],
            [planner.StandbyHost(h.name, self.site.name, h.gpus, h.address) for h in self.site.hosts],
            failed_site="+".join(sorted({s.site for s in chosen})) or "(none)", target_site=self.site.name,
            parallel=self.parallel)
        specs = {s.name: s for s in chosen}
        hosts = {h.name: h for h in self.site.hosts}
        self.doc = {"run_id": self.run_id, "kind": self.kind, "site": self.site.name, "reason": self.reason,
                    "started": time.time(), "ended": None, "parallel": self.parallel, "waves": plan.waves,
                    "assignments": [{"service": a.service.name, "standby": a.host.name, "gpus": list(a.gpu_indices),
                                     "wave": a.wave} for a in plan.assignments],
                    "left": [{"service": x.service.name, "priority": x.service.priority, "status": LEFT,
                              "standby": None, "record": x.service.record, "reason": x.reason} for x in plan.left],
                    "not_moved": rows}
        write_json_atomic(self.path, self.doc)
        for a in plan.assignments:
            spec = specs[a.service.name]
            journal = Journal(f"{self.run_id}.{spec.name}", "failover", self.site.name, time.time(),
                              reason=self.reason, path=self.dir / f"{spec.name}.json",
                              context={"service": spec.name, "model": spec.model, "host": a.host.name,
                                       "record": spec.record, "port": spec.port, "wave": a.wave})
            journal.steps = [StepRecord(n, t) for n, t in STEPS]
            journal.save()
            self.moves[spec.name] = Move(spec, hosts[a.host.name], a.wave, journal)
        return self.execute()

    def resume(self) -> dict:
        try:
            import json

            self.doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            raise UsageError(f"no fleet run {self.run_id} in {self.path.parent}",
                             hint="give the run id a fleet failover printed") from None
        self.parallel = self.doc["parallel"]
        hosts = {h.name: h for h in self.site.hosts}
        for a in self.doc["assignments"]:
            spec = self.config.services.get(a["service"])
            if spec is None:
                raise UsageError(f"service {a['service']} of run {self.run_id} is no longer in the configuration")
            journal = Journal.load(self.dir / f"{spec.name}.json")
            if journal.status != "done":   # the failed step and every later one run again
                journal.status, journal.ended = "running", None
                journal.context.pop("refused", None)   # the cause may be fixed: every candidate is tried again
                for rec in journal.steps:
                    if rec.status != DONE:
                        rec.status, rec.error = PENDING, None
                journal.save()
            self.moves[spec.name] = Move(spec, hosts[a["standby"]], a["wave"], journal)
        return self.execute()

    def execute(self) -> dict:
        lease = Lease(open_store(self.site.object_stores[0]), f"failover-{self.site.name}",
                      f"fleet failover {self.run_id}")
        lease.acquire(wait=0)
        try:
            self.prepare()
            waves = sorted({m.wave for m in self.moves.values()})
            for wave in waves:
                todo = [m for m in self.moves.values() if m.wave == wave and m.journal.status != "done"]
                if todo:
                    self.out.step(f"wave {wave + 1} of {len(waves)}: " + ", ".join(m.spec.name for m in todo))
                    self.run_wave(todo)
        finally:
            lease.release()
            lease.store.close()
        return self.report()

    def prepare(self) -> None:
        """Each service's production entry and snapshot candidates (newest first), read once per model."""
        registry = site_registry(self.config, self.site)
        store = open_store(self.site.object_stores[0])
        try:
            by_model: dict[str, tuple] = {}
            for m in self.moves.values():
                if m.spec.model not in by_model:
                    try:
                        entry = registry.production(m.spec.model)
                    except DrtoolError:
                        entry = None
                    ids = [c["id"] for c in snapshot_candidates(self.config, store, m.spec.model, entry.version,
                                                                entry.snapshot_id)] if entry else []
                    by_model[m.spec.model] = (entry, ids)
                m.entry, m.candidates = by_model[m.spec.model]
                if m.entry is None and m.journal.status != "done":
                    m.begin("provision")
                    m.fail("provision", f"{m.spec.model} has no production version in {self.site.name}'s registry",
                           "UsageError")
                else:
                    m.ctx.update(version=m.entry.version, image=m.entry.image.at(self.site.registry_url),
                                 candidates=m.candidates)
                    m.journal.save()
        finally:
            registry.store.close()
            store.close()

    def live(self, moves: list[Move], step: str) -> list[Move]:
        """The moves that go on to `step`: not failed, and not past it already (resume)."""
        return [m for m in moves if not m.failed() and m.step(step).status != DONE]

    def run_wave(self, moves: list[Move]) -> None:
        forks = max(1, self.parallel)
        self.provision(moves, forks)
        crash_point("provision")
        # pull: each image once per host, in rounds when a host needs several images
        todo = self.live(moves, "pull_image")
        for m in todo:
            m.begin("pull_image")
        need: dict[str, list[str]] = {}
        for m in todo:
            ref = m.ctx["image"]
            if ref not in need.setdefault(m.host.name, []):
                need[m.host.name].append(ref)
        pulled: dict[tuple[str, str], tuple[bool, object]] = {}
        for k in range(max((len(v) for v in need.values()), default=0)):
            rnd = {h: refs[k] for h, refs in need.items() if len(refs) > k}
            res = run_playbook(self.config, "pull_image.yml", raise_on_failure=False, forks=forks,
                               extravars={"drtool_targets": ",".join(sorted(rnd))},
                               host_vars={h: {"serving_image_ref": r} for h, r in rnd.items()})
            for h, outcome in res.per_host(sorted(rnd)).items():
                pulled[(h, rnd[h])] = outcome
        for m in todo:
            ok, data = pulled[(m.host.name, m.ctx["image"])]
            if ok:
                m.done("pull_image", {"image": m.ctx["image"], "pulled": data.get("pulled")})
            else:
                m.fail("pull_image", str(data))
        crash_point("pull_image")
        for step, run in (("restore", lambda: self.restore(moves, forks)), ("start", lambda: self.start(moves, forks)),
                          ("verify", lambda: self.verify(moves)), ("fence", lambda: self.fence(moves, forks)),
                          ("flip_dns", lambda: self.flip(moves))):
            run()
            crash_point(step)

    def provision(self, moves: list[Move], forks: int) -> None:
        """Power every standby of the wave on at once, then one status play over all of them. A standby that does
        not boot, or whose host key does not match, is never used again in this run (nor by its resume): its
        services are placed by the planner on the free slots left, and those standbys are provisioned in turn."""
        todo = self.live(moves, "provision")
        for m in todo:
            m.begin("provision")
        failed = self.doc.setdefault("failed_standbys", {})
        stale = [m for m in todo if m.host.name in failed]   # a resume: the standby failed before the crash
        todo = [m for m in todo if m.host.name not in failed] + self.fall_back(stale, {})
        provider = get_provider(self.config, self.site)
        by_name = {h.name: h for h in self.site.hosts}

        def power(name: str) -> str | None:
            try:
                provider.power_on(by_name[name])
                provider.wait_ready(by_name[name], timeout=120)
            except DrtoolError as exc:
                return exc.message
            return None

        while todo:
            hosts = sorted({m.host.name for m in todo})
            with ThreadPoolExecutor(max_workers=forks) as pool:
                errors = dict(zip(hosts, pool.map(power, hosts), strict=True))
            up = [h for h in hosts if errors[h] is None]
            seen = run_playbook(self.config, "status.yml", raise_on_failure=False, forks=forks,
                                extravars={"drtool_targets": ",".join(up)}).per_host(up) if up else {}
            bad: dict[str, str] = {}
            for m in todo:
                err = errors[m.host.name] or (None if seen[m.host.name][0] else seen[m.host.name][1])
                if err:
                    bad[m.host.name] = err
                else:
                    m.done("provision", {"host": m.host.name, "address": m.host.address,
                                         "tried": m.ctx.get("tried", [])})
            todo = self.fall_back([m for m in todo if m.host.name in bad], bad)

    def fall_back(self, moves: list[Move], errors: dict[str, str]) -> list[Move]:
        """Moves whose standby failed (`errors`: host -> why, recorded for the run and its resume), placed again
        by the planner on the standbys that have not failed, counting the GPUs the other moves hold there. Returns
        the moves that got a new standby; the others fail their provision step, naming every standby tried."""
        if not moves:
            return []
        failed = self.doc.setdefault("failed_standbys", {})
        failed.update(errors)
        provider = get_provider(self.config, self.site)
        by_name = {h.name: h for h in self.site.hosts}
        for name in errors:
            with contextlib.suppress(DrtoolError):
                provider.power_off(by_name[name])
        for m in moves:
            m.ctx.setdefault("tried", []).append({"host": m.host.name, "ok": False, "error": failed[m.host.name]})
        held: dict[str, int] = {}
        for other in self.moves.values():
            if all(other is not m for m in moves) and other.host.name not in failed and not other.failed():
                held[other.host.name] = held.get(other.host.name, 0) + other.spec.gpus
        free = [planner.StandbyHost(h.name, self.site.name, h.gpus - held.get(h.name, 0), h.address)
                for h in self.site.hosts if h.name not in failed and h.gpus > held.get(h.name, 0)]
        placed = {a.service.name: a.host.name for a in planner.plan(
            [planner.Service(m.spec.name, m.spec.site, m.spec.model, m.spec.record, m.spec.port, m.spec.priority,
                             m.spec.gpus, m.spec.alias) for m in moves], free,
            failed_site=moves[0].spec.site, target_site=self.site.name, parallel=len(moves)).assignments}
        again = []
        for m in moves:
            tried = ", ".join(f"{t['host']} ({t['error']})" for t in m.ctx["tried"])
            new = placed.get(m.spec.name) if m.spec.site == moves[0].spec.site else None
            if new is None:
                m.fail("provision", f"no standby of {self.site.name} could take it: tried {tried}")
                continue
            self.out.step(f"{m.spec.name}: standby {m.host.name} failed ({failed[m.host.name]}); moving it to {new}")
            m.host, m.ctx["host"] = by_name[new], new
            m.journal.save()
            for a in self.doc["assignments"]:
                if a["service"] == m.spec.name:
                    a["standby"] = new
            again.append(m)
        write_json_atomic(self.path, self.doc)
        return again

    def rounds(self, moves: list, host=lambda m: m.host.name) -> list[list]:
        """Moves (or any items, each on the host `host(item)` names) in rounds of at most one per host: one play
        gives each host one set of role variables."""
        per_host: dict[str, list] = {}
        for m in moves:
            per_host.setdefault(host(m), []).append(m)
        depth = max((len(v) for v in per_host.values()), default=0)
        return [[v[k] for v in per_host.values() if len(v) > k] for k in range(depth)]

    def in_rounds(self, moves: list, play, host=lambda m: m.host.name) -> None:
        """`play(round)` for every round at once: the rounds' hosts overlap only across rounds, and each round is
        its own ansible-playbook process, so a host holding two services does not double the step's time."""
        rounds = self.rounds(moves, host)
        if rounds:
            with ThreadPoolExecutor(max_workers=len(rounds), thread_name_prefix="fleet-round") as pool:
                list(pool.map(play, rounds))

    def restore(self, moves: list[Move], forks: int) -> None:
        """A move whose snapshot fails verification goes on with its next older candidate, in another play."""
        todo = self.live(moves, "restore")
        for m in todo:
            m.begin("restore")
            m.ctx.setdefault("refused", [])

        def play(rnd: list[Move]) -> None:
            hv = {}
            for m in rnd:
                tried = {r["id"] for r in m.ctx["refused"]}
                m.ctx["snapshot_id"] = next(c for c in m.candidates if c not in tried)
                hv[m.host.name] = {"model_weights_snapshot_id": m.ctx["snapshot_id"],
                                   "model_weights_dest": self.config.model(m.spec.model).weights_path}
            res = run_playbook(self.config, "restore_weights.yml", raise_on_failure=False, forks=forks,
                               extravars={"drtool_targets": ",".join(hv), **store_vars(self.site, "model_weights")},
                               host_vars=hv)
            outcome = res.per_host(list(hv))
            for m in rnd:
                ok, data = outcome[m.host.name]
                if ok:
                    m.done("restore", {"snapshot_id": m.ctx["snapshot_id"], "refused": m.ctx["refused"],
                                       "restore": data.get("restore", {})})
                elif is_verification(DrtoolError(str(data))):
                    m.ctx["refused"].append({"id": m.ctx["snapshot_id"], "error": str(data)})
                    left = [c for c in m.candidates if c not in {r["id"] for r in m.ctx["refused"]}]
                    if not left:
                        m.fail("restore", f"no snapshot of {m.spec.model} {m.ctx['version']} verifies: "
                               + "; ".join(f"{r['id'][:12]}: {r['error']}" for r in m.ctx["refused"]),
                               "VerificationError")
                    else:
                        self.out.step(f"{m.spec.name}: snapshot {m.ctx['snapshot_id'][:12]} refused; trying "
                                      f"{left[0][:12]}")
                else:
                    m.fail("restore", str(data))

        pending = list(todo)
        while pending:
            self.in_rounds(pending, play)
            pending = [m for m in pending if m.step("restore").status == "running"]

    def start(self, moves: list[Move], forks: int) -> None:
        def play(rnd: list[Move]) -> None:
            hv = {}
            for m in rnd:
                m.begin("start")
                hv[m.host.name] = deploy.server_vars(self.site, self.config.model(m.spec.model), m.ctx["image"],
                                                     m.ctx["version"], m.ctx["snapshot_id"], port=m.spec.port,
                                                     service=m.spec.name)
            res = run_playbook(self.config, "model_server.yml", raise_on_failure=False, forks=forks,
                               extravars={"drtool_targets": ",".join(hv)}, host_vars=hv)
            for h, (ok, data) in res.per_host(list(hv)).items():
                m = next(x for x in rnd if x.host.name == h)
                m.done("start", data) if ok else m.fail("start", str(data))

        self.in_rounds(self.live(moves, "start"), play)

    def view(self, m: Move) -> Site:
        """The DR site as this service sees it: its standby, its port, its record."""
        return dataclasses.replace(self.site, hosts=(m.host,), serving_port=m.spec.port,
                                   dns=dataclasses.replace(self.site.dns, record=m.spec.record))

    def verify(self, moves: list[Move]) -> None:
        todo = self.live(moves, "verify")

        def check(m: Move) -> None:
            m.begin("verify")
            entry = dataclasses.replace(m.entry, snapshot_id=m.ctx["snapshot_id"])
            try:
                ready = deploy.wait(self.view(m), m.host, timeout=300)
                m.done("verify", {**deploy.check(self.view(m), m.host, entry), **ready})
            except DrtoolError as exc:
                m.fail("verify", exc.message, type(exc).__name__)

        with ThreadPoolExecutor(max_workers=max(1, self.parallel)) as pool:
            list(pool.map(check, todo))

    def fence(self, moves: list[Move], forks: int) -> None:
        """Best effort, before a verified service's record moves (failover.fence): its serving container stopped
        on each home host that still answers SSH, so a returning primary does not serve beside the standby. In a
        region outage the hosts are down: each is recorded unreachable and the record moves anyway (policy)."""
        from drtool.fleet.plan import home_hosts
        from drtool.providers.base import ssh_banner

        todo = [m for m in self.live(moves, "flip_dns") if m.step("verify").status == DONE
                and "fenced" not in m.ctx]
        if not todo:
            return
        if not self.config.failover.fence:
            for m in todo:
                m.ctx["fenced"] = {"skipped": "failover.fence is off"}
            return
        homes = {m.spec.name: home_hosts(self.config.site(m.spec.site), m.spec) for m in todo}
        hosts = {h.name: h for hs in homes.values() for h in hs}
        with ThreadPoolExecutor(max_workers=max(1, len(hosts))) as pool:
            up = dict(zip(hosts, pool.map(lambda h: bool(ssh_banner(h.address, h.port, timeout=3)), hosts.values()),
                          strict=True))
        for m in todo:
            m.ctx["fenced"] = {h.name: "unreachable: not fenced (down or partitioned); DNS moves anyway"
                               for h in homes[m.spec.name] if not up[h.name]}
        pairs = [(m, h) for m in todo for h in homes[m.spec.name] if up[h.name]]

        def play(rnd: list[tuple[Move, Host]]) -> None:
            res = run_playbook(self.config, "model_server.yml", raise_on_failure=False, forks=forks,
                               extravars={"drtool_targets": ",".join(h.name for _, h in rnd),
                                          "model_server_action": "stop"},
                               host_vars={h.name: {"model_server_model": m.spec.model,
                                                   "model_server_container": f"drtool-{m.spec.model}"}
                                          for m, h in rnd})
            outcome = res.per_host([h.name for _, h in rnd])
            for m, h in rnd:
                ok, data = outcome[h.name]
                m.ctx["fenced"][h.name] = "serving container stopped" if ok else f"fencing failed: {data}"

        self.in_rounds(pairs, play, host=lambda pair: pair[1].name)   # one container per host per play
        for m in todo:
            m.journal.save()

    def flip(self, moves: list[Move]) -> None:
        store = open_store(self.site.object_stores[0])
        try:
            for m in self.live(moves, "flip_dns"):
                if m.step("verify").status != DONE:   # never point DNS at an unverified target
                    continue
                m.begin("flip_dns")
                site = self.view(m)
                try:
                    dns = dns_for(site.dns)
                    before = dns.read_a()
                    if before.addresses != [m.host.address]:
                        dnsrecord.save_previous(site, store, before, m.journal.run_id)
                        dns.replace_a([m.host.address], site.dns.ttl)
                    got = dns.read_a()
                    if got.addresses != [m.host.address]:
                        raise OperationFailed(f"{site.dns.server} answers {got.addresses} for {m.spec.record}")
                    m.done("flip_dns", {"record": m.spec.record, "before": before.addresses,
                                        "after": got.addresses, "fenced": m.ctx.get("fenced", {})})
                    m.journal.status, m.journal.ended = "done", time.time()
                    m.journal.save()
                except DrtoolError as exc:
                    m.fail("flip_dns", exc.message)
        finally:
            store.close()

    def report(self) -> dict:
        rows = []
        for m in sorted(self.moves.values(), key=lambda x: (x.spec.priority, x.spec.name)):
            failed = next((s for s in m.journal.steps if s.status == FAILED), None)
            flip = m.step("flip_dns")
            rows.append({
                "service": m.spec.name, "priority": m.spec.priority, "standby": m.host.name, "wave": m.wave,
                "status": MOVED if m.journal.status == "done" else FAILED_S, "record": m.spec.record,
                "reason": f"{failed.name}: {failed.error}" if failed else None,
                "standbys_tried": m.ctx.get("tried", []),
                "fallback": "; ".join(f"{t['host']} refused ({t['error']})" for t in m.ctx.get("tried", []))
                            + (f"; moved to {m.host.name}" if not failed else "") if m.ctx.get("tried") else None,
                "snapshot": m.ctx.get("snapshot_id"), "version": m.ctx.get("version"),
                "rto_s": round(flip.ended - self.doc["started"], 3) if flip.status == DONE and flip.ended else None,
                "journal": str(m.journal.path)})
        rows += self.doc.get("left", []) + self.doc.get("not_moved", [])
        self.doc["ended"] = time.time()
        moved = [r for r in rows if r["status"] == MOVED]
        self.doc["status"] = "done" if all(r["status"] in (MOVED, ALREADY, PRIMARY_UP) for r in rows) else "partial"
        self.doc["fleet_rto_s"] = max((r["rto_s"] for r in moved if r.get("rto_s") is not None), default=None)
        self.doc["services"] = rows
        write_json_atomic(self.path, self.doc)
        return {**self.doc, "journal": str(self.path)}


def new_fleet_run_id(site: str) -> str:
    return f"fleet-{site}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:6]}"


def is_fleet_run(run_id: str | None) -> bool:
    return bool(run_id) and (state_dir() / RUNS / f"{run_id}.fleet.json").exists()


def run(config: Config, out: Output, site_name: str, names: list[str] | None, everything: bool,
        parallel: int | None, run_id: str | None, reason: str | None, resume: str | None) -> dict:
    site = config.site(site_name)
    fleet = FleetFailover(config, out, site, resume or run_id or new_fleet_run_id(site.name), reason, parallel)
    out.info(f"fleet failover run [bold]{fleet.run_id}[/] to {site.name}; journals in {fleet.dir}")
    result = fleet.resume() if resume else fleet.begin(names, everything)
    bad = [r for r in result["services"] if r["status"] in (FAILED_S, LEFT)]
    if bad:   # exit 1 with the table: the others moved; every failed or left service's record is unchanged
        raise OperationFailed(
            f"fleet failover {fleet.run_id}: {len(bad)} of {len(result['services'])} service(s) did not move",
            hint=f"each of their records is unchanged; fix the cause and run `drtool failover --site {site.name} "
                 f"--resume {fleet.run_id}` (only the services that did not move run again)",
            details=[f"{r['service']}: {r['status']}: {r['reason']}" for r in bad] + [f"report: {fleet.path}"],
            result=result)
    return result
