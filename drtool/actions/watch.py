"""drtool watch: probe the primary's serving instances from the DR side and climb the escalation ladder
(drtool/ha/ladder.py, docs/failover.md) for an instance that stays down or degraded for N consecutive probes:
(1) restart its container in place, (2) drain it from the site's Nginx (sites with a `proxy`) so the site's other
GPU serves, and undrain it once it reports healthy again,
(3) only when the site has no healthy instance left, hand an alert to the same DecisionBook `drtool serve` uses
(firing time, cooldown, policy, exactly once), so a watch and an Alertmanager never start two failovers for one
outage. The climb is `drtool.ha.executor.SiteLadder`, the one `drtool serve` uses for instance alerts: every rung
decided and its outcome go to the ladder's journal, and its state (restart counts, drains) is saved per site, so a
restarted watch keeps its restart limits."""

import hashlib
import time

import requests

from drtool.actions.failover import pick_model
from drtool.actions.serve import real_remedies, subprocess_launcher
from drtool.alerts.decisions import AWAITING, STARTED, DecisionBook, alerts_state_dir
from drtool.config import Config, Site
from drtool.errors import UsageError
from drtool.execute.serving import base_url
from drtool.ha.executor import SiteLadder
from drtool.ha.ladder import InstanceHealth
from drtool.output import Output
from drtool.providers.base import ssh_banner

ALERT_NAME = "DrtoolWatchPrimaryDown"


def probe(site: Site, timeout: float) -> dict[str, str | None]:
    """Each host's problem (None when healthy): connection errors, timeouts and non-200 answers all count. A 503
    whose body says `degraded` (a GPU over its limit) is reported as `degraded: <reason>`."""
    found = {}
    for host in site.hosts:
        url = base_url(host.address, site.serving_port) + site.health_path
        try:
            resp = requests.get(url, timeout=timeout)
        except requests.RequestException as exc:
            found[host.name] = type(exc).__name__
            continue
        if resp.status_code == 200:
            found[host.name] = None
            continue
        try:
            body = resp.json()
        except ValueError:
            body = {}
        degraded = isinstance(body, dict) and body.get("state") == "degraded"
        found[host.name] = f"degraded: {body.get('reason')}" if degraded else f"HTTP {resp.status_code}"
    return found


def observe(site: Site, found: dict[str, str | None], streaks: dict[str, int], need: int, t: float,
            reach_timeout: float) -> list[InstanceHealth]:
    """The ladder's observations: a host failing for `need` probes in a row is down or degraded (and its host
    answers SSH or not); any other host counts as healthy (a failure or two is not an outage: the debounce
    `drtool watch` has always had)."""
    seen = []
    for host in site.hosts:
        problem = found[host.name]
        if problem is None or streaks[host.name] < need:
            seen.append(InstanceHealth(host.name, site.name, True, None, t))
        else:
            degraded = problem[len("degraded: "):] if problem.startswith("degraded: ") else None
            reachable = degraded is not None or ssh_banner(host.address, host.port, timeout=reach_timeout)
            seen.append(InstanceHealth(host.name, site.name, degraded is not None, degraded, t,
                                       host_reachable=bool(reachable)))
    return seen


