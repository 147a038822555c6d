"""Drill scenarios without the lab: the registry (every module registered, listed in help and docs), and the drill's
one flow around them with DNS, registry and serving stood in for: the steady state judged for every service before
anything is injected, and cleanup undoing only what the drill changed, with the documented exit codes."""

from __future__ import annotations

import json
import pkgutil
import re
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from drtool import cli
from drtool.drill import scenarios
from drtool.drill.scenarios import REGISTRY
from drtool.drill.scenarios.base import Failover, InSite, Scenario
from drtool.errors import OperationFailed

from .conftest import REPO
from .test_config import FLEET

EXAMPLE = str(REPO / "inventory" / "drtool.example.yaml")
TSIG_REFUSED = OperationFailed("DNS server 10.0.0.53:53 refused the TSIG signature of key drtool. (PeerBadSignature)",
                               hint="the key in /etc/drtool/tsig.key does not match the server's; nothing was changed")


# -- the registry ------------------------------------------------------------------------------------------------

def test_every_scenario_module_is_registered_once_under_its_own_name():
    modules = {m.name for m in pkgutil.iter_modules(scenarios.__path__)} - {"base"}
    assert {n.replace("-", "_") for n in REGISTRY} == modules
    for name, spec in REGISTRY.items():
        assert isinstance(spec, Scenario) and spec.name == name and spec.summary
        assert type(spec).inject is not Scenario.inject, name   # each says how it injects its fault
    assert scenarios.DEFAULT in REGISTRY


def test_what_each_scenario_says_about_detection_and_planned_failovers():
    """The outages go through the alert chain; the failovers the drill starts itself move a primary that still
    serves (planned); the in-site ones expect no failover at all."""
    assert {n for n, s in REGISTRY.items() if s.detected} == {"primary-down", "region-partition", "region-down"}
    assert {n for n, s in REGISTRY.items() if s.planned} == {"corrupt-latest-snapshot", "standby-boot-failure",
                                                              "registry-mismatch"}
    assert {n for n, s in REGISTRY.items() if isinstance(s, InSite)} == {"process-crash", "gpu-degraded"}
    assert all(isinstance(s, Failover) for n, s in REGISTRY.items() if s.detected or s.planned)
    assert {n for n, s in REGISTRY.items() if s.fences} == {"region-partition"}
    assert {n for n, s in REGISTRY.items() if s.load_under_fault} == {"gpu-degraded"}


def test_drill_help_lists_every_scenario():
    res = CliRunner().invoke(cli.main_group, ["drill", "--help"], terminal_width=400, max_content_width=400)
    assert res.exit_code == 0, res.output
    for name in REGISTRY:
        assert name in res.output, name


def test_unknown_scenario_lists_every_registered_one():
    res = CliRunner().invoke(cli.main_group, ["--config", EXAMPLE, "--json", "drill", "--site", "dr-east",
                                              "--scenario", "meteor-strike"])
    assert res.exit_code == 2
    assert json.loads(res.stdout)["hint"] == "scenarios: " + ", ".join(REGISTRY)


def test_docs_list_every_scenario_and_only_those():
    text = (REPO / "docs" / "drills.md").read_text()
    table = text[text.index("## Scenarios"):]
    table = table[:table.index("\n\n", table.index("| scenario"))]
    assert re.findall(r"^\| `([a-z0-9-]+)` \|", table, re.M) == list(REGISTRY)


# -- the drill's flow, with DNS, registry and serving stood in for ---------------------------------------------

class FakeDns:
    """One authoritative server: records by name; every update recorded, or refused with `refuse`."""

    def __init__(self, records: dict[str, list[str]], refuse: Exception | None = None):
        self.records, self.refuse, self.updates = records, refuse, []

    def read_a(self, record: str | None = None):
        return SimpleNamespace(addresses=list(self.records.get(record or "model.example.com", [])), ttl=60)

    def replace_a(self, addresses, ttl=None, record=None):
        if self.refuse:
            raise self.refuse
        self.updates.append(("replace", record, addresses))

    def delete_a(self, record):
        if self.refuse:
            raise self.refuse
        self.updates.append(("delete", record))


