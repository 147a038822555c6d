"""Configuration: validation reports every problem at once, naming file, line and key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from drtool.config import load_config
from drtool.errors import ConfigError, UsageError
from drtool.inventory import build_inventory

from .conftest import REPO, run_cli

EXAMPLE = REPO / "inventory" / "drtool.example.yaml"

THREE_MISTAKES = """\
version: 1
sites:
  prod-west:
    role: primari
    hosts:
      - {name: pw-gpu1, address: 10.0.1.11}
    container_registry: {url: "r.example"}
    object_stores:
      - {url: "s3://Bad_Bucket/x"}
    dns: {provider: rfc2136, record: model.example.com, server: 10.0.0.53, zone: example.com, tsig_key_file: /k}
    serving: {port: 8080}
  dr-east:
    role: dr
    hosts:
      - {name: de-gpu1, address: 10.0.2.21}
    container_registry: {url: "r.example"}
    object_stores: [{url: "s3://ok-bucket/x"}]
    dns: {provider: rfc2136, record: model.example.com, server: 10.0.0.53, zone: example.com, tsig_key_file: /k}
    serving: {port: 80800}
models:
  asr: {weights_path: /srv/models/asr, image: asr}
"""


def test_example_config_is_valid():
    cfg = load_config(EXAMPLE)
    assert cfg.primary.name == "prod-west"
    assert [h.name for h in cfg.site("dr-east").hosts] == ["de-gpu1", "de-gpu2"]
    assert cfg.site("dr-east").is_standby


def test_three_mistakes_are_all_reported(tmp_path: Path):
    path = tmp_path / "drtool.yaml"
    path.write_text(THREE_MISTAKES)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    details = info.value.details
    assert len(details) == 3, details
    assert any(f"{path}:4: sites.prod-west.role" in d and "primari" in d for d in details)
    assert any(f"{path}:9: sites.prod-west.object_stores[0].url" in d and "Bad_Bucket" in d for d in details)
    assert any(f"{path}:19: sites.dr-east.serving.port" in d and "80800" in d for d in details)


def test_three_mistakes_cli_exit_2_json(tmp_path: Path):
    path = tmp_path / "drtool.yaml"
    path.write_text(THREE_MISTAKES)
    proc = run_cli("--config", str(path), "--json", "status", "--no-probe")
    assert proc.returncode == 2, proc.stderr
    out = json.loads(proc.stdout)
    assert out["error"] == "ConfigError" and out["exit_code"] == 2
    assert len(out["details"]) == 3


@pytest.mark.parametrize(
    "mutation, expected",
    [
        (lambda t: t.replace("role: dr\n", "role: primary\n"), "exactly one site must have role 'primary'"),
        (lambda t: t.replace("name: de-gpu1", "name: pw-gpu1"), "host name 'pw-gpu1' is already used"),
        (lambda t: t.replace("    hosts:\n      - {name: de-gpu1",
                             "    standby_pool: {provider: lab, hosts: [{name: x, address: 1.2.3.4}]}\n"
                             "    hosts:\n      - {name: de-gpu1"), "exactly one"),
        (lambda t: t.replace("version: 1", "version: 2"), "version"),
        (lambda t: t + "extra_key: 1\n", "unknown key(s) 'extra_key'"),
        (lambda t: t.replace("tsig_key_file: /k}\n    serving: {port: 8080}",
                             "tsig_key_file: k}\n    serving: {port: 8080}"), "must be an absolute path"),
        (lambda t: t.replace("image: asr}", "image: asr, version_file: ../config.json}"),
         "expected a path relative to weights_path"),
        (lambda t: t.replace("image: asr}", "image: asr, version_file: /etc/config.json}"),
         "expected a path relative to weights_path"),
    ],
)
def test_semantic_and_schema_rules(tmp_path: Path, mutation, expected):
    good = EXAMPLE.read_text()
    text = mutation(THREE_MISTAKES.replace("primari", "primary").replace("Bad_Bucket", "bad-bucket")
                    .replace("80800", "8080"))
    path = tmp_path / "drtool.yaml"
    path.write_text(text)
    assert good  # the example stays the reference
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert any(expected in d for d in info.value.details), info.value.details


@pytest.mark.parametrize(("entry", "expected"), [
    ("", "config.json"),  # the default: the file drtool's model format and server use
    (", version_file: meta/version.json", "meta/version.json"),
    (", version_file: null", None),  # turned off: only `drtool backup` labels, from the registry
])
def test_version_file_default_and_override(tmp_path: Path, entry, expected):
    text = (THREE_MISTAKES.replace("primari", "primary").replace("Bad_Bucket", "bad-bucket").replace("80800", "8080")
            .replace("image: asr}", "image: asr" + entry + "}"))
    path = tmp_path / "drtool.yaml"
    path.write_text(text)
    assert load_config(path).model("asr").version_file == expected


def test_not_yaml_names_line(tmp_path: Path):
    path = tmp_path / "drtool.yaml"
    path.write_text("version: 1\nsites: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in info.value.message and "not valid YAML" in info.value.message


def test_missing_file_is_usage_error(tmp_path: Path):
    with pytest.raises(UsageError) as info:
        load_config(tmp_path / "nope.yaml")
    assert "does not exist" in info.value.message


def test_config_resolution_env_then_cwd(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DRTOOL_CONFIG", raising=False)
    monkeypatch.setenv("DRTOOL_LAB_DIR", str(tmp_path / "no-lab"))
    with pytest.raises(UsageError) as info:
        load_config()
    assert "no configuration found" in info.value.message
    (tmp_path / "drtool.yaml").write_text(EXAMPLE.read_text())
    assert load_config().path == tmp_path / "drtool.yaml"
    monkeypatch.setenv("DRTOOL_CONFIG", str(EXAMPLE))
    assert load_config().path == EXAMPLE


def test_inventory_agrees_with_config():
    cfg = load_config(EXAMPLE)
    inv = build_inventory(cfg)["all"]
    kids = inv["children"]
    assert kids["site_prod_west"]["hosts"]["pw-gpu1"]["ansible_host"] == "10.0.1.11"
    assert kids["site_dr_east"]["vars"]["drtool_site_role"] == "dr"
    assert set(kids["standby"]["hosts"]) == {"de-gpu1", "de-gpu2"}
    assert set(kids["serving"]["hosts"]) == {"pw-gpu1"}
    assert kids["primary"]["children"] == {"site_prod_west": {}}
    # Paths to secrets only, never their contents.
    assert "tsig" not in json.dumps(inv).lower()


# -- services and standby GPUs (issue #16) ---------------------------------------------------------------------
FLEET = """\
version: 1
sites:
  prod-west:
    role: primary
    hosts:
      - {name: pw-gpu1, address: 10.0.1.11}
    container_registry: {url: "registry.prod-west.example.com"}
    object_stores: [{url: "s3://acme-prod-west/drtool"}]
    dns: {provider: rfc2136, record: model.example.com, server: 10.0.0.53, zone: example.com, tsig_key_file: /k}
    serving: {port: 8080}
  dr-east:
    role: dr
    standby_pool:
      provider: lab
      hosts:
        - {name: de-gpu1, address: 10.0.2.21, gpus: 4}
        - {name: de-gpu2, address: 10.0.2.22, gpus: 2}
        - {name: de-gpu3, address: 10.0.2.23}
        - {name: de-gpu4, address: 10.0.2.24, gpus: 1}
    container_registry: {url: "registry.dr-east.example.com"}
    object_stores: [{url: "s3://acme-dr-east/drtool"}]
    dns: {provider: rfc2136, record: model.example.com, server: 10.0.0.53, zone: example.com, tsig_key_file: /k}
    serving: {port: 8080}
