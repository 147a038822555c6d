"""DR readiness, the pure core: rules (evidence in, one result per service and rule out) and the RTO predictor.
Each rule is broken in turn on otherwise healthy evidence: exactly that rule fails, and its fix is named."""

from __future__ import annotations

import dataclasses
import json

import pytest

from drtool.fleet import planner
from drtool.readiness import metrics, predict, rules

NOW = 1_800_000_000.0
DAY = 86400.0
IMAGE = "asr-demo-server@sha256:" + "a" * 64
SNAP = "b" * 64
ENTRY = rules.Entry("1.0.0", SNAP, IMAGE, "c0ffee")
TARGETS = rules.Targets(rto_s=300, rpo_s=26 * 3600, drill_max_age_s=35 * DAY)


def run_doc(run_id: str, ended: float, *, pull=10.0, restore=6.0, pulled=True, nbytes=20_000_000,
            host="de-gpu1", image="reg.dr:5000/" + IMAGE) -> dict:
    """One service's journal of a finished failover as the recovery engine writes it (only the fields the predictor
    reads)."""
    secs = {"preflight": 1.0, "lease": 0.2, "provision": 10.0, "pull_image": pull, "restore": restore, "start": 2.0,
            "wait_ready": 3.0, "verify": 4.0, "fence_primary": 0.5, "flip_dns": 0.1, "confirm_dns": 0.1}
    ev = {"pull_image": {"image": image, "pulled": pulled}, "restore": {"restore": {"bytes": nbytes}}}
    return {"run_id": run_id, "kind": "failover", "status": "done", "ended": ended,
            "context": {"service": "asr-demo", "host": host, "image": image, "fleet": False},
            "steps": [{"name": n, "status": "done", "seconds": s, "evidence": ev.get(n, {})} for n, s in secs.items()]}


def drill_report(service_model="asr-demo", ended=NOW - 3 * DAY, passed=True, scenario="primary-down") -> dict:
    return {"drill_id": "drill-dr-east-1", "site": "dr-east", "model": service_model, "ended": ended,
            "started": ended - 100, "scenarios": [{"scenario": scenario, "passed": passed, "steps": [],
                                                   "split": {"detection": 4.0, "decision": 1.0}}]}


def healthy_site(**changes) -> rules.SiteEvidence:
    samples = tuple(predict.sample_from_run(run_doc(f"fo-{i}", NOW - i * DAY)) for i in range(1, 4))
    site = rules.SiteEvidence(
        site="dr-east", registry_url="reg.dr:5000", store_url="s3://dr/drtool", prepare_ttl=30,
        standbys=(planner.StandbyHost("de-gpu1", "dr-east", 1), planner.StandbyHost("de-gpu2", "dr-east", 1)),
        parallel=4, engine=predict.SINGLE, now=NOW, dns_credentials_how="signed no-op update",
        drill_reports=(drill_report(),), samples=samples, detections=((NOW - DAY, 5.0),))
    return dataclasses.replace(site, **changes)


def healthy_service(**changes) -> rules.ServiceEvidence:
    ev = rules.ServiceEvidence(
        service="asr-demo", model="asr-demo", site="prod-west", priority=100, gpus=1, record="model.example.com",
        production=ENTRY, production_from="prod-west", dr_entry=ENTRY, image_ref="reg.dr:5000/" + IMAGE,
        image_present=True, snapshot=rules.SnapshotSeen(SNAP, NOW - 3600, 20_000_000), record_ttl=30,
        record_addresses=("10.0.1.10",))
    return dataclasses.replace(ev, **changes)


def statuses(assessment: rules.Assessment, service: str = "asr-demo") -> dict:
    s = next(x for x in assessment.services if x.service == service)
    return {r.rule: r.status for r in s.rules}


