"""The fleet planner (issue #16, core only): deterministic standby allocation, waves, validation."""

from __future__ import annotations

import json
import random

import pytest

from drtool.fleet.planner import Service, StandbyHost, plan, validate


def svc(name, priority, gpus=1, site="west", port=None, record=None):
    return Service(
        name=name,
        site=site,
        model=f"m-{name}",
        record=record or f"{name}.models.example.com",
        port=port if port is not None else 8000 + priority,
        priority=priority,
        gpus=gpus,
    )


def host(name, gpus=1, site="east"):
    return StandbyHost(name=name, site=site, gpus=gpus, address=f"10.0.0.{len(name)}")


def run(services, standbys, parallel=4):
    return plan(services, standbys, failed_site="west", target_site="east", parallel=parallel)


def test_shuffled_inputs_give_the_same_plan():
    rng = random.Random(7)
    services = [svc(f"s{i:02d}", rng.randrange(5), gpus=rng.choice([1, 1, 2, 4])) for i in range(40)]
    standbys = [host(f"h{i:02d}", gpus=rng.choice([1, 2, 4, 8])) for i in range(20)]
    expected = json.dumps(run(services, standbys).to_dict())
    for _ in range(20):
        rng.shuffle(services)
        rng.shuffle(standbys)
        assert json.dumps(run(services, standbys).to_dict()) == expected


def test_priority_order_lower_number_first_ties_by_name():
    services = [svc("c", 2), svc("b", 1), svc("a", 1), svc("z", 0)]
    p = run(services, [host(f"h{i}") for i in range(4)])
    assert [a.service.name for a in p.assignments] == ["z", "a", "b", "c"]
    assert p.left == []


def test_fewer_standbys_leave_the_lowest_priorities_and_report_them():
    services = [svc(f"s{i}", i) for i in range(5)]
    p = run(services, [host("h1"), host("h2")])
    assert [a.service.name for a in p.assignments] == ["s0", "s1"]
    assert [x.service.name for x in p.left] == ["s2", "s3", "s4"]
    assert all(x.reason == "no standby left at east (1 GPUs needed)" for x in p.left)
    d = p.to_dict()
    assert d["left_count"] == 3 and [x["service"] for x in d["left"]] == ["s2", "s3", "s4"]


def test_only_failed_site_services_and_target_site_standbys_count():
    services = [svc("a", 0), svc("b", 1, site="north")]
    standbys = [host("h-north", site="north"), host("h-east")]
    p = run(services, standbys)
    assert [(a.service.name, a.host.name) for a in p.assignments] == [("a", "h-east")]
    assert p.left == []


def test_multi_gpu_host_takes_several_services_on_distinct_gpus():
    services = [svc("a", 0, gpus=2), svc("b", 1), svc("c", 2)]
    p = run(services, [host("big", gpus=4)])
    assert [(a.service.name, a.host.name, a.gpu_indices) for a in p.assignments] == [
        ("a", "big", (0, 1)),
        ("b", "big", (2,)),
        ("c", "big", (3,)),
    ]


def test_best_fit_prefers_the_host_left_with_fewest_free_gpus():
    # a 2-GPU service: the 2-GPU host (0 left) beats the 8-GPU and 4-GPU ones, whatever the names
    standbys = [host("a8", gpus=8), host("b4", gpus=4), host("z2", gpus=2)]
    p = run([svc("s", 0, gpus=2)], standbys)
    assert p.assignments[0].host.name == "z2"
    # ties on what is left: host name
    p = run([svc("s", 0)], [host("y", gpus=2), host("x", gpus=2)])
    assert p.assignments[0].host.name == "x"
    # best fit keeps the big host for the big service that follows
    p = run([svc("small", 0), svc("large", 1, gpus=4)], [host("a4", gpus=4), host("b1")])
    assert {a.service.name: a.host.name for a in p.assignments} == {"small": "b1", "large": "a4"}


def test_waves_of_parallel_in_priority_order():
    services = [svc(f"s{i}", i) for i in range(7)]
    p = run(services, [host(f"h{i}") for i in range(7)], parallel=3)
    assert [a.wave for a in p.assignments] == [0, 0, 0, 1, 1, 1, 2]
    assert p.waves == 3
    # left services do not take a place in a wave
    p = run([svc("a", 0, gpus=4), svc("b", 1), svc("c", 2)], [host("h1"), host("h2")], parallel=1)
    assert [(a.service.name, a.wave) for a in p.assignments] == [("b", 0), ("c", 1)]
    assert [x.reason for x in p.left] == ["no standby left at east (4 GPUs needed)"]


