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