def test_healthy_site_is_ready_with_every_rule_passing():
    a = rules.assess(healthy_site(), [healthy_service()], TARGETS)
    assert a.ready and a.failed() == []
    assert statuses(a) == {r: rules.PASS for r in rules.RULES}
    doc = a.to_dict()
    assert doc["schema"] == "drtool.readiness/v1" and doc["ready"] is True
    assert doc["summary"] == {"services": 1, "ready": 1, "not_ready": 0, "failed": []}
    # 5 detect + 11.2 provision + max(pull, 6 restore) + 2 start + 7 verify + 0.7 dns; the past runs pulled the image
    # onto de-gpu1, the standby the planner picks, and no run found it present: pull counts 0
    assert doc["services"][0]["predicted_rto_s"] == pytest.approx(31.9)
    assert doc["rto"]["statistic"] == "median of the last 10 single runs" and doc["rto"]["samples"] == 3
    json.dumps(doc)   # the --json document is plain JSON


BROKEN = {
    "image": (dict(image_present=False), {}, "drtool image build --model asr-demo --version 1.0.0 --push"),
    "snapshot": (dict(snapshot=rules.SnapshotSeen(SNAP, NOW - 2 * DAY, 20_000_000)), {}, "drtool backup"),
    "registry": (dict(dr_entry=dataclasses.replace(ENTRY, canary="dead")), {}, "registry register"),
    "capacity": (dict(gpus=2), {}, "add standby GPUs at dr-east"),
    "dns": (dict(record_ttl=300), {}, "drtool failover --prepare --site dr-east"),
    "drills": ({}, dict(drill_reports=(drill_report(ended=NOW - 40 * DAY),)), "drtool drill --site dr-east"),
    "rto": ({}, dict(samples=tuple(predict.sample_from_run(run_doc(f"fo-{i}", NOW - i, restore=900.0))
                                   for i in range(3))), "fewer waves"),
}


@pytest.mark.parametrize("rule", sorted(BROKEN))
def test_each_rule_broken_alone_fails_alone_with_its_fix(rule):
    svc_changes, site_changes, fix = BROKEN[rule]
    a = rules.assess(healthy_site(**site_changes), [healthy_service(**svc_changes)], TARGETS)
    got = statuses(a)
    failed = sorted(r for r, st in got.items() if st == rules.FAIL)
    if rule == "capacity":   # a service without a standby has no failover time: rto waits for capacity
        assert got["rto"] == rules.BLOCKED
    assert failed == [rule], got
    assert not a.ready and a.failed() == [f"asr-demo/{rule}"]
    result = next(r for r in a.services[0].rules if r.rule == rule)
    assert fix in result.fix and result.saw


def test_wrong_dns_credentials_fail_the_dns_rule_alone():
    a = rules.assess(healthy_site(dns_credentials_error="DNS server refused the TSIG signature"), [healthy_service()],
                     TARGETS)
    assert a.failed() == ["asr-demo/dns"]
    assert "TSIG" in a.services[0].rule("dns").saw and "tsig_key_file" in a.services[0].rule("dns").fix


def test_store_credentials_fail_alone_and_block_what_needs_the_store():
    a = rules.assess(healthy_site(store_error="access refused (InvalidAccessKeyId)"), [healthy_service()], TARGETS)
    got = statuses(a)
    assert a.failed() == ["asr-demo/store_credentials"]
    assert {r for r, st in got.items() if st == rules.BLOCKED} == {"snapshot", "registry", "drills", "rto"}
    assert "credentials_file" in a.services[0].rule("store_credentials").fix
    assert a.services[0].rule("snapshot").fix == "fix rule store_credentials first"


def test_snapshot_problems_name_what_verification_said():
    bad = rules.SnapshotSeen(SNAP, NOW - 60, 1, problem="blob sha256:ab is missing")
    a = rules.assess(healthy_site(), [healthy_service(snapshot=bad)], TARGETS)
    assert a.failed() == ["asr-demo/snapshot"] and "is missing" in a.services[0].rule("snapshot").saw
    a = rules.assess(healthy_site(), [healthy_service(snapshot=None, snapshot_error="no snapshot in store")], TARGETS)
    assert a.failed() == ["asr-demo/snapshot"] and "snapshot replicate" in a.services[0].rule("snapshot").fix


