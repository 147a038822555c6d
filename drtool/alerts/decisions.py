"""Persistent failover decisions: dedupe by alert fingerprint, firing time, per-site cooldown, exactly once."""

import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from drtool.alerts.claims import ClaimsUnavailable, OutageClaims, claim_key, receiver_name
from drtool.config import Config
from drtool.fsutil import file_lock, write_json_atomic
from drtool.pids import boot_id, process_alive

log = logging.getLogger("drtool.alerts")

# What became of an alert. `starting` is written BEFORE the failover is launched, with its run id, so a
# receiver killed in between re-launches that same run (failover resumes idempotently by run id). A failover queued
# for approval is `awaiting_approval` until `drtool failover --approve RUN` makes it `approved`, or its alert
# resolves first and makes it `cancelled` (an approval must not outlive its outage).
PENDING, STARTING, STARTED, AWAITING, SUPPRESSED, IGNORED, RESOLVED = (
    "pending", "starting", "started", "awaiting_approval", "suppressed_cooldown", "ignored", "resolved")
APPROVED, CANCELLED = "approved", "cancelled"
# Another receiver claimed the outage first (drtool/alerts/claims.py): the decision names its run id, launches nothing.
DUPLICATE = "duplicate"
# A launched run that died without recording its end is resumed under its run id at most this often, by serve's start.
RESUME_LIMIT = 1
# How a failover the book launched ended, from its exit code (drtool's documented codes), recorded in its decision
# by the process that ran it (drtool/alerts/launch.py): 0 finished, 4 busy (another run holds the lease), else failed.
FINISHED, FAILED, BUSY = "finished", "failed", "busy"
EXIT_MEANINGS = {0: "ok", 1: "the operation failed", 2: "usage or configuration error, nothing changed",
                 3: "verification failed", 4: "busy: another run holds the lock or lease"}


@dataclass
class Alert:
    fingerprint: str
    status: str          # firing | resolved
    name: str
    site: str | None     # the failing site, from the `site` label
    starts_at: float     # epoch seconds
    labels: dict

    @property
    def key(self) -> str:
        # One outage = one fingerprint + start time; a re-fire after resolution is a new outage.
        return f"{self.fingerprint}@{int(self.starts_at)}"


# (dr site, run id, reason) -> starts the failover; returns the pid of the process it started, when there is one, so
# that a run that died without recording its end can be told from one that still runs.
Launcher = Callable[[str, str, str], "int | None"]


def parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def alerts_state_dir(config: Config) -> Path:
    """Where `drtool serve`, `drtool watch` and approvals keep decisions: alerts.state_dir, else drtool's state."""
    from drtool.paths import state_dir

    return Path(config.alerts.state_dir) if config.alerts.state_dir else state_dir()


def failover_target(config: Config, site: str | None) -> tuple[str | None, str | None]:
    """(the DR site an alert about `site` fails over to, None) or (None, why the alert cannot fail anything over):
    the failing site must be a configured primary whose DR site is configured."""
    from drtool.errors import DrtoolError

    if not site or site not in config.sites:
        return None, f"label site={site!r} names no configured site (primary: {config.primary.name})"
    if config.sites[site].role != "primary":
        return None, (f"label site={site!r} names a DR site, not a primary: an alert about it fails nothing over "
                      f"(primary: {config.primary.name})")
    try:
        target = config.dr_site_for(site)
    except (DrtoolError, StopIteration):
        return None, f"no DR site is configured for {site} (alerts.failover_to, or a site with role dr)"
    if target.role != "dr" or target.name == site:
        return None, f"alerts.failover_to names {target.name} for {site}, which is not a DR site"
    return target.name, None


def new_run_id(site: str) -> str:
    return f"fo-{site}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:6]}"


def book_paths(state_dir: Path) -> tuple[Path, Path]:
    """(the decisions file, its lock) under a state dir."""
    return Path(state_dir) / "alerts" / "decisions.json", Path(state_dir) / "alerts" / ".lock"


def run_outcome(code: int) -> tuple[str, str]:
    """(the decision's action, why) for a launched run's exit code."""
    if code < 0:
        return FAILED, f"exit {code}: killed by signal {-code}"
    meaning = EXIT_MEANINGS.get(code, "failed")
    return (FINISHED if code == 0 else BUSY if code == 4 else FAILED), f"exit {code}: {meaning}"


def _update_launched(state_dir: Path, run_id: str, **fields) -> dict | None:
    """Update the decision that launched `run_id` (still `starting` or `started`); the decision, or None when the
    book has no such decision."""
    path, lock = book_paths(state_dir)
    with file_lock(lock):
        try:
            book = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        rec = next((r for r in book["decisions"].values()
                    if r.get("run_id") == run_id and r["action"] in (STARTING, STARTED)), None)
        if rec is None:
            return None
        rec.update(fields)
        write_json_atomic(path, book)
        return dict(rec)


