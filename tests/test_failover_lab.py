"""Failover and failback on the lab, for real: standbys powered on, images pulled by digest, weights restored
and verified, the canary checked, and only then DNS moved (read back with dig from the lab's BIND)."""

from __future__ import annotations

import json

import docker
import pytest
import yaml

from drtool.execute.serving import base_url, predict
from drtool.model_registry.entries import compare_output

from .conftest import FRONT, MODEL, cli_json, dig, largest_blob, power_off_primary, run_cli

pytestmark = pytest.mark.lab
PRIMARY, STANDBY1, STANDBY2 = FRONT, "10.77.0.21", "10.77.0.22"  # PRIMARY: prod-west's Nginx


def serves_canary(address: str, entry) -> bool:
    out = predict(base_url(address, 8080), entry.canary.input)["outputs"]
    return compare_output(entry.canary.expected, out, entry.canary.tolerance)[0]


def test_primary_down_failover_then_failback(lab, production, state, back_to_production):
    entry = production["entry"]
    power_off_primary(lab)  # both GPU hosts: with one left, its Nginx keeps the site serving
    run = cli_json("failover", "--site", "dr-east", "--yes", "--reason", "test: prod-west down")
    report = run["services"][0]   # the one service's row: its steps, production, record and RTO
    assert dig() == STANDBY1
    assert serves_canary(STANDBY1, entry)
    assert run["status"] == "done" and report["status"] == "moved" and report["standby"] == "de-gpu1"
    assert report["production"]["version"] == entry.version
    assert report["dns"]["before"]["addresses"] == [PRIMARY] and report["dns"]["after"] == [STANDBY1]
    steps = report["steps"]
    assert [s["status"] for s in steps] == ["done"] * len(steps)
    # The steps add up: in order; only the steps of one group (pull_image and restore) run at the same time; the
    # spans (a group counted once, start of its first to end of its last) do not overlap and fit within the RTO.
    spans: list[list] = []
    for s in steps:
        if s["group"] and spans and spans[-1][2] == s["group"]:
            spans[-1][0], spans[-1][1] = min(spans[-1][0], s["start"]), max(spans[-1][1], s["end"])
        else:
            spans.append([s["start"], s["end"], s["group"]])
    for a, b in zip(spans, spans[1:], strict=False):
        assert a[1] <= b[0]
    assert sum(e - b for b, e, _ in spans) <= report["rto_s"] + 0.5
    pull, restore = (next(s for s in steps if s["name"] == n) for n in ("pull_image", "restore"))
    assert pull["group"] == restore["group"] == "fetch" and restore["start"] < pull["end"]  # they overlapped
    assert steps[-1]["end"] - run["started"] == pytest.approx(report["rto_s"], abs=0.01) == run["rto_s"]
    assert "unreachable" in json.dumps(next(s for s in steps if s["name"] == "fence_primary")["evidence"])
    assert (state / "runs" / f"{run['run_id']}.report.json").exists()

    # A second failover to a site already serving reports that and changes nothing.
    again = cli_json("failover", "--site", "dr-east", "--yes")["services"][0]
    assert again["already_serving"] and dig() == STANDBY1
    assert [s["status"] for s in again["steps"][1:]] == ["skipped"] * (len(again["steps"]) - 1)

    # Failback: the primary serves again, DNS returns, the standby is cold.
    for h in ("pw-gpu1", "pw-gpu2"):
        lab.power_on(h)
    back = cli_json("failback", "--site", "prod-west", "--yes")
    assert back["status"] == "done" and dig() == PRIMARY
    assert serves_canary(PRIMARY, entry)
    assert not lab.is_powered("de-gpu1") and not lab.is_powered("de-gpu2")


# CI kills after `start`; after `provision` and `flip_dns` nightly (each about 1.5 minutes with its failback).
@pytest.mark.parametrize("crash_after", [pytest.param("provision", marks=pytest.mark.nightly), "start",
                                         pytest.param("flip_dns", marks=pytest.mark.nightly)])
