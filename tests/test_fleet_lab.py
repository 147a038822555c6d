"""A region outage on the lab (issue #16): six services of prod-west (drtool-fleet.yaml) to dr-east's four standbys,
for real: one Ansible play per step over all standbys, every restored byte verified, each record flipped only for
its verified service."""

from __future__ import annotations

import dataclasses
import json

import pytest
import requests
import yaml

from drtool.config import load_config
from drtool.execute.dns import dns_for
from drtool.lab.topology import FLEET_SERVICES, HOSTS

from .conftest import FRONT, MODEL, PROD_VERSION, cli_json, dig, largest_blob, power_off_primary, run_cli

# The six-service site: its fixture alone sets up six services (about 4 minutes on 2 CPUs), and each region run
# and its failback take minutes, so the whole module runs nightly (`make test-nightly`), not in CI.
pytestmark = [pytest.mark.lab, pytest.mark.nightly]
STANDBYS = ("de-gpu1", "de-gpu2", "de-gpu3", "de-gpu4")
ALL_HOSTS = ("pw-gpu1", "pw-gpu2", "pw-lb", *STANDBYS)
PW_GPU1 = HOSTS["pw-gpu1"].address


def _world(lab, state) -> dict:
    """Everything a dry run must leave alone: every service's record, every host's power, drtool's journals."""
    runs = state / "runs"
    return {"records": {s.name: dig(s.record) for s in FLEET_SERVICES},
            "power": {h: lab.is_powered(h) for h in ALL_HOSTS},
            "journals": sorted(str(p.relative_to(runs)) for p in runs.rglob("*")) if runs.is_dir() else []}


@pytest.fixture(scope="module")
def fleet(lab, lab_config, production):
    """The five other services of drtool-fleet.yaml in production on pw-gpu1 (drtool/lab/fleet.py)."""
    from drtool.lab import fleet as lab_fleet

    image = production["image"]["pushed"][lab_config.site("prod-west").registry_url]
    snapshots = lab_fleet.set_up(lab, image)
    return {"path": lab.layout.fleet_config, "config": load_config(lab.layout.fleet_config), "snapshots": snapshots}


@pytest.fixture
def fleet_back(lab, fleet, back_to_production):
    """After a fleet test: standbys off, the other services' records back at pw-gpu1 (their primaries are gone
    with its power cycle; the next fleet test moves them with --all), asr failed back by back_to_production."""
    yield
    for h in STANDBYS:
        if lab.is_powered(h):
            lab.power_off(h)
    dr = fleet["config"].site("dr-east")
    for svc in FLEET_SERVICES:
        if svc.model != MODEL:
            dns_for(dataclasses.replace(dr.dns, record=svc.record)).replace_a([PW_GPU1], 60, record=svc.record)


def _ready(url: str) -> bool:
    try:
        return requests.get(url, timeout=3).status_code == 200
    except requests.RequestException:
        return False


def _fleet(fleet, *args: str):
    return run_cli("--config", str(fleet["path"]), "--json", "failover", "--site", "dr-east", "--yes", *args)


def test_fleet_dry_run_prints_the_whole_plan_and_changes_nothing(lab, fleet, state):
    before = _world(lab, state)
    out = cli_json("--config", str(fleet["path"]), "failover", "--site", "dr-east", "--dry-run")
    assert _world(lab, state) == before
    assert out["status"] == "planned" and out["dry_run"] and out["journal"] is None
    assert [r["service"] for r in out["services"]] == [s.name for s in FLEET_SERVICES]   # priority order
    assert {r["standby"] for r in out["services"]} == set(STANDBYS)
    for r in out["services"]:
        prod = r["production"]
        assert r["status"] == "to move" and prod["version"] == PROD_VERSION and prod["image"] and prod["snapshot_id"]
        if r["service"] in fleet["snapshots"]:
            assert prod["snapshot_id"] == fleet["snapshots"][r["service"]]


