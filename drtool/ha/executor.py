"""Climbs one site's escalation ladder: the one executor `drtool watch` (probes) and `drtool serve` (instance alerts)
both use. Per round of observations it asks `drtool.ha.ladder.decide` (the pure core) what to do, runs each rung's
remedy (restart in place, drain, undrain), journals decisions and outcomes, keeps the ladder's state, and hands the
failover rung to the DecisionBook as one alert for the site (firing time, cooldown, policy, exactly once).

An instance is one service on one host (`drtool.ha.instances`: named by its host on a one-service site, `HOST/SERVICE`
on a site with several): a restart starts that service's container again and nothing else, a drain takes only an
instance of the service behind the site's Nginx out of it, and the failover rung is one decision for the whole
site, taken only when no instance of it serves.

The state (restart times, drains) is saved atomically after every round to `<state>/ladder/<site>.state.json` and
read again at the start of the next, under a per-site lock: a restarted watch or serve keeps its restart limits and
drains, and a watch and a serve of the same site climb one ladder (no second restart of an instance the other just
restarted). When the site serves again after its failover rung was handed to the book, the alert is handed again
as resolved, so a failover still awaiting approval is cancelled."""

from __future__ import annotations  # PEP 563 (public), for Alert and Site in signatures

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from drtool.alerts.decisions import Alert, DecisionBook
from drtool.config import Config, Host, Site
from drtool.errors import DrtoolError
from drtool.fsutil import file_lock, write_json_atomic
from drtool.ha.instances import ServingInstance, decide_per_service, site_instances
from drtool.ha.ladder import Action, InstanceHealth, LadderJournal, LadderState, apply

log = logging.getLogger("drtool.ladder")
STATE_SCHEMA = 1


@dataclass(frozen=True)
class Remedies:
    """The ladder's side effects. restart(site, instance) starts the container of that one service on its host
    again (a `ServingInstance`); drain(site, host name) and undrain(site, host name) take a host out of the site's
    Nginx and put it back. Each raises DrtoolError when it fails. reachable(host) says whether a down instance's host
    answers (SSH), else nothing can restart its container and the ladder goes on."""

    restart: Callable[[Site, ServingInstance], object]
    drain: Callable[[Site, str], object]
    undrain: Callable[[Site, str], object]
    reachable: Callable[[Host], bool] = lambda host: True


@dataclass
class Step:
    """What became of one action of a round: outcome ok | failed for a remedy that ran (None when nothing ran),
    the book's decisions for a failover rung."""

    action: Action
    event: str | None
    outcome: str | None = None
    detail: str | None = None
    done_at: float | None = None
    decisions: list[dict] = field(default_factory=list)


@dataclass
class Round:
    steps: list[Step]
    resolved: list[dict]   # the book's decisions when the site served again after its failover rung


def state_path(state_dir: Path, site: str) -> Path:
    return Path(state_dir) / "ladder" / f"{site}.state.json"


def load_state(state_dir: Path, site: str) -> LadderState:
    """The ladder state saved for a site (empty when none; a file that does not parse is reported and ignored)."""
    path = state_path(state_dir, site)
    try:
        doc = json.loads(path.read_text())
        return LadderState.from_dict(doc["ladder"])
    except FileNotFoundError:
        return LadderState()
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("ladder state %s is unreadable (%s): starting from an empty ladder", path, exc)
        return LadderState()


