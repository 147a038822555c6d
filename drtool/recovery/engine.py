"""The one recovery engine: failover and failback, for one service or every service of a site.

A run is a plan of moves (drtool/recovery/moves.py) and one list of steps. Waves run one after the other; within a
wave each step runs for all of the wave's moves at once, as one Ansible play per round over their hosts (Ansible
does the fan-out), and the step's outcome is journaled per service before the next step starts:

    failover: preflight, lease, provision, pull_image + restore, start, wait_ready, verify, fence_primary,
              flip_dns, confirm_dns   (planned: flip_dns, confirm_dns, then fence_primary after draining)
    failback: preflight, lease, provision, pull_image + restore, start, wait_ready, verify, [proxy], flip_dns,
              confirm_dns, cool_standby

A service that fails never stops the others and never moves its record. A run killed at any step boundary is
finished by `--resume RUN`: a finished step never runs again, the lease is taken again before any step, and a
standby that failed is never used again. One service is a fleet of one: the same plan, steps, journals
(`runs/RUN/SERVICE.json`) and report (`runs/RUN.report.json`: the run, and one row per service with its steps).
"""

from __future__ import annotations  # PEP 563 (public)

import json
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from drtool.actions.registry import site_registry
from drtool.config import Config, ServiceSpec, Site
from drtool.errors import DrtoolError, UsageError
from drtool.fleet.plan import home_hosts, pick_named, select_services
from drtool.fsutil import write_json_atomic
from drtool.output import Output
from drtool.paths import state_dir
from drtool.recovery import steps as S
from drtool.recovery.journal import DONE, FAILED, PENDING, RUNNING, SKIPPED, Journal, StepRecord, crash_point
from drtool.recovery.moves import FAILBACK, FAILOVER, AlreadyDone, Move, Request, place, waves
from drtool.snapshot.stores import open_store

RUNS = "runs"
MOVED, ALREADY, FAILED_S, LEFT, PRIMARY_UP = "moved", "already serving", "failed", "left", "primary serving"
BACK, HOME = "back", "already home"


@dataclass(frozen=True)
class StepDef:
    name: str
    title: str
    run: Callable[[Recovery, list[Move]], dict]   # {service: evidence dict | exception}
    changes: bool = True                            # read-only steps run in a dry run
    group: str | None = None                        # consecutive steps of one group run at the same time


def new_run_id(kind: str, site: str) -> str:
    return f"{'fo' if kind == FAILOVER else 'fb'}-{site}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-" \
           f"{uuid.uuid4().hex[:6]}"


def snapshot_age(created: str | None, at: float) -> float | None:
    """Seconds between a manifest's `created` and `at` (epoch): the RPO when `at` is the fault."""
    if not created:
        return None
    return round(at - datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp(), 3)


