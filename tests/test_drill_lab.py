"""Game-day drills on the lab, for real: faults injected into the lab, detection through Prometheus and
Alertmanager, failover to the drill record, RTO/RPO measured, Locust load on the DR endpoint, cleanup always, and
production compared (not assumed) to be exactly as it was."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import pytest

from .conftest import MODEL, PROD_VERSION, REPO, cli_json, dig, run_cli
from .test_failover_lab import PRIMARY

pytestmark = pytest.mark.lab
DRILL_RECORD = "drill.model.drlab.test"


def standbys_cold(lab) -> bool:
    return not lab.is_powered("de-gpu1") and not lab.is_powered("de-gpu2")


@pytest.fixture
def drill_state(tmp_path, monkeypatch):
    monkeypatch.setenv("DRTOOL_STATE_DIR", str(tmp_path / "state"))
    return tmp_path


def run_drill(tmp_path, *scenarios: str) -> tuple[int, dict]:
    args = ["--json", "drill", "--site", "dr-east", "--report", str(tmp_path / "report")]
    for s in scenarios:
        args += ["--scenario", s]
    proc = run_cli(*args)
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def assert_production_as_before(lab, result):
    for sc in result["scenarios"]:
        checks = {c["name"]: c for c in sc["checks"]}
        for name in ("production_dns_unchanged", "primary_unchanged", "steady_state_after"):
            assert checks[name]["passed"], (sc["scenario"], checks[name])
        assert sc["not_cleaned"] == []
    assert dig() == PRIMARY and dig(DRILL_RECORD) == ""
    assert standbys_cold(lab)


def test_primary_down_drill_through_the_alert_chain(lab, production, drill_state):
    before_ttl = subprocess.run(["dig", "@10.77.0.2", "model.drlab.test", "A", "+noall", "+answer"],
                                capture_output=True, text=True, check=True).stdout.split()[1]
    code, result = run_drill(drill_state, "primary-down")
    assert code == 0, json.dumps(result, indent=1)[:4000]
    sc = result["scenarios"][0]
    assert sc["passed"] and sc["scenario"] == "primary-down"
    names = [s["name"] for s in sc["steps"]]
    assert names[:4] == ["steady_state", "fault", "detect", "decide"] and "flip_dns" in names and "load" in names
    assert 0 < sc["split"]["detection"] < 60 and sc["rto_s"] > sc["split"]["detection"]
    assert sc["rpo_s"] is not None and sc["rpo_s"] > 0
    load = sc["services"][MODEL]["capacity"]
    assert load["requests"] == 200 and load["canary_mismatches"] == 0 and load["passed"]
    flip = next(s for s in sc["steps"] if s["name"] == "flip_dns")
    assert flip["evidence"]["record"] == DRILL_RECORD  # the drill record moved, not production
    assert_production_as_before(lab, result)
    after_ttl = subprocess.run(["dig", "@10.77.0.2", "model.drlab.test", "A", "+noall", "+answer"],
                               capture_output=True, text=True, check=True).stdout.split()[1]
    assert after_ttl == before_ttl
    report = drill_state / "report"
    assert json.loads((report / "report.json").read_text())["drill_id"] == result["drill_id"]
    suites = ET.parse(report / "junit.xml").getroot()
    assert int(suites.get("failures", "0") or 0) == 0 and len(suites.findall(".//testcase")) >= 8
    assert "timeline-primary-down" in (report / "report.html").read_text()
    history = cli_json("drill", "history", "--site", "dr-east")
    assert result["drill_id"] in [r["drill_id"] for r in history["drills"]]


def test_process_crash_is_cured_in_the_site_by_a_restart_in_place(lab, production, drill_state):
    """Issue #17: the serving container stops; the escalation ladder restarts it in place, it serves again, no
    failover is decided, DNS does not move, and the report says how long it took."""
    code, result = run_drill(drill_state, "process-crash")
    (sc,) = result["scenarios"]
    checks = {c["name"]: c for c in sc["checks"]}
    assert code == 0 and sc["passed"], json.dumps(sc["checks"], indent=1)[:4000]
    assert [s["name"] for s in sc["steps"]][:5] == ["steady_state", "fault", "detect", "restart", "ready"]
    assert checks["no_failover"]["passed"] and checks["restarted_in_place"]["passed"]
    assert 0 < sc["split"]["detection"] < sc["rto_s"] and 0 < sc["split"]["restart_to_ready"] < sc["rto_s"]
    assert sc["ladder"]["instances"]["pw-gpu1"]["restarts"] == 1
    assert_production_as_before(lab, result)
    book = drill_state / "report" / "work" / "process-crash" / "alerts" / "alerts" / "decisions.json"
    assert not book.exists() or json.loads(book.read_text()).get("decisions", {}) == {}  # nothing queued either


@pytest.mark.nightly
@pytest.mark.parametrize("scenario", ["region-partition", "standby-boot-failure", "registry-mismatch"])
def test_fault_scenarios(lab, production, drill_state, scenario):
    code, result = run_drill(drill_state, scenario)
    sc = result["scenarios"][0]
    checks = {c["name"]: c for c in sc["checks"]}
    assert code == 0 and sc["passed"], json.dumps(sc["checks"], indent=1)[:4000]
    if scenario == "registry-mismatch":
        assert checks["failover_refused_exit_3"]["passed"] and checks["no_dns_flip"]["passed"]
        assert sc["rto_s"] is None
    elif scenario == "standby-boot-failure":
        tried = sc["services"][MODEL]["standbys_tried"]
        assert [t["host"] for t in tried] == ["de-gpu1", "de-gpu2"] and not tried[0]["ok"] and tried[1]["ok"]
    else:
        assert checks["fencing_recorded_unreachable"]["passed"]
    assert_production_as_before(lab, result)


@pytest.mark.nightly
def test_corrupt_latest_snapshot_falls_back_and_states_the_rpo(lab, lab_config, production, drill_state):
    # A newer nightly snapshot of the same version, with one file of its own (so an older one can still verify).
    # The backup snapshots both GPU hosts at once: each gets a file of its own, and the newer of the two (by its
    # `created`, as the fault picks it) is the one damaged.
    extras = [production["weights"].parents[3] / h / "srv" / "models" / MODEL / "NOTES.txt"
              for h in ("pw-gpu1", "pw-gpu2")]
    for extra in extras:
        extra.write_text(f"drill {time.time()} {extra.parts[-5]}\n")
    try:
        backup = cli_json("backup")
    finally:
        for extra in extras:
            extra.unlink()
    newest = max(backup["snapshots"], key=lambda s: s["created"])["id"]
    code, result = run_drill(drill_state, "corrupt-latest-snapshot")
    sc = result["scenarios"][0]
    checks = {c["name"]: c for c in sc["checks"]}
    assert code == 0 and sc["passed"], json.dumps(sc["checks"], indent=1)[:4000]
    assert checks["damaged_snapshot_refused"]["evidence"]["damaged"] == newest
    restored = sc["services"][MODEL]["snapshot"]["restored"]
    assert restored and restored != newest
    assert sc["rpo_s"] > 0  # the age of the older snapshot actually restored, at the fault
    # The damaged blob was put back: the newest snapshot verifies again.
    dr_store = lab_config.site("dr-east").object_stores[0].url
    assert run_cli("snapshot", "verify", newest, "--store", dr_store, "--read-data").returncode == 0
    assert_production_as_before(lab, result)


@pytest.mark.nightly   # about 1 minute
def test_interrupted_drill_still_cleans_up(lab, production, drill_state):
    env = dict(os.environ, DRTOOL_STATE_DIR=str(drill_state / "state"))
    proc = subprocess.Popen([sys.executable, "-m", "drtool", "--json", "drill", "--site", "dr-east",
                             "--report", str(drill_state / "report")], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and lab.is_powered("pw-gpu1"):  # halfway: the fault is in
        time.sleep(0.5)
    assert not lab.is_powered("pw-gpu1"), "the drill never injected its fault"
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=600)
    assert proc.returncode != 0
    report = json.loads((drill_state / "report" / "report.json").read_text())
    sc = report["scenarios"][0]
    assert "interrupted" in sc["error"] and sc["not_cleaned"] == [], err[-2000:]
    assert lab.is_powered("pw-gpu1") and dig() == PRIMARY and dig(DRILL_RECORD) == ""
    assert standbys_cold(lab)
    assert MODEL in json.dumps(report)


@pytest.mark.nightly
def test_live_drill_moves_production_and_fails_back(lab, production, drill_state):
    """--live: the production record itself moves to the DR site (fenced primary, verified standby), then drtool
    fails back; afterwards production is compared with what it was, as in every drill. A backup first, so that a
    newer snapshot of the production version than the one the primary serves exists: failback restores that one."""
    # The backup snapshots both GPU hosts at once; failback restores the newest of the version (by `created`).
    newer = max(cli_json("backup")["snapshots"], key=lambda s: s["created"])
    assert newer["version"] == PROD_VERSION
    assert dig() == PRIMARY
    proc = run_cli("--json", "drill", "--site", "dr-east", "--live", "--report", str(drill_state / "report"))
    assert proc.stdout, proc.stderr
    result = json.loads(proc.stdout)
    assert proc.returncode == 0, json.dumps(result, indent=1)[:4000]
    assert result["live"] and result["record"] == "model.drlab.test"
    (sc,) = result["scenarios"]
    assert sc["passed"] and sc["scenario"] == "primary-down"
    names = [s["name"] for s in sc["steps"]]
    assert "fence_primary" in names and names.index("fence_primary") < names.index("flip_dns")
    flip = next(s for s in sc["steps"] if s["name"] == "flip_dns")
    assert flip["evidence"]["record"] == "model.drlab.test" and flip["evidence"]["changed"]
    assert flip["evidence"]["before"] == [PRIMARY] and flip["evidence"]["after"] != [PRIMARY]
    assert flip["evidence"]["previous_saved"]  # the record it replaced, kept for `drtool dns restore`
    # The live RTO: fault to the production record answering with the verified standby, within the target.
    assert sc["rto_s"] is not None and sc["rto_s"] > sc["split"]["detection"] > 0
    assert sc["rto_s"] <= result["targets"]["rto_s"]
    load = sc["services"][MODEL]["capacity"]
    assert load["passed"] and load["canary_mismatches"] == 0  # loaded through the production record
    assert_production_as_before(lab, result)
    assert dig() == PRIMARY
    evidence = next(c for c in sc["checks"] if c["name"] == "primary_unchanged")["evidence"]
    # Fencing stopped both primary hosts' containers: failback redeployed each from the newest snapshot.
    for host in ("pw-gpu1", "pw-gpu2"):
        after = evidence["after"][host]
        assert after["version"] == PROD_VERSION and after["ready"] and after["snapshot_id"] == newer["id"], host
    assert evidence["snapshot_changed_on"] == ["pw-gpu1", "pw-gpu2"]


@pytest.mark.nightly
def test_interrupted_live_drill_leaves_production_serving(lab, production, drill_state):
    """Ctrl-C at the worst moment of a live drill: the production record already points at the DR standby. The
    drill fails back before it exits: the record is the primary's again and the primary serves the production
    version, verified."""
    from drtool.execute.serving import version

    assert dig() == PRIMARY
    env = dict(os.environ, DRTOOL_STATE_DIR=str(drill_state / "state"))
    proc = subprocess.Popen([sys.executable, "-m", "drtool", "--json", "drill", "--site", "dr-east", "--live",
                             "--report", str(drill_state / "report")], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and dig() == PRIMARY and proc.poll() is None:
            time.sleep(0.5)
        moved_to = dig()
        assert moved_to not in ("", PRIMARY), "the live drill never moved the production record"
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    report = json.loads((drill_state / "report" / "report.json").read_text())
    (sc,) = report["scenarios"]
    assert "interrupted" in (sc["error"] or "") and sc["not_cleaned"] == [], (sc["error"], err[-3000:])
    checks = {c["name"]: c for c in sc["checks"]}
    assert checks["production_dns_unchanged"]["passed"] and checks["steady_state_after"]["passed"], checks
    assert dig() == PRIMARY and standbys_cold(lab)
    served = version(f"http://{PRIMARY}:8080")
    assert served["model"] == MODEL and served["version"] == PROD_VERSION and served["ready"]


def test_region_down_injects_nothing_while_a_service_is_not_in_steady_state(lab, production, drill_state):
    """drtool-fleet.yaml plus one service nobody ever set up (no production version, no record, nothing serving it):
    region-down judges every service of the site before anything is injected, so it powers nothing off, writes no
    drill record, exits 3 and names that service and why."""
    import yaml

    doc = yaml.safe_load(lab.layout.fleet_config.read_text())
    image = doc["models"]["asr-demo"]["image"]
    doc["models"]["ghost-demo"] = {"weights_path": "/srv/models/ghost-demo", "image": image}
    doc["services"]["ghost"] = {"model": "ghost-demo", "site": "prod-west", "record": "ghost.drlab.test",
                                "port": 8086, "priority": 60}
    path = drill_state / "drtool-fleet-ghost.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    hosts = ("pw-gpu1", "pw-gpu2", "pw-lb", "de-gpu1", "de-gpu2")
    power_before = {h: lab.is_powered(h) for h in hosts}
    assert all(power_before[h] for h in ("pw-gpu1", "pw-gpu2", "pw-lb"))
    proc = run_cli("--config", str(path), "--json", "drill", "--site", "dr-east", "--scenario", "region-down",
                   "--report", str(drill_state / "report"))
    assert proc.stdout, proc.stderr
    result = json.loads(proc.stdout)
    assert proc.returncode == 3, json.dumps(result, indent=1)[:4000]
    (sc,) = result["scenarios"]
    check = next(c for c in sc["checks"] if c["name"] == "steady_state_before")
    assert not check["passed"]
    assert "ghost: ghost-demo has no production version in the registry" in check["summary"], check["summary"]
    assert "ghost" in sc["error"] and "nothing was injected" in sc["error"]
    assert sc["fault_at"] is None and sc["cleanup"] == [] and sc["not_cleaned"] == []
    assert {h: lab.is_powered(h) for h in power_before} == power_before     # no host powered off (or on)
    assert dig() == PRIMARY and dig(DRILL_RECORD) == "" and dig("drill.ghost.drlab.test") == ""
