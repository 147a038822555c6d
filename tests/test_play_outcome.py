"""Which hosts of one play count as done: the recovery engine's steps read each host's outcome this way (the
engine itself: tests/test_recovery_engine.py, and on the lab tests/test_fleet_lab.py)."""

from __future__ import annotations

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