class Recovery:
    """One run: its moves, their journals, the steps, the lease and the report."""

    def __init__(self, config: Config, out: Output, req: Request):
        self.config, self.out, self.req, self.kind = config, out, req, req.kind
        self.site = config.site(req.site)
        check_site(self.kind, self.site)
        self.run_id = req.resume or req.run_id or new_run_id(self.kind, self.site.name)
        self.parallel = req.parallel or config.failover.parallel
        self.planned = req.planned or req.everything
        self.moves: dict[str, Move] = {}
        self.doc: dict = {"run_id": self.run_id, "kind": self.kind, "site": self.site.name, "reason": req.reason,
                          "started": time.time(), "ended": None, "status": RUNNING, "parallel": self.parallel,
                          "planned": self.planned, "not_moved": [], "left": [], "failed_standbys": {}}
        self.store = open_store(self.site.object_stores[0])   # lease, journal copies, saved records
        self.lease = None
        self.started = False                                   # execute() has begun: a move is no longer "to move"
        self.lock = threading.Lock()
        self.cache: dict = {}                                  # per run: registry reads, DNS credential checks

    # -- where things go ------------------------------------------------------------------------------------
    @property
    def runs(self) -> Path:
        return state_dir() / RUNS

    def journal_path(self, service: str) -> Path:
        return self.runs / self.run_id / f"{service}.json"

    @property
    def report_path(self) -> Path:
        return self.runs / f"{self.run_id}.report.json"

    def steps(self) -> list[StepDef]:
        head = [StepDef("preflight", "Preflight: registry verified, store and DNS credentials checked", S.preflight,
                        changes=False),
                StepDef("lease", "Take the site's failover lease", S.take_lease),
                StepDef("provision", "Power on a standby and wait for SSH" if self.kind == FAILOVER else
                        "The home hosts answer SSH and their engine", S.provision),
                # Independent: the image pull and the weights restore run at the same time.
                StepDef("pull_image", "Pull the production image by digest", S.pull_image, group="fetch"),
                StepDef("restore", "Restore the production snapshot (every byte verified)", S.restore, group="fetch"),
                StepDef("start", "Start the serving container", S.start),
                StepDef("wait_ready", "Wait for /readyz", S.wait_ready),
                StepDef("verify", "Verify /version against the registry and the canary output", S.verify)]
        flip = [StepDef("flip_dns", "Point the service record at the verified target", S.flip_dns),
                StepDef("confirm_dns", "Confirm the authoritative server answers the new address", S.confirm_dns)]
        if self.kind == FAILBACK:
            proxy = [StepDef("proxy", "Deploy the site's Nginx over the verified instances; verify through it",
                             S.proxy)] if self.site.proxy else []
            return [*head, *proxy, *flip,
                    StepDef("cool_standby", "Stop the standby's container, remove its weights, power it off",
                            S.cool_standby)]
        if self.planned:   # the old primary serves until resolvers have followed the record, then stops
            return [*head, *flip, StepDef("fence_primary", "Drain the old primary: wait out the old record's TTL, "
                                                             "then stop it", S.fence_primary)]
        return [*head, StepDef("fence_primary", "Fence the primary (best effort)", S.fence_primary), *flip]

    # -- the plan -------------------------------------------------------------------------------------------
    def plan(self) -> None:
        """The moves of a new run: a failover places each service that needs it on a standby; a failback brings
        each service of the site home. Raises PrimaryServing when an unplanned failover would move a serving
        primary. Writes nothing."""
        if self.kind == FAILBACK:
            specs = pick_named({n: s for n, s in self.config.services.items() if s.site == self.site.name},
                               list(self.req.services) if self.req.services else None, f"of {self.site.name}",
                               f"services of {self.site.name}")
            wave = waves(specs, self.parallel)
            for spec in specs:
                self.add(spec, home_hosts(self.site, spec), wave[spec.name])
            return
        names = list(self.req.services) if self.req.services else None
        specs = select_services(self.config, self.site.name, names)
        seen = S.where_records_point(self, specs)
        pinned, chosen, serving = {}, [], []
        standby = {h.address: h for h in self.site.hosts}
        for spec in specs:
            addresses, answer = seen[spec.name]
            if answer and addresses and addresses[0] in standby:
                pinned[spec.name] = standby[addresses[0]]         # preflight checks that it serves correctly
                chosen.append(spec)
            elif answer and not self.planned and not self.req.dry_run:
                serving.append((spec, addresses[0], answer))
            else:
                chosen.append(spec)
        if serving and (names or not chosen):
            # Refused in preflight, after the checks that name a broken set-up first (DNS credentials, registry).
            chosen = [spec for spec, _, _ in serving]
            refused = {spec.name: f"{spec.record} points at {address} and {answer}"
                       for spec, address, answer in serving}
            serving = []
        else:
            refused = {}
        self.doc["not_moved"] = [{"service": s.name, "priority": s.priority, "status": PRIMARY_UP, "standby": None,
                                  "record": s.record, "reason": f"{a} (--planned moves it)"} for s, _, a in serving]
        placed, left = place(chosen, list(self.site.hosts), self.site.name, self.parallel, pinned)
        self.doc["left"] = [{"service": x.service.name, "priority": x.service.priority, "status": LEFT,
                             "standby": None, "record": x.service.record, "reason": x.reason} for x in left]
        for spec in chosen:
            if spec.name in placed:
                host, wave = placed[spec.name]
                move = self.add(spec, (host,), wave)
                if spec.name in refused:
                    move.ctx["primary_serving"] = refused[spec.name]

    def add(self, spec: ServiceSpec, hosts: tuple, wave: int) -> Move:
        journal = Journal(f"{self.run_id}.{spec.name}", self.kind, self.site.name,
                          self.doc["started"], reason=self.req.reason, path=self.journal_path(spec.name),
                          context={"service": spec.name, "model": spec.model, "record": spec.record,
                                   "port": spec.port, "wave": wave, "host": hosts[0].name,
                                   "hosts": [h.name for h in hosts], "planned": self.planned, "tried": [],
                                   "fleet": len(self.config.services) > 1})
        journal.steps = [StepRecord(s.name, s.title) for s in self.steps()]
        self.mirror(journal)
        self.moves[spec.name] = move = Move(spec, tuple(hosts), wave, journal)
        return move

    def mirror(self, journal: Journal) -> None:
        """Every journal is also kept in the target site's store, at the same path as under the state dir."""
        key = journal.path.relative_to(state_dir()).as_posix()
        journal.mirror = lambda data: self.store.put(key, data)

    def load(self) -> None:
        """The moves of an interrupted run, from its journals: the failed step and every later one run again; the
        lease is taken again; a standby that failed stays refused."""
        paths = sorted((self.runs / self.run_id).glob("*.json"))
        if not paths:
            raise UsageError(f"no journal for run {self.run_id} in {self.runs}",
                             hint=f"give the run id printed by the interrupted {self.kind}")
        hosts = {h.name: h for s in self.config.sites.values() for h in s.hosts}
        for path in paths:
            journal = Journal.load(path)
            if journal.kind != self.kind or journal.site != self.site.name:
                raise UsageError(f"run {self.run_id} is a {journal.kind} to {journal.site}",
                                 hint=f"resume it with `drtool {journal.kind} --site {journal.site} --resume "
                                      f"{self.run_id}`")
            spec = self.config.services.get(journal.context.get("service") or "")
            if spec is None:
                raise UsageError(f"run {self.run_id}: its journal {path.name} names no configured service",
                                 hint="resume it with the configuration it started with")
            self.planned = bool(journal.context.get("planned"))
            if journal.status != DONE:
                journal.status, journal.ended = RUNNING, None
                for rec in journal.steps:
                    if rec.status not in (DONE, SKIPPED) or rec.name == "lease":
                        rec.status, rec.error, rec.error_class = PENDING, None, None
                if journal.record("restore").status != DONE:   # the cause may be fixed: every snapshot again
                    journal.context["snapshots_refused"] = []
            self.mirror(journal)
            self.moves[spec.name] = Move(spec, tuple(hosts[n] for n in journal.context["hosts"]),
                                         journal.context["wave"], journal)
            for t in journal.context.get("tried", []):
                if not t["ok"]:
                    self.doc["failed_standbys"][t["host"]] = t.get("error")
        self.doc["planned"] = self.planned
        registry = site_registry(self.config, self.site)   # the entries preflight read, for the steps left
        try:
            for m in self.moves.values():
                if m.ctx.get("version"):
                    m.entry = registry.require_version(m.spec.model, m.ctx["version"])
        finally:
            registry.store.close()
        old = self.report_path
        if old.exists():
            prev = json.loads(old.read_text())
            self.doc.update({k: prev[k] for k in ("started", "reason", "not_moved", "left") if k in prev})
            self.doc["failed_standbys"].update(prev.get("failed_standbys") or {})

    # -- running --------------------------------------------------------------------------------------------
    def execute(self) -> dict:
        dry, self.started = self.req.dry_run, True
        if dry:   # a dry run changes nothing, its own journals included: they stay in memory
            for m in self.moves.values():
                m.journal.path, m.journal.mirror = None, None
        else:
            for m in self.moves.values():
                m.journal.save()
            self.save_doc()
        try:
            for wave in sorted({m.wave for m in self.moves.values()}):
                todo = [m for m in self.moves.values() if m.wave == wave and m.journal.status != DONE]
                if todo and len(self.moves) > 1:
                    self.out.step(f"wave {wave + 1}: " + ", ".join(m.name for m in todo))
                for batch in self.batches():
                    self.run_batch(batch, todo)
        finally:
            if self.lease is not None:
                self.lease.release()
            report = self.report()
            if not dry:
                write_json_atomic(self.report_path, report, 0o644)
            self.store.close()
        return report

    def batches(self) -> list[list[StepDef]]:
        out: list[list[StepDef]] = []
        for step in self.steps():
            if out and step.group and out[-1][0].group == step.group:
                out[-1].append(step)
            else:
                out.append([step])
        return out

    def run_batch(self, batch: list[StepDef], moves: list[Move]) -> None:
        work = []
        for step in batch:
            todo = [m for m in moves if m.pending(step.name)]
            if self.req.dry_run and step.changes:
                for m in todo:
                    rec = m.rec(step.name)
                    rec.status, rec.evidence = SKIPPED, {"dry_run": "would run"}
                continue
            if todo:
                work.append((step, todo))
        if not work:
            return
        for step, todo in work:
            self.out.step(f"{step.title} ({', '.join(m.name for m in todo)})")
            for m in todo:
                self.begin(m, step.name)
        if len(work) == 1:
            outcomes = [self.call(*work[0])]
        else:
            with ThreadPoolExecutor(len(work)) as pool:
                outcomes = list(pool.map(lambda w: self.call(*w), work))
        for (step, todo), outcome in zip(work, outcomes, strict=True):
            for m in todo:
                self.finish(m, step.name, outcome.get(m.name, DrtoolError(f"{step.name} gave no outcome for "
                                                                             f"{m.name}")))
        for step, _ in work:
            crash_point(step.name)

    def call(self, step: StepDef, moves: list[Move]) -> dict:
        try:
            return step.run(self, moves)
        except Exception as exc:  # noqa: BLE001 - a step that fails as a whole fails each of its moves, journaled
            return {m.name: exc for m in moves}

    def begin(self, m: Move, step: str) -> None:
        rec = m.rec(step)
        rec.status, rec.started, rec.ended, rec.error, rec.error_class = RUNNING, time.time(), None, None, None
        rec.attempts += 1
        self.save(m)

    def finish(self, m: Move, step: str, outcome) -> None:
        rec = m.rec(step)
        rec.ended = time.time()
        rec.seconds = round(rec.ended - (rec.started or rec.ended), 3)
        if isinstance(outcome, AlreadyDone):
            rec.status, rec.evidence = DONE, {"already_serving": str(outcome)}
            m.ctx["settled"], m.ctx["already_serving"] = ALREADY, str(outcome)
            for other in m.journal.steps:
                if other.status == PENDING:
                    other.status = SKIPPED
        elif isinstance(outcome, BaseException):
            rec.status, rec.error_class = FAILED, type(outcome).__name__
            if isinstance(outcome, DrtoolError):   # the details name what failed (a file and its digests, a host)
                rec.error = "; ".join([outcome.message, *(d for d in outcome.details
                                                          if d and d not in outcome.message)])
            else:
                rec.error = f"{type(outcome).__name__}: {outcome}"
            m.journal.status, m.journal.ended = FAILED, rec.ended
            self.out.info(f"  [red]failed[/] {m.name} at {step}: {rec.error}")
        else:
            rec.status, rec.evidence = DONE, outcome or {}
            self.out.info(f"  [green]done[/] {m.name} {step} [dim]{rec.seconds:.1f}s[/]")
        if not self.req.dry_run and all(s.status in (DONE, SKIPPED) for s in m.journal.steps):
            m.journal.status, m.journal.ended = DONE, m.journal.ended or rec.ended
        self.save(m)

    def save(self, m: Move) -> None:
        with self.lock:
            m.journal.save()

    def save_doc(self) -> None:
        if not self.req.dry_run:
            with self.lock:
                write_json_atomic(self.report_path, {**self.doc, "assignments": self.assignments()})

    def assignments(self) -> list[dict]:
        return [{"service": m.name, "standby": m.host.name, "hosts": [h.name for h in m.hosts], "wave": m.wave}
                for m in sorted(self.moves.values(), key=lambda x: (x.wave, x.spec.priority, x.name))]

    # -- the report -----------------------------------------------------------------------------------------
    def report(self) -> dict:
        """The run and one row per service: every moved one with its steps and their evidence, the production it
        serves, its record before and after, its RTO and its snapshot's age; then those left or not moved."""
        rows = self.rows()
        ok = {MOVED, ALREADY, PRIMARY_UP, BACK, HOME}
        moved = [r for r in rows if r["status"] in (MOVED, BACK)]
        status = ("planned" if self.req.dry_run else DONE if all(r["status"] in ok for r in rows) else
                  "partial" if any(r["status"] in ok for r in rows) else FAILED)
        self.doc.update(ended=time.time(), services=rows, assignments=self.assignments(), status=status,
                        waves=len({m.wave for m in self.moves.values()}), dry_run=self.req.dry_run,
                        rto_s=max((r["rto_s"] for r in moved if r.get("rto_s") is not None), default=None))
        return {**self.doc, "journal": None if self.req.dry_run else str(self.report_path)}

    def rows(self) -> list[dict]:
        """One row per service: the moves in priority order, then those left or not moved. Before the first change
        (the plan a user confirms), the moves are "to move"."""
        return [self.row(m) for m in sorted(self.moves.values(), key=lambda x: (x.spec.priority, x.name))] + \
            self.doc["left"] + self.doc["not_moved"]

    def status_of(self, m: Move) -> str:
        if m.failed():
            return FAILED_S
        if self.req.dry_run or not self.started:
            return "to bring back" if self.kind == FAILBACK else "to move"
        if m.journal.status != DONE:
            return "interrupted"
        if m.settled():
            return ALREADY
        flip = m.rec("flip_dns").evidence
        if self.kind == FAILBACK:
            return HOME if not flip.get("changed") and m.ctx.get("primary_ok") else BACK
        return MOVED

    def row(self, m: Move) -> dict:
        j = m.journal
        failed = next((s for s in j.steps if s.status == FAILED), None)
        last = next((m.rec(n) for n in ("confirm_dns", "flip_dns") if m.rec(n).status == DONE), None)
        flip = m.rec("flip_dns")
        restored = m.rec("restore").status == DONE and not m.rec("restore").evidence.get("skipped")
        refused = [t for t in m.ctx.get("tried", []) if not t["ok"]]
        groups = {s.name: s.group for s in self.steps()}
        return {
            "service": m.name, "priority": m.spec.priority, "model": m.spec.model, "standby": m.host.name,
            "hosts": [h.name for h in m.hosts], "wave": m.wave, "status": self.status_of(m), "record": m.spec.record,
            "reason": f"{failed.name}: {failed.error}" if failed else m.ctx.get("already_serving") or (
                m.rec("preflight").evidence.get("primary_serving") if self.req.dry_run else None),
            "already_serving": m.ctx.get("already_serving"), "standbys_tried": m.ctx.get("tried", []),
            "fallback": ("; ".join(f"{t['host']} refused ({t['error']})" for t in refused)
                         + (f"; moved to {m.host.name}" if not failed else "")) if refused else None,
            "production": {"version": m.ctx.get("version"), "image": m.ctx.get("image"),
                           "snapshot_id": m.ctx.get("snapshot_id")},
            "dns": {"record": m.spec.record, "before": m.ctx.get("dns_before"),
                    "after": flip.evidence.get("after") if flip.status == DONE else None,
                    "previous_saved": flip.evidence.get("previous_saved")},
            "rto_s": round(last.ended - self.doc["started"], 3) if last and last.ended else None,
            "snapshot": {"restored": m.ctx.get("snapshot_id") if restored else None,
                         "created": m.ctx.get("snapshot_created"),
                         "registered": m.ctx.get("registered_snapshot_id"),
                         "refused": m.ctx.get("snapshots_refused", []),
                         "age_at_start_s": snapshot_age(m.ctx.get("snapshot_created"), j.started)},
            "steps": [{"name": s.name, "title": s.title, "group": groups.get(s.name), "status": s.status,
                       "start": s.started, "end": s.ended, "seconds": s.seconds, "evidence": s.evidence,
                       "error": s.error, "error_class": s.error_class, "attempts": s.attempts} for s in j.steps],
            "journal": str(j.path) if j.path else None, "journal_mirror_error": j.mirror_error}


def check_site(kind: str, site: Site) -> None:
    if kind == FAILOVER and (site.role != "dr" or not site.is_standby):
        raise UsageError(f"site {site.name} is not a DR site with a standby pool",
                         hint="fail over TO the DR site, e.g. `drtool failover --site dr-east`")
    if kind == FAILBACK and site.role != "primary":
        raise UsageError(f"site {site.name} is not the primary", hint="fail back TO the primary site")
