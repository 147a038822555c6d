"""The read-only fleet plan (issue #16): services from the configuration onto the DR site's standby GPUs, resolved
against an injected registry lookup (no store, no lab)."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace

import pytest

from drtool.config import load_config
from drtool.errors import UsageError
from drtool.fleet.plan import fleet_plan, select_services
from drtool.model_registry.entries import ImageRef

from .test_config import EXAMPLE, FLEET

DIGEST = "sha256:" + "ab" * 32


def entry(model: str):
    return SimpleNamespace(version=f"{model}-v3", snapshot_id=f"{model:0<8}" + "5" * 56,
                           image=ImageRef(repository=model, digest=DIGEST))


def production(model: str):
    return None if model == "rerank" else entry(model)


@pytest.fixture
def cfg(tmp_path: Path):
    path = tmp_path / "drtool.yaml"
    path.write_text(FLEET)
    return load_config(path)


def test_rows_waves_and_left(cfg):
    plan = fleet_plan(cfg, "dr-east", None, 2, production=production)
    assert plan["site"] == "dr-east" and plan["from"] == ["prod-west"] and plan["parallel"] == 2
    assert plan["changes"] == "none (dry run)"
    rows = {r["service"]: r for r in plan["services"]}
    # priority order; llm (4 GPUs) fills de-gpu1, the 1-GPU services best-fit the 1-GPU hosts, rerank de-gpu2
    assert [r["service"] for r in plan["services"]] == ["llm", "asr", "embed", "rerank"]
    assert [(r["standby"], r["gpus"], r["wave"]) for r in plan["services"]] == [
        ("de-gpu1", [0, 1, 2, 3], 0), ("de-gpu3", [0], 0), ("de-gpu4", [0], 1), ("de-gpu2", [0, 1], 1)]
    assert plan["waves"] == 2
    llm = rows["llm"]
    assert llm["model"] == "llm" and llm["version"] == "llm-v3" and llm["priority"] == 0
    assert llm["image"] == f"registry.dr-east.example.com/llm@{DIGEST}"
    assert llm["snapshot"] == entry("llm").snapshot_id and llm["problem"] is None
    assert (llm["record"], llm["port"]) == ("llm.example.com", 8081)
    assert (rows["asr"]["record"], rows["asr"]["port"]) == ("model.example.com", 8080)
    # no production version at the DR site: said in the row, nothing invented
    rerank = rows["rerank"]
    assert rerank["version"] is None and rerank["image"] is None and rerank["snapshot"] is None
    assert "no production version of rerank in dr-east's registry" in rerank["problem"]
    # 8 GPUs for 10 needed: the two least important are left, with the reason
    assert plan["left"] == [
        {"service": "tts", "priority": 50, "gpus": 1, "reason": "no standby left at dr-east (1 GPUs needed)"},
        {"service": "ocr", "priority": 100, "gpus": 1, "reason": "no standby left at dr-east (1 GPUs needed)"},
    ]


def test_parallel_defaults_to_config(cfg, tmp_path: Path):
    assert fleet_plan(cfg, "dr-east", None, None, production=production)["parallel"] == 4
    path = tmp_path / "other.yaml"
    path.write_text(FLEET + "failover: {parallel: 1}\n")
    plan = fleet_plan(load_config(path), "dr-east", None, None, production=production)
    assert plan["parallel"] == 1 and [r["wave"] for r in plan["services"]] == [0, 1, 2, 3]


def test_service_filter(cfg):
    looked_up = []

    def lookup(model):
        looked_up.append(model)
        return entry(model)

    plan = fleet_plan(cfg, "dr-east", ["ocr", "tts"], None, production=lookup)
    assert [r["service"] for r in plan["services"]] == ["tts", "ocr"]  # priority order, not argument order
    assert [r["standby"] for r in plan["services"]] == ["de-gpu3", "de-gpu4"]
    assert plan["left"] == [] and sorted(looked_up) == ["ocr", "tts"]  # only the assigned services are resolved


def test_unknown_service_lists_known(cfg):
    with pytest.raises(UsageError) as info:
        fleet_plan(cfg, "dr-east", ["asr", "nope"], None, production=production)
    assert "'nope'" in info.value.message
    assert "asr, embed, llm, ocr, rerank, tts" in info.value.hint


def test_not_a_dr_site(cfg):
    with pytest.raises(UsageError) as info:
        select_services(cfg, "prod-west", None)
    assert "not a DR site with a standby pool" in info.value.message


def test_deterministic_whatever_the_order(cfg, tmp_path: Path):
    first = fleet_plan(cfg, "dr-east", None, 3, production=production)
    lines = FLEET.split("services:\n")
    services = lines[1].splitlines()
    for seed in range(5):
        random.Random(seed).shuffle(services)
        path = tmp_path / f"shuffled{seed}.yaml"
        path.write_text(lines[0] + "services:\n" + "\n".join(services) + "\n")
        assert fleet_plan(load_config(path), "dr-east", None, 3, production=production) == first
    assert fleet_plan(cfg, "dr-east", None, 3, production=production) == first


def test_implicit_service_of_an_existing_config():
    cfg = load_config(EXAMPLE)
    plan = fleet_plan(cfg, "dr-east", None, None, production=entry)
    model = next(iter(cfg.models))
    assert [(r["service"], r["model"], r["standby"], r["gpus"], r["wave"]) for r in plan["services"]] == [
        (model, model, "de-gpu1", [0], 0)]
    assert plan["services"][0]["record"] == cfg.primary.dns.record and plan["left"] == []
