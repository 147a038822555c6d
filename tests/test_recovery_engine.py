"""The one recovery engine without the lab (tests/engine_world.py replaces only the I/O edges): one service is a
fleet of one, a run killed after any step resumes without redoing anything and holds the lease, work found done
is reported and not redone, an unplanned failover of a serving primary is refused, a failed standby hands its
services on, and a failback journals, saves every record it replaces and resumes like a failover."""

from __future__ import annotations

import json

import pytest

from drtool.actions import failover
from drtool.errors import OperationFailed, UsageError, VerificationError
from drtool.output import Output
from drtool.recovery.moves import FAILBACK, FAILOVER, Request, split_rounds
from drtool.snapshot.stores import lease_key, open_store

from .engine_world import FLEET_MODELS, FLEET_SERVICES, Crash, World

FAILOVER_STEPS = ["preflight", "lease", "provision", "pull_image", "restore", "start", "wait_ready", "verify",
                  "fence_primary", "flip_dns", "confirm_dns"]
FAILBACK_STEPS = ["preflight", "lease", "provision", "pull_image", "restore", "start", "wait_ready", "verify",
                  "flip_dns", "confirm_dns", "cool_standby"]


@pytest.fixture
def single_world(tmp_path, monkeypatch) -> World:
    return World(tmp_path, monkeypatch, ("m",))


@pytest.fixture
def fleet_world(tmp_path, monkeypatch) -> World:
    return World(tmp_path, monkeypatch, FLEET_MODELS, FLEET_SERVICES)


def go(world, kind=FAILOVER, site="dr-east", **kw) -> dict:
    return failover.run(world.config, Output(json_mode=True), Request(kind, site, **kw))


def journal(world, run_id: str, service: str = "m") -> dict:
    return json.loads((world.root / "state" / "runs" / run_id / f"{service}.json").read_text())


def run_id_of(world, pattern: str = "fo-*") -> str:
    """The run id of the one run under the state dir (its report is written when it starts)."""
    return next((world.root / "state" / "runs").glob(f"{pattern}.report.json")).name.removesuffix(".report.json")


def region_down(world) -> None:
    world.powered["pw-gpu1"] = False


def lease_holder(world):
    store = open_store(world.config.site("dr-east").object_stores[0])
    try:
        return store.get(lease_key("failover-dr-east"))
    finally:
        store.close()


def shape(doc: dict) -> dict:
    """A journal's shape: its fields, each step's fields and names, its context's keys."""
    return {"fields": sorted(doc), "steps": [(s["name"], sorted(s)) for s in doc["steps"]],
            "context": sorted(doc["context"])}


def test_a_fleet_of_one_has_the_same_journal_shape_as_a_single_failover(single_world, tmp_path, monkeypatch):
    single_world.serve_at_home()
    region_down(single_world)
    one = go(single_world)
    assert one["status"] == "done" and [s["name"] for s in one["services"][0]["steps"]] == FAILOVER_STEPS
    single = journal(single_world, one["run_id"])

    fleet = World(tmp_path / "fleet", monkeypatch, FLEET_MODELS, FLEET_SERVICES)
    fleet.serve_at_home()
    region_down(fleet)
    res = go(fleet, services=("tts",))
    assert [(r["service"], r["status"]) for r in res["services"]] == [("tts", "moved")]
    assert shape(journal(fleet, res["run_id"], "tts")) == shape(single)


def test_each_step_runs_once_for_a_whole_wave_as_one_play_per_round(fleet_world):
    fleet_world.serve_at_home()
    region_down(fleet_world)
    res = go(fleet_world)
    assert res["status"] == "done" and {r["status"] for r in res["services"]} == {"moved"}
    starts = [p for p in fleet_world.plays if p[0] == "model_server.yml" and
              p[1]["extravars"].get("model_server_action") != "stop"]
    # per wave, at most one service per host per play: as many plays as that wave's fullest host holds services
    per_host: dict = {}
    for r in res["services"]:
        per_host[(r["wave"], r["standby"])] = per_host.get((r["wave"], r["standby"]), 0) + 1
    assert len(starts) == sum(max(n for (w, _h), n in per_host.items() if w == wave)
                              for wave in {w for w, _h in per_host})
    assert len(starts) < len(res["services"])
    for name in ("asr", "tts"):
        doc = journal(fleet_world, res["run_id"], name)
        assert [s["name"] for s in doc["steps"]] == FAILOVER_STEPS
        assert all(s["status"] == "done" and s["attempts"] == 1 for s in doc["steps"])


