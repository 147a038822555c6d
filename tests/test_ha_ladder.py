"""The escalation ladder's decision core (issue #17, core only): rules, policies, journal, random invariants."""

from __future__ import annotations

import json
import random

import pytest

from drtool.ha import Action, InstanceHealth, LadderJournal, LadderSettings, LadderState, Policy, apply, decide
from drtool.ha.ladder import InstanceState

SITE = "prod-west"


def up(name, at=100.0, site=SITE):
    return InstanceHealth(name, site, True, None, at)


def down(name, at=100.0, site=SITE):
    return InstanceHealth(name, site, False, None, at)


def hot(name, at=100.0, site=SITE, why="gpu temperature 91C > 85C"):
    return InstanceHealth(name, site, True, why, at)


def settings(**policy):
    return LadderSettings(policy=Policy(**policy))


def kinds(actions):
    return [(a.kind, a.instance, a.site) for a in actions]


def state(**instances):
    return LadderState({n: s for n, s in instances.items()})


# --- data ------------------------------------------------------------------------------------------------------

def test_defaults():
    s = LadderSettings()
    assert (s.restart_attempts, s.restart_window_s, s.ready_timeout_s) == (2, 600, 120)
    assert (s.policy.restart, s.policy.drain, s.policy.failover) == ("auto", "auto", "approve")


def test_bad_policy_is_refused():
    with pytest.raises(ValueError, match="rung drain"):
        Policy(drain="sometimes")


def test_state_round_trips_through_json():
    st = state(a=InstanceState((1.0, 2.5), None), b=InstanceState((), 7.0))
    assert LadderState.from_dict(json.loads(json.dumps(st.to_dict()))) == st


# --- rung 1: restart ----------------------------------------------------------------------------------------------

def test_healthy_site_needs_nothing():
    assert decide(LadderState(), [up("a"), up("b")], LadderSettings(), 100.0) == []


def test_down_instance_is_restarted_first():
    acts = decide(LadderState(), [down("a"), up("b")], LadderSettings(), 100.0)
    assert kinds(acts) == [("restart", "a", SITE)]
    assert acts[0].rung == "restart" and acts[0].policy == "auto" and "restart 1 of 2" in acts[0].reason


def test_restarted_instance_gets_ready_timeout_before_anything_else():
    st = state(a=InstanceState((100.0,)))
    acts = decide(st, [down("a", 150.0), up("b", 150.0)], LadderSettings(), 150.0)
    assert kinds(acts) == [("none", "a", SITE)] and "waiting up to 120s" in acts[0].reason


def test_restarts_are_bounded_within_the_window_then_drain():
    s = LadderSettings()
    st = state(a=InstanceState((100.0, 300.0)))
    acts = decide(st, [down("a", 500.0), up("b", 500.0)], s, 500.0)
    assert kinds(acts) == [("drain", "a", SITE)]
    assert "2 restart(s) in the last 600s (limit 2)" in acts[0].reason


def test_restart_window_slides():
    s = LadderSettings()
    st = state(a=InstanceState((100.0, 300.0)))
    # at 699.9 the first restart is still inside the window; at 700 it has left it
    assert kinds(decide(st, [down("a", 699.9), up("b", 699.9)], s, 699.9)) == [("drain", "a", SITE)]
    acts = decide(st, [down("a", 700.0), up("b", 700.0)], s, 700.0)
    assert kinds(acts) == [("restart", "a", SITE)] and "restart 2 of 2" in acts[0].reason


def test_apply_records_restarts_and_forgets_those_outside_the_window():
    s = LadderSettings()
    st = LadderState()
    for t in (0.0, 200.0, 900.0):
        st = apply(st, Action("restart", "a", SITE, "restart", "", "auto"), t, s)
    assert st.of("a").restarts == (900.0,)
    st = apply(st, Action("drain", "a", SITE, "drain", "", "auto"), 950.0, s)
    assert st.of("a").drained_at == 950.0
    st = apply(st, Action("undrain", "a", SITE, "drain", "", "auto"), 990.0, s)
    assert not st.of("a").drained
    assert apply(st, Action("failover", None, SITE, "failover", "", "auto"), 999.0, s) == st