def test_registry_behind_at_dr_names_promote():
    a = rules.assess(healthy_site(), [healthy_service(dr_entry=dataclasses.replace(ENTRY, version="0.9.0"))], TARGETS)
    r = a.services[0].rule("registry")
    assert r.status == rules.FAIL and "drtool registry promote asr-demo 1.0.0" in r.fix and "version" in r.saw


def test_no_production_entry_blocks_image_and_snapshot():
    a = rules.assess(healthy_site(), [healthy_service(production=None, dr_entry=None)], TARGETS)
    got = statuses(a)
    assert a.failed() == ["asr-demo/registry"]
    assert got["image"] == got["snapshot"] == rules.BLOCKED


def test_drills_count_only_passing_failover_scenarios_of_the_service():
    reports = [drill_report(passed=False, ended=NOW - DAY), drill_report(scenario="process-crash", ended=NOW - DAY),
               drill_report(service_model="other", ended=NOW - DAY),
               {"drill_id": "d-region", "site": "dr-east", "ended": NOW - 2 * DAY, "scenarios": [
                   {"scenario": "region-down", "passed": True,
                    "services": {"tts": {"status": "moved"}, "asr-demo": {"status": "failed"}}}]}]
    assert rules.last_passing_drill(reports, "dr-east", "asr-demo", "asr-demo") is None
    assert rules.last_passing_drill(reports, "dr-east", "tts", "tts-demo")["drill_id"] == "d-region"
    assert rules.last_passing_drill(reports, "dr-west", "tts", "tts-demo") is None
    # A primary-down drill run with a configuration that names the service otherwise counts by its model; a row of
    # the service itself decides when there is one (another service of the model moving does not count for it).
    moved = {"asr-demo": {"model": "asr-demo", "status": "moved"}}
    one = {"drill_id": "d-one", "site": "dr-east", "ended": NOW - DAY,
           "scenarios": [{"scenario": "primary-down", "passed": True, "services": moved}]}
    assert rules.last_passing_drill([one], "dr-east", "asr", "asr-demo")["drill_id"] == "d-one"
    assert rules.last_passing_drill([one], "dr-east", "tts", "tts-demo") is None
    region = {**one, "scenarios": [{"scenario": "region-down", "passed": True, "services": {
        "asr": {"model": "asr-demo", "status": "failed"}, "asr-b": {"model": "asr-demo", "status": "moved"}}}]}
    assert rules.last_passing_drill([region], "dr-east", "asr", "asr-demo") is None
    assert rules.last_passing_drill([region], "dr-east", "asr-b", "asr-demo")["drill_id"] == "d-one"


def test_no_history_fails_rto_with_a_drill_to_run():
    a = rules.assess(healthy_site(samples=(), detections=()), [healthy_service()], TARGETS)
    assert a.failed() == ["asr-demo/rto"]
    assert "drtool drill --site dr-east" in a.services[0].rule("rto").fix
    assert a.to_dict()["rto"]["predicted_s"] is None


# -- the predictor ------------------------------------------------------------------------------------------------
def samples(*docs) -> list[predict.RunSample]:
    return [predict.sample_from_run(d) for d in docs]


def test_median_ignores_one_slow_run_and_only_the_last_n_count():
    runs = samples(*(run_doc(f"r{i}", 1000 + i, restore=6.0) for i in range(5)), run_doc("slow", 2000, restore=600))
    need = predict.Need("s", "de-gpu9", 0, "img", 20_000_000)
    p = predict.predict([need], runs, [], predict.SINGLE, runs=10)
    assert p.services["s"].phases["restore"] == 6.0
    p = predict.predict([need], runs, [], predict.SINGLE, runs=1)   # only the newest: the slow one
    assert p.services["s"].phases["restore"] == 600.0 and p.samples == 1