def record_run_pid(state_dir: Path, run_id: str, pid: int) -> None:
    """Record in its decision the pid of a launched failover's own process (the launcher's child)."""
    _update_launched(state_dir, run_id, run_pid=pid)


def run_alive(rec: dict) -> bool | None:
    """Whether a launched run still runs: its launcher (pid) or the failover it started (run_pid) is alive on this
    host. None when that cannot be told here: no pid recorded (decided by an older drtool), or another host."""
    pid = rec.get("pid")
    if not isinstance(pid, int):
        return None
    if rec.get("host") and rec["host"] != os.uname().nodename:
        return None
    if rec.get("boot_id") and boot_id() and rec["boot_id"] != boot_id():
        return False  # recorded before this host's last boot: gone, whatever runs under that pid now
    run_pid = rec.get("run_pid")
    return process_alive(pid) or (isinstance(run_pid, int) and process_alive(run_pid))


def record_run_end(state_dir: Path, run_id: str, code: int, at: float) -> dict | None:
    """Record in its decision how a failover the book launched ended; the decision, or None when no launched
    decision has that run id."""
    action, why = run_outcome(code)
    return _update_launched(state_dir, run_id, action=action, exit_code=code, ended_at=at,
                            why=f"failover {run_id} ended at {iso(at)}, {why}")


