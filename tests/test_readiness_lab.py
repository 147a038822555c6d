"""DR readiness on the lab, for real: a healthy lab (after one passing drill) is ready, exit 0; each rule broken in
turn on the lab makes exactly that rule fail, exit 3, and is put back. Read-only checks: nothing here powers a
standby on."""

from __future__ import annotations

import json

import pytest
import yaml

from drtool.execute.dns import dns_for

from .conftest import MODEL, STANDBYS, cli_json, run_cli

pytestmark = pytest.mark.lab
LAB_TTL = 60   # the lab zone's TTL of every service record (drtool/lab/topology.py MODEL_TTL)


@pytest.fixture(scope="module")
def drilled(lab, production):
    """One passing primary-down drill: its report and its failover's journal in dr-east's store are the history the
    drills rule and the RTO predictor read."""
    report = cli_json("drill", "--site", "dr-east")
    assert report["passed"], report
    return report


def derived(lab, tmp_path, edit=None) -> str:
    """The lab's configuration, with dr-east's prepared TTL at the lab's record TTL (the lab never lowers it), and
    `edit(doc)` applied."""
    doc = yaml.safe_load(lab.config_path.read_text())
    doc["sites"]["dr-east"]["dns"]["prepare_ttl"] = LAB_TTL
    if edit:
        edit(doc)
    path = tmp_path / "drtool.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def readiness(config: str) -> tuple[int, dict]:
    proc = run_cli("--config", config, "--json", "readiness", "--site", "dr-east")
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def with_status(doc: dict, status: str) -> set[str]:
    return {r["rule"] for s in doc["services"] for r in s["rules"] if r["status"] == status}


def assert_only(rc: int, doc: dict, rule: str) -> dict:
    """Exit 3, exactly `rule` failing (others pass or wait for it), its fix named; returns that rule's result."""
    assert rc == 3, doc
    assert doc["ready"] is False
    assert with_status(doc, "fail") == {rule}, [(s["service"], r["rule"], r["status"], r["saw"])
                                                for s in doc["services"] for r in s["rules"] if r["status"] != "pass"]
    failed = [r for s in doc["services"] for r in s["rules"] if r["status"] == "fail"]
    assert all(r["fix"] and r["saw"] for r in failed)
    return failed[0]


def test_healthy_lab_is_ready(lab, drilled, tmp_path):
    rc, doc = readiness(derived(lab, tmp_path))
    assert rc == 0, doc
    assert doc["ready"] and with_status(doc, "pass") == {"image", "snapshot", "registry", "capacity", "dns",
                                                          "store_credentials", "drills", "rto"}
    assert with_status(doc, "fail") == with_status(doc, "blocked") == set()
    (svc,) = doc["services"]
    assert svc["service"] == MODEL and svc["standby"] == STANDBYS[0]
    assert doc["rto"]["samples"] >= 1 and 0 < svc["predicted_rto_s"] <= doc["targets"]["rto_s"]
    assert not any(lab.is_powered(h) for h in STANDBYS)   # read-only: no standby was powered on


def test_image_missing_at_dr(lab, lab_config, drilled, tmp_path):
    from drtool.drill import faults

    fault = faults.registry_mismatch(lab_config, lab_config.site("dr-east"), lab_config.model(MODEL).image)
    try:
        rc, doc = readiness(derived(lab, tmp_path))
    finally:
        fault.undo()
    failed = assert_only(rc, doc, "image")
    assert "image build" in failed["fix"]


def test_rpo_target_too_small(lab, drilled, tmp_path):
    rc, doc = readiness(derived(lab, tmp_path, lambda d: d.setdefault("readiness", {}).update(rpo_target_s=1)))
    failed = assert_only(rc, doc, "snapshot")
    assert "over the RPO target" in failed["saw"] and failed["evidence"]["age_s"] > 1


