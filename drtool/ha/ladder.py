"""The escalation ladder's decision core: pure, deterministic, no I/O except `LadderJournal`.

For a failed or degraded serving instance the ladder climbs three rungs, cheapest first:

1. **restart** the instance's container in place, at most `restart_attempts` times within any `restart_window_s`;
   after a restart the instance gets `ready_timeout_s` to report healthy before anything else happens to it;
2. **drain** it from Nginx so the site's other GPU serves, only while another instance of the site is healthy and
   not drained (never the last one: that would drop the site);
3. **failover**: only when the site has no healthy undrained instance left (and no local remedy is in flight: a
   restart waiting for ready, or a healthy instance being undrained), the cross-site failover that exists today;
   one action per site, never one per instance. Exactly once per outage is not decided here: the caller hands
   the action to `drtool.alerts.decisions.DecisionBook` (firing time, cooldown, exactly once), like `drtool watch`.

Words used throughout:

- *down*: `healthy` is False (the container exited, /readyz does not answer). A down instance starts at rung 1.
- *degraded*: `healthy` is True but `degraded_reason` is set (e.g. a hot GPU: /readyz 503 "degraded"). A degraded
  instance **skips the restart and goes straight to drain**: restarting a container does not cool a GPU or free
  its memory pressure from other tenants, it only drops the requests in flight and reloads the weights.
- *healthy*: `healthy` is True and `degraded_reason` is None. Only healthy instances count as serving.
- a drained instance that reports healthy in an observation made after it was drained (`observed_at >=
  drained_at`: one whole observation, not a stale one from before the drain) is **undrained** (drain rung, its
  policy).

Each rung has a policy (`Policy`): `auto` acts, `approve` yields a `wait_approval` action naming the rung (and in
`awaits` the action an approval would run), `off` skips to the next rung and says so in the reason. Instances not
observed in a call are neither acted on nor counted as healthy. Actions come per site (sorted), instances sorted by
name within a site, the site's failover (if any) last.

`decide()` never changes the state: the caller runs an action and then records it with `apply()` (a failed restart
still counts as an attempt, but is not waited for: `apply(..., ok=False)`).
"""

from __future__ import annotations  # PEP 563 (public), for LadderState in its own class

import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from drtool.fsutil import file_lock

RUNGS = ("restart", "drain", "failover")
POLICIES = ("auto", "approve", "off")
KINDS = ("restart", "drain", "undrain", "failover", "wait_approval", "none")
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Policy:
    """One switch per rung: "auto" | "approve" | "off".

    Defaults: restart=auto, drain=auto, failover=approve. Restarting a container and draining it from the site's
    Nginx are cheap, local and reversible (the site's other GPU keeps serving; an undrain puts it back), so they
    are safe to automate. The cross-site flip moves DNS and production to another site, costs a cold standby and
    a failback later: that is the one people approve by default (as `alerts.policy` does for `drtool serve`).
    """

    restart: str = "auto"
    drain: str = "auto"
    failover: str = "approve"

    def __post_init__(self) -> None:
        for rung in RUNGS:
            value = getattr(self, rung)
            if value not in POLICIES:
                raise ValueError(f"policy for rung {rung} is {value!r}; use one of {', '.join(POLICIES)}")

    def of(self, rung: str) -> str:
        return getattr(self, rung)


@dataclass(frozen=True)
class LadderSettings:
    restart_attempts: int = 2        # restarts allowed within any restart_window_s
    restart_window_s: float = 600.0
    ready_timeout_s: float = 120.0   # after a restart, how long the instance has to report healthy
    policy: Policy = field(default_factory=Policy)

    def __post_init__(self) -> None:
        if self.restart_attempts < 0:
            raise ValueError("restart_attempts must be >= 0")
        if self.restart_window_s <= 0 or self.ready_timeout_s < 0:
            raise ValueError("restart_window_s must be > 0 and ready_timeout_s >= 0")