def test_region_outage_one_of_six_fails_verification_the_others_move_then_resume_moves_it(
        lab, fleet, state, fleet_back):
    victim = "emotion"
    cfg = fleet["config"]
    blob = largest_blob(cfg.site("dr-east").object_stores[0], fleet["snapshots"][victim])
    blob.flip_one_bit()                                                 # its only snapshot: wrong weights
    try:
        power_off_primary(lab)                                          # the region: every prod-west GPU host
        proc = _fleet(fleet)
        assert proc.returncode == 3, proc.stdout[-3000:] + proc.stderr[-3000:]   # every failure a verification
        err = json.loads(proc.stdout)
        rows = {r["service"]: r for r in err["result"]["services"]}
        assert set(rows) == {s.name for s in FLEET_SERVICES}
        assert rows[victim]["status"] == "failed" and rows[victim]["reason"].startswith("restore: no snapshot")
        assert "sha256 mismatch" in rows[victim]["reason"]
        assert dig(f"{victim}.drlab.test") == PW_GPU1                 # its record untouched
        moved = [n for n, r in rows.items() if r["status"] == "moved"]
        assert sorted(moved) == sorted(s.name for s in FLEET_SERVICES if s.name != victim)
        standby_addresses = {HOSTS[h].address for h in STANDBYS}
        for svc in FLEET_SERVICES:
            if svc.name in moved:
                assert dig(svc.record) in standby_addresses, svc.name
        assert err["result"]["rto_s"] > 0 and "--resume" in err["hint"]
        run_id = err["result"]["run_id"]
        flip = next(st for st in json.loads((state / "runs" / run_id / "tts.json").read_text())["steps"]
                    if st["name"] == "flip_dns")
        assert set(flip["evidence"]["fenced"]) == {"pw-gpu1"}                  # the region is down: not fenced
        assert flip["evidence"]["fenced"]["pw-gpu1"].startswith("unreachable")
    finally:
        blob.put_back()                                                 # the fix
    again = cli_json("--config", str(fleet["path"]), "failover", "--site", "dr-east", "--yes", "--resume", run_id)
    rows = {r["service"]: r for r in again["services"]}
    assert rows[victim]["status"] == "moved" and again["status"] == "done"
    assert dig(f"{victim}.drlab.test") == HOSTS[rows[victim]["standby"]].address
    journal = json.loads((state / "runs" / run_id / "tts.json").read_text())
    assert [s["attempts"] for s in journal["steps"]] == [1] * len(journal["steps"])   # a moved one did not run again


