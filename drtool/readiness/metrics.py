"""The readiness result as a Prometheus textfile (node_exporter's textfile collector). Pure: text out; the action
writes it atomically. Every series carries its own `site` (the controller's scrape job adds none)."""

from drtool.readiness.rules import PASS

HELP = {
    "drtool_readiness_last_run_timestamp_seconds": "When drtool readiness last checked the DR site.",
    "drtool_readiness_site_ready": "1 when every service of the site is ready to fail over to this DR site.",
    "drtool_readiness_ready": "1 when every readiness rule of the service passes.",
    "drtool_readiness_rule_passed": "1 when the readiness rule passes for the service (0: failed or blocked).",
    "drtool_readiness_predicted_rto_seconds": "Predicted RTO of the service (its record flipped) at this DR site.",
    "drtool_readiness_fleet_predicted_rto_seconds": "Predicted RTO of the whole site: its last service back.",
    "drtool_readiness_rto_target_seconds": "The RTO target the prediction is compared against.",
    "drtool_readiness_snapshot_age_seconds": "Age of the snapshot a failover would restore, at the check.",
}


def _labels(**kv) -> str:
    body = ",".join(f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
                    for k, v in kv.items())
    return "{" + body + "}"


def render(doc: dict) -> str:
    """The textfile for one readiness result (the `--json` document)."""
    site = doc["site"]
    series: dict[str, list[str]] = {name: [] for name in HELP}

    def add(name: str, value, **labels) -> None:
        if value is not None:
            series[name].append(f"{name}{_labels(site=site, **labels)} {float(value):g}")

    add("drtool_readiness_last_run_timestamp_seconds", doc["checked_at"])
    add("drtool_readiness_site_ready", 1 if doc["ready"] else 0)
    add("drtool_readiness_fleet_predicted_rto_seconds", doc["rto"]["predicted_s"])
    add("drtool_readiness_rto_target_seconds", doc["targets"]["rto_s"])
    for svc in doc["services"]:
        add("drtool_readiness_ready", 1 if svc["ready"] else 0, service=svc["service"])
        add("drtool_readiness_predicted_rto_seconds", svc["predicted_rto_s"], service=svc["service"])
        for r in svc["rules"]:
            add("drtool_readiness_rule_passed", 1 if r["status"] == PASS else 0, service=svc["service"],
                rule=r["rule"])
            if r["rule"] == "snapshot":
                add("drtool_readiness_snapshot_age_seconds", (r["evidence"] or {}).get("age_s"),
                    service=svc["service"])
    lines = []
    for name, rows in series.items():
        if rows:
            lines += [f"# HELP {name} {HELP[name]}", f"# TYPE {name} gauge", *rows]
    return "\n".join(lines) + "\n"
