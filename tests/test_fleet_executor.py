"""The fleet failover's pure parts (issue #16), without the lab: which hosts of one play count as done, and how
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
