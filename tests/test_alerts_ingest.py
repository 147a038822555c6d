"""drtool alerts ingest: Alertmanager alerts from a file or stdin, decided by the decision book `drtool serve` uses
(policy, firing time, cooldown, exactly once); bad input is refused with exit 2 and nothing recorded."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from .conftest import REPO, run_cli


def ingest_config(tmp_path: Path, **alerts) -> Path:
    """The example configuration, alerts decided in tmp_path (dr-east's store, where outages are claimed, too)."""
    doc = yaml.safe_load((REPO / "inventory" / "drtool.example.yaml").read_text())
    (tmp_path / "dr-store").mkdir(exist_ok=True)
    doc["sites"]["dr-east"]["object_stores"] = [{"url": f"file://{tmp_path / 'dr-store'}"}]
    doc["alerts"] = {"policy": "approve", "firing_for_s": 0, "cooldown_s": 600,
                     "state_dir": str(tmp_path / "state"), **alerts}
    path = tmp_path / "drtool.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


# One start for every alert of a module: the same fingerprint and start are the same outage.
STARTS = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 120))


def primary_down(site="prod-west", status="firing", fingerprint="9f3c2a1b7d4e5f60", **labels) -> dict:
    """One alert as Alertmanager sends ModelPrimaryDown (ops/prometheus/drtool-rules.yml's labels)."""
    return {"status": status, "startsAt": STARTS, "endsAt": "0001-01-01T00:00:00Z", "fingerprint": fingerprint,
            "labels": {"alertname": "ModelPrimaryDown", "site": site, "site_role": "primary", "severity": "page",
                       **labels},
            "annotations": {"summary": f"Model server of primary site {site} is down", "runbook": "docs/failover.md"},
            "generatorURL": "http://prometheus:9090/graph"}


def payload(*alerts: dict) -> dict:
    """An Alertmanager v4 webhook payload carrying `alerts`."""
    return {"version": "4", "status": alerts[0]["status"], "receiver": "drtool", "groupKey": "{}:{alertname,site}",
            "truncatedAlerts": 0, "groupLabels": {"alertname": "ModelPrimaryDown"}, "commonLabels": {},
            "commonAnnotations": {}, "externalURL": "http://alertmanager:9093", "alerts": list(alerts)}


def decisions(tmp_path: Path) -> dict:
    path = tmp_path / "state" / "alerts" / "decisions.json"
    return json.loads(path.read_text())["decisions"] if path.exists() else {}


def ingest(cfg: Path, doc, *extra: str, file: Path | None = None):
    """`drtool --json alerts ingest` with `doc` in a file (or the raw string `doc`)."""
    file = file or cfg.parent / "alert.json"
    file.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    proc = run_cli("--config", str(cfg), "--json", "alerts", "ingest", *extra, str(file))
    return proc, json.loads(proc.stdout) if proc.stdout.strip() else None


def test_a_payload_is_queued_for_approval_once_and_its_repeat_is_a_duplicate(tmp_path):
    cfg = ingest_config(tmp_path)
    proc, out = ingest(cfg, payload(primary_down()))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (first,) = out["decisions"]
    assert first["action"] == "awaiting_approval" and first["target"] == "dr-east" and "--approve" in first["why"]
    proc, out = ingest(cfg, payload(primary_down()))
    assert proc.returncode == 0
    assert out["decisions"][0]["duplicate"] and out["decisions"][0]["run_id"] == first["run_id"]
    (rec,) = decisions(tmp_path).values()
    assert rec["action"] == "awaiting_approval" and rec["count"] == 2


def test_one_alert_on_stdin_is_decided_and_its_resolve_cancels_the_approval(tmp_path):
    """The alertmanager source's form: one alert, no payload around it, here on stdin."""
    import subprocess

    cfg = ingest_config(tmp_path)
    exe = REPO / ".venv" / "bin" / "drtool"

    def on_stdin(doc):
        return subprocess.run([str(exe), "--config", str(cfg), "--json", "alerts", "ingest"], input=json.dumps(doc),
                              capture_output=True, text=True, timeout=120)

    proc = on_stdin(primary_down())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["decisions"][0]["action"] == "awaiting_approval"
    proc = on_stdin(primary_down(status="resolved"))   # the same outage (fingerprint and start), over
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["decisions"][0]["action"] == "cancelled"


@pytest.mark.parametrize("doc, says", [
    ("{not json", "not JSON"),
    ({"version": "4", "status": "firing"}, "'alerts' is a required property"),
    ({"version": "3", "status": "firing", "alerts": []}, "version"),
    ({"labels": {"alertname": "ModelPrimaryDown"}}, "required property"),
    (payload(dict(primary_down(), fingerprint="../../etc")), "fingerprint"),
    (payload(dict(primary_down(), startsAt="yesterday")), "startsAt"),
], ids=["not-json", "no-alerts", "version-3", "alert-without-status", "bad-fingerprint", "bad-start"])
def test_a_malformed_document_is_refused_with_exit_2_and_nothing_recorded(tmp_path, doc, says):
    cfg = ingest_config(tmp_path)
    proc, out = ingest(cfg, doc)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert out["error"] == "UsageError" and says in out["message"], out
    assert decisions(tmp_path) == {}


@pytest.mark.parametrize("alert, says", [
    (primary_down(site="dr-east"), "names a DR site"),
    (primary_down(site="mars"), "names no configured site"),
    (dict(primary_down(), labels={"alertname": "ModelPrimaryDown"}), "names no configured site"),
    (primary_down(instance="pw-gpu1:8000"), "about one instance"),
], ids=["dr-site", "unknown-site", "no-site-label", "instance-alert"])
def test_an_alert_that_names_no_primary_site_is_refused_and_nothing_recorded(tmp_path, alert, says):
    """A batch is refused whole: the good alert beside the bad one is not decided either."""
    cfg = ingest_config(tmp_path)
    proc, out = ingest(cfg, payload(primary_down(fingerprint="0a0a"), dict(alert, fingerprint="0b0b")))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "nothing was recorded" in out["message"]
    assert len(out["details"]) == 1 and says in out["details"][0] and "0b0b" in out["details"][0]
    assert decisions(tmp_path) == {}


def test_an_outage_that_cannot_be_claimed_in_the_dr_store_exits_1_and_stays_pending(tmp_path):
    cfg = ingest_config(tmp_path)
    doc = yaml.safe_load(cfg.read_text())
    doc["sites"]["dr-east"]["object_stores"] = [{"url": f"file://{tmp_path / 'not-mounted'}"}]
    cfg.write_text(yaml.safe_dump(doc))
    proc, out = ingest(cfg, payload(primary_down()))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "not decided" in out["message"] and "NOT DECIDED" in out["details"][0]
    assert out["result"]["decisions"][0]["action"] == "pending"
    (rec,) = decisions(tmp_path).values()
    assert rec["action"] == "pending" and "run_id" not in rec


def test_a_missing_file_is_a_usage_error(tmp_path):
    cfg = ingest_config(tmp_path)
    proc = run_cli("--config", str(cfg), "alerts", "ingest", str(tmp_path / "nowhere.json"))
    assert proc.returncode == 2 and "cannot read" in proc.stderr and "nowhere.json" in proc.stderr


def test_help_lists_the_exit_codes():
    proc = run_cli("alerts", "ingest", "--help")
    assert proc.returncode == 0
    assert "Exit codes:" in proc.stdout and "stdin" in proc.stdout
