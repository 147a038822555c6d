"""In-site high availability on the lab (issue #17): prod-west's two GPU hosts behind its Nginx (pw-lb), the
escalation ladder draining a degraded instance under load, and ending in the cross-site failover when both fail."""

from __future__ import annotations

import json

import pytest
import yaml

from drtool.actions import watch
from drtool.config import load_config
from drtool.output import Output

from .conftest import FRONT, PW_HOSTS, dig, ended_report, run_cli

pytestmark = pytest.mark.lab
STANDBY1 = "10.77.0.21"


def _fault_file(lab, host: str):
    return lab.state_dir / "hosts" / host / "srv" / "drtool" / "gpu-fault" / "gpu-fault.json"


def _instances(lab) -> dict:
    path = lab.state_dir / "hosts" / "pw-lb" / "srv" / "drtool" / "serving-proxy" / "instances.json"
    return {i["name"]: i for i in json.loads(path.read_text())}


def test_the_record_points_at_nginx_with_both_gpu_hosts_behind_it(lab, production):
    assert dig() == FRONT
    deployed = _instances(lab)
    assert deployed["pw-gpu1"]["role"] == "primary" and deployed["pw-gpu2"]["role"] == "backup"
    assert not any(i["drained"] for i in deployed.values())


@pytest.mark.nightly   # a drill under Locust load: about 2 minutes
def test_gpu_degraded_drill_drains_the_hot_instance_under_load_without_errors(lab, production, tmp_path,
                                                                              monkeypatch):
    monkeypatch.setenv("DRTOOL_STATE_DIR", str(tmp_path / "state"))
    proc = run_cli("--json", "drill", "--site", "dr-east", "--scenario", "gpu-degraded",
                   "--report", str(tmp_path / "report"))
    result = json.loads(proc.stdout)
    assert proc.returncode == 0, json.dumps(result, indent=1)[:6000]
    (sc,) = result["scenarios"]
    checks = {c["name"]: c for c in sc["checks"]}
    assert checks["drained_not_restarted"]["passed"] and checks["no_failover"]["passed"]
    assert checks["dns_unchanged"]["evidence"]["after"] == [FRONT]
    load = sc["load"]
    assert load["error_rate"] == 0 and load["requests"] > 0 and load["p95_ms"] <= 2000  # the lab's SLO
    assert checks["load_spanned_the_switch"]["passed"]
    assert 0 < sc["rto_s"] < 60 and sc["split"]["drain"] > 0       # fault to drained, reported
    assert sc["ladder"]["instances"]["pw-gpu1"]["drained"] is True
    steps = [s["name"] for s in sc["steps"]]
    assert steps.index("fault") < steps.index("detect") < steps.index("drain")
    # Cleanup cleared the fault and put pw-gpu1 back: production as before.
    assert not _fault_file(lab, "pw-gpu1").exists()
    assert not _instances(lab)["pw-gpu1"]["drained"]
    assert dig() == FRONT and sc["not_cleaned"] == []


@pytest.mark.nightly   # a failover and its failback: about 1.5 minutes
def test_both_instances_degraded_the_ladder_ends_in_the_cross_site_failover(lab, lab_config, production, state,
                                                                            tmp_path, back_to_production):
    """Neither rung cures it: a restart does not cool a GPU, and draining one would leave no healthy instance. The
    ladder hands the site to the alert path (policy auto here) and the failover moves the record to dr-east."""
    doc = yaml.safe_load(lab_config.path.read_text())
    doc["alerts"] = {"policy": "auto", "firing_for_s": 0, "cooldown_s": 3600, "state_dir": str(tmp_path / "alerts")}
    cfg_path = tmp_path / "drtool.yaml"
    cfg_path.write_text(yaml.safe_dump(doc))
    cfg = load_config(cfg_path)
    files = [_fault_file(lab, h) for h in PW_HOSTS]
    # The GPUs stay hot until the failover has ended: cooled earlier, the primary would serve again and the
    # unplanned failover would rightly refuse it (exit 2) at preflight.
    try:
        for f in files:
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(json.dumps({"device": 0, "temperature_c": 97, "memory_used_pct": 40}))
        result = watch.run(cfg, Output(json_mode=True), "prod-west", failures=2, interval=0.5, exit_on_trigger=True,
                           max_probes=120)
        decisions = result["decisions"]
        for d in decisions:
            if d.get("run_id"):
                ended_report(state / "runs" / f"{d['run_id']}.report.json", timeout=600)
    finally:
        for f in files:
            f.unlink(missing_ok=True)
    (decision,) = decisions
    assert decision["action"] == "started"
    ladder = result["ladder"]
    for h in PW_HOSTS:
        kinds = [r["kind"] for r in ladder["instances"].get(h, {}).get("rungs", [])]
        assert "restart" not in kinds and "drain" not in kinds, (h, kinds)
    (site_failover,) = ladder["sites"]["prod-west"]["failovers"]
    assert site_failover["kind"] == "failover" and "no healthy undrained instance" in site_failover["reason"]
    report_path = tmp_path / "alerts" / "runs" / f"{decision['run_id']}.log"
    report = ended_report(state / "runs" / f"{decision['run_id']}.report.json", timeout=1)
    assert report["status"] == "done", report_path.read_text()[-3000:] if report_path.exists() else report
    assert dig() == STANDBY1   # back_to_production fails back to pw-lb afterwards