def test_a_standby_that_fails_mid_fleet_hands_its_services_to_the_next_free_standby(lab, fleet, state, fleet_back):
    """A region outage moving four services while de-gpu1's engine is broken: the services the planner put on
    de-gpu1 fail over to the free slots left (de-gpu2), the table names the refused standby, de-gpu1 is off again,
    and every service is verified and served through its own record."""
    names = ["asr", "tts", "emotion", "llm-small"]        # four of six: the other standbys have room for them
    lab.break_engine("de-gpu1")
    power_off_primary(lab)
    proc = _fleet(fleet, *[arg for n in names for arg in ("--service", n)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    rows = {r["service"]: r for r in result["services"]}
    assert {n: r["status"] for n, r in rows.items()} == {n: "moved" for n in names}
    handed = [n for n in names if any(not t["ok"] for t in rows[n]["standbys_tried"])]
    assert handed, rows                                   # the planner had put some of them on de-gpu1
    for n in handed:
        assert [t["host"] for t in rows[n]["standbys_tried"] if not t["ok"]] == ["de-gpu1"]
        assert rows[n]["standby"] != "de-gpu1"
        assert rows[n]["fallback"].startswith("de-gpu1 refused (") and f"moved to {rows[n]['standby']}" in \
            rows[n]["fallback"]
    fleet_doc = json.loads((state / "runs" / f"{result['run_id']}.report.json").read_text())
    assert list(fleet_doc["failed_standbys"]) == ["de-gpu1"]
    assert {a["service"]: a["standby"] for a in fleet_doc["assignments"]} == {n: rows[n]["standby"] for n in names}
    assert not lab.is_powered("de-gpu1")
    cfg = fleet["config"]
    for n in names:
        assert dig(cfg.services[n].record) == HOSTS[rows[n]["standby"]].address, n
        assert _ready(f"http://{HOSTS[rows[n]['standby']].address}:{cfg.services[n].port}/readyz"), n


def test_services_outnumber_standbys_lowest_priority_left_and_reported(lab, fleet, state, tmp_path, fleet_back):
    from drtool.lab import fleet as lab_fleet

    lab_fleet.serve(fleet["config"], only={"tts", "llm-medium"})      # one to move (and fence), one to leave
    doc = yaml.safe_load(fleet["path"].read_text())
    for h in doc["sites"]["dr-east"]["standby_pool"]["hosts"]:
        h["gpus"] = 1                                                  # four slots for six services
    path = tmp_path / "drtool-fleet-4.yaml"
    path.write_text(yaml.safe_dump(doc))
    before = {s.name: dig(s.record) for s in FLEET_SERVICES}
    proc = run_cli("--config", str(path), "--json", "failover", "--site", "dr-east", "--yes", "--all")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    err = json.loads(proc.stdout)
    rows = {r["service"]: r for r in err["result"]["services"]}
    assert {n for n, r in rows.items() if r["status"] == "left"} == {"llm-medium", "llm-large"}
    assert all("no standby" in rows[n]["reason"] or "GPU" in rows[n]["reason"] for n in ("llm-medium", "llm-large"))
    assert {n for n, r in rows.items() if r["status"] == "moved"} == {"asr", "tts", "emotion", "llm-small"}
    for n in ("llm-medium", "llm-large"):
        rec = next(s.record for s in FLEET_SERVICES if s.name == n)
        assert dig(rec) == before[n]                                   # left: its record untouched
    assert "llm-medium: left" in " ".join(err["details"])
    # --all moves a serving primary as a planned move: its record flipped and confirmed first, then (the old
    # record's TTL waited out) its container at home stopped; the left ones still serve at home.
    run_dir = state / "runs" / err["result"]["run_id"]
    for n in ("tts", "emotion", "llm-small"):
        steps = {st["name"]: st for st in json.loads((run_dir / f"{n}.json").read_text())["steps"]}
        assert steps["fence_primary"]["evidence"]["fenced"] == {"pw-gpu1": "serving container stopped"}, n
        assert steps["fence_primary"]["start"] >= steps["confirm_dns"]["end"], n
    port = {s.name: s.port for s in FLEET_SERVICES}
    assert not _ready(f"http://{PW_GPU1}:{port['tts']}/readyz")          # served at home before: fenced
    assert _ready(f"http://{PW_GPU1}:{port['llm-medium']}/readyz")       # left: its home instance untouched


def test_failback_one_service_then_the_whole_site(lab, fleet, state, fleet_back):
    """After a region outage moved all six: the region is back; `failback --service tts` brings tts home alone
    (verified on pw-gpu1 before its record moves; the standby it shared stays on for the service still on it);
    then `failback` brings every other service home and powers off every standby."""
    from .conftest import FRONT, PW_HOSTS

    cfg = fleet["config"]
    power_off_primary(lab)
    moved = cli_json("--config", str(fleet["path"]), "failover", "--site", "dr-east", "--yes", "--all")
    assert moved["status"] == "done"
    at = {r["service"]: r["standby"] for r in moved["services"]}
    for h in (*PW_HOSTS, "pw-lb"):
        lab.power_on(h)                                                # the region is back

    before = _world(lab, state)
    plan = cli_json("--config", str(fleet["path"]), "failback", "--site", "prod-west", "--dry-run")
    assert _world(lab, state) == before                                # a dry run changes nothing
    assert {r["service"]: r["status"] for r in plan["services"]} == {s.name: "to bring back" for s in FLEET_SERVICES}

    one = cli_json("--config", str(fleet["path"]), "failback", "--site", "prod-west", "--yes", "--service", "tts")
    assert [(r["service"], r["status"]) for r in one["services"]] == [("tts", "back")]
    assert dig("tts.drlab.test") == PW_GPU1
    # The record it replaced (tts at its standby) was saved first, in prod-west's store, as every change does.
    from drtool.snapshot.stores import open_store

    store = open_store(cfg.site("prod-west").object_stores[0])
    try:
        saved = json.loads(store.get(one["services"][0]["dns"]["previous_saved"]))
    finally:
        store.close()
    assert saved["record"] == "tts.drlab.test" and saved["addresses"] == [HOSTS[at["tts"]].address]
    tts = cfg.services["tts"]
    version = requests.get(f"http://{PW_GPU1}:{tts.port}/version", timeout=5).json()
    assert version["model"] == tts.model and version["version"] == PROD_VERSION
    sharing = [n for n, h in at.items() if h == at["tts"] and n != "tts"]
    assert lab.is_powered(at["tts"]) == bool(sharing), (at, one["cooled"])   # off only when nobody else is on it
    for name in sharing:
        assert dig(cfg.services[name].record) == HOSTS[at["tts"]].address   # the other service still served there
    if sharing:   # tts's container left that standby; the other service's stayed
        import docker

        eng = docker.DockerClient(base_url=lab.engine_url(at["tts"]))
        try:
            names = {c.name for c in eng.containers.list()}
        finally:
            eng.close()
        assert f"drtool-{tts.model}" not in names
        assert {f"drtool-{cfg.services[n].model}" for n in sharing} <= names

    rest = cli_json("--config", str(fleet["path"]), "failback", "--site", "prod-west", "--yes")
    rows = {r["service"]: r["status"] for r in rest["services"]}
    assert rows.pop("tts") == "already home" and set(rows.values()) == {"back"}, rest["services"]
    for svc in FLEET_SERVICES:
        assert dig(svc.record) == (FRONT if svc.model == MODEL else PW_GPU1), svc.name
    assert not any(lab.is_powered(h) for h in STANDBYS), rest["cooled"]


def test_backup_snapshots_every_service_on_the_hosts_that_serve_it(lab, fleet, state):
    """`drtool backup` with six services: each service's weights on each host that serves it (asr on both GPU
    hosts behind the Nginx, the others on pw-gpu1), in one play over both hosts, each snapshot labelled with the
    registry's production version and copied to dr-east."""
    cfg = fleet["config"]
    models = [s.model for s in FLEET_SERVICES]                        # priority order
    plan = cli_json("--config", str(fleet["path"]), "backup", "--dry-run")
    assert {h: [m["name"] for m in ms] for h, ms in plan["per_host"].items()} == \
        {"pw-gpu1": models, "pw-gpu2": [MODEL]}
    assert {m["name"]: m["port"] for m in plan["per_host"]["pw-gpu1"]} == {s.model: s.port for s in FLEET_SERVICES}
    res = cli_json("--config", str(fleet["path"]), "backup")
    assert sorted((s["host"], s["model"]) for s in res["snapshots"]) == \
        sorted([("pw-gpu1", m) for m in models] + [("pw-gpu2", MODEL)])
    assert all(s["version"] == PROD_VERSION for s in res["snapshots"])
    dr_url = cfg.site("dr-east").object_stores[0].url
    assert {c["snapshot"] for c in res["copies"] if c["to"] == dr_url} == {s["id"] for s in res["snapshots"]}
    for svc in FLEET_SERVICES:
        if svc.model != MODEL and svc.name in fleet["snapshots"]:   # same bytes as the set-up snapshot: deduplicated
            snap = next(s for s in res["snapshots"] if s["model"] == svc.model)
            assert snap["bytes_uploaded"] == 0, svc.name


def test_region_down_drill_brings_every_service_back_and_reports_each(lab, fleet, state, tmp_path):
    """The `region-down` drill: every prod-west host off; Prometheus, Alertmanager and `drtool serve` start one
    fleet failover (on drill records), which moves all six;
    per service the record points at its verified standby, the canary is served through it (RTO), its snapshot's
    age at the fault (RPO) and a Locust capacity check; the fleet RTO is the last service's. Cleanup: the fleet
    failback; production records never moved; every standby off; the drill records gone."""
    from .conftest import FRONT

    before = {s.name: dig(s.record) for s in FLEET_SERVICES}
    proc = run_cli("--config", str(fleet["path"]), "--json", "drill", "--site", "dr-east", "--scenario",
                   "region-down", "--report", str(tmp_path / "report"))
    doc = json.loads(proc.stdout)
    assert proc.returncode == 0, json.dumps(doc, indent=1)[:5000]
    sc = doc["scenarios"][0]
    assert sc["scenario"] == "region-down" and sc["passed"] and sc["not_cleaned"] == []
    per = sc["services"]
    assert set(per) == {s.name for s in FLEET_SERVICES}
    standby_names = set(STANDBYS)
    for name, p in per.items():
        assert p["status"] == "moved" and p["standby"] in standby_names, (name, p)
        assert p["record"] == ("drill.model.drlab.test" if name == "asr" else f"drill.{name}.drlab.test")
        assert 0 < p["moved_s"] <= p["rto_s"] and p["rpo_s"] >= 0, (name, p)
        assert p["capacity"]["passed"] and p["capacity"]["error_rate"] == 0, (name, p)
    assert sc["rto_s"] == max(p["rto_s"] for p in per.values())
    # Through the real alert chain: Prometheus fired, Alertmanager posted, serve decided once, one fleet run.
    assert 0 < sc["split"]["detection"] < sc["rto_s"] and 0 < sc["split"]["decision"] < sc["rto_s"], sc["split"]
    book = tmp_path / "report" / "work" / "region-down" / "alerts" / "alerts" / "decisions.json"
    launched = [d for d in json.loads(book.read_text())["decisions"].values() if d.get("run_id")]
    assert len(launched) == 1 and launched[0]["run_id"] == sc["failover"]["run_id"], launched
    checks = {c["name"]: c["passed"] for c in sc["checks"]}
    for name in ("failover_completed", "record_points_at_verified_standby", "canary_served_through_record",
                 "rto_within_target", "rpo_within_target", "load_within_slo", "production_dns_unchanged",
                 "steady_state_after"):
        assert checks[name], name
    assert {s.name: dig(s.record) for s in FLEET_SERVICES} == before
    assert before["asr"] == FRONT
    assert not any(lab.is_powered(h) for h in STANDBYS)
    assert all(dig(p["record"]) == "" for p in per.values())      # drill records removed
    html = (tmp_path / "report" / "report.html").read_text()
    assert "<h3>Services</h3>" in html and "llm-large" in html


class RecordWatcher:
    """Every service record read from the lab's BIND every 100 ms (dnspython) while a run goes on: when each record
    first pointed at a DR standby."""

    def __init__(self, dns, services):
        import threading

        self.dns, self.services, self.first_at, self.samples = dns, services, {}, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        import time

        standbys = {HOSTS[h].address for h in STANDBYS}
        while not self.stop.wait(0.1):
            for svc in self.services:
                if svc.name not in self.first_at and set(self.dns.read_a(svc.record).addresses) & standbys:
                    self.first_at[svc.name] = time.time()
            self.samples += 1

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


@pytest.mark.parametrize("crash_after", ["provision", "pull_image", "restore", "start", "verify", "flip_dns",
                                         "confirm_dns"])
def test_a_region_failover_killed_after_each_step_resumes_without_redoing_anything(lab, fleet, state, fleet_back,
                                                                                   crash_after):
    """SIGKILL of `drtool failover --site dr-east` (six services) right after a step, then `--resume`: every
    service verified and serving its canary through its own record, no step done twice, the site's lease held by
    the resume and released, and no record ever pointed at a standby before that service passed verify."""
    from drtool.execute.serving import base_url, predict
    from drtool.model_registry.entries import compare_output

    cfg = fleet["config"]
    power_off_primary(lab)
    with RecordWatcher(dns_for(cfg.site("dr-east").dns), FLEET_SERVICES) as watcher:
        proc = run_cli("--config", str(fleet["path"]), "--json", "failover", "--site", "dr-east", "--yes", "--all",
                       env={"DRTOOL_FAULT_KILL_AFTER_STEP": crash_after})
        assert proc.returncode == -9, proc.stdout[-2000:] + proc.stderr[-2000:]
        (fleet_doc,) = (state / "runs").glob("*.report.json")
        run_id = fleet_doc.name.removesuffix(".report.json")
        killed = {p.stem: {s["name"]: s["status"] for s in json.loads(p.read_text())["steps"]}
                  for p in (state / "runs" / run_id).glob("*.json")}
        assert any(steps.get(crash_after) == "done" for steps in killed.values()), killed
        again = cli_json("--config", str(fleet["path"]), "failover", "--site", "dr-east", "--resume", run_id)
    assert again["status"] == "done", again
    assert watcher.samples > 10
    from drtool.actions.registry import site_registry

    registry = site_registry(cfg, cfg.site("dr-east"))
    for row in again["services"]:
        svc = cfg.services[row["service"]]
        journal = json.loads((state / "runs" / run_id / f"{svc.name}.json").read_text())
        steps = {s["name"]: s for s in journal["steps"]}
        assert all(s["attempts"] == 1 for n, s in steps.items() if n != "lease"), (svc.name, steps)   # none twice
        assert steps["lease"]["attempts"] in (1, 2)      # taken again by the resume when its run was under way
        address = HOSTS[row["standby"]].address
        assert dig(svc.record) == address
        # verified before its record moved: the watcher saw the standby only after verify had ended
        assert watcher.first_at[svc.name] >= steps["verify"]["ended"] - 0.05, svc.name
        entry = registry.production(svc.model)
        out = predict(base_url(address, svc.port), entry.canary.input)["outputs"]
        assert compare_output(entry.canary.expected, out, entry.canary.tolerance)[0], svc.name
    registry.store.close()


@pytest.mark.parametrize("crash_after", ["provision", "pull_image", "restore", "start", "verify", "flip_dns",
                                         "confirm_dns"])
def test_a_site_failback_killed_after_each_step_resumes_without_redoing_anything(lab, fleet, state, fleet_back,
                                                                                 crash_after):
    """After a region failover of all six: SIGKILL of `drtool failback --site prod-west` right after a step, then
    `--resume`: every service home, verified and serving its canary through its own record, no step done twice,
    every record it replaced saved, no record pointed home before that service passed verify there, and no standby
    left on."""
    from drtool.execute.serving import base_url, predict
    from drtool.model_registry.entries import compare_output

    from .conftest import PW_HOSTS

    cfg = fleet["config"]
    power_off_primary(lab)
    moved = cli_json("--config", str(fleet["path"]), "failover", "--site", "dr-east", "--yes", "--all")
    assert moved["status"] == "done"
    for h in (*PW_HOSTS, "pw-lb"):
        lab.power_on(h)                                                # the region is back
    home = {s.name: (FRONT if s.model == MODEL else PW_GPU1) for s in FLEET_SERVICES}
    with HomeWatcher(dns_for(cfg.site("prod-west").dns), FLEET_SERVICES, home) as watcher:
        proc = run_cli("--config", str(fleet["path"]), "--json", "failback", "--site", "prod-west", "--yes",
                       env={"DRTOOL_FAULT_KILL_AFTER_STEP": crash_after})
        assert proc.returncode == -9, proc.stdout[-2000:] + proc.stderr[-2000:]
        (doc,) = (state / "runs").glob("fb-*.report.json")
        run_id = doc.name.removesuffix(".report.json")
        again = cli_json("--config", str(fleet["path"]), "failback", "--site", "prod-west", "--resume", run_id)
    assert again["status"] == "done", again
    from drtool.actions.registry import site_registry

    registry = site_registry(cfg, cfg.site("prod-west"))
    try:
        for row in again["services"]:
            svc = cfg.services[row["service"]]
            steps = {s["name"]: s for s in json.loads((state / "runs" / run_id / f"{svc.name}.json").read_text())[
                "steps"]}
            assert all(s["attempts"] == 1 for n, s in steps.items() if n != "lease"), (svc.name, steps)
            assert dig(svc.record) == home[svc.name], svc.name
            if svc.name in watcher.first_at:   # moved home by this run: only after its verify there had ended
                assert watcher.first_at[svc.name] >= steps["verify"]["ended"] - 0.05, svc.name
            entry = registry.production(svc.model)
            out = predict(base_url(PW_GPU1 if svc.model != MODEL else FRONT, svc.port), entry.canary.input)["outputs"]
            assert compare_output(entry.canary.expected, out, entry.canary.tolerance)[0], svc.name
    finally:
        registry.store.close()
    assert not any(lab.is_powered(h) for h in STANDBYS)


class HomeWatcher(RecordWatcher):
    """Every service record read every 100 ms while a failback goes on: when each first pointed home."""

    def __init__(self, dns, services, home):
        super().__init__(dns, services)
        self.home = home

    def run(self) -> None:
        import time

        while not self.stop.wait(0.1):
            for svc in self.services:
                if svc.name not in self.first_at and self.dns.read_a(svc.record).addresses == [self.home[svc.name]]:
                    self.first_at[svc.name] = time.time()
            self.samples += 1


def test_serve_killed_mid_region_failover_resumes_the_same_run_once(lab, fleet, state, fleet_back, tmp_path):
    """`drtool serve` (policy auto) gets a site-down alert for prod-west, really down, and launches one fleet
    failover. serve and the failover it launched are SIGKILLed midway (a crashed receiver host); serve restarted
    resumes that run under the same run id, exactly once: one decision, one run, no step done twice, and every
    service verified and moved."""
    import contextlib
    import os
    import signal
    import time

    import requests

    from drtool.drill.alertchain import free_port

    from .test_alert_path_lab import TOKEN, start_receiver

    (tmp_path / "token").write_text(TOKEN)
    (tmp_path / "token").chmod(0o600)
    doc = yaml.safe_load(fleet["path"].read_text())
    doc["alerts"] = {"policy": "auto", "token_file": str(tmp_path / "token"), "firing_for_s": 0,
                     "cooldown_s": 3600, "state_dir": str(tmp_path / "alerts")}
    cfg = tmp_path / "drtool-fleet-serve.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    power_off_primary(lab)                                              # the region: every prod-west GPU host
    port = free_port()
    log = open(tmp_path / "serve.log", "ab")  # noqa: SIM115 - kept open across the receiver's restart
    serve = start_receiver(cfg, port, log)
    try:
        starts = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 60))
        alert = {"version": "4", "status": "firing", "receiver": "drtool", "groupKey": "{}:{}",
                 "alerts": [{"status": "firing", "labels": {"alertname": "ModelPrimaryDown", "site": "prod-west"},
                             "annotations": {}, "startsAt": starts, "endsAt": "0001-01-01T00:00:00Z",
                             "fingerprint": "4e61"}]}
        resp = requests.post(f"http://127.0.0.1:{port}/alerts", json=alert, timeout=10,
                             headers={"Authorization": f"Bearer {TOKEN}"})
        assert resp.ok, resp.text
        book = tmp_path / "alerts" / "alerts" / "decisions.json"

        def decision() -> dict:
            (rec,) = [d for d in json.loads(book.read_text())["decisions"].values() if d.get("run_id")]
            return rec

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:   # midway: some service's weights restored, no record moved yet
            runs = list((state / "runs").glob("fo-*/*.json"))
            if any(next(s for s in json.loads(p.read_text())["steps"] if s["name"] == "restore")["status"] == "done"
                   for p in runs if p.stat().st_size):
                break
            time.sleep(0.3)
        rec = decision()
        run_id = rec["run_id"]
        os.killpg(serve.pid, signal.SIGKILL)                           # the receiver and ...
        for pid in (rec.get("run_pid"), rec.get("pid")):                # ... the failover it launched
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(os.getpgid(pid), signal.SIGKILL)
        serve.wait(timeout=20)
        killed = {p.stem: {s["name"]: s["status"] for s in json.loads(p.read_text())["steps"]}
                  for p in (state / "runs" / run_id).glob("*.json")}
        assert not all(steps["confirm_dns"] == "done" for steps in killed.values()), killed   # really midway
        serve = start_receiver(cfg, port, log)                          # resumes the dead run on start
        fleet_doc = state / "runs" / f"{run_id}.report.json"
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            done = json.loads(fleet_doc.read_text())
            if done.get("ended") and done.get("status") in ("done", "partial"):
                break
            time.sleep(1)
        assert done["status"] == "done", done
    finally:
        os.killpg(serve.pid, signal.SIGTERM)
        log.close()
    assert len([p for p in (state / "runs").glob("fo-*.report.json")]) == 1          # one run for the outage
    assert decision()["run_id"] == run_id
    for svc in FLEET_SERVICES:
        steps = {s["name"]: s for s in json.loads((state / "runs" / run_id / f"{svc.name}.json").read_text())[
            "steps"]}
        # a step done before the kill never ran again; the one under way when it died ran again, once
        done_before = {n for n, status in killed[svc.name].items() if status == "done" and n != "lease"}
        assert all(steps[n]["attempts"] == 1 for n in done_before), (svc.name, steps)
        assert all(s["attempts"] <= 2 for s in steps.values()) and steps["confirm_dns"]["status"] == "done"
        assert dig(svc.record) in {HOSTS[h].address for h in STANDBYS}, svc.name
    assert len(decision()["resumes"]) == 1, decision()                 # resumed once, by the restarted serve