@dataclass(frozen=True)
class InstanceHealth:
    """One observation of one serving instance. healthy False = down; healthy True with a degraded_reason =
    degraded (up, but e.g. a hot GPU): degraded skips the restart rung and goes straight to drain.
    host_reachable False (its host does not answer SSH: powered off, partitioned) skips the restart rung too:
    nothing can restart a container on a host that cannot be reached, and waiting for one would only add to the
    outage."""

    name: str
    site: str
    healthy: bool
    degraded_reason: str | None
    observed_at: float
    host_reachable: bool = True

    @property
    def ok(self) -> bool:
        return self.healthy and self.degraded_reason is None

    @property
    def status(self) -> str:
        if not self.healthy:
            return "down"
        return f"degraded: {self.degraded_reason}" if self.degraded_reason else "healthy"


@dataclass(frozen=True)
class InstanceState:
    """What the ladder did to one instance: restart times (only those that still matter), whether the last restart
    failed to run (then there is nothing to wait for), and the drain."""

    restarts: tuple[float, ...] = ()
    drained_at: float | None = None
    last_restart_failed: bool = False

    @property
    def drained(self) -> bool:
        return self.drained_at is not None


@dataclass(frozen=True)
class LadderState:
    instances: dict[str, InstanceState] = field(default_factory=dict)

    def of(self, name: str) -> InstanceState:
        return self.instances.get(name, InstanceState())

    def to_dict(self) -> dict:
        return {"schema": SCHEMA_VERSION,
                "instances": {n: {"restarts": list(s.restarts), "drained_at": s.drained_at,
                                  "last_restart_failed": s.last_restart_failed}
                              for n, s in sorted(self.instances.items())}}

    @classmethod
    def from_dict(cls, doc: dict) -> LadderState:
        return cls({n: InstanceState(tuple(float(t) for t in s.get("restarts", ())), s.get("drained_at"),
                                     bool(s.get("last_restart_failed", False)))
                    for n, s in doc.get("instances", {}).items()})


@dataclass(frozen=True)
class Action:
    kind: str                 # restart | drain | undrain | failover | wait_approval | none
    instance: str | None      # None for a site's failover (and a site-level "none")
    site: str
    rung: str                 # restart | drain | failover
    reason: str
    policy: str               # the rung's policy when decided
    awaits: str | None = None  # for wait_approval: the action an approval runs (restart | drain | undrain | failover)

    def to_dict(self) -> dict:
        return asdict(self)


def _gated(rung: str, kind: str, instance: str | None, site: str, reason: str, settings: LadderSettings) -> Action:
    """The action for a rung that is not off: itself under auto, a wait_approval naming it under approve."""
    policy = settings.policy.of(rung)
    if policy == "auto":
        return Action(kind, instance, site, rung, reason, policy)
    return Action("wait_approval", instance, site, rung, f"{reason}; policy approve: {kind} awaits approval",
                  policy, awaits=kind)


def latest_observations(observations: Iterable[InstanceHealth]) -> dict[str, InstanceHealth]:
    """One observation per instance: the latest; at equal times the cautious one (down, then degraded)."""
    out: dict[str, InstanceHealth] = {}

    def key(o: InstanceHealth) -> tuple:
        return (o.observed_at, 0 if o.ok else 1 if o.healthy else 2, o.degraded_reason or "", o.site)

    for o in observations:
        if o.name not in out or key(o) > key(out[o.name]):
            out[o.name] = o
    return out