def test_crash_after_a_step_and_resume(lab, lab_config, production, state, back_to_production, crash_after):
    from drtool.snapshot.stores import lease_key, open_store

    power_off_primary(lab)  # both GPU hosts: with one left, its Nginx keeps the site serving
    proc = run_cli("failover", "--site", "dr-east", "--yes", env={"DRTOOL_FAULT_KILL_AFTER_STEP": crash_after})
    assert proc.returncode == -9, proc.stderr  # SIGKILL, like a crashed controller
    journal_path = next((state / "runs").glob("fo-*/*.json"))
    run_id = journal_path.parent.name
    journal = json.loads(journal_path.read_text())
    done = [s["name"] for s in journal["steps"] if s["status"] == "done"]
    assert done[-1] == crash_after
    report = cli_json("failover", "--site", "dr-east", "--resume", run_id)
    assert report["status"] == "done" and dig() == STANDBY1
    by_name = {s["name"]: s for s in report["services"][0]["steps"]}
    assert by_name["flip_dns"]["attempts"] == 1  # no second DNS change
    # The resumed run took the site's lease again (over the killed holder) before any further step ...
    assert by_name["lease"]["attempts"] == 2 and by_name["lease"]["status"] == "done"
    assert all(by_name[n]["attempts"] == 1 for n in done if n != "lease")  # nothing before the crash was redone
    # ... and released it at the end: no stale lease naming the killed process is left behind.
    store = open_store(lab_config.site("dr-east").object_stores[0])
    try:
        assert store.get(lease_key("failover-dr-east")) is None
    finally:
        store.close()
    eng = docker.DockerClient(base_url=lab.engine_url("de-gpu1"))
    assert len(eng.containers.list(all=True, filters={"name": f"drtool-{MODEL}"})) == 1


@pytest.mark.nightly   # about 1.5 minutes with its failback
def test_first_standby_broken_second_serves(lab, production, state, back_to_production):
    lab.break_engine("de-gpu1")
    power_off_primary(lab)  # both GPU hosts: with one left, its Nginx keeps the site serving
    report = cli_json("failover", "--site", "dr-east", "--yes")["services"][0]
    assert report["standby"] == "de-gpu2" and dig() == STANDBY2
    tried = report["standbys_tried"]
    assert tried[0]["host"] == "de-gpu1" and not tried[0]["ok"] and tried[1] == {**tried[1], "host": "de-gpu2",
                                                                                 "ok": True}
    assert not lab.is_powered("de-gpu1")
    assert serves_canary(STANDBY2, production["entry"])


def test_corrupt_blob_in_dr_store_no_flip_exit_3(lab, lab_config, production, state, back_to_production):
    blob = largest_blob(lab_config.site("dr-east").object_stores[0], production["snapshot"]["id"])
    blob.flip_one_bit()
    try:
        proc = run_cli("--json", "failover", "--site", "dr-east", "--yes", "--planned")  # the primary serves
        assert proc.returncode == 3, proc.stdout + proc.stderr
        err = json.loads(proc.stdout)
        assert "stopped at step restore" in err["message"] and "NOT changed" in err["hint"]
        assert dig() == PRIMARY
        report = json.loads(next((state / "runs").glob("*.report.json")).read_text())["services"][0]
        failed = [s for s in report["steps"] if s["status"] == "failed"]
        assert [s["name"] for s in failed] == ["restore"]
        assert "safetensors: sha256 mismatch: expected" in failed[0]["error"] and "actual" in failed[0]["error"]
        assert report["dns"]["after"] is None
    finally:
        blob.put_back()


def test_canary_mismatch_no_flip_exit_3(lab, lab_config, production, state, back_to_production):
    from drtool.actions.registry import site_registry
    from drtool.model_registry.registry import version_key

    reg = site_registry(lab_config, lab_config.site("dr-east"))
    key = version_key(MODEL, production["entry"].version)
    original = reg.store.get(key)
    doc = json.loads(original)
    doc["canary"]["expected"] = [[[0.0] * 32] * 20]  # a registry that expects other outputs
    reg.store.put(key, json.dumps(doc).encode())
    try:
        proc = run_cli("failover", "--site", "dr-east", "--yes", "--planned")  # the primary serves
        assert proc.returncode == 3, proc.stderr
        assert "stopped at step verify" in proc.stderr and "canary output" in proc.stderr
        assert dig() == PRIMARY
    finally:
        reg.store.put(key, original)


