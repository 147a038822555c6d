"""drtool watch: probe the primary's serving instances from the DR side and climb the escalation ladder
(drtool/ha/ladder.py, docs/failover.md) for an instance that stays down or degraded for N consecutive probes.
An instance is one service on one host (drtool/ha/instances.py): every service of the site is probed on each of its
home hosts at its own port. (1) restart that service's container in place, (2) drain it from the site's Nginx
(sites with a `proxy`; only the service on the site's own record is behind it) so the site's other GPU serves, and
undrain it once it reports healthy again, (3) only when no instance of the site serves, hand ONE alert for the site
to the same DecisionBook `drtool serve` uses (firing time, cooldown, policy, exactly once), so a watch and an
Alertmanager never start two failovers for one outage. The climb is `drtool.ha.executor.SiteLadder`, the one
`drtool serve` uses for instance alerts: every rung decided and its outcome go to the ladder's journal, and its state
(restart counts, drains, per instance) is saved per site, so a restarted watch keeps its restart limits."""

import hashlib
import time

import requests

from drtool.actions.serve import real_remedies, subprocess_launcher
from drtool.alerts.decisions import AWAITING, STARTED, DecisionBook, alerts_state_dir
from drtool.config import Config, Site
from drtool.errors import UsageError
from drtool.execute.serving import base_url
from drtool.ha.executor import SiteLadder
from drtool.ha.instances import ServingInstance, site_instances
from drtool.ha.ladder import InstanceHealth
from drtool.output import Output
from drtool.providers.base import ssh_banner

ALERT_NAME = "DrtoolWatchPrimaryDown"


def watched(config: Config, site: Site) -> tuple[ServingInstance, ...]:
    """The site's instances, one per service and home host; UsageError where a restart could not name the model
    (several models on the site's one port) or the site serves nothing."""
    instances = site_instances(config, site)
    if not instances:
        raise UsageError(f"site {site.name} serves no service", hint="name its services in `services:`")
    if any(i.model is None for i in instances):
        raise UsageError("this configuration has several models on one port: a restart would not know which one",
                         hint=f"name the services of {site.name} in `services:`, each with its own port")
    return instances


def urls(site: Site, instances: tuple[ServingInstance, ...]) -> dict[str, str]:
    """Each instance's health URL: its host, its service's port, the site's health path."""
    return {i.name: base_url(i.host.address, i.port) + site.health_path for i in instances}


def probe(targets: dict[str, str], timeout: float) -> dict[str, str | None]:
    """Each instance's problem (None when healthy), from its health URL: connection errors, timeouts and non-200
    answers all count. A 503 whose body says `degraded` (a GPU over its limit) is reported as `degraded: <reason>`."""
    return {name: _problem(url, timeout) for name, url in targets.items()}


def _problem(url: str, timeout: float) -> str | None:
    try:
        resp = requests.get(url, timeout=timeout)
    except requests.RequestException as exc:
        return type(exc).__name__
    if resp.status_code == 200:
        return None
    try:
        body = resp.json()
    except ValueError:
        body = {}
    degraded = isinstance(body, dict) and body.get("state") == "degraded"
    return f"degraded: {body.get('reason')}" if degraded else f"HTTP {resp.status_code}"


def observe(site: Site, instances: tuple[ServingInstance, ...], found: dict[str, str | None],
            streaks: dict[str, int], need: int, t: float, reach_timeout: float) -> list[InstanceHealth]:
    """The ladder's observations: an instance failing for `need` probes in a row is down or degraded (and its host
    answers SSH or not: asked once per host and round); any other counts as healthy (a failure or two is not an
    outage: the debounce `drtool watch` has always had)."""
    seen, reachable = [], {}
    for inst in instances:
        problem = found[inst.name]
        if problem is None or streaks[inst.name] < need:
            seen.append(InstanceHealth(inst.name, site.name, True, None, t))
            continue
        degraded = problem[len("degraded: "):] if problem.startswith("degraded: ") else None
        host = inst.host
        if degraded is None and host.name not in reachable:
            reachable[host.name] = bool(ssh_banner(host.address, host.port, timeout=reach_timeout))
        seen.append(InstanceHealth(inst.name, site.name, degraded is not None, degraded, t,
                                   host_reachable=degraded is not None or reachable[host.name]))
    return seen


def run(config: Config, out: Output, site_name: str, failures: int | None, interval: float | None,
        exit_on_trigger: bool, max_probes: int | None = None, exit_on_recovery: bool = False) -> dict:
    site = config.site(site_name)
    if site.role != "primary":
        raise UsageError(f"site {site.name} is not a primary site", hint="watch the site that serves, e.g. prod-west")
    need = failures or config.watch.failures
    every = interval or config.watch.interval_s
    settings = config.ha
    instances = watched(config, site)   # refuse a site whose restarts could not name their model, not at a restart
    targets = urls(site, instances)
    base = alerts_state_dir(config)
    book = DecisionBook(config, base, subprocess_launcher(config, base / "runs"))
    fingerprint = hashlib.sha256(f"drtool-watch:{site.name}".encode()).hexdigest()[:16]
    ladder = SiteLadder(config, site, book, base, real_remedies(config), ALERT_NAME, "drtool watch", fingerprint)
    streaks = {i.name: 0 for i in instances}
    restarted_at: dict[str, float] = {}
    first_failure, probes, decisions, recoveries, drains = None, 0, [], [], []
    problem_since: dict[str, float] = {}   # each instance's first failed probe of its current streak
    out.info(f"watching {site.name}'s {site.health_path} on "
             + ", ".join(f"{i.name} (port {i.port})" for i in instances) + f" every {every:g}s; "
             f"{need} consecutive failures of an instance climb the ladder (restart {settings.policy.restart}, "
             f"drain {settings.policy.drain}, failover {settings.policy.failover}: alert policy "
             f"{config.alerts.policy}); ladder state {ladder.path}")
    while max_probes is None or probes < max_probes:
        probes += 1
        t = time.time()
        found = probe(targets, config.watch.timeout_s)
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
        streak = min(streaks.values())  # probes in a row that every instance failed
        if streak == 0:
            if first_failure is not None:
                out.info(f"{site.name} healthy again")
            first_failure = None
        else:
            first_failure = first_failure or t
            out.info(f"probe {probes}: {site.name} failing ({streak}/{need}): "
                     + ", ".join(f"{h}: {v}" for h, v in found.items()))
        result = ladder.climb(observe(site, instances, found, streaks, need, t, config.watch.timeout_s), t,
                              first_failure)
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