def _entry(model: str):
    return SimpleNamespace(model=model, version="1.0.0", snapshot_id="ab" * 32,
                           image=SimpleNamespace(repository=model, digest="sha256:" + "cd" * 32),
                           canary=SimpleNamespace(input={"x": 1}, expected={"y": 2}, tolerance=0.0))


@pytest.fixture
def standins(monkeypatch, tmp_path):
    """DNS, the model registry, /version, the serving check and the DR store stood in for; faults that must not be
    injected fail loudly. Returns what the test can change and inspect."""
    from drtool.actions import deploy, drill, failover
    from drtool.actions import registry as registry_action
    from drtool.drill import faults
    from drtool.execute import dns

    monkeypatch.setenv("DRTOOL_STATE_DIR", str(tmp_path / "state"))
    state = SimpleNamespace(dns=FakeDns({"model.example.com": ["10.0.1.11"]}), unregistered=set(), injected=[])

    def registry(config, site):
        def production(model):
            return None if model in state.unregistered else _entry(model)

        return SimpleNamespace(production=production, store=SimpleNamespace(close=lambda: None))

    for mod in (drill, dns):
        monkeypatch.setattr(mod, "dns_for", lambda target: state.dns)
    for mod in (drill, registry_action):
        monkeypatch.setattr(mod, "site_registry", registry)
    monkeypatch.setattr(drill, "version", lambda url: {"model": "asr", "version": "1.0.0", "ready": True})
    monkeypatch.setattr(failover, "served_entry", lambda site, host, entry: entry)
    monkeypatch.setattr(deploy, "check", lambda site, host, entry: {"version": {"version": entry.version},
                                                                    "canary": "matched"})

    def no_store(*_a, **_k):
        raise OperationFailed("no DR store in this test")

    monkeypatch.setattr(drill, "open_store", no_store)

    def no_fault(config, scenario):
        state.injected.append(scenario)
        raise AssertionError(f"{scenario}: a fault was injected")

    monkeypatch.setattr(faults, "lab_for", no_fault)
    return state


def _drill(tmp_path, config: str, *args: str):
    res = CliRunner().invoke(cli.main_group, ["--config", config, "--json", "drill", "--site", "dr-east",
                                              "--report", str(tmp_path / "report"), *args])
    return res, json.loads(res.stdout)


def test_region_down_starts_only_when_every_service_serves_through_its_record(standins, tmp_path):
    """One service never set up (no production version) and one whose record answers nothing: nothing is injected,
    no drill record is written, the drill exits 3 and names each service not in steady state and why."""
    path = tmp_path / "fleet.yaml"
    path.write_text(FLEET)
    standins.unregistered = {"ocr"}
    standins.dns.records.update({f"{s}.example.com": ["10.0.1.11"] for s in ("llm", "embed", "rerank", "ocr")})
    res, doc = _drill(tmp_path, str(path), "--scenario", "region-down")
    assert res.exit_code == 3, res.output
    (sc,) = doc["scenarios"]
    assert standins.injected == [] and sc["fault_at"] is None
    assert standins.dns.updates == []                      # no drill record written, none to remove
    assert sc["cleanup"] == [] and sc["not_cleaned"] == []
    check = next(c for c in sc["checks"] if c["name"] == "steady_state_before")
    assert check["passed"] is False
    assert "ocr: ocr has no production version in the registry" in check["summary"]
    assert "tts: record tts.example.com has no address" in check["summary"]
    assert not any(s in check["summary"] for s in ("asr:", "llm:", "embed:", "rerank:"))   # those serve
    assert set(check["evidence"]) == {"asr", "llm", "embed", "rerank", "tts", "ocr"}
    assert "ocr (ocr has no production version" in sc["error"] and "tts (record tts.example.com" in sc["error"]
    assert "nothing was injected" in sc["error"]
    assert doc["exit_code"] == 3 and json.loads((tmp_path / "report" / "report.json").read_text())["exit_code"] == 3