def test_restore_scales_with_bytes():
    one_size = samples(*(run_doc(f"r{i}", i, restore=10.0, nbytes=1_000_000) for i in range(3)))
    assert predict.restore_seconds(one_size, 3_000_000) == (30.0, None)
    two_sizes = samples(run_doc("a", 1, restore=12.0, nbytes=1_000_000), run_doc("b", 2, restore=22.0,
                                                                                   nbytes=2_000_000),
                        run_doc("c", 3, restore=32.0, nbytes=3_000_000))
    seconds, note = predict.restore_seconds(two_sizes, 10_000_000)    # 2 s overhead + 10 s per MB
    assert seconds == pytest.approx(102.0) and note is None
    assert predict.restore_seconds(one_size, None)[1].startswith("restore: the median, unscaled")


def test_snapshots_a_few_bytes_apart_are_one_size_not_a_slope():
    """Seen on the lab: four services' snapshots of 8390841 to 8390844 bytes restored in 17.693 to 17.698 s. As two
    sizes, their slope (5 ms over 3 bytes) times 8 MB predicted a restore of hours; they are one size."""
    runs = samples(*(run_doc(f"r{i}", i, restore=t, nbytes=b)
                     for i, (b, t) in enumerate(((8390841, 17.693), (8390842, 17.695), (8390844, 17.698)))))
    seconds, note = predict.restore_seconds(runs, 8390842)
    assert seconds == pytest.approx(17.695, abs=0.01) and note is None
    # a size 10 % away still makes a line, and the close pairs do not bend it
    runs += samples(run_doc("big", 9, restore=35.4, nbytes=2 * 8390842))
    assert predict.restore_seconds(runs, 4 * 8390842)[0] == pytest.approx(4 * 17.7, rel=0.05)


def test_image_already_on_the_standby_costs_the_present_time():
    runs = samples(run_doc("a", 1, pull=30.0, pulled=True, host="de-gpu1", image="img"),
                   run_doc("b", 2, pull=1.0, pulled=False, host="de-gpu2", image="img"))
    cached = predict.predict([predict.Need("s", "de-gpu1", 0, "img", None)], runs, [], predict.SINGLE)
    cold = predict.predict([predict.Need("s", "de-gpu3", 0, "img", None)], runs, [], predict.SINGLE)
    assert cached.services["s"].phases["pull"] == 1.0 and cold.services["s"].phases["pull"] == 30.0
    assert "already on de-gpu1" in " ".join(cached.services["s"].notes)


def test_fleet_rto_is_the_sum_over_waves_of_each_step_of_the_slowest_service():
    runs = samples(run_doc("a", 1, pull=10.0, restore=6.0, nbytes=1000))
    needs = [predict.Need("s1", "h1", 0, "x", 1000), predict.Need("s2", "h2", 0, "x", 3000),
             predict.Need("s3", "h1", 1, "x", 1000), predict.Need("left", None, None, "x", 1000)]
    p = predict.predict(needs, runs, [(1, 5.0)], predict.FLEET)
    # a wave: provision 11.2 + max(pull 10, restore: 18 for 3000 bytes) (at the same time) + start 2 + verify 7
    # + dns 0.7 (every record of the wave at once)
    assert p.wave_seconds == [pytest.approx(11.2 + 18 + 2 + 7 + 0.7), pytest.approx(11.2 + 10 + 2 + 7 + 0.7)]
    assert p.services["s1"].rto_s == p.services["s2"].rto_s == pytest.approx(5 + p.wave_seconds[0])
    assert p.fleet_rto_s == p.services["s3"].rto_s == pytest.approx(5 + sum(p.wave_seconds))
    assert "left" not in p.services


def fleet_run_doc(run_id: str, ended: float, seconds: float) -> dict:
    """One service's journal of a run over several services: every step `seconds` long."""
    return {"run_id": run_id, "kind": "failover", "status": "done", "ended": ended,
            "context": {"service": "tts", "host": "de-gpu2", "image": "img", "wave": 0, "fleet": True},
            "steps": [{**st, "seconds": seconds, "evidence": {}} for st in run_doc(run_id, ended)["steps"]]}