# --- rung 2: drain ------------------------------------------------------------------------------------------------

def test_degraded_is_drained_without_a_restart():
    acts = decide(LadderState(), [hot("a"), up("b")], LadderSettings(), 100.0)
    assert kinds(acts) == [("drain", "a", SITE)]
    assert "a restart does not cool a GPU" in acts[0].reason and "b keep(s) serving" in acts[0].reason


def test_last_healthy_instance_is_never_drained_failover_instead():
    acts = decide(LadderState(), [hot("a")], settings(failover="auto"), 100.0)
    assert kinds(acts) == [("none", "a", SITE), ("failover", None, SITE)]
    assert "would drop the site" in acts[0].reason


def test_degraded_is_not_drained_when_the_other_is_drained_already():
    st = state(b=InstanceState((), 50.0))
    acts = decide(st, [hot("a"), down("b")], LadderSettings(), 100.0)
    # b: down, restart; a: not drained (nothing else serves); failover held while b restarts
    assert kinds(acts) == [("none", "a", SITE), ("restart", "b", SITE), ("none", None, SITE)]
    assert "held while b restarting" in acts[-1].reason


def test_exhausted_down_instance_with_no_other_healthy_goes_to_failover():
    st = state(a=InstanceState((0.0, 200.0)))
    acts = decide(st, [down("a", 400.0)], LadderSettings(), 400.0)
    assert kinds(acts) == [("none", "a", SITE), ("wait_approval", None, SITE)]
    assert acts[1].rung == "failover" and acts[1].awaits == "failover"


def test_undrain_on_recovery_after_a_whole_observation():
    st = state(a=InstanceState((), 100.0))
    stale = decide(st, [up("a", 90.0), up("b", 90.0)], LadderSettings(), 120.0)
    assert kinds(stale) == [("none", "a", SITE)] and "observed before it was drained" in stale[0].reason
    acts = decide(st, [up("a", 130.0), up("b", 130.0)], LadderSettings(), 130.0)
    assert kinds(acts) == [("undrain", "a", SITE)] and acts[0].rung == "drain"


def test_drained_but_still_degraded_stays_drained():
    st = state(a=InstanceState((), 100.0))
    acts = decide(st, [hot("a", 130.0), up("b", 130.0)], LadderSettings(), 130.0)
    assert kinds(acts) == [("none", "a", SITE)] and "already drained" in acts[0].reason


def test_healthy_drained_instance_being_undrained_holds_the_failover():
    st = state(a=InstanceState((), 100.0))
    acts = decide(st, [up("a", 130.0), hot("b", 130.0)], settings(failover="auto"), 130.0)
    assert kinds(acts) == [("undrain", "a", SITE), ("none", "b", SITE), ("none", None, SITE)]
    assert "held while a undrained" in acts[-1].reason


# --- rung 3: failover -------------------------------------------------------------------------------------------

def test_one_failover_per_site_for_many_instances():
    st = state(**{f"i{k}": InstanceState((0.0, 1.0)) for k in range(6)})
    obs = [down(f"i{k}", 500.0) for k in range(6)] + [hot("x", 500.0), down("y", 500.0, site="prod-east")]
    acts = decide(st, obs, settings(failover="auto"), 500.0)
    fo = [a for a in acts if a.rung == "failover" and a.kind != "none"]
    assert [(a.kind, a.site) for a in fo] == [("failover", SITE)]
    # prod-east's y can still restart: its failover is held
    assert ("restart", "y", "prod-east") in kinds(acts)


def until_failover(s, every: float, restart_ok: bool = True):
    """One down instance observed every `every` seconds, each action applied, until the ladder fails over:
    the kinds of each round, the time of the failover and the final state."""
    st, t, trail = LadderState(), 0.0, []
    while True:
        acts = decide(st, [down("a", t)], s, t)
        trail.append([a.kind for a in acts])
        for a in acts:
            st = apply(st, a, t, s, ok=restart_ok)
        if any(a.kind == "failover" for a in acts):
            return trail, t, st
        t += every