def test_dr_registry_disagrees(lab, lab_config, production, drilled, tmp_path):
    from drtool.actions.registry import site_registry
    from drtool.model_registry.registry import version_key

    reg = site_registry(lab_config, lab_config.site("dr-east"))
    key = version_key(MODEL, production["entry"].version)
    original = reg.store.get(key)
    changed = json.loads(original)
    changed["canary"]["expected"] = [[[0.0] * 32] * 20]   # dr-east's copy expects other outputs
    reg.store.put(key, json.dumps(changed).encode())
    try:
        rc, doc = readiness(derived(lab, tmp_path))
    finally:
        reg.store.put(key, original)
        reg.store.close()
    failed = assert_only(rc, doc, "registry")
    assert "canary" in failed["saw"]


def test_too_few_standby_slots(lab, drilled, tmp_path):
    """Two services of prod-west (the production record and tts's, both the demo model) and one dr-east standby."""
    def edit(d):
        d["services"] = {"asr": {"model": MODEL, "record": "model.drlab.test", "port": 8080, "priority": 0},
                         "tts": {"model": MODEL, "record": "tts.drlab.test", "port": 8081, "priority": 10}}
        pool = d["sites"]["dr-east"]["standby_pool"]
        pool["hosts"] = pool["hosts"][:1]

    rc, doc = readiness(derived(lab, tmp_path, edit))
    failed = assert_only(rc, doc, "capacity")
    by = {s["service"]: s for s in doc["services"]}
    assert by["asr"]["ready"] and not by["tts"]["ready"]
    assert "no standby left" in failed["saw"]
    assert with_status({"services": [by["tts"]]}, "blocked") == {"rto"}   # no standby, no failover time


def test_raised_ttl(lab, lab_config, drilled, tmp_path):
    dns = dns_for(lab_config.site("dr-east").dns)
    before = dns.read_a()
    dns.replace_a(before.addresses, 300)
    try:
        rc, doc = readiness(derived(lab, tmp_path))
    finally:
        dns.replace_a(before.addresses, before.ttl)
    failed = assert_only(rc, doc, "dns")
    assert failed["evidence"]["ttl"] == 300 and "failover --prepare" in failed["fix"]


def test_wrong_tsig_key(lab, drilled, tmp_path):
    bad = tmp_path / "bad.key"
    bad.write_text(f'key "drtool-key" {{ algorithm hmac-sha256; secret "{"B" * 43}="; }};\n')
    rc, doc = readiness(derived(lab, tmp_path, lambda d: d["sites"]["dr-east"]["dns"].update(tsig_key_file=str(bad))))
    failed = assert_only(rc, doc, "dns")
    assert "TSIG" in failed["saw"]


def test_wrong_store_credentials(lab, drilled, tmp_path):
    """dr-east's own key id with a wrong secret: the lab's store (SeaweedFS) checks every signature and refuses it.
    What needs dr-east's store waits for this rule."""
    import configparser

    doc = yaml.safe_load(lab.config_path.read_text())
    real = configparser.ConfigParser()
    real.read(doc["sites"]["dr-east"]["object_stores"][0]["credentials_file"])
    creds = tmp_path / "wrong-credentials"
    creds.write_text(f"[default]\naws_access_key_id = {real['default']['aws_access_key_id']}\n"
                     "aws_secret_access_key = not-the-secret-of-this-key\n")
    rc, doc = readiness(derived(lab, tmp_path, lambda d: d["sites"]["dr-east"]["object_stores"][0].update(
        credentials_file=str(creds))))
    failed = assert_only(rc, doc, "store_credentials")
    assert "credentials_file" in failed["fix"]
    assert with_status(doc, "blocked") == {"snapshot", "registry", "drills", "rto"}


def test_no_recent_drill(lab, drilled, tmp_path):
    rc, doc = readiness(derived(lab, tmp_path, lambda d: d.setdefault("readiness", {}).update(drill_max_age_s=1)))
    failed = assert_only(rc, doc, "drills")
    assert "drtool drill --site dr-east" in failed["fix"]