def test_each_engine_is_predicted_from_its_own_runs():
    """Steps of a fleet run share the DR site with the other services' and take longer: newer fleet runs must not
    make a single failover's prediction longer, nor older single runs a fleet's shorter. The other engine's runs
    count only while there are none of one's own, and the prediction says so."""
    single = samples(*(run_doc(f"s{i}", 100 + i, restore=6.0) for i in range(3)))
    fleet = samples(*(fleet_run_doc(f"f{i}.tts", 200 + i, 20.0) for i in range(6)))   # newer and slower
    need = predict.Need("s", "de-gpu9", 0, "img", None)
    alone = predict.predict([need], single, [], predict.SINGLE)
    assert predict.predict([need], single + fleet, [], predict.SINGLE) == alone
    many = predict.predict([need], single + fleet, [], predict.FLEET)
    assert many.samples == 6 and many.phases["restore"] == 20.0 and many.statistic == "median of the last 10 fleet runs"
    first = predict.predict([need], single, [], predict.FLEET)
    assert first.samples == 3 and "no fleet run in the history yet" in " ".join(first.notes)


def test_samples_from_documents():
    assert predict.sample_from_run({**run_doc("x", 1), "kind": "failback"}) is None
    assert predict.sample_from_run({**run_doc("x", 1), "status": "failed"}) is None
    already = run_doc("x", 1)
    already["steps"][3]["status"] = "skipped"
    assert predict.sample_from_run(already) is None
    fleet_journal = fleet_run_doc("f.tts", 5.0, 1.0)
    fleet_journal["steps"][3]["evidence"] = {"pulled": "False"}   # pull_image
    s = predict.sample_from_run(fleet_journal)
    # each phase the sum of its steps' seconds (provision: preflight, lease, provision; verify: wait_ready, verify)
    assert s.phases == {"provision": 3.0, "pull": 1.0, "restore": 1.0, "start": 1.0, "verify": 2.0, "dns": 3.0}
    assert s.pulled is False and s.host == "de-gpu2"
    assert s.engine == predict.FLEET and predict.sample_from_run(run_doc("x", 1)).engine == predict.SINGLE
    report = {"ended": 9.0, "scenarios": [{"passed": True, "split": {"detection": 4.0, "decision": 1.0}},
                                          {"passed": True, "split": {"detection": 0.0, "decision": 0.0}},
                                          {"passed": False, "split": {"detection": 9.0, "decision": 1.0}}]}
    assert predict.detections_from_drill(report) == [(9.0, 5.0)]   # only what passed through the alert chain
    assert len(predict.dedupe(samples(run_doc("x.asr-demo", 1)) * 2)) == 1   # a journal and its mirror: one sample


# -- metrics ------------------------------------------------------------------------------------------------------
def test_metrics_textfile_has_each_rule_and_the_prediction():
    doc = rules.assess(healthy_site(), [healthy_service(record_ttl=300)], TARGETS).to_dict()
    text = metrics.render(doc)
    assert 'drtool_readiness_rule_passed{site="dr-east",service="asr-demo",rule="dns"} 0' in text
    assert 'drtool_readiness_rule_passed{site="dr-east",service="asr-demo",rule="image"} 1' in text
    assert 'drtool_readiness_ready{site="dr-east",service="asr-demo"} 0' in text
    assert 'drtool_readiness_site_ready{site="dr-east"} 0' in text
    assert 'drtool_readiness_predicted_rto_seconds{site="dr-east",service="asr-demo"} 31.9' in text
    assert 'drtool_readiness_rto_target_seconds{site="dr-east"} 300' in text
    assert "# TYPE drtool_readiness_fleet_predicted_rto_seconds gauge" in text and text.endswith("\n")