def run(config: Config, out: Output, site_name: str, failures: int | None, interval: float | None,
        exit_on_trigger: bool, max_probes: int | None = None, exit_on_recovery: bool = False) -> dict:
    site = config.site(site_name)
    if site.role != "primary":
        raise UsageError(f"site {site.name} is not a primary site", hint="watch the site that serves, e.g. prod-west")
    need = failures or config.watch.failures
    every = interval or config.watch.interval_s
    settings = config.ha
    pick_model(config, None)   # a restart redeploys the one model: refuse to start without one, not at a restart
    base = alerts_state_dir(config)
    book = DecisionBook(config, base, subprocess_launcher(config, base / "runs"))
    fingerprint = hashlib.sha256(f"drtool-watch:{site.name}".encode()).hexdigest()[:16]
    ladder = SiteLadder(config, site, book, base, real_remedies(config), ALERT_NAME, "drtool watch", fingerprint)
    streaks = {h.name: 0 for h in site.hosts}
    restarted_at: dict[str, float] = {}
    first_failure, probes, decisions, recoveries, drains = None, 0, [], [], []
    problem_since: dict[str, float] = {}   # each host's first failed probe of its current streak
    out.info(f"watching {site.name}'s {site.health_path} on port {site.serving_port} every {every:g}s; "
             f"{need} consecutive failures of a host climb the ladder (restart {settings.policy.restart}, "
             f"drain {settings.policy.drain}, failover {settings.policy.failover}: alert policy "
             f"{config.alerts.policy}); ladder state {ladder.path}")
    while max_probes is None or probes < max_probes:
        probes += 1
        t = time.time()
        found = probe(site, config.watch.timeout_s)
        for h, problem in found.items():
            streaks[h] = 0 if problem is None else streaks[h] + 1
            if problem is None:
                problem_since.pop(h, None)
            else:
                problem_since.setdefault(h, t)
            if problem is None and h in restarted_at:
                since = restarted_at.pop(h)
                recoveries.append({"instance": h, "rung": "restart", "ready_after_s": round(t - since, 3)})
                out.info(f"{h} serves again {t - since:.1f}s after its restart")
        streak = min(streaks.values())  # probes in a row that every host failed
        if streak == 0:
            if first_failure is not None:
                out.info(f"{site.name} healthy again")
            first_failure = None
        else:
            first_failure = first_failure or t
            out.info(f"probe {probes}: {site.name} failing ({streak}/{need}): "
                     + ", ".join(f"{h}: {v}" for h, v in found.items()))
        result = ladder.climb(observe(site, found, streaks, need, t, config.watch.timeout_s), t, first_failure)
        for d in result.resolved:
            out.info(f"decision: {d['action']} {d.get('run_id', '')} {d.get('why', '')}".rstrip())
            decisions.append(d)
        for step in result.steps:
            action = step.action
            if action.kind == "restart":
                out.info(f"ladder: restarted {action.instance}'s container in place: {step.outcome} ({action.reason})"
                         + (f": {step.detail}" if step.detail else ""))
                if step.outcome == "ok":
                    restarted_at[action.instance] = t
            elif action.kind == "wait_approval":
                out.info(f"ladder: {action.awaits} of {action.instance or action.site} awaits approval "
                         f"({action.reason})")
            elif action.kind in ("drain", "undrain"):
                verb = "drained" if action.kind == "drain" else "undrained"
                out.info(f"ladder: {verb} {action.instance} at {site.name}'s Nginx: {step.outcome} ({action.reason})"
                         + (f": {step.detail}" if step.detail else ""))
                if action.kind == "drain" and step.outcome == "ok":
                    since = problem_since.get(action.instance, t)
                    drains.append({"instance": action.instance, "rung": "drain", "reason": action.reason,
                                   "drained_at": step.done_at,
                                   "after_first_failure_s": round(step.done_at - since, 3)})
            elif action.kind == "failover":
                for d in step.decisions:
                    if not d.get("duplicate"):
                        out.info(f"decision: {d['action']} {d.get('run_id', '')} {d.get('why', '')}".rstrip())
                        decisions.append(d)
        if exit_on_trigger and any(d["action"] in (STARTED, AWAITING) for d in decisions):
            break
        if exit_on_recovery and (recoveries or drains) and not restarted_at:
            break
        time.sleep(max(0.0, every - (time.time() - t)))
    return {"site": site.name, "probes": probes, "failing_streak": streak, "decisions": decisions,
            "recoveries": recoveries, "drains": drains, "ladder": ladder.journal.summary(),
            "ladder_state": ladder.state.to_dict()}