class SiteLadder:
    """One site's ladder. `alert_name`, `source` and `fingerprint` name the site-level alert its failover rung
    hands to the book (per caller: a watch and a serve are two sources of alerts to the book)."""

    def __init__(self, config: Config, site: Site, book: DecisionBook, state_dir: Path, remedies: Remedies,
                 alert_name: str, source: str, fingerprint: str, clock: Callable[[], float] = time.time):
        self.config, self.site, self.book, self.remedies, self.clock = config, site, book, remedies, clock
        self.settings = config.ha
        self.state_dir = Path(state_dir)
        self.path = state_path(state_dir, site.name)
        self.lock = self.path.with_name(f".{site.name}.state.lock")
        self.journal = LadderJournal(self.state_dir / "ladder" / f"{site.name}.jsonl")
        self.alert_name, self.source, self.fingerprint = alert_name, source, fingerprint
        self.instances = {i.name: i for i in site_instances(config, site)}
        self.outage_start: float | None = None   # start of the current no-healthy-undrained-instance outage
        self.handed: Alert | None = None          # the failover alert handed to the book for that outage

    @property
    def state(self) -> LadderState:
        return load_state(self.state_dir, self.site.name)

    def climb(self, observations: list[InstanceHealth], now: float, since: float | None = None) -> Round:
        """One round: decide on `observations` (made at `now`), run and record every action. `since` is when the
        caller first saw the current outage (the failover alert's start; default now)."""
        with file_lock(self.lock):
            state = load_state(self.state_dir, self.site.name)
            before = state.to_dict()
            actions = decide_per_service(state, observations, self.instances.values(), self.settings, now)
            events = self.journal.record_decisions(actions, now)
            resolved = []
            if any(a.instance is None for a in actions):
                self.outage_start = self.outage_start if self.outage_start is not None else (since or now)
            else:
                resolved = self._outage_over()
            steps = []
            for action, event in zip(actions, events, strict=True):
                step, state = self._run(action, event, state, now)
                steps.append(step)
            if state.to_dict() != before or not self.path.exists():
                write_json_atomic(self.path, {"schema": STATE_SCHEMA, "site": self.site.name, "saved_at": now,
                                              "ladder": state.to_dict()})
        return Round(steps, resolved)

    def _run(self, action: Action, event: str | None, state: LadderState, now: float) -> tuple[Step, LadderState]:
        step = Step(action, event)
        if action.kind == "restart":
            ok, step.detail = self._remedy(self.remedies.restart, self._instance(action.instance))
            state = apply(state, action, now, self.settings, ok=ok)   # an attempt, whether or not it ran
        elif action.kind in ("drain", "undrain"):
            ok, step.detail = self._remedy(self.remedies.drain if action.kind == "drain" else self.remedies.undrain,
                                           self._instance(action.instance).host.name)
            if ok:   # not applied when it failed: decided again at the next round
                state = apply(state, action, now, self.settings)
        elif action.kind == "failover":
            step.decisions = self._failover(now, event)
            return step, state
        else:
            return step, state
        step.outcome, step.done_at = ("ok" if ok else "failed"), self.clock()
        if event:
            self.journal.record_outcome(event, step.outcome, step.done_at, step.detail)
        log.info("ladder %s %s: %s %s (%s)", self.site.name, action.instance, action.kind, step.outcome, action.reason)
        return step, state

    def _instance(self, name: str) -> ServingInstance:
        """The site's instance of that name; one the configuration does not know (an observation of a host that
        left the site) is its host alone, on the site's port, with no model to restart."""
        if name in self.instances:
            return self.instances[name]
        host = next((h for h in self.site.hosts if h.name == name.partition("/")[0]),
                    Host(name=name, address=name, site=self.site.name))
        return ServingInstance(name, host, self.site.serving_port, name, None, True)

    def _remedy(self, fn: Callable, target) -> tuple[bool, str | None]:
        try:
            fn(self.site, target)
        except DrtoolError as exc:
            return False, exc.message
        except Exception as exc:   # a bug or an unexpected failure in one remedy must not stop the watcher
            log.exception("ladder remedy failed")
            return False, f"{type(exc).__name__}: {exc}"
        return True, None

    def _alert(self, status: str, starts_at: float) -> Alert:
        return Alert(fingerprint=self.fingerprint, status=status, name=self.alert_name, site=self.site.name,
                     starts_at=starts_at, labels={"alertname": self.alert_name, "site": self.site.name,
                                                  "source": self.source})

    def _failover(self, now: float, event: str | None) -> list[dict]:
        """The failover rung: one alert for the site, keyed by the outage's start, so repeats are one outage."""
        self.handed = self._alert("firing", self.outage_start if self.outage_start is not None else now)
        decisions = self.book.handle([self.handed])
        for d in decisions:
            if event and not d.get("duplicate"):
                self.journal.record_outcome(event, d["action"], self.clock(), d.get("run_id"))
        return decisions

    def _outage_over(self) -> list[dict]:
        """The site serves again: the outage is over; its failover alert, if one was handed, resolves (a failover
        still awaiting approval is cancelled; one started is left as it is)."""
        handed, self.handed, self.outage_start = self.handed, None, None
        if handed is None:
            return []
        return [d for d in self.book.handle([self._alert("resolved", handed.starts_at)]) if not d.get("duplicate")]
