"""Persistent failover decisions: dedupe by alert fingerprint, firing time, per-site cooldown, exactly once."""

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from drtool.config import Config
from drtool.fsutil import file_lock, write_json_atomic

# What became of an alert. `starting` is written BEFORE the failover is launched, with its run id, so a
# receiver killed in between re-launches that same run (failover resumes idempotently by run id).
PENDING, STARTING, STARTED, AWAITING, SUPPRESSED, IGNORED, RESOLVED = (
    "pending", "starting", "started", "awaiting_approval", "suppressed_cooldown", "ignored", "resolved")


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


def new_run_id(site: str) -> str:
    return f"fo-{site}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:6]}"


class DecisionBook:
    """The receiver's memory, one JSON file guarded by a lock: survives restarts and concurrent requests."""

    def __init__(self, config: Config, state_dir: Path, launcher: Launcher, clock: Callable[[], float] = time.time):
        self.config = config
        self.settings = config.alerts
        self.path = state_dir / "alerts" / "decisions.json"
        self.lock = state_dir / "alerts" / ".lock"
        self.launcher = launcher
        self.clock = clock

    def _load(self) -> dict:
        import json

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
        if rec["action"] not in (PENDING,):
            return dict(rec, duplicate=True)  # already decided: the same outage never triggers twice
        if alert.status == "resolved":
            rec["action"] = RESOLVED
            return dict(rec)
        if not alert.site or alert.site not in self.config.sites:
            rec.update(action=IGNORED, why=f"label site={alert.site!r} names no configured site")
            return dict(rec)
        target = self.config.dr_site_for(alert.site).name
        rec["target"] = target
        firing_s = now - alert.starts_at
        if firing_s < self.settings.firing_for_s:
            rec["why"] = f"firing for {firing_s:.0f}s of the required {self.settings.firing_for_s:.0f}s"
            return dict(rec)
        last = book["last_failover"].get(target)
        if last is not None and now - last < self.settings.cooldown_s:
            rec.update(action=SUPPRESSED, why=f"a failover to {target} started {now - last:.0f}s ago "
                                              f"(cooldown {self.settings.cooldown_s:.0f}s)")
            return dict(rec)
        run_id = new_run_id(target)
        reason = f"alert {alert.name} ({alert.fingerprint}) on site {alert.site}"
        rec.update(run_id=run_id, reason=reason, decided_at=now)
        book["last_failover"][target] = now
        if self.settings.policy == "auto":
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


def approved_reason(config: Config, run_id: str) -> str | None:
    """The reason of a failover `drtool serve` queued for approval under `run_id`; UsageError when none is."""
    from drtool.errors import UsageError
    from drtool.paths import state_dir

    base = Path(config.alerts.state_dir) if config.alerts.state_dir else state_dir()
    rec = DecisionBook(config, base, lambda *a: None).approval(run_id)
    if rec is None:
        raise UsageError(f"no failover awaiting approval with run id {run_id}")
    return rec.get("reason")