def test_the_start_gives_every_service_the_single_start_variables_gpu_limits_included(fleet_world):
    from drtool.actions import deploy

    raw = fleet_world.config.site("dr-east").raw.setdefault("serving", {})
    raw.update(gpu_memory_limit_pct=90, gpu_temperature_limit_c=85)
    fleet_world.serve_at_home()
    region_down(fleet_world)
    res = go(fleet_world, services=("tts",))
    host = res["services"][0]["standby"]
    got = fleet_world.containers[(host, "tts")]["vars"]
    spec = fleet_world.config.services["tts"]
    dr = fleet_world.config.site("dr-east")
    import dataclasses

    want = deploy.server_vars(dataclasses.replace(dr, serving_port=spec.port), fleet_world.config.model("tts"),
                              got["model_server_image_ref"], "1.0.0", "s-tts", port=spec.port, service="tts")
    assert {k: got[k] for k in want} == want
    assert got["model_server_gpu_memory_limit_pct"] == 90 and got["model_server_gpu_temperature_limit_c"] == 85


@pytest.mark.parametrize("crash_after", FAILOVER_STEPS[1:])
def test_a_fleet_failover_killed_after_any_step_resumes_without_redoing_anything(fleet_world, crash_after):
    fleet_world.serve_at_home()
    region_down(fleet_world)
    fleet_world.crash_after = crash_after
    with pytest.raises(Crash):
        go(fleet_world)
    run_id = run_id_of(fleet_world)
    fleet_world.leave_dead_lease()
    killed = {spec.name: journal(fleet_world, run_id, spec.name) for spec in fleet_world.config.services.values()}
    status = {n: {s["name"]: s["status"] for s in doc["steps"]} for n, doc in killed.items()}
    restored = {n for n in killed if status[n]["restore"] == "done"}
    # a service whose run was under way when it died takes the lease again on resume; a finished one is untouched
    leased = {n for n, doc in killed.items() if doc["status"] != "done" and status[n]["lease"] == "done"}
    assert leased or crash_after == "confirm_dns"   # killed after the first wave's last step: the second not begun
    fleet_world.crash_after = None
    plays_before = len(fleet_world.plays)
    again = go(fleet_world, resume=run_id)
    assert again["status"] == "done" and {r["status"] for r in again["services"]} == {"moved"}
    for spec in fleet_world.config.services.values():
        doc = journal(fleet_world, run_id, spec.name)
        steps = {s["name"]: s for s in doc["steps"]}
        assert steps["lease"]["attempts"] == (2 if spec.name in leased else 1)   # the resume took it again ...
        assert all(s["attempts"] == 1 for n, s in steps.items() if n != "lease"), (spec.name, steps)
        host = next(r["standby"] for r in again["services"] if r["service"] == spec.name)
        assert fleet_world.records[spec.record] == [fleet_world.address[host]]
    assert lease_holder(fleet_world) is None               # ... and released it
    # no record moved before its service verified, and none moved twice
    assert len(fleet_world.flips) == len(fleet_world.config.services)
    for name, _addresses, _at in fleet_world.flips:
        spec = next(s for s in fleet_world.config.services.values() if s.record == name)
        assert fleet_world.events.index(f"flip {name}") > max(
            i for i, e in enumerate(fleet_world.events) if e.startswith(f"verified {spec.model}@"))
    again_restored = {v["model_weights_dest"].rsplit("/", 1)[-1] for p in fleet_world.plays[plays_before:]
                      if p[0] == "restore_weights.yml" for v in p[1]["host_vars"].values()}
    assert not again_restored & restored                   # no weights restored twice


