"""A failover's dry run is its plan, made by the engine that would run it (tests/engine_world.py stands in for the
I/O edges): every service placed on a standby by the planner, in priority order and waves, with the version, image
and snapshot it would restore; the services no standby can take are named with the reason; nothing is written,
played or flipped."""

from __future__ import annotations

import random

import pytest

from drtool.actions import failover
from drtool.config import load_config
from drtool.errors import OperationFailed, UsageError, VerificationError
from drtool.fleet.plan import select_services
from drtool.output import Output
from drtool.recovery import steps
from drtool.recovery.moves import FAILOVER, Request

from .engine_world import FLEET_MODELS, FLEET_SERVICES, World
from .test_config import FLEET

PRIORITY_ORDER = ["llm", "asr", "embed", "rerank", "tts", "ocr"]
# engine_world's standbys: de-gpu1 and de-gpu2 with 4 GPUs, de-gpu3 and de-gpu4 with 2
TOO_MANY = """services:
  llm: {model: llm, record: llm.example.com, port: 8081, priority: 0, gpus: 4}
  rerank: {model: rerank, record: rerank.example.com, port: 8083, priority: 5, gpus: 4}
  asr: {model: asr, priority: 10, gpus: 2}
  embed: {model: embed, record: embed.example.com, port: 8082, priority: 20, gpus: 2}
  tts: {model: tts, record: tts.example.com, port: 8084, priority: 50, gpus: 2}
  ocr: {model: ocr, record: ocr.example.com, port: 8085, gpus: 2}
"""


def dry(world: World, *services: str, parallel: int | None = None) -> dict:
    return failover.run(world.config, Output(json_mode=True),
                        Request(FAILOVER, "dr-east", services or None, parallel=parallel, dry_run=True))


def placements(report: dict) -> list[tuple]:
    return [(r["service"], r["standby"], r["wave"]) for r in report["services"]]


def nothing_changed(world: World) -> None:
    assert not (world.root / "state" / "runs").exists()
    assert not world.plays and not world.flips and not list((world.root / "de").rglob("*lease*"))


def test_the_dry_run_places_every_service_and_names_what_it_would_restore(tmp_path, monkeypatch):
    world = World(tmp_path, monkeypatch, FLEET_MODELS, FLEET_SERVICES)
    world.serve_at_home()   # a dry run plans every service, also one whose primary still serves
    report = dry(world)
    assert report["status"] == "planned" and report["dry_run"] and report["journal"] is None
    assert [r["service"] for r in report["services"]] == PRIORITY_ORDER
    assert {r["status"] for r in report["services"]} == {"to move"}
    # the planner's best fit (fewest free GPUs left): llm fills a 4-GPU host, asr and embed a 2-GPU one, rerank
    # the other; tts and ocr, the fifth and sixth with 4 at once, share the last host in the second wave
    assert placements(report) == [("llm", "de-gpu1", 0), ("asr", "de-gpu3", 0), ("embed", "de-gpu3", 0),
                                  ("rerank", "de-gpu4", 0), ("tts", "de-gpu2", 1), ("ocr", "de-gpu2", 1)]
    for r in report["services"]:
        prod = r["production"]
        assert (r["model"], prod["version"], prod["snapshot_id"]) == (r["service"], "1.0.0", "s-" + r["service"])
        assert prod["image"] == f"reg.de/{r['service']}@sha256:" + "a" * 64
        assert r["dns"]["before"]["addresses"] == ["10.0.1.11"] and r["dns"]["after"] is None
        # it says what a real run would do with a primary that still answers
        assert r["reason"] == (f"10.0.1.11:{world.config.services[r['service']].port} answers /readyz 200: an "
                               "unplanned failover would be refused (--planned moves it)"), r
    nothing_changed(world)


def test_services_no_standby_can_take_are_left_with_the_reason_and_the_run_exits_1(tmp_path, monkeypatch):
    world = World(tmp_path, monkeypatch, FLEET_MODELS, TOO_MANY)
    with pytest.raises(OperationFailed) as info:
        dry(world)
    rows = {r["service"]: r for r in info.value.result["services"]}
    assert {n: r["status"] for n, r in rows.items()} == {
        "llm": "to move", "rerank": "to move", "asr": "to move", "embed": "to move", "tts": "left", "ocr": "left"}
    assert rows["tts"]["reason"] == rows["ocr"]["reason"] == "no standby left at dr-east (2 GPUs needed)"
    assert "2 of 6 service(s) did not move" in info.value.message
    nothing_changed(world)


def test_waves_hold_at_most_parallel_services_most_important_first(tmp_path, monkeypatch):
    world = World(tmp_path, monkeypatch, FLEET_MODELS, FLEET_SERVICES)
    default = dry(world)
    assert world.config.failover.parallel == 4 and default["parallel"] == 4 and default["waves"] == 2
    assert {r["reason"] for r in default["services"]} == {None}   # the primary is down: nothing to say
    two = dry(world, parallel=2)
    assert two["waves"] == 3
    assert [r["wave"] for r in sorted(two["services"], key=lambda r: PRIORITY_ORDER.index(r["service"]))] == [
        0, 0, 1, 1, 2, 2]
    only = dry(world, "ocr", "tts")
    assert [r["service"] for r in only["services"]] == ["tts", "ocr"]   # priority order, not argument order


def test_a_model_without_production_at_the_dr_site_is_named_and_the_others_are_still_planned(tmp_path, monkeypatch):
    world = World(tmp_path, monkeypatch, FLEET_MODELS, FLEET_SERVICES)
    verify = steps.registry_verify

    def no_rerank(config, out, site, model, read_data):
        if model == "rerank":
            raise VerificationError(f"registry verify at {site}: rerank has no production version")
        return verify(config, out, site, model, read_data)

    monkeypatch.setattr(steps, "registry_verify", no_rerank)
    with pytest.raises(VerificationError) as info:   # exit 3: the DR site cannot serve rerank as it stands
        dry(world)
    rows = {r["service"]: r for r in info.value.result["services"]}
    assert rows["rerank"]["status"] == "failed"
    assert rows["rerank"]["reason"] == "preflight: registry verify at dr-east: rerank has no production version"
    assert {n for n, r in rows.items() if r["status"] == "to move"} == set(PRIORITY_ORDER) - {"rerank"}
    nothing_changed(world)


def test_the_plan_is_the_same_whatever_the_order_of_the_configuration(tmp_path, monkeypatch):
    first = placements(dry(World(tmp_path / "first", monkeypatch, FLEET_MODELS, FLEET_SERVICES)))
    head, body = FLEET_SERVICES.split("\n", 1)
    lines = body.splitlines()
    for seed in range(3):
        random.Random(seed).shuffle(lines)
        world = World(tmp_path / f"shuffled{seed}", monkeypatch, FLEET_MODELS, "\n".join([head, *lines]) + "\n")
        assert placements(dry(world)) == first


def test_only_a_dr_site_with_a_standby_pool_is_planned_to(tmp_path):
    path = tmp_path / "drtool.yaml"
    path.write_text(FLEET)
    with pytest.raises(UsageError) as info:
        select_services(load_config(path), "prod-west", None)
    assert "not a DR site with a standby pool" in info.value.message