@pytest.mark.parametrize("parallel", [0, -1, True, 1.5])
def test_parallel_must_be_a_positive_integer(parallel):
    with pytest.raises(ValueError):
        run([svc("a", 0)], [host("h")], parallel=parallel)


def test_to_dict_is_json_ready_with_stable_keys():
    d = run([svc("a", 0, gpus=2)], [host("h", gpus=2)]).to_dict()
    assert list(d) == [
        "failed_site",
        "target_site",
        "parallel",
        "waves",
        "assigned",
        "left_count",
        "assignments",
        "left",
    ]
    assert list(d["assignments"][0]) == [
        "service",
        "priority",
        "model",
        "alias",
        "record",
        "port",
        "gpus",
        "host",
        "address",
        "gpu_indices",
        "wave",
    ]
    assert json.loads(json.dumps(d)) == d


def test_validation_reports_every_mistake_at_once():
    services = [
        svc("a", 0, record="r.example.com"),
        svc("a", 1),
        svc("b", 2, record="r.example.com"),
        svc("c", -1),
        svc("d", 3, gpus=0),
        svc("e", 4, port=70000),
        svc("f", 5, gpus=8),
    ]
    standbys = [host("h1", gpus=4), host("h2", gpus=2), host("h1"), host("n1", gpus=8, site="north")]
    errors = validate(services, standbys)
    assert errors == [
        "duplicate service name 'a'",
        "duplicate record 'r.example.com' (services a, b)",
        "duplicate standby host name 'h1'",
        "service c: priority -1 out of range 0..9999",
        "service d: gpus 0 out of range 1..64",
        "service e: port 70000 out of range 1..65535",
        "service f needs 8 GPUs; the largest standby at east (h1) has 4",
    ]
    assert validate([svc("a", 0), svc("b", 1, gpus=2)], [host("h", gpus=2)]) == []


def test_validation_without_any_dr_standby():
    assert validate([svc("a", 0)], [host("h", site="west")]) == [
        "service a needs 1 GPUs; no DR site has a standby (site west)"
    ]


def _random_fleet(rng):
    services = [
        svc(f"s{i:03d}", rng.randrange(10), gpus=rng.choice([1, 1, 1, 2, 2, 3, 4, 8]))
        for i in range(rng.randrange(0, 60))
    ]
    standbys = [host(f"h{i:03d}", gpus=rng.choice([1, 1, 2, 4, 8])) for i in range(rng.randrange(0, 30))]
    return services, standbys


def test_invariants_over_random_fleets():
    rng = random.Random(16)
    for _ in range(300):
        services, standbys = _random_fleet(rng)
        parallel = rng.randrange(1, 6)
        p = run(services, standbys, parallel=parallel)
        hosts = {h.name: h for h in standbys}
        slots = set()
        for a in p.assignments:
            assert a.service.gpus == len(a.gpu_indices)
            assert all(0 <= g < hosts[a.host.name].gpus for g in a.gpu_indices)
            for g in a.gpu_indices:
                assert (a.host.name, g) not in slots, "GPU slot used twice"
                slots.add((a.host.name, g))
        # every service exactly once, assigned or left
        names = [a.service.name for a in p.assignments] + [x.service.name for x in p.left]
        assert sorted(names) == sorted(s.name for s in services)
        # priority order and waves
        keys = [(a.service.priority, a.service.name) for a in p.assignments]
        assert keys == sorted(keys)
        assert [a.wave for a in p.assignments] == [i // parallel for i in range(len(p.assignments))]
        # a left service never outranks an assigned one that needed as many GPUs or more
        for x in p.left:
            for a in p.assignments:
                if a.service.gpus >= x.service.gpus:
                    assert x.service.priority >= a.service.priority
        # deterministic whatever the input order
        rng.shuffle(services)
        rng.shuffle(standbys)
        assert run(services, standbys, parallel=parallel).to_dict() == p.to_dict()