def test_a_resumed_single_failover_holds_the_lease_while_it_runs(single_world, monkeypatch):
    from drtool.recovery import steps

    single_world.serve_at_home()
    region_down(single_world)
    single_world.crash_after = "restore"
    with pytest.raises(Crash):
        go(single_world)
    run_id = run_id_of(single_world)
    single_world.leave_dead_lease()
    single_world.crash_after = None
    held = []
    real = steps.start
    monkeypatch.setattr(steps, "start", lambda run, moves: held.append(lease_holder(single_world)) or real(run, moves))
    from drtool.recovery import engine

    monkeypatch.setattr(engine.S, "start", steps.start)
    report = go(single_world, resume=run_id)
    assert report["status"] == "done"
    assert held and held[0] is not None and run_id.encode() in held[0]   # the resume's own holder, not the dead one
    assert lease_holder(single_world) is None


def test_work_found_done_is_reported_already_done_and_nothing_is_redone(single_world):
    single_world.serve_at_home()
    region_down(single_world)
    first = go(single_world)["services"][0]
    plays, flips = len(single_world.plays), len(single_world.flips)
    report = go(single_world)
    again = report["services"][0]
    assert report["status"] == "done" and again["status"] == "already serving" and again["already_serving"]
    assert f"already points at {first['standby']}" in again["already_serving"]
    assert [s["status"] for s in again["steps"][1:]] == ["skipped"] * (len(again["steps"]) - 1)
    assert len(single_world.plays) == plays and len(single_world.flips) == flips
    assert first["standby"] == again["standby"]


def test_an_unplanned_failover_is_refused_in_preflight_while_the_primary_serves(single_world):
    single_world.serve_at_home()
    with pytest.raises(failover.PrimaryServing) as err:
        go(single_world)
    assert "10.0.1.11:8080 answers /readyz 200" in err.value.message and "nothing changed" in err.value.message
    assert "--planned" in err.value.hint and err.value.exit_code == 2
    assert not single_world.plays and not single_world.flips and lease_holder(single_world) is None
    steps = {s["name"]: s["status"] for s in journal(single_world, err.value.message.split()[1])["steps"]}
    assert steps["preflight"] == "failed" and set(steps.values()) == {"failed", "pending"}


def test_a_planned_move_flips_and_confirms_before_it_stops_the_old_primary(single_world):
    single_world.serve_at_home()
    single_world.ttl = 1
    report = go(single_world, planned=True)
    names = [s["name"] for s in report["services"][0]["steps"]]
    assert names.index("confirm_dns") < names.index("fence_primary")
    assert single_world.events.index("flip model.example.com") < single_world.events.index("stop m@pw-gpu1")


def test_a_failed_standby_hands_its_services_to_the_next_free_one_and_a_resume_never_uses_it(fleet_world):
    fleet_world.serve_at_home()
    region_down(fleet_world)
    fleet_world.broken["de-gpu3"] = "host key mismatch"   # where best fit puts the first two
    res = go(fleet_world, services=("tts", "embed", "asr"))
    rows = {r["service"]: r for r in res["services"]}
    assert {r["status"] for r in rows.values()} == {"moved"}
    assert all(r["standby"] != "de-gpu3" for r in rows.values())
    handed = [n for n, r in rows.items() if any(not t["ok"] for t in r["standbys_tried"])]
    assert len(handed) == 2 and all(rows[n]["fallback"].startswith("de-gpu3 refused (engine: host key mismatch")
                                    for n in handed)
    assert not fleet_world.powered["de-gpu3"]
    doc = json.loads((fleet_world.root / "state" / "runs" / f"{res['run_id']}.report.json").read_text())
    assert list(doc["failed_standbys"]) == ["de-gpu3"]
    assert {a["service"]: a["standby"] for a in doc["assignments"]} == {n: r["standby"] for n, r in rows.items()}


