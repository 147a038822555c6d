"""drtool watch: probe the primary's health endpoint from the DR side; after N consecutive failures of every
primary host, hand an alert to the same DecisionBook `drtool serve` uses (firing time, cooldown, policy, exactly
once), so a watch and an Alertmanager never start two failovers for one outage."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import requests

from drtool.actions.serve import subprocess_launcher
from drtool.alerts.decisions import AWAITING, STARTED, Alert, DecisionBook
from drtool.config import Config, Site
from drtool.errors import UsageError
from drtool.execute.serving import base_url
from drtool.output import Output
from drtool.paths import state_dir

ALERT_NAME = "DrtoolWatchPrimaryDown"


def probe(site: Site, timeout: float) -> dict[str, str | None]:
    """Each host's problem (None when healthy): connection errors, timeouts and non-200 answers all count."""
    found = {}
    for host in site.hosts:
        url = base_url(host.address, site.serving_port) + site.health_path
        try:
            resp = requests.get(url, timeout=timeout)
            found[host.name] = None if resp.status_code == 200 else f"HTTP {resp.status_code}"
        except requests.RequestException as exc:
            found[host.name] = type(exc).__name__
    return found


def run(config: Config, out: Output, site_name: str, failures: int | None, interval: float | None,
        exit_on_trigger: bool, max_probes: int | None = None) -> dict:
    site = config.site(site_name)
    if site.role != "primary":
        raise UsageError(f"site {site.name} is not a primary site", hint="watch the site that serves, e.g. prod-west")
    need = failures or config.watch.failures
    every = interval or config.watch.interval_s
    base = Path(config.alerts.state_dir) if config.alerts.state_dir else state_dir()
    book = DecisionBook(config, base, subprocess_launcher(config, base / "runs"))
    fingerprint = hashlib.sha256(f"drtool-watch:{site.name}".encode()).hexdigest()[:16]
    streak, first_failure, probes, decisions = 0, None, 0, []
    out.info(f"watching {site.name}'s {site.health_path} on port {site.serving_port} every {every:g}s; "
             f"{need} consecutive failures of every host start the alert path (policy {config.alerts.policy})")
    while max_probes is None or probes < max_probes:
        probes += 1
        t = time.time()
        found = probe(site, config.watch.timeout_s)
        if any(v is None for v in found.values()):
            if streak:
                out.info(f"{site.name} healthy again after {streak} failed probe(s)")
            streak, first_failure = 0, None
        else:
            streak += 1
            first_failure = first_failure or t
            out.info(f"probe {probes}: {site.name} failing ({streak}/{need}): "
                     + ", ".join(f"{h}: {v}" for h, v in found.items()))
            if streak >= need:
                alert = Alert(fingerprint=fingerprint, status="firing", name=ALERT_NAME, site=site.name,
                              starts_at=first_failure, labels={"alertname": ALERT_NAME, "site": site.name,
                                                                "source": "drtool watch"})
                for d in book.handle([alert]):
                    if not d.get("duplicate"):
                        out.info(f"decision: {d['action']} {d.get('run_id', '')} {d.get('why', '')}".rstrip())
                        decisions.append(d)
                if exit_on_trigger and any(d["action"] in (STARTED, AWAITING) for d in decisions):
                    break
        time.sleep(max(0.0, every - (time.time() - t)))
    return {"site": site.name, "probes": probes, "failing_streak": streak, "decisions": decisions}