def test_a_refused_dns_update_stops_the_drill_at_once_with_nothing_to_undo(standins, tmp_path):
    """A wrong TSIG key: the drill record cannot be written. Nothing was changed, so cleanup lists nothing to undo
    (no failback, no drill record to remove) and the drill exits 1, the drill itself could not run."""
    standins.dns.refuse = TSIG_REFUSED
    res, doc = _drill(tmp_path, EXAMPLE)
    assert res.exit_code == 1, res.output
    (sc,) = doc["scenarios"]
    assert "refused the TSIG signature" in sc["error"] and sc["fault_at"] is None
    assert standins.injected == []
    assert sc["cleanup"] == [] and sc["not_cleaned"] == []
    assert [c["name"] for c in sc["checks"]] == ["steady_state_before"] and sc["checks"][0]["passed"]
    assert not doc["passed"] and doc["exit_code"] == 1
    assert "nothing was changed" in sc["error_hint"]


def test_a_refused_dns_update_without_json_says_why_and_what_to_do(standins, tmp_path):
    standins.dns.refuse = TSIG_REFUSED
    res = CliRunner().invoke(cli.main_group, ["--config", EXAMPLE, "drill", "--site", "dr-east", "--report",
                                              str(tmp_path / "report")], terminal_width=300)
    assert res.exit_code == 1
    assert "could not run primary-down" in res.stderr and "refused the TSIG signature" in res.stderr
    assert "does not match the server's; nothing was changed" in res.stderr


def test_cleanup_undoes_the_drill_record_it_made_and_nothing_it_did_not(standins, tmp_path, monkeypatch):
    """The drill record was written, then the alert chain could not start: cleanup stops the chain and removes the
    record; no failback (no fault was injected, nothing moved); exit 1."""
    from drtool.actions import drill

    class BrokenChain:
        def __init__(self, *a):
            self.stopped = False

        def drtool_alerts(self, dr_site):
            return {"policy": "auto"}

        def start(self, path):
            raise OperationFailed("prometheus did not start")

        def stop(self):
            self.stopped = True

        def launched_runs(self):
            return []

    monkeypatch.setattr(drill, "AlertChain", BrokenChain)
    res, doc = _drill(tmp_path, EXAMPLE)
    assert res.exit_code == 1, res.output
    (sc,) = doc["scenarios"]
    assert [c["action"] for c in sc["cleanup"]] == ["stop the alert chain",
                                                    "remove the drill record drill.model.example.com"]
    assert all(c["ok"] for c in sc["cleanup"]) and sc["not_cleaned"] == []
    assert standins.dns.updates == [("replace", "drill.model.example.com", ["10.0.1.11"]),
                                    ("delete", "drill.model.example.com")]


def test_exit_codes_follow_the_docs():
    from drtool.drill.report import exit_code

    def report(*scenarios):
        return {"passed": all(s["passed"] for s in scenarios), "scenarios": list(scenarios)}

    ok = {"passed": True, "checks": [{"passed": True}], "error": None, "fault_at": 1.0}
    failed_check = {"passed": False, "checks": [{"passed": False}], "error": None, "fault_at": 1.0}
    stopped_after_fault = {"passed": False, "checks": [], "error": "failover died", "fault_at": 1.0,
                           "error_exit_code": 1}
    not_run = {"passed": False, "checks": [{"passed": True}], "error": "TSIG", "fault_at": None,
               "error_exit_code": 1}
    no_lab = {**not_run, "error": "no lab section", "error_exit_code": 2}
    unhealthy = {"passed": False, "checks": [{"passed": False}], "error": "not in steady state", "fault_at": None,
                 "error_exit_code": 3}
    assert exit_code(report(ok)) == 0
    assert exit_code(report(ok, failed_check)) == 3
    assert exit_code(report(stopped_after_fault)) == 3
    assert exit_code(report(unhealthy)) == 3
    assert exit_code(report(not_run)) == 1
    assert exit_code(report(no_lab, not_run)) == 2
    assert exit_code(report(not_run, failed_check)) == 3
    assert exit_code(report(ok, not_run)) == 1