def test_one_service_failing_verification_never_moves_its_record_nor_stops_the_others(fleet_world):
    fleet_world.serve_at_home()
    region_down(fleet_world)
    fleet_world.corrupt.add("s-tts")
    with pytest.raises(VerificationError) as err:
        go(fleet_world)
    rows = {r["service"]: r for r in err.value.result["services"]}
    assert rows["tts"]["status"] == "failed" and rows["tts"]["reason"].startswith("restore: no snapshot of tts")
    assert "sha256 mismatch" in rows["tts"]["reason"]
    assert fleet_world.records["tts.example.com"] == ["10.0.1.11"]
    assert {n for n, r in rows.items() if r["status"] == "moved"} == set(fleet_world.config.services) - {"tts"}
    assert "--resume" in err.value.hint and err.value.exit_code == 3
    fleet_world.corrupt.clear()
    again = go(fleet_world, resume=err.value.result["run_id"])
    assert again["status"] == "done"
    assert [s["attempts"] for s in journal(fleet_world, again["run_id"], "asr")["steps"]] == [1] * 11


def test_a_fleet_failback_journals_saves_each_record_it_replaces_and_resumes(fleet_world):
    fleet_world.serve_at_home()
    region_down(fleet_world)
    moved = go(fleet_world)
    fleet_world.powered["pw-gpu1"] = True                 # the region is back (its containers did not restart)
    for key, c in fleet_world.containers.items():
        if key[0] == "pw-gpu1":
            c["running"] = False
    fleet_world.crash_after = "verify"
    with pytest.raises(Crash):
        go(fleet_world, FAILBACK, "prod-west")
    fleet_world.crash_after = None
    run_id = run_id_of(fleet_world, "fb-*")
    back = go(fleet_world, FAILBACK, "prod-west", resume=run_id)
    assert back["status"] == "done" and {r["status"] for r in back["services"]} == {"back"}
    for spec in fleet_world.config.services.values():
        assert fleet_world.records[spec.record] == ["10.0.1.11"]
        doc = journal(fleet_world, run_id, spec.name)
        assert [s["name"] for s in doc["steps"]] == FAILBACK_STEPS
        assert all(s["attempts"] == 1 for s in doc["steps"] if s["name"] != "lease")
        row = next(r for r in back["services"] if r["service"] == spec.name)
        store = open_store(fleet_world.config.site("prod-west").object_stores[0])
        saved = json.loads(store.get(row["dns"]["previous_saved"]))
        store.close()
        standby = next(r["standby"] for r in moved["services"] if r["service"] == spec.name)
        assert saved["record"] == spec.record and saved["addresses"] == [fleet_world.address[standby]]
    assert not any(fleet_world.powered[h] for h in fleet_world.powered if h.startswith("de-"))
    # a second failback finds everything home and changes nothing
    flips = len(fleet_world.flips)
    again = go(fleet_world, FAILBACK, "prod-west")
    assert {r["status"] for r in again["services"]} == {"already home"} and len(fleet_world.flips) == flips


def test_a_resume_of_an_unknown_run_or_one_of_the_other_direction_is_refused(fleet_world):
    with pytest.raises(UsageError, match="no journal for run nope"):
        go(fleet_world, resume="nope")
    fleet_world.serve_at_home()
    region_down(fleet_world)
    res = go(fleet_world, services=("tts",))
    with pytest.raises(UsageError, match="is a failover to dr-east"):
        go(fleet_world, FAILBACK, "prod-west", resume=res["run_id"])


def test_a_standby_nobody_can_replace_fails_only_its_services(fleet_world):
    fleet_world.serve_at_home()
    region_down(fleet_world)
    for h in ("de-gpu1", "de-gpu2", "de-gpu3", "de-gpu4"):
        fleet_world.broken[h] = "engine down"
    with pytest.raises(OperationFailed) as err:
        go(fleet_world, services=("tts",))
    row = err.value.result["services"][0]
    assert row["status"] == "failed" and "no standby of dr-east could take tts" in row["reason"]
    assert fleet_world.records["tts.example.com"] == ["10.0.1.11"]


def test_rounds_hold_at_most_one_item_per_host_and_keep_every_item():
    items = [("asr", "a"), ("tts", "b"), ("emo", "a"), ("llm", "a"), ("ocr", "c")]
    rounds = split_rounds(items, key=lambda i: i[1])
    assert [[i[0] for i in r] for r in rounds] == [["asr", "tts", "ocr"], ["emo"], ["llm"]]
    assert split_rounds([], key=lambda i: i) == []
