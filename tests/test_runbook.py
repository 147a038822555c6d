"""The step engine: journal every outcome, resume after a crash without repeating finished steps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from drtool.errors import OperationFailed
from drtool.runbook import DONE, FAILED, RUNNING, SKIPPED, Journal, Step, run_steps


def make_steps(calls: list[str], fail_at: str | None = None):
    def act(name):
        def run(ctx):
            calls.append(name)
            if name == fail_at:
                raise OperationFailed(f"{name} broke")
            ctx[name] = True
            return {"did": name}

        return run

    return [Step("preflight", "Preflight", act("preflight"), changes_things=False),
            Step("provision", "Provision", act("provision")),
            Step("flip_dns", "Flip DNS", act("flip_dns"))]


def test_steps_run_in_order_and_are_journaled(tmp_path: Path):
    calls: list[str] = []
    j = Journal("r1", "failover", "dr-east", time.time(), path=tmp_path / "r1.json")
    run_steps(j, make_steps(calls), {})
    assert calls == ["preflight", "provision", "flip_dns"]
    doc = json.loads((tmp_path / "r1.json").read_text())
    assert doc["status"] == DONE
    assert [s["status"] for s in doc["steps"]] == [DONE] * 3
    assert all(s["seconds"] >= 0 and s["evidence"]["did"] == s["name"] for s in doc["steps"])


def test_failure_is_journaled_and_resume_skips_finished_steps(tmp_path: Path):
    calls: list[str] = []
    j = Journal("r2", "failover", "dr-east", time.time(), path=tmp_path / "r2.json")
    with pytest.raises(OperationFailed):
        run_steps(j, make_steps(calls, fail_at="provision"), {})
    j2 = Journal.load(tmp_path / "r2.json")
    assert j2.status == FAILED and j2.record("provision").error == "provision broke"
    calls2: list[str] = []
    run_steps(j2, make_steps(calls2), {})
    assert calls2 == ["provision", "flip_dns"]  # preflight not repeated
    assert j2.record("provision").attempts == 2


def test_dry_run_runs_only_read_only_steps(tmp_path: Path):
    calls: list[str] = []
    j = Journal("r3", "failover", "dr-east", time.time(), path=tmp_path / "r3.json")
    run_steps(j, make_steps(calls), {}, dry_run=True)
    assert calls == ["preflight"]
    assert j.record("flip_dns").status == SKIPPED


SCRIPT = """
import sys, time
from pathlib import Path
from drtool.runbook import Journal, Step, run_steps
path = Path(sys.argv[1])
def slow(ctx):
    Path(sys.argv[2]).write_text("in provision")
    time.sleep(60)
steps = [Step("preflight", "P", lambda c: {"ok": 1}), Step("provision", "V", slow), Step("flip_dns", "F", lambda c: {})]
run_steps(Journal("r4", "failover", "dr-east", time.time(), path=path), steps, {})
"""


def test_sigkill_mid_step_leaves_a_resumable_journal(tmp_path: Path):
    marker = tmp_path / "marker"
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path / "r4.json"), str(marker)])
    deadline = time.time() + 30
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    j = Journal.load(tmp_path / "r4.json")
    assert j.record("preflight").status == DONE
    assert j.record("provision").status == RUNNING  # interrupted: will run again on resume
    calls: list[str] = []
    run_steps(j, make_steps(calls), {})
    assert calls == ["provision", "flip_dns"]


def test_a_group_runs_at_once_and_a_failure_waits_for_its_sibling(tmp_path: Path):
    import threading

    both_started = threading.Barrier(2, timeout=5)  # deadlocks (and times out) unless the two run at once

    def pull(ctx):
        both_started.wait()
        time.sleep(0.2)
        return {"pulled": True}

    def restore(ctx):
        both_started.wait()
        raise OperationFailed("blob corrupt")

    after: list[str] = []
    steps = [Step("pull_image", "Pull", pull, group="fetch"), Step("restore", "Restore", restore, group="fetch"),
             Step("start", "Start", lambda ctx: after.append("start"))]
    j = Journal("r9", "failover", "dr-east", time.time(), path=tmp_path / "r9.json")
    with pytest.raises(OperationFailed, match="blob corrupt"):
        run_steps(j, steps, {})
    doc = json.loads((tmp_path / "r9.json").read_text())
    status = {s["name"]: s["status"] for s in doc["steps"]}
    assert status == {"pull_image": DONE, "restore": FAILED, "start": "pending"} and after == []
    pull_rec = next(s for s in doc["steps"] if s["name"] == "pull_image")
    restore_rec = next(s for s in doc["steps"] if s["name"] == "restore")
    assert restore_rec["started"] < pull_rec["ended"]  # they overlapped
    # Resume: only the failed one runs again.
    steps[1] = Step("restore", "Restore", lambda ctx: {"restored": True}, group="fetch")
    run_steps(Journal.load(tmp_path / "r9.json"), steps, {})
    assert after == ["start"]