models:
  asr: {weights_path: /srv/models/asr, image: asr}
  llm: {weights_path: /srv/models/llm, image: llm}
  embed: {weights_path: /srv/models/embed, image: embed}
  rerank: {weights_path: /srv/models/rerank, image: rerank}
  tts: {weights_path: /srv/models/tts, image: tts}
  ocr: {weights_path: /srv/models/ocr, image: ocr}
services:
  asr: {model: asr, priority: 10}
  llm: {model: llm, record: llm.example.com, port: 8081, priority: 0, gpus: 4}
  embed: {model: embed, record: embed.example.com, port: 8082, priority: 20}
  rerank: {model: rerank, record: rerank.example.com, port: 8083, priority: 30, gpus: 2}
  tts: {model: tts, record: tts.example.com, port: 8084, priority: 50}
  ocr: {model: ocr, record: ocr.example.com, port: 8085}
"""


def _load(tmp_path: Path, text: str):
    path = tmp_path / "drtool.yaml"
    path.write_text(text)
    return path, load_config(path)


def test_services_defaults_and_standby_gpus(tmp_path: Path):
    from drtool.config import ServiceSpec

    _, cfg = _load(tmp_path, FLEET)
    assert cfg.services["asr"] == ServiceSpec(name="asr", model="asr", site="prod-west", record="model.example.com",
                                              port=8080, priority=10, gpus=1, alias="production")
    assert cfg.services["ocr"].priority == 100 and cfg.services["llm"].gpus == 4
    assert [h.gpus for h in cfg.site("dr-east").hosts] == [4, 2, 1, 1]
    assert [h.gpus for h in cfg.site("prod-west").hosts] == [1]
    assert cfg.failover.parallel == 4


def test_without_services_one_implicit_service_per_model():
    cfg = load_config(EXAMPLE)
    primary = cfg.primary
    assert set(cfg.services) == set(cfg.models)
    for name, svc in cfg.services.items():
        assert (svc.model, svc.site, svc.record, svc.port, svc.priority, svc.gpus) == \
            (name, primary.name, primary.dns.record, primary.serving_port, 100, 1)
    assert all(h.gpus == 1 for h in cfg.all_hosts())


def test_service_mistakes_are_all_reported_with_lines(tmp_path: Path):
    text = (FLEET
            .replace("  asr: {model: asr, priority: 10}", "  asr: {model: asr, priority: 10, site: dr-east}")
            .replace("  embed: {model: embed, record: embed.example.com,",
                     "  embed: {model: embedding, record: llm.example.com,")
            .replace("record: tts.example.com, port: 8084", "record: tts.example.com, port: 8083")
            .replace("record: ocr.example.com, port: 8085}",
                     "record: ocr.example.com, port: 8085, gpus: 8, site: nowhere}")
            .replace("gpus: 4}\n  embed", "gpus: 5}\n  embed")
            .replace("  tts: {model: tts,", "  Bad_Name: {model: tts,")
            + "failover: {parallel: 0}\n")
    path = tmp_path / "drtool.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    details = info.value.details
    lines = {i + 1: line for i, line in enumerate(text.splitlines())}

    def at(word: str) -> int:
        start = next(n for n, line in lines.items() if line == "services:")
        if word == "services":
            return start
        return next(n for n, line in lines.items() if n > start and line.startswith(f"  {word}: {{"))

    expected = [
        (at("asr"), "services.asr.site", "site 'dr-east' has no serving hosts"),
        (at("llm"), "services.llm.gpus", "service llm needs 5 GPUs; the largest standby at dr-east (de-gpu1) has 4"),
        (at("embed"), "services.embed.model", "unknown model 'embedding'"),
        (at("embed"), "services.embed.record", "record 'llm.example.com' is already used by service 'llm'"),
        (at("Bad_Name"), "services.Bad_Name.port", "port 8083 at site prod-west is already used by service 'rerank'"),
        (at("services"), "services", "'Bad_Name': use lower-case letters, digits and '-'"),
        (at("ocr"), "services.ocr.site", "unknown site 'nowhere'"),
        (len(lines), "failover.parallel", "0 is less than the minimum of 1"),
    ]
    for line, key, msg in expected:
        assert any(f"{path}:{line}: {key}" in d and msg in d for d in details), (line, key, msg, details)
    assert len(details) == len(expected), details


def test_service_no_standby_of_its_target_can_take(tmp_path: Path):
    # failover_to sends prod-west to dr-north, whose only standby has 2 GPUs: llm (4) fits dr-east but not there
    north = """\
  dr-north:
    role: dr
    standby_pool: {provider: lab, hosts: [{name: dn-gpu1, address: 10.0.3.21, gpus: 2}]}
    container_registry: {url: "registry.dr-north.example.com"}
    object_stores: [{url: "s3://acme-dr-north/drtool"}]
    dns: {provider: rfc2136, record: model.example.com, server: 10.0.0.53, zone: example.com, tsig_key_file: /k}
    serving: {port: 8080}
"""
    text = FLEET.replace("models:\n", north + "models:\n", 1) + "alerts: {failover_to: {prod-west: dr-north}}\n"
    path = tmp_path / "drtool.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    details = info.value.details
    assert len(details) == 1, details
    assert "services.llm.gpus" in details[0] and "service llm needs 4 GPUs" in details[0] and "dr-north" in details[0]
    assert "where prod-west fails over to" in details[0]


def test_default_records_collide(tmp_path: Path):
    text = FLEET.replace("  embed: {model: embed, record: embed.example.com, port: 8082,", "  embed: {model: embed,")
    path = tmp_path / "drtool.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    details = info.value.details
    assert any("services.embed:" in d and "record 'model.example.com' (the default" in d and "'asr'" in d
               for d in details), details
    assert any("services.embed:" in d and "port 8080 (the default" in d for d in details), details