def test_wrong_tsig_key_exit_1_nothing_changed(lab, production, state, tmp_path, back_to_production):
    doc = yaml.safe_load(lab.config_path.read_text())
    bad = tmp_path / "bad.key"
    bad.write_text(f'key "drtool-key" {{ algorithm hmac-sha256; secret "{"B" * 43}="; }};\n')
    doc["sites"]["dr-east"]["dns"]["tsig_key_file"] = str(bad)
    cfg = tmp_path / "drtool.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    proc = run_cli("--config", str(cfg), "failover", "--site", "dr-east", "--yes")
    assert proc.returncode == 1, proc.stderr
    assert "refused the TSIG signature" in proc.stderr and "stopped at step preflight" in proc.stderr
    assert dig() == PRIMARY
    assert not lab.is_powered("de-gpu1")
    assert serves_canary(PRIMARY, production["entry"])


def test_dry_run_changes_nothing(lab, production, state):
    proc = run_cli("--json", "failover", "--site", "dr-east", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    steps = report["services"][0]["steps"]
    assert steps[0]["status"] == "done"
    assert {s["status"] for s in steps[1:]} == {"skipped"}
    assert dig() == PRIMARY and not lab.is_powered("de-gpu1")
    runs = state / "runs"
    assert report["journal"] is None and not (runs.exists() and any(runs.iterdir()))  # not even its own journal


def test_without_yes_non_interactive_exits_2(lab, production, state):
    proc = run_cli("failover", "--site", "dr-east")
    assert proc.returncode == 2 and "--yes" in proc.stderr
    assert dig() == PRIMARY


def test_unplanned_failover_refused_while_the_primary_serves(lab, lab_config, production, state,
                                                             back_to_production):
    """A failover is for a primary that does not serve: with prod-west healthy it refuses before any change and
    names what answered; no standby is powered on, the record stays, and no lease is left behind."""
    from drtool.snapshot.stores import lease_key, open_store

    proc = run_cli("--json", "failover", "--site", "dr-east", "--yes")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = json.loads(proc.stdout)
    assert f"{PRIMARY}:8080 answers /readyz 200" in err["message"] and "nothing changed" in err["message"]
    assert "--planned" in err["hint"]
    assert dig() == PRIMARY and not lab.is_powered("de-gpu1") and not lab.is_powered("de-gpu2")
    assert serves_canary(PRIMARY, production["entry"])
    store = open_store(lab_config.site("dr-east").object_stores[0])
    try:
        assert store.get(lease_key("failover-dr-east")) is None
    finally:
        store.close()


@pytest.mark.nightly   # about 3 minutes with its failback: `make test-nightly`
def test_planned_failover_of_a_serving_primary_fails_no_request_under_load(lab, lab_config, production, state,
                                                                           tmp_path, back_to_production):
    """A planned move of a healthy site: Locust loads the record (each request where the record answers, re-read
    after its TTL) for the whole move. The record flips and is confirmed first; the old primary keeps serving
    until the old record's TTL has passed, and only then is it stopped. Not one request fails."""
    import threading

    from drtool.drill.capacity import run_load
    from drtool.model.demo import demo_inputs

    cli_json("failover", "--site", "dr-east", "--prepare", "--ttl", "3")   # the operator's step before a move
    entry = production["entry"]
    dns = lab_config.site("dr-east").dns
    load: dict = {}

    def loader():
        try:
            load["result"] = run_load(base_url(PRIMARY, 8080), requests_total=1_000_000, concurrency=2,
                                      inputs=[{"inputs": demo_inputs(frames=20, seed=s)} for s in range(1, 9)],
                                      canary=entry.canary, slo={}, timeout_s=80,
                                      workdir=tmp_path / "load",
                                      resolve={"record": dns.record, "server": dns.server, "port": dns.port})
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            load["error"] = exc

    thread = threading.Thread(target=loader)
    thread.start()
    try:
        run = cli_json("failover", "--site", "dr-east", "--yes", "--planned", "--reason", "test: planned move")
    finally:
        thread.join(timeout=200)
    assert "error" not in load, load.get("error")
    result = load["result"]
    assert result["requests"] > 0 and result["error_rate"] == 0, result
    assert result["canary_checked"] > 0 and result["canary_mismatches"] == 0, result
    assert run["status"] == "done" and dig() == STANDBY1
    report = run["services"][0]
    names = [s["name"] for s in report["steps"]]
    assert names.index("confirm_dns") < names.index("fence_primary")        # flip and confirm first, then fence
    fence = next(s for s in report["steps"] if s["name"] == "fence_primary")
    flip = next(s for s in report["steps"] if s["name"] == "flip_dns")
    assert fence["start"] >= flip["end"] and fence["evidence"]["drained_s"] >= 0
    assert set(fence["evidence"]["fenced"].values()) == {"serving container stopped"}, fence["evidence"]