def decide(state: LadderState, observations: Iterable[InstanceHealth], settings: LadderSettings,
           now: float) -> list[Action]:
    """The ladder's actions for this round of observations. Pure: the same inputs give the same list."""
    obs = latest_observations(observations)
    sites: dict[str, list[str]] = {}
    for name, o in obs.items():
        sites.setdefault(o.site, []).append(name)
    actions: list[Action] = []
    pol = settings.policy
    for site in sorted(sites):
        names = sorted(sites[site])
        serving = [n for n in names if obs[n].ok and not state.of(n).drained]
        in_flight: list[str] = []   # local remedies that may bring the site back without a failover
        for name in names:
            o, st = obs[name], state.of(name)
            if o.ok:
                if not st.drained:
                    continue
                if o.observed_at < st.drained_at:
                    actions.append(Action("none", name, site, "drain", "healthy, but observed before it was "
                                          "drained: waiting for a fresh observation to undrain", pol.drain))
                elif pol.drain == "off":
                    actions.append(Action("none", name, site, "drain", "healthy again; drain rung off: left "
                                          "drained (undrain it by hand)", pol.drain))
                else:
                    act = _gated("drain", "undrain", name, site, "healthy again after the drain", settings)
                    actions.append(act)
                    if act.kind == "undrain":
                        in_flight.append(f"{name} undrained")
                continue
            if not o.healthy:   # down: rung 1, restart
                last = max(st.restarts, default=None)
                waiting = last is not None and not st.last_restart_failed and now - last < settings.ready_timeout_s
                if o.host_reachable and waiting:
                    actions.append(Action("none", name, site, "restart",
                                          f"down; restarted {now - last:.0f}s ago: waiting up to "
                                          f"{settings.ready_timeout_s:g}s for it to report ready", pol.restart))
                    in_flight.append(f"{name} restarting")
                    continue
                recent = sum(1 for t in st.restarts if now - t < settings.restart_window_s)
                if not o.host_reachable:
                    note = "down and its host does not answer: nothing to restart in place, escalating to drain"
                elif pol.restart == "off":
                    note = "down; restart rung off: skipped to drain"
                elif recent < settings.restart_attempts:
                    act = _gated("restart", "restart", name, site,
                                 f"down; restart {recent + 1} of {settings.restart_attempts} within "
                                 f"{settings.restart_window_s:g}s", settings)
                    actions.append(act)
                    if act.kind == "restart":
                        in_flight.append(f"{name} restarting")
                    continue
                else:
                    note = (f"down; {recent} restart(s) in the last {settings.restart_window_s:g}s "
                            f"(limit {settings.restart_attempts}): escalating to drain")
            else:               # degraded: straight to rung 2
                note = f"degraded ({o.degraded_reason}): a restart does not cool a GPU, straight to drain"
            if st.drained:
                actions.append(Action("none", name, site, "drain", f"{note}; already drained", pol.drain))
            elif pol.drain == "off":
                actions.append(Action("none", name, site, "drain", f"{note}; drain rung off: skipped to failover "
                                      "(taken only when the site has no healthy instance)", pol.drain))
            elif not serving:
                actions.append(Action("none", name, site, "drain", f"{note}; not drained: no other healthy "
                                      f"undrained instance at {site} (draining it would drop the site: failover "
                                      "rung instead)", pol.drain))
            else:
                actions.append(_gated("drain", "drain", name, site,
                                      f"{note}; {', '.join(serving)} keep(s) serving {site}", settings))
        if serving:
            continue
        states = ", ".join(f"{n} ({obs[n].status}{', drained' if state.of(n).drained else ''})" for n in names)
        why = f"no healthy undrained instance at {site}: {states}"
        if in_flight:
            actions.append(Action("none", None, site, "failover",
                                  f"{why}; failover held while {', '.join(in_flight)}", pol.failover))
        elif pol.failover == "off":
            actions.append(Action("none", None, site, "failover",
                                  f"{why}; failover rung off: nothing left to try", pol.failover))
        else:
            actions.append(_gated("failover", "failover", None, site, why, settings))
    return actions


def apply(state: LadderState, action: Action, at: float, settings: LadderSettings, ok: bool = True) -> LadderState:
    """The state after `action` ran at `at` (a restart counts whether or not it worked; one that failed to run,
    `ok=False`, is not waited for). Restart times that no longer count towards any window are dropped; only
    restart, drain and undrain change the state."""
    if action.instance is None or action.kind not in ("restart", "drain", "undrain"):
        return state
    st = state.of(action.instance)
    if action.kind == "restart":
        keep = tuple(t for t in st.restarts if at - t < settings.restart_window_s)
        st = replace(st, restarts=(*keep, at), last_restart_failed=not ok)
    elif action.kind == "drain":
        st = replace(st, drained_at=at)
    else:
        st = replace(st, drained_at=None)
    return LadderState({**state.instances, action.instance: st})