class DecisionBook:
    """The receiver's memory, one JSON file guarded by a lock: survives restarts and concurrent requests.

    With `claims` (drtool serve passes the DR sites' object stores), each outage is also claimed there, so that of
    several receivers hearing the same alert exactly one launches or queues it; the others record `duplicate`
    naming its run id. `resumer` re-launches a launched run that died (default: `launcher`, which starts it under
    the same run id)."""

    def __init__(self, config: Config, state_dir: Path, launcher: Launcher, clock: Callable[[], float] = time.time,
                 claims: OutageClaims | None = None, resumer: Launcher | None = None):
        self.config = config
        self.settings = config.alerts
        self.path, self.lock = book_paths(state_dir)
        self.launcher = launcher
        self.resumer = resumer or launcher
        self.clock = clock
        self.claims = claims
        self.receiver = receiver_name(Path(state_dir).resolve())

    def _load(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {"decisions": {}, "last_failover": {}}

    def load(self) -> dict:
        with file_lock(self.lock):
            return self._load()

    def handle(self, alerts: list[Alert]) -> list[dict]:
        """Decide for each alert; launch at most one failover per outage. Returns the decisions taken."""
        to_launch: list[tuple[str, str, str]] = []
        out = []
        with file_lock(self.lock):
            book = self._load()
            for alert in alerts:
                rec = self._decide(book, alert, to_launch)
                out.append({"fingerprint": alert.fingerprint, "alert": alert.name, **rec})
            write_json_atomic(self.path, book)
        for site, run_id, reason in to_launch:
            self._launched(run_id, self.launcher(site, run_id, reason))
            for d in out:
                if d.get("run_id") == run_id and d["action"] == STARTING:
                    d["action"] = STARTED
        return out

    def _launched(self, run_id: str, pid: int | None) -> None:
        """Record that `run_id` was launched (`starting` becomes `started`), and by which process."""
        with file_lock(self.lock):
            book = self._load()
            for rec in book["decisions"].values():
                if rec.get("run_id") == run_id and rec["action"] in (STARTING, STARTED):
                    rec["action"] = STARTED
                    if isinstance(pid, int):
                        rec.update(pid=pid, host=os.uname().nodename, boot_id=boot_id())
            write_json_atomic(self.path, book)

    def resume_interrupted(self) -> list[str]:
        """On start-up: re-launch runs recorded as `starting` (the receiver died before launching them), and resume
        launched runs that died without recording how they ended (`started`, and neither the launcher process nor
        the failover it started runs any more: a SIGKILL, the OOM killer, a reboot) under the same run id, at most
        RESUME_LIMIT times each. A run still alive, or one that cannot be told (no pid recorded, another host), is
        left alone. Returns the run ids launched."""
        now = self.clock()
        with file_lock(self.lock):
            book = self._load()
            todo = [(r["target"], r["run_id"], r.get("reason", "")) for r in book["decisions"].values()
                    if r["action"] == STARTING]
            dead = []
            for rec in book["decisions"].values():
                if rec["action"] != STARTED or run_alive(rec) is not False:
                    continue
                resumes = rec.setdefault("resumes", [])
                pids = f"pid {rec['pid']}" + (f", failover pid {rec['run_pid']}" if "run_pid" in rec else "")
                if len(resumes) >= RESUME_LIMIT:
                    if "resume_refused_at" not in rec:
                        rec["resume_refused_at"] = now
                        rec["why"] = (f"failover {rec['run_id']} died again ({pids} gone) after {len(resumes)} "
                                      f"resume(s); not resumed again automatically: look at its log, then "
                                      f"`drtool failover --site {rec['target']} --resume {rec['run_id']}`")
                        log.warning("%s", rec["why"])
                    continue
                resumes.append({"at": now, "dead": pids})
                rec["why"] = (f"failover {rec['run_id']} died without recording its end ({pids} gone); resumed "
                              f"under the same run id at {iso(now)}")
                log.warning("%s", rec["why"])
                rec.pop("run_pid", None)   # the resumed run's launcher records its own
                dead.append((rec["target"], rec["run_id"], rec.get("reason", "")))
            write_json_atomic(self.path, book)
        for site, run_id, reason in todo:
            self._launched(run_id, self.launcher(site, run_id, reason))
        for site, run_id, reason in dead:
            self._launched(run_id, self.resumer(site, run_id, reason))
        return [t[1] for t in todo + dead]

    def _decide(self, book: dict, alert: Alert, to_launch: list) -> dict:
        now = self.clock()
        rec = book["decisions"].get(alert.key)
        if rec is None:
            rec = {"site": alert.site, "alert": alert.name, "first_seen": now, "starts_at": alert.starts_at,
                   "action": PENDING, "count": 0}
            book["decisions"][alert.key] = rec
        rec["count"] += 1
        rec["last_seen"] = now
        if alert.status == "resolved" and rec["action"] == AWAITING:
            return self._cancel(book, rec, alert, now)
        if alert.status == "resolved" and rec["action"] == DUPLICATE and rec.get("claim_action") == AWAITING:
            # The receiver that queued it may be down: settle the shared claim from here too.
            return self._cancel(book, rec, alert, now)
        if rec["action"] not in (PENDING,):
            return dict(rec, duplicate=True)  # already decided: the same outage never triggers twice
        if alert.status == "resolved":
            rec["action"] = RESOLVED
            return dict(rec)
        target, problem = failover_target(self.config, alert.site)
        if problem:
            rec.update(action=IGNORED, why=problem)
            return dict(rec)
        rec["target"] = target
        firing_s = now - alert.starts_at
        if firing_s < self.settings.firing_for_s:
            rec["why"] = f"firing for {firing_s:.0f}s of the required {self.settings.firing_for_s:.0f}s"
            return dict(rec)
        # The cooldown counts failovers that started (launched, or approved), not ones only queued; a failover to
        # the same site still awaiting approval holds a second outage's decision, pointing at it.
        last = book["last_failover"].get(target)
        if last is not None and now - last < self.settings.cooldown_s:
            rec.update(action=SUPPRESSED, why=f"a failover to {target} started {now - last:.0f}s ago "
                                              f"(cooldown {self.settings.cooldown_s:.0f}s)")
            return dict(rec)
        queued = [r for r in book["decisions"].values() if r.get("target") == target
                  and (r["action"] == AWAITING or (r["action"] == DUPLICATE and r.get("claim_action") == AWAITING))
                  and now - r.get("decided_at", 0) < self.settings.cooldown_s]
        if queued:
            q = max(queued, key=lambda r: r["decided_at"])
            rec.update(action=SUPPRESSED, why=f"a failover to {target} awaits approval as {q['run_id']} (queued "
                                              f"{now - q['decided_at']:.0f}s ago; cooldown "
                                              f"{self.settings.cooldown_s:.0f}s)")
            return dict(rec)
        run_id = new_run_id(target)
        reason = f"alert {alert.name} ({alert.fingerprint}) on site {alert.site}"
        action = STARTING if self.settings.policy == "auto" else AWAITING
        if self.claims is not None:
            try:
                won, first = self.claims.claim(target, alert.key, {
                    "run_id": run_id, "action": STARTED if action == STARTING else AWAITING, "reason": reason,
                    "receiver": self.receiver, "at": now, "alert": alert.name, "fingerprint": alert.fingerprint})
            except ClaimsUnavailable as exc:
                # Not decided (stays pending, tried again at the next notification): deciding here alone could fail
                # over twice, and the failover itself needs this store (its lease, its snapshots).
                rec.update(claim_error=str(exc), why=(
                    f"NOT DECIDED: cannot claim this outage in {target}'s object store, where every receiver claims "
                    f"it ({exc}); tried again at the next notification. The failover needs that store too (its "
                    f"lease and snapshots): fix access to it, or fail over by hand: "
                    f"`drtool failover --site {target}`"))
                log.warning("alert %s (%s): %s", alert.name, alert.fingerprint, rec["why"])
                return dict(rec)
            rec.pop("claim_error", None)
            if not won:
                return self._duplicate(book, rec, alert.key, first, now)
            rec["claim"] = claim_key(target, alert.key)
        rec.update(run_id=run_id, reason=reason, decided_at=now, action=action)
        if action == STARTING:
            book["last_failover"][target] = now
            to_launch.append((target, run_id, reason))
        else:
            rec["why"] = f"policy approve: run `drtool failover --site {target} --approve {run_id}`"
        return dict(rec)

    def _duplicate(self, book: dict, rec: dict, outage: str, first: dict, now: float) -> dict:
        """Another receiver claimed the outage first: name its run, launch nothing. A failover it started starts
        this receiver's cooldown as well, and one it queued holds this receiver's next outage, as if decided here."""
        target, first_at = rec["target"], float(first.get("at", now))
        rec.update(action=DUPLICATE, run_id=first["run_id"], reason=first.get("reason", ""),
                   claim_action=first.get("action"), claimed_by=first.get("receiver"), decided_at=now,
                   claim=claim_key(target, outage),
                   why=f"{first.get('receiver')} decided this outage first, at {iso(first_at)}: failover "
                       f"{first['run_id']} {first.get('action')}; nothing launched here")
        if first.get("action") == STARTED:
            book["last_failover"][target] = max(book["last_failover"].get(target, 0.0), first_at)
        elif first.get("action") == AWAITING:
            rec["why"] += f" (approve it from any host: `drtool failover --site {target} --approve {first['run_id']}`)"
        return dict(rec)

    def _cancel(self, book: dict, rec: dict, alert: Alert, now: float) -> dict:
        """The outage is over before anyone approved its failover: an approval now would move a serving site. With
        claims, the cancellation is settled in the shared store too, unless an approval got there first."""
        why = f"cancelled at {iso(now)}: alert {alert.name} resolved before the failover was approved"
        if self.claims is not None and rec.get("claim"):
            try:
                settled = self.claims.settle(rec["target"], alert.key, CANCELLED, self.receiver, now)
            except ClaimsUnavailable as exc:
                why += (f"; WARNING: could not mark it cancelled in {rec['target']}'s object store ({exc}): an "
                        f"approval from another host would still be accepted")
                log.warning("failover %s: %s", rec["run_id"], why)
            else:
                if settled["action"] == APPROVED:
                    at = float(settled.get("at", now))
                    rec.update(action=APPROVED if rec["action"] == AWAITING else rec["action"],
                               claim_action=APPROVED, approved_at=at,
                               why=f"approved by {settled.get('by')} at {iso(at)}, before its alert resolved")
                    book["last_failover"][rec["target"]] = max(book["last_failover"].get(rec["target"], 0.0), at)
                    return dict(rec)
        if rec["action"] == DUPLICATE:
            rec.update(claim_action=CANCELLED, cancelled_at=now, why=why)
        else:
            rec.update(action=CANCELLED, cancelled_at=now, why=why)
        return dict(rec)

    def approval(self, run_id: str) -> dict | None:
        for rec in self.load()["decisions"].values():
            if rec.get("run_id") == run_id and rec["action"] == AWAITING:
                return rec
        return None

    def approve(self, run_id: str, record: bool = True) -> dict:
        """The decision queued for approval under `run_id`, recorded as approved (when, and the start of the
        site's cooldown) unless `record` is False. UsageError saying why when it cannot be approved: unknown,
        cancelled (its alert resolved first), or not queued for approval (started, suppressed, ...). With claims,
        a run queued by another receiver is found in the DR site's object store, and the approval is settled there
        (an earlier cancellation by any receiver refuses it)."""
        from drtool.errors import UsageError

        with file_lock(self.lock):
            book = self._load()
            rec = next((r for r in book["decisions"].values()
                        if r.get("run_id") == run_id and r["action"] != DUPLICATE), None)
            if rec is None:
                return self._approve_shared(book, run_id, record)
            if rec["action"] == CANCELLED:
                raise UsageError(f"failover {run_id} was cancelled, nothing changed: {rec.get('why', '')}",
                                 hint="the outage it was queued for is over; if the site fails again, its new "
                                      "alert is decided afresh (under a new run id)")
            if rec["action"] not in (AWAITING, APPROVED):
                raise UsageError(f"failover {run_id} is not awaiting approval: it is {rec['action']}"
                                 + (f" ({rec['why']})" if rec.get("why") else ""))
            now = self.clock()
            if rec.get("claim") and self.claims is not None:
                outage = next(k for k, r in book["decisions"].items() if r is rec)
                settled = self._settle_approval(rec["target"], outage, run_id, record, now)
                if settled and settled["action"] == CANCELLED:
                    at = float(settled.get("at", now))
                    rec.update(action=CANCELLED, cancelled_at=at,
                               why=f"cancelled by {settled.get('by')} at {iso(at)}: its alert resolved before the "
                                   f"failover was approved")
                    write_json_atomic(self.path, book)
                    raise UsageError(f"failover {run_id} was cancelled, nothing changed: {rec['why']}",
                                     hint="the outage it was queued for is over")
            if record:
                rec.setdefault("approved_at", now)
                rec["action"] = APPROVED
                book["last_failover"][rec["target"]] = now
                write_json_atomic(self.path, book)
            return dict(rec)

    def _settle_approval(self, target: str, outage: str, run_id: str, record: bool, now: float) -> dict | None:
        """Settle `approved` in the shared store (or, for a dry run, read how it was settled): the record that
        stands. OperationFailed when the store cannot be reached: the failover needs it too."""
        from drtool.errors import OperationFailed

        try:
            if record:
                return self.claims.settle(target, outage, APPROVED, self.receiver, now)
            return self.claims.settled(target, outage)
        except ClaimsUnavailable as exc:
            if not record:
                return None
            raise OperationFailed(f"cannot record the approval of failover {run_id}: {exc}",
                                  hint=f"nothing was changed. The failover needs {target}'s object store too (its "
                                       f"lease and snapshots): fix access to it and approve again, or fail over "
                                       f"without the queued run: `drtool failover --site {target}`") from None

    def _approve_shared(self, book: dict, run_id: str, record: bool) -> dict:
        """Approve a run this host's book does not hold (another receiver queued it): found by its claim."""
        from drtool.errors import UsageError

        unknown = f"no failover awaiting approval with run id {run_id}"
        hint = f"`drtool serve` and `drtool watch` print the run id; decisions are in {self.path}"
        targets = [s.name for s in self.config.sites.values() if s.role == "dr" and run_id.startswith(f"fo-{s.name}-")]
        if self.claims is None or not targets:
            raise UsageError(unknown, hint=hint)
        try:
            claim = self.claims.find_run(run_id, targets)
        except ClaimsUnavailable as exc:
            raise UsageError(unknown + " in this host's decisions, and the shared claims cannot be read: " + str(exc),
                             hint=hint) from None
        if claim is None:
            raise UsageError(unknown, hint=hint + "; and no receiver claimed an outage under it")
        if claim.get("action") != AWAITING:
            raise UsageError(f"failover {run_id} is not awaiting approval: {claim.get('receiver')} decided it "
                             f"{claim.get('action')} at {iso(float(claim.get('at', 0)))}")
        target, outage, now = claim["target"], claim["outage"], self.clock()
        settled = self._settle_approval(target, outage, run_id, record, now)
        if settled and settled["action"] == CANCELLED:
            raise UsageError(f"failover {run_id} was cancelled, nothing changed: cancelled by {settled.get('by')} at "
                             f"{iso(float(settled.get('at', now)))}: its alert resolved before the failover was "
                             f"approved", hint="the outage it was queued for is over")
        rec = {"run_id": run_id, "target": target, "reason": claim.get("reason", ""), "action": APPROVED,
               "approved_at": float(settled.get("at", now)) if settled else now, "claimed_by": claim.get("receiver"),
               "claim": claim_key(target, outage)}
        mine = next((r for r in book["decisions"].values() if r.get("run_id") == run_id), None)
        if record and mine is not None:   # this receiver recorded it as a duplicate: its cooldown starts now too
            mine.update(claim_action=APPROVED, approved_at=rec["approved_at"])
            book["last_failover"][target] = now
            write_json_atomic(self.path, book)
        return rec


def approved_reason(config: Config, run_id: str, record: bool = True) -> str | None:
    """The reason of a failover `drtool serve` (or `drtool watch`) queued for approval under `run_id`, recorded as
    approved (pass record=False for a dry run); UsageError saying why when it cannot be approved (e.g. cancelled:
    its alert resolved before the approval). A run queued by another receiver is found in the DR site's object
    store, where every receiver claims its outages."""
    book = DecisionBook(config, alerts_state_dir(config), lambda *a: None, claims=OutageClaims.for_config(config))
    return book.approve(run_id, record).get("reason")