def test_single_instance_site_restarts_before_failing_over():
    trail, t, _ = until_failover(settings(failover="auto"), 30.0)
    assert trail[0] == ["restart", "none"]
    assert sum(k.count("restart") for k in trail) == 2
    assert t == 240.0   # two restarts, each given the 120 s ready timeout


def test_unreachable_host_is_not_restarted_and_does_not_hold_the_failover():
    """A powered-off or partitioned host: no restart can reach it, so the site fails over at once, even during
    the ready wait of a restart made while it still answered."""
    s = settings(failover="auto")
    gone = InstanceHealth("a", SITE, False, None, 100.0, host_reachable=False)
    acts = decide(LadderState(), [gone], s, 100.0)
    assert kinds(acts) == [("none", "a", SITE), ("failover", None, SITE)]
    assert "host does not answer" in acts[0].reason
    restarted = state(a=InstanceState((90.0,), None))   # 10 s ago: inside the 120 s ready wait
    assert kinds(decide(restarted, [gone], s, 100.0))[-1] == ("failover", None, SITE)
    assert kinds(decide(restarted, [down("a")], s, 100.0))[-1] == ("none", None, SITE)  # reachable: still held


def test_a_restart_that_failed_to_run_is_not_waited_for():
    """Reachable host, but the restart itself failed (no container, a broken engine): the next attempt and then
    the failover come at the next observations, not after ready_timeout_s each."""
    trail, t, st = until_failover(settings(failover="auto"), 5.0, restart_ok=False)
    assert trail == [["restart", "none"], ["restart", "none"], ["none", "failover"]] and t == 10.0
    assert LadderState.from_dict(st.to_dict()) == st


# --- policies ---------------------------------------------------------------------------------------------------

def test_restart_policy_approve_and_off():
    acts = decide(LadderState(), [down("a"), up("b")], settings(restart="approve"), 100.0)
    assert kinds(acts) == [("wait_approval", "a", SITE)]
    assert (acts[0].rung, acts[0].awaits, acts[0].policy) == ("restart", "restart", "approve")
    acts = decide(LadderState(), [down("a"), up("b")], settings(restart="off"), 100.0)
    assert kinds(acts) == [("drain", "a", SITE)] and "restart rung off: skipped to drain" in acts[0].reason


def test_drain_policy_approve_and_off():
    acts = decide(LadderState(), [hot("a"), up("b")], settings(drain="approve"), 100.0)
    assert kinds(acts) == [("wait_approval", "a", SITE)] and acts[0].awaits == "drain"
    acts = decide(LadderState(), [hot("a"), up("b")], settings(drain="off"), 100.0)
    assert kinds(acts) == [("none", "a", SITE)] and "drain rung off: skipped to failover" in acts[0].reason
    # off skips to failover, taken when the site has no healthy instance
    acts = decide(LadderState(), [hot("a"), hot("b")], settings(drain="off", failover="auto"), 100.0)
    assert kinds(acts)[-1] == ("failover", None, SITE)


def test_undrain_follows_the_drain_policy():
    st = state(a=InstanceState((), 100.0))
    obs = [up("a", 130.0), up("b", 130.0)]
    assert kinds(decide(st, obs, settings(drain="approve"), 130.0)) == [("wait_approval", "a", SITE)]
    acts = decide(st, obs, settings(drain="off"), 130.0)
    assert kinds(acts) == [("none", "a", SITE)] and "undrain it by hand" in acts[0].reason


@pytest.mark.parametrize("policy,kind", [("auto", "failover"), ("approve", "wait_approval"), ("off", "none")])
def test_failover_policy(policy, kind):
    st = state(a=InstanceState((0.0, 1.0)))
    acts = decide(st, [down("a", 300.0)], settings(failover=policy), 300.0)
    last = acts[-1]
    assert (last.kind, last.instance, last.rung, last.policy) == (kind, None, "failover", policy)
    if policy == "off":
        assert "failover rung off: nothing left to try" in last.reason


