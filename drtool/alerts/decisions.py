"""Persistent failover decisions: dedupe by alert fingerprint, firing time, per-site cooldown, exactly once."""

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from drtool.config import Config
from drtool.fsutil import file_lock, write_json_atomic

# What became of an alert. `starting` is written BEFORE the failover is launched, with its run id, so a
# receiver killed in between re-launches that same run (failover resumes idempotently by run id). A failover queued
# for approval is `awaiting_approval` until `drtool failover --approve RUN` makes it `approved`, or its alert
# resolves first and makes it `cancelled` (an approval must not outlive its outage).
PENDING, STARTING, STARTED, AWAITING, SUPPRESSED, IGNORED, RESOLVED = (
    "pending", "starting", "started", "awaiting_approval", "suppressed_cooldown", "ignored", "resolved")
APPROVED, CANCELLED = "approved", "cancelled"
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


Launcher = Callable[[str, str, str], None]  # (dr site, run id, reason) -> starts the failover


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


def record_run_end(state_dir: Path, run_id: str, code: int, at: float) -> dict | None:
    """Record in its decision how a failover the book launched ended; the decision, or None when no launched
    decision has that run id."""
    path, lock = book_paths(state_dir)
    action, why = run_outcome(code)
    with file_lock(lock):
        try:
            book = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        rec = next((r for r in book["decisions"].values()
                    if r.get("run_id") == run_id and r["action"] in (STARTING, STARTED)), None)
        if rec is None:
            return None
        rec.update(action=action, exit_code=code, ended_at=at, why=f"failover {run_id} ended at {iso(at)}, {why}")
        write_json_atomic(path, book)
        return dict(rec)


class DecisionBook:
    """The receiver's memory, one JSON file guarded by a lock: survives restarts and concurrent requests."""

    def __init__(self, config: Config, state_dir: Path, launcher: Launcher, clock: Callable[[], float] = time.time):
        self.config = config
        self.settings = config.alerts
        self.path, self.lock = book_paths(state_dir)
        self.launcher = launcher
        self.clock = clock

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
            self.launcher(site, run_id, reason)
            with file_lock(self.lock):
                book = self._load()
                for rec in book["decisions"].values():
                    if rec.get("run_id") == run_id and rec["action"] == STARTING:
                        rec["action"] = STARTED
                write_json_atomic(self.path, book)
            for d in out:
                if d.get("run_id") == run_id and d["action"] == STARTING:
                    d["action"] = STARTED
        return out

    def resume_interrupted(self) -> list[str]:
        """On start-up: re-launch runs recorded as `starting` (the receiver died before launching them)."""
        with file_lock(self.lock):
            book = self._load()
            todo = [(r["target"], r["run_id"], r.get("reason", "")) for r in book["decisions"].values()
                    if r["action"] == STARTING]
        for site, run_id, reason in todo:
            self.launcher(site, run_id, reason)
        if todo:
            with file_lock(self.lock):
                book = self._load()
                for rec in book["decisions"].values():
                    if rec["action"] == STARTING:
                        rec["action"] = STARTED
                write_json_atomic(self.path, book)
        return [t[1] for t in todo]

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
            # The outage is over before anyone approved its failover: an approval now would move a serving site.
            rec.update(action=CANCELLED, cancelled_at=now,
                       why=f"cancelled at {iso(now)}: alert {alert.name} resolved before the failover was approved")
            return dict(rec)
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
        queued = [r for r in book["decisions"].values() if r["action"] == AWAITING and r.get("target") == target
                  and now - r.get("decided_at", 0) < self.settings.cooldown_s]
        if queued:
            q = max(queued, key=lambda r: r["decided_at"])
            rec.update(action=SUPPRESSED, why=f"a failover to {target} awaits approval as {q['run_id']} (queued "
                                              f"{now - q['decided_at']:.0f}s ago; cooldown "
                                              f"{self.settings.cooldown_s:.0f}s)")
            return dict(rec)
        run_id = new_run_id(target)
        reason = f"alert {alert.name} ({alert.fingerprint}) on site {alert.site}"
        rec.update(run_id=run_id, reason=reason, decided_at=now)
        if self.settings.policy == "auto":
            book["last_failover"][target] = now
            rec["action"] = STARTING
            to_launch.append((target, run_id, reason))
        else:
            rec["action"] = AWAITING
            rec["why"] = f"policy approve: run `drtool failover --site {target} --approve {run_id}`"
        return dict(rec)

    def approval(self, run_id: str) -> dict | None:
        for rec in self.load()["decisions"].values():
            if rec.get("run_id") == run_id and rec["action"] == AWAITING:
                return rec
        return None

    def approve(self, run_id: str, record: bool = True) -> dict:
        """The decision queued for approval under `run_id`, recorded as approved (when, and the start of the
        site's cooldown) unless `record` is False. UsageError saying why when it cannot be approved: unknown,
        cancelled (its alert resolved first), or not queued for approval (started, suppressed, ...)."""
        from drtool.errors import UsageError

        with file_lock(self.lock):
            book = self._load()
            rec = next((r for r in book["decisions"].values() if r.get("run_id") == run_id), None)
            if rec is None:
                raise UsageError(f"no failover awaiting approval with run id {run_id}",
                                 hint=f"`drtool serve` and `drtool watch` print the run id; decisions are in "
                                      f"{self.path}")
            if rec["action"] == CANCELLED:
                raise UsageError(f"failover {run_id} was cancelled, nothing changed: {rec.get('why', '')}",
                                 hint="the outage it was queued for is over; if the site fails again, its new "
                                      "alert is decided afresh (under a new run id)")
            if rec["action"] not in (AWAITING, APPROVED):
                raise UsageError(f"failover {run_id} is not awaiting approval: it is {rec['action']}"
                                 + (f" ({rec['why']})" if rec.get("why") else ""))
            if record:
                now = self.clock()
                rec.setdefault("approved_at", now)
                rec["action"] = APPROVED
                book["last_failover"][rec["target"]] = now
                write_json_atomic(self.path, book)
            return dict(rec)


def approved_reason(config: Config, run_id: str, record: bool = True) -> str | None:
    """The reason of a failover `drtool serve` (or `drtool watch`) queued for approval under `run_id`, recorded as
    approved (pass record=False for a dry run); UsageError saying why when it cannot be approved (e.g. cancelled:
    its alert resolved before the approval)."""
    return DecisionBook(config, alerts_state_dir(config), lambda *a: None).approve(run_id, record).get("reason")
