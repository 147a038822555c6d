"""Every service's record gets what the site's own record gets (tests/engine_world.py stands in for DNS, the hosts
and the registry): `failover --prepare` lowers the TTL of every record that would fail over, each old record saved
first, and changes nothing when one record has no address; `dns show` and `dns restore` take `--service`, and a
restore checks that service's model at that service's port before its record moves."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from drtool.actions import dnsrecord
from drtool.errors import UsageError, VerificationError
from drtool.output import Output

from .conftest import run_cli
from .engine_world import FLEET_MODELS, FLEET_SERVICES, Entry, Image, World

RECORDS = {"model.example.com", "llm.example.com", "embed.example.com", "rerank.example.com", "tts.example.com",
           "ocr.example.com"}


@pytest.fixture
def world(tmp_path, monkeypatch) -> World:
    w = World(tmp_path, monkeypatch, FLEET_MODELS, FLEET_SERVICES)
    w.ttl = 300
    registry = SimpleNamespace(production=lambda m: Entry(m, "1.0.0", "s-" + m, Image(m)),
                               store=SimpleNamespace(close=lambda: None))
    monkeypatch.setattr(dnsrecord, "site_registry", lambda *_: registry)
    monkeypatch.setattr(dnsrecord, "version", lambda url: {})
    return w


def prepare(world: World, services=None, dry_run=False) -> dict:
    return dnsrecord.prepare(world.config, Output(json_mode=True), "dr-east", None, dry_run, services)


def test_prepare_lowers_every_record_that_would_fail_over_and_saves_each_one_first(world):
    result = prepare(world)
    assert {r["record"] for r in result["records"]} == RECORDS
    assert world.ttls == {r: 30 for r in RECORDS}                        # dns.prepare_ttl, every record
    assert world.records == {r: ["10.0.1.11"] for r in RECORDS}           # addresses unchanged
    assert result["changed"] and result["record"] == "model.example.com" and result["ttl_after"] == 30
    saved = dnsrecord.show(world.config, "dr-east", "tts")
    assert saved["record"] == "tts.example.com" and saved["current"]["ttl"] == 30
    assert [(d["addresses"], d["ttl"]) for d in saved["saved"]] == [(["10.0.1.11"], 300)]
    assert prepare(world)["changed"] is False                             # prepared already: nothing to do


def test_prepare_dry_run_and_named_services(world):
    dry = prepare(world, dry_run=True)
    assert not dry["changed"] and world.ttls == {} and not dnsrecord.show(world.config, "dr-east", "tts")["saved"]
    only = prepare(world, ["tts", "ocr"])
    assert {r["record"] for r in only["records"]} == {"tts.example.com", "ocr.example.com"}
    assert world.ttls == {"tts.example.com": 30, "ocr.example.com": 30}


def test_a_record_without_an_address_stops_prepare_before_anything_changes(world):
    world.records["ocr.example.com"] = []
    with pytest.raises(UsageError) as info:
        prepare(world)
    assert "ocr.example.com" in info.value.message and "nothing changed" in info.value.message
    assert world.ttls == {} and not world.flips


def test_restore_of_a_service_record_checks_its_model_at_its_port(world):
    prepare(world, ["tts"])                                               # saves tts's record: 10.0.1.11 TTL 300
    world.records["tts.example.com"] = ["10.0.2.21"]                      # then a failover moved it
    with pytest.raises(VerificationError) as info:                        # tts does not serve at home
        dnsrecord.restore(world.config, Output(json_mode=True), "dr-east", None, 0, False, "tts")
    assert "pw-gpu1 (10.0.1.11) does not serve tts correctly" in info.value.message
    assert world.records["tts.example.com"] == ["10.0.2.21"]
    world.containers[("pw-gpu1", "tts")] = {"running": True, "snapshot": "s-tts", "port": 8084}
    done = dnsrecord.restore(world.config, Output(json_mode=True), "dr-east", None, 0, False, "tts")
    assert done["changed"] and done["record"] == "tts.example.com" and "pw-gpu1" in str(done["serving"])
    assert world.records["tts.example.com"] == ["10.0.1.11"] and world.ttls["tts.example.com"] == 300
    assert world.records["model.example.com"] == ["10.0.1.11"]            # no other record touched


def test_dns_restore_refuses_service_with_model_and_names_unknown_services(world):
    path = world.root / "drtool.yaml"
    proc = run_cli("--config", str(path), "--json", "dns", "restore", "--site", "dr-east", "--service", "tts",
                   "--model", "tts")
    assert proc.returncode == 2 and "not both" in json.loads(proc.stdout)["message"]
    with pytest.raises(UsageError) as info:
        dnsrecord.show(world.config, "dr-east", "nope")
    assert "unknown service 'nope'" in info.value.message and "tts" in info.value.hint