def test_all_rungs_off_never_act():
    st = state(a=InstanceState((0.0,)))
    acts = decide(st, [down("a", 300.0), hot("b", 300.0)], settings(restart="off", drain="off", failover="off"),
                  300.0)
    assert {a.kind for a in acts} == {"none"}


# --- determinism ------------------------------------------------------------------------------------------------

def test_same_inputs_in_any_order_give_the_same_actions():
    rng = random.Random(17)
    obs = [down(f"d{k}", 100.0, site=f"s{k % 3}") for k in range(5)] + \
          [hot(f"h{k}", 100.0, site=f"s{k % 3}") for k in range(4)] + [up(f"u{k}", 100.0, site="s1") for k in range(2)]
    st = state(d0=InstanceState((0.0, 50.0)), h1=InstanceState((), 10.0))
    expected = decide(st, obs, LadderSettings(), 100.0)
    for _ in range(20):
        rng.shuffle(obs)
        assert decide(st, obs, LadderSettings(), 100.0) == expected
    sites = [a.site for a in expected]
    assert sites == sorted(sites)


def test_latest_observation_wins_and_ties_take_the_cautious_one():
    acts = decide(LadderState(), [down("a", 90.0), up("a", 100.0), up("b", 100.0)], LadderSettings(), 100.0)
    assert acts == []
    acts = decide(LadderState(), [up("a", 100.0), down("a", 100.0), up("b", 100.0)], LadderSettings(), 100.0)
    assert kinds(acts) == [("restart", "a", SITE)]


# --- random observation streams: invariants -----------------------------------------------------------------

def check_invariants(st, obs, s, now, acts):
    by_site = {}
    for o in obs:
        by_site.setdefault(o.site, []).append(o)
    failovers = [a for a in acts if a.rung == "failover" and a.kind in ("failover", "wait_approval")]
    assert len({a.site for a in failovers}) == len(failovers), "at most one failover per site per call"
    for a in failovers:
        assert not any(o.ok and not st.of(o.name).drained for o in by_site[a.site]), \
            "failover while a healthy undrained instance remains"
    for a in acts:
        if a.kind in ("drain", "wait_approval") and a.rung == "drain" and a.awaits != "undrain":
            assert any(o.ok and not st.of(o.name).drained and o.name != a.instance for o in by_site[a.site])


@pytest.mark.parametrize("seed", range(300))
def test_random_observation_streams_keep_the_invariants(seed):
    rng = random.Random(seed)
    s = LadderSettings(restart_attempts=rng.choice([0, 1, 2, 3]), restart_window_s=rng.choice([60, 300, 600]),
                       ready_timeout_s=rng.choice([0, 20, 120]),
                       policy=Policy(*(rng.choice(["auto", "auto", "approve", "off"]) for _ in range(3))))
    sites = {"w": [f"w{k}" for k in range(rng.choice([2, 3]))], "e": [f"e{k}" for k in range(rng.choice([1, 2]))]}
    st, t, restarts = LadderState(), 0.0, {}
    p_down, p_hot = rng.uniform(0.05, 0.6), rng.uniform(0.0, 0.4)
    for _ in range(rng.randrange(20, 60)):
        t += rng.choice([5.0, 15.0, 30.0, 90.0])
        obs = []
        for site, names in sites.items():
            for n in names:
                if rng.random() < 0.05:
                    continue   # not observed this round
                r = rng.random()
                obs.append(InstanceHealth(n, site, r >= p_down, "hot" if p_down <= r < p_down + p_hot else None,
                                          t - rng.choice([0.0, 1.0])))
        acts = decide(st, obs, s, t)
        assert acts == decide(st, list(reversed(obs)), s, t)
        check_invariants(st, obs, s, t, acts)
        for a in acts:
            if a.kind == "wait_approval" and rng.random() < 0.5:   # someone approves some of them
                a = Action(a.awaits, a.instance, a.site, a.rung, a.reason, a.policy)
            if a.kind == "restart":
                restarts.setdefault(a.instance, []).append(t)
            st = apply(st, a, t, s)
        for names in sites.values():
            assert not all(st.of(n).drained for n in names), "every instance of a site drained"
    for times in restarts.values():
        for r in times:
            in_window = [x for x in times if r - s.restart_window_s < x <= r]
            assert len(in_window) <= s.restart_attempts, "more restarts than allowed within the window"


