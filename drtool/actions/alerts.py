"""drtool alerts ingest: hand Alertmanager alerts (a webhook payload, or one alert) to the decision book `drtool serve`
uses, from a file or stdin: the same policy, firing time, cooldown, approval and exactly-once dedupe. What
Event-Driven Ansible's rulebook (ops/eda/) runs for each alert."""

import sys
from pathlib import Path

from drtool.actions.serve import decision_book
from drtool.alerts.decisions import Alert, alerts_state_dir, failover_target
from drtool.alerts.receiver import MAX_BODY, parse_alerts
from drtool.config import Config
from drtool.errors import OperationFailed, UsageError
from drtool.output import Output


def read_source(source: str) -> bytes:
    """The document to ingest: `-` is stdin, anything else a file; at most MAX_BODY bytes, as `drtool serve` takes."""
    try:
        if source == "-":
            body = sys.stdin.buffer.read(MAX_BODY + 1)
        else:
            with open(source, "rb") as f:
                body = f.read(MAX_BODY + 1)
    except OSError as exc:
        raise UsageError(f"cannot read {source}: {exc.strerror}") from None
    if len(body) > MAX_BODY:
        raise UsageError(f"{'stdin' if source == '-' else source} holds over {MAX_BODY} bytes: not an Alertmanager "
                         "payload")
    return body


def site_problems(config: Config, alerts: list[Alert]) -> list[str]:
    """Why alerts cannot be decided here, one line each (none: every alert names a primary site as a whole)."""
    problems = []
    for a in alerts:
        what = f"alert {a.name} ({a.fingerprint})"
        if a.labels.get("instance"):
            # The ladder (restart, drain) lives in `drtool serve`; an instance's alert must never fail a site over.
            problems.append(f"{what} is about one instance (instance={a.labels['instance']!r}): only site-level "
                            "alerts are decided here; `drtool serve` takes instance alerts up their escalation ladder")
            continue
        _, problem = failover_target(config, a.site)
        if problem:
            problems.append(f"{what}: {problem}")
    return problems


def ingest(config: Config, out: Output, source: str) -> dict:
    """Parse the alerts in `source`, refuse them all (UsageError, nothing recorded) when one is malformed or names no
    primary site, else decide each through the decision book (launching or queueing at most one failover per
    outage). The decisions, as `drtool serve` answers them; OperationFailed (exit 1) when an outage could not be
    claimed in its DR site's object store (recorded pending, not decided)."""
    try:
        alerts = parse_alerts(read_source(source))
    except ValueError as exc:
        raise UsageError(f"{'stdin' if source == '-' else source}: {exc}", hint=(
            "give an Alertmanager v4 webhook payload, or one of its alerts (status, labels with alertname and site, "
            "startsAt, fingerprint), as JSON")) from None
    if not alerts:
        raise UsageError("the payload holds no alert: nothing to decide")
    problems = site_problems(config, alerts)
    if problems:
        raise UsageError(f"{len(problems)} of {len(alerts)} alert(s) cannot be decided; nothing was recorded",
                         hint="route only site-level alerts (ModelPrimaryDown) of a primary site here; the site label "
                              "names a site of the configuration",
                         details=problems)
    book = decision_book(config)
    try:
        decisions = book.handle(alerts)
    except OSError as exc:
        raise OperationFailed(f"cannot record decisions in {book.path}: {exc.strerror or exc}") from None
    result = {"policy": config.alerts.policy, "state_dir": str(alerts_state_dir(config)),
              "decisions_file": str(Path(book.path)), "decisions": decisions}
    undecided = [d for d in decisions if d.get("claim_error")]
    if undecided:
        # Recorded as pending and tried again at the next notification, as `drtool serve` does; but a caller that
        # only sees an exit code (a playbook task) must see that nothing was decided.
        raise OperationFailed(f"{len(undecided)} alert(s) not decided: the DR site's object store, where each outage "
                              "is claimed, could not be reached", details=[d["why"] for d in undecided],
                              hint="fix access to that store (the failover needs it too); the next notification "
                                   "tries again", result=result)
    return result


def render(result: dict):
    def show(console) -> None:
        for d in result["decisions"]:
            line = f"{d['alert']} ({d['fingerprint']}) site {d.get('site')}: {d['action']}"
            if d.get("duplicate"):
                line += " (already decided)"
            if d.get("run_id"):
                line += f", run {d['run_id']}"
            if d.get("why"):
                line += f" — {d['why']}"
            console.print(line, markup=False, highlight=False)

    return show
