"""The fleet failover's pure parts, without the lab: which hosts of one play count as done, and how
a wave's moves are split into rounds of at most one per host. The executor itself runs in tests/test_fleet_lab.py."""

from __future__ import annotations

from types import SimpleNamespace

from drtool.actions.fleet import FleetFailover
from drtool.execute.ansible import PlaybookResult, TaskEvent


def test_a_host_counts_as_done_only_with_its_result_and_no_failure():
    res = PlaybookResult("pull_image.yml", "failed", 2, 1.0)
    res.results = {"h1": {"pulled": True}, "h2": {"pulled": True}}
    res.failed = [TaskEvent("p", "Pull the image by digest", "h2", "failed", 0.1, "manifest unknown\n(exit 1)")]
    res.unreachable = {"h3": "ssh: connect to host 10.0.0.3 port 22: No route to host"}
    out = res.per_host(["h1", "h2", "h3", "h4"])
    assert out["h1"] == (True, {"pulled": True})
    assert out["h2"] == (False, "Pull the image by digest: manifest unknown; (exit 1)")
    assert out["h3"][0] is False and out["h3"][1].startswith("unreachable: ssh: connect")
    assert out["h4"] == (False, "pull_image.yml did not reach h4 (rc 2)")   # a play that never got there


def test_rounds_hold_at_most_one_move_per_host_and_keep_every_move():
    def move(name, host):
        return SimpleNamespace(spec=SimpleNamespace(name=name), host=SimpleNamespace(name=host))

    moves = [move("asr", "a"), move("tts", "b"), move("emo", "a"), move("llm", "a"), move("ocr", "c")]
    rounds = FleetFailover.rounds(None, moves)
    assert [[m.spec.name for m in r] for r in rounds] == [["asr", "tts", "ocr"], ["emo"], ["llm"]]
    for r in rounds:
        hosts = [m.host.name for m in r]
        assert len(hosts) == len(set(hosts))
    assert sorted(m.spec.name for r in rounds for m in r) == sorted(m.spec.name for m in moves)
    assert FleetFailover.rounds(None, []) == []


def test_a_fleet_start_gives_the_model_server_the_same_variables_as_a_single_start(monkeypatch, tmp_path):
    """One start for every service: a fleet's container gets what a single failover's gets (GPU, memory and
    temperature limits, the fault hook, labels), with its own port and its service named."""
    from drtool.actions import deploy, fleet
    from drtool.actions.fleet import STEPS, Move
    from drtool.execute.ansible import PlaybookResult
    from drtool.runbook import Journal, StepRecord

    site = SimpleNamespace(name="dr-east", gpu=True, serving_port=8080, registry_url="reg:5000",
                           raw={"serving": {"gpu_memory_limit_pct": 90, "gpu_temperature_limit_c": 85,
                                            "gpu_fault_dir": "/run/gpu-faults"}})
    model = SimpleNamespace(name="tts-demo", weights_path="/srv/models/tts-demo")
    image = "reg:5000/tts@sha256:" + "a" * 64
    entry = SimpleNamespace(image=SimpleNamespace(at=lambda _url: image), version="1.0.0", snapshot_id="s" * 64)
    calls = []

    def fake_playbook(_config, playbook, **kw):
        calls.append(kw)
        res = PlaybookResult(playbook, "successful", 0, 0.1)
        res.results = {h: {"started": True} for h in kw["extravars"]["drtool_targets"].split(",")}
        return res

    monkeypatch.setattr(deploy, "run_playbook", fake_playbook)
    monkeypatch.setattr(fleet, "run_playbook", fake_playbook)
    deploy.start(None, site, SimpleNamespace(name="de-gpu1"), model, entry)
    single = {k: v for k, v in calls.pop()["extravars"].items() if k != "drtool_targets"}

    journal = Journal("r.tts", "failover", "dr-east", 0.0, path=tmp_path / "tts.json",
                      context={"image": image, "version": "1.0.0", "snapshot_id": "s" * 64})
    journal.steps = [StepRecord(n, t) for n, t in STEPS]
    move = Move(SimpleNamespace(name="tts", model="tts-demo", port=8081), SimpleNamespace(name="de-gpu2"), 0, journal)
    ff = FleetFailover.__new__(FleetFailover)
    ff.site, ff.config = site, SimpleNamespace(model=lambda _name: model)
    ff.start([move], forks=1)
    assert move.step("start").status == "done"
    fleet_vars = calls.pop()["host_vars"]["de-gpu2"]
    assert fleet_vars == {**single, "model_server_port": 8081,
                          "model_server_labels": {**single["model_server_labels"], "io.drtool.service": "tts"}}
    assert single["model_server_gpu"] is True and single["model_server_gpu_memory_limit_pct"] == 90


def test_a_failed_standby_hands_its_services_to_the_free_slots_left_and_is_never_used_again(monkeypatch, tmp_path):
    """The planner places the moves of a standby that failed on what the other moves leave free; one that fits
    nowhere fails its provision step naming every standby tried; the failed standby is recorded for the resume."""
    import json

    from drtool.actions import fleet
    from drtool.actions.fleet import STEPS, Move
    from drtool.runbook import Journal, StepRecord

    hosts = [SimpleNamespace(name=n, address=f"10.0.0.{i}", gpus=g)
             for i, (n, g) in enumerate((("de-gpu1", 2), ("de-gpu2", 2), ("de-gpu3", 1)), start=1)]
    site = SimpleNamespace(name="dr-east", hosts=hosts)
    powered_off = []
    provider = SimpleNamespace(power_off=lambda h: powered_off.append(h.name))
    monkeypatch.setattr(fleet, "get_provider", lambda *_: provider)

    def move(name, host, priority):
        journal = Journal(f"r.{name}", "failover", "dr-east", 0.0, path=tmp_path / f"{name}.json", context={})
        journal.steps = [StepRecord(n, t) for n, t in STEPS]
        spec = SimpleNamespace(name=name, site="prod-west", model=name, record=f"{name}.x", port=8080,
                               priority=priority, gpus=1, alias="production")
        return Move(spec, next(h for h in hosts if h.name == host), 0, journal)

    moves = {m.spec.name: m for m in (move("a", "de-gpu1", 0), move("b", "de-gpu1", 1), move("c", "de-gpu2", 2),
                                      move("d", "de-gpu3", 3))}
    ff = FleetFailover.__new__(FleetFailover)
    ff.site, ff.config, ff.moves, ff.path = site, None, moves, tmp_path / "run.fleet.json"
    ff.out = SimpleNamespace(step=lambda *_: None)
    ff.doc = {"assignments": [{"service": n, "standby": m.host.name, "wave": 0} for n, m in moves.items()]}
    for m in (moves["a"], moves["b"]):
        m.begin("provision")
    again = ff.fall_back([moves["a"], moves["b"]], {"de-gpu1": "host key mismatch"})
    # de-gpu2 has one slot left (c holds the other), de-gpu3 none: a (more important) moves, b fits nowhere
    assert [m.spec.name for m in again] == ["a"] and moves["a"].host.name == "de-gpu2"
    assert moves["a"].ctx["tried"] == [{"host": "de-gpu1", "ok": False, "error": "host key mismatch"}]
    assert moves["b"].step("provision").status == "failed"
    assert "de-gpu1 (host key mismatch)" in moves["b"].step("provision").error
    assert powered_off == ["de-gpu1"]
    saved = json.loads(ff.path.read_text())
    assert saved["failed_standbys"] == {"de-gpu1": "host key mismatch"}
    assert {a["service"]: a["standby"] for a in saved["assignments"]}["a"] == "de-gpu2"   # what a resume uses