# --- journal ----------------------------------------------------------------------------------------------------

def test_journal_records_decisions_outcomes_and_summarises(tmp_path):
    j = LadderJournal(tmp_path / "ladder" / "events.jsonl")
    s = settings(failover="approve")
    ids = j.record_decisions(decide(LadderState(), [down("a", 10.0), up("b", 10.0)], s, 10.0), 10.0)
    j.record_outcome(ids[0], "ok", 12.0, "container restarted")
    st = state(a=InstanceState((10.0, 200.0)))
    ids = j.record_decisions(decide(st, [down("a", 400.0), up("b", 400.0)], s, 400.0), 400.0)
    j.record_outcome(ids[0], "ok", 401.0, "nginx reloaded")
    st = state(a=InstanceState((10.0, 200.0), 400.0), b=InstanceState((250.0, 300.0)))
    wait = decide(st, [down("a", 450.0), down("b", 450.0)], s, 450.0)
    assert kinds(wait) == [("none", "a", SITE), ("none", "b", SITE), ("wait_approval", None, SITE)]
    j.record_decisions(wait, 450.0)
    j.record_decisions(wait, 480.0)   # unchanged: not written again
    summary = j.summary()
    assert summary["schema"] == 1
    a = summary["instances"]["a"]
    assert [r["kind"] for r in a["rungs"]] == ["restart", "drain"]
    assert a["restarts"] == 1 and a["drained"] and a["last_outcome"] == "ok"
    assert a["rungs"][0]["outcome_at"] == 12.0 and a["rungs"][1]["detail"] == "nginx reloaded"
    assert set(a["rungs"][0]) == {"kind", "rung", "policy", "awaits", "reason", "decided_at", "outcome",
                                  "outcome_at", "detail"}
    fo = summary["sites"][SITE]["failovers"]
    assert len(fo) == 1 and fo[0]["kind"] == "wait_approval" and fo[0]["outcome"] is None
    lines = (tmp_path / "ladder" / "events.jsonl").read_text().splitlines()
    assert all(json.loads(line)["v"] == 1 for line in lines)


def test_journal_survives_a_torn_last_line(tmp_path):
    path = tmp_path / "events.jsonl"
    j = LadderJournal(path)
    j.record_decisions(decide(LadderState(), [down("a"), up("b")], LadderSettings(), 100.0), 100.0)
    with open(path, "ab") as f:
        f.write(b'{"v": 1, "event": "decis')   # a crash mid-write
    assert len(j.events()) == 1
    j2 = LadderJournal(path)
    j2.record_decisions(decide(LadderState(), [hot("c"), up("b")], LadderSettings(), 200.0), 200.0)
    assert [e["instance"] for e in j2.events()] == ["a", "c"]
    assert sorted(j2.summary()["instances"]) == ["a", "c"]


def test_journal_writes_repeated_waits_again_after_the_episode_ends(tmp_path):
    j = LadderJournal(tmp_path / "e.jsonl")
    wait = decide(LadderState(), [down("a"), up("b")], settings(restart="approve"), 100.0)
    j.record_decisions(wait, 100.0)
    j.record_decisions(wait, 110.0)
    j.record_decisions([], 120.0)     # recovered: nothing to do
    j.record_decisions(wait, 130.0)   # a new episode
    assert [e["at"] for e in j.events()] == [100.0, 130.0]