class LadderJournal:
    """Ladder events as JSON lines (one object per line, appended with flush + fsync under a lock, so a line is
    either whole or, after a crash mid-write, a torn last line that `events()` skips).

    `record_decisions(actions, at)` takes every decide() result, including empty ones: a wait_approval, failover
    or none action identical (kind, rung, policy, instance, site) to the one recorded for its subject by the
    previous call is not written again (that memory is per process: after a restart one repeat may be written).
    Restart, drain and undrain are always written. `record_outcome(event_id, outcome, at, detail)` records what
    became of a decision."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.lock = self.path.with_name(f".{self.path.name}.lock")
        self._previous: dict[tuple, tuple] = {}

    def _append(self, docs: list[dict]) -> None:
        if not docs:
            return
        data = "".join(json.dumps(d, sort_keys=True, default=str) + "\n" for d in docs).encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(self.lock):
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                size = os.fstat(fd).st_size   # a torn last line (crash mid-write) is ended before appending
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    data = b"\n" + data
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)

    def record_decisions(self, actions: list[Action], at: float) -> list[str | None]:
        """Journal one decide() call; returns one event id per action, in order, for record_outcome (None for an
        unchanged repeat that was not written again)."""
        docs, ids, seen = [], [], {}
        for i, a in enumerate(actions):
            subject = (a.site, a.instance, a.rung)
            sig = (a.kind, a.policy, a.awaits)
            seen[subject] = sig
            if a.kind in ("wait_approval", "failover", "none") and self._previous.get(subject) == sig:
                ids.append(None)
                continue
            event_id = f"{at:.6f}-{i}-{a.kind}-{a.instance or a.site}"
            docs.append({"v": SCHEMA_VERSION, "event": "decision", "id": event_id, "at": at, **a.to_dict()})
            ids.append(event_id)
        self._previous = seen
        self._append(docs)
        return ids

    def record_outcome(self, event_id: str, outcome: str, at: float, detail: str | None = None) -> None:
        """What became of a decision: e.g. ok | failed | approved | rejected | started | suppressed."""
        self._append([{"v": SCHEMA_VERSION, "event": "outcome", "id": event_id, "at": at, "outcome": outcome,
                       "detail": detail}])

    def events(self) -> list[dict]:
        try:
            lines = self.path.read_bytes().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                doc = json.loads(line)
            except ValueError:
                continue   # a line torn by a crash mid-write
            if isinstance(doc, dict) and "event" in doc:
                out.append(doc)
        return out

    def summary(self) -> dict:
        """For reports: per instance the rungs taken (kind, rung, policy, reason, decided_at, outcome, outcome_at,
        detail) in order, and per site its failover decisions. "none" decisions are left out. Stable schema:
        {"schema": 1, "instances": {name: {"site", "rungs": [...], "restarts", "drained", "last_outcome"}},
         "sites": {site: {"failovers": [...]}}}."""
        decisions: dict[str, dict] = {}
        order: list[str] = []
        for e in self.events():
            if e["event"] == "decision" and e.get("kind") != "none":
                decisions[e["id"]] = {"kind": e["kind"], "rung": e["rung"], "policy": e["policy"],
                                      "awaits": e.get("awaits"), "reason": e["reason"], "decided_at": e["at"],
                                      "outcome": None, "outcome_at": None, "detail": None,
                                      "_instance": e.get("instance"), "_site": e["site"]}
                order.append(e["id"])
            elif e["event"] == "outcome" and e.get("id") in decisions:
                decisions[e["id"]].update(outcome=e["outcome"], outcome_at=e["at"], detail=e.get("detail"))
        instances: dict[str, dict] = {}
        sites: dict[str, dict] = {}
        for event_id in order:
            d = dict(decisions[event_id])
            instance, site = d.pop("_instance"), d.pop("_site")
            if instance is None:
                sites.setdefault(site, {"failovers": []})["failovers"].append(d)
                continue
            rec = instances.setdefault(instance, {"site": site, "rungs": [], "restarts": 0, "drained": False,
                                                  "last_outcome": None})
            rec["rungs"].append(d)
            done = d["outcome"] in (None, "ok")   # a decision without an outcome is taken as run
            if d["kind"] == "restart":
                rec["restarts"] += 1
            elif d["kind"] == "drain" and done:
                rec["drained"] = True
            elif d["kind"] == "undrain" and done:
                rec["drained"] = False
            if d["outcome"] is not None:
                rec["last_outcome"] = d["outcome"]
        return {"schema": SCHEMA_VERSION, "instances": dict(sorted(instances.items())),
                "sites": dict(sorted(sites.items()))}
