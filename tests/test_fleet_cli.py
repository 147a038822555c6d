"""`drtool failover --service/--parallel` without the lab: option checks, unknown names and the
ones that do not go together are refused before anything is contacted; the fleet tables render."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from drtool import cli
from drtool.actions import failover

from .conftest import run_cli
from .test_config import FLEET


@pytest.fixture
def fleet_config(tmp_path: Path) -> Path:
    path = tmp_path / "drtool.yaml"
    path.write_text(FLEET)
    return path


def test_parallel_zero_exits_2(fleet_config):
    proc = run_cli("--config", str(fleet_config), "failover", "--site", "dr-east", "--dry-run", "--parallel", "0")
    assert proc.returncode == 2, proc.stderr
    assert "--parallel" in proc.stderr


def test_unknown_service_exits_2_listing_the_known(fleet_config):
    proc = run_cli("--config", str(fleet_config), "--json", "failover", "--site", "dr-east", "--dry-run",
                   "--service", "asr", "--service", "nope")
    assert proc.returncode == 2, proc.stderr
    out = json.loads(proc.stdout)
    assert out["error"] == "UsageError" and "'nope'" in out["message"]
    assert "asr, embed, llm, ocr, rerank, tts" in out["hint"]


@pytest.mark.parametrize("args, says", [
    (["--parallel", "2", "--model", "asr"], "--model names one model"),
    (["--service", "llm", "--model", "asr"], "--model names one model"),
    (["--all", "--dry-run"], "--all moves services"),
])
def test_fleet_flags_that_do_not_go_together_are_refused_before_anything_runs(fleet_config, args, says):
    proc = run_cli("--config", str(fleet_config), "--json", "failover", "--site", "dr-east", "--yes", *args)
    assert proc.returncode == 2, proc.stderr
    out = json.loads(proc.stdout)
    assert out["error"] == "UsageError" and says in out["message"]


DRY_RUN = {
    "kind": "failover", "run_id": "fo-x", "site": "dr-east", "status": "planned", "dry_run": True, "journal": None,
    "parallel": 2, "waves": 1, "rto_s": None,
    "services": [{"service": "llm", "priority": 0, "standby": "de-gpu1", "hosts": ["de-gpu1"], "wave": 0,
                  "status": "to move", "record": "llm.example.com", "model": "llm",
                  "dns": {"record": "llm.example.com", "before": {"addresses": ["10.0.1.11"]}, "after": None},
                  "production": {"version": "v3", "image": "reg/llm@sha256:" + "fe" * 32,
                                 "snapshot_id": "0123456789abcdef" * 4},
                  "reason": None, "fallback": None, "rto_s": None, "steps": []},
                 {"service": "ocr", "priority": 100, "standby": None, "status": "left", "record": "ocr.example.com",
                  "reason": "no standby left at dr-east (1 GPUs needed)"}],
}


def fake_run(seen):
    def run(config, out, req, confirm=None):
        seen.update(site=req.site, dry_run=req.dry_run, services=list(req.services) if req.services else None,
                    parallel=req.parallel)
        return DRY_RUN
    return run


def test_dry_run_prints_where_each_service_would_go_and_what_it_would_restore(fleet_config, monkeypatch):
    seen: dict = {}
    monkeypatch.setattr(failover, "run", fake_run(seen))
    res = CliRunner().invoke(cli.main_group, ["--config", str(fleet_config), "failover", "--site", "dr-east",
                                              "--dry-run", "--service", "llm", "--service", "ocr", "--parallel", "2"],
                             terminal_width=250)
    assert res.exit_code == 0, res.output
    assert seen == {"site": "dr-east", "dry_run": True, "services": ["llm", "ocr"], "parallel": 2}
    llm = next(line for line in res.output.splitlines() if "llm.example.com" in line)
    assert "de-gpu1" in llm and "to move" in llm and "v3 / 0123456789ab " in llm   # snapshot: 12 characters
    ocr = next(line for line in res.output.splitlines() if "ocr.example.com" in line)
    assert "left" in ocr and "no standby left at dr-east" in ocr


ONE = {
    "kind": "failover", "run_id": "fo-y", "site": "dr-east", "status": "done", "dry_run": False, "rto_s": 21.5,
    "journal": "/state/runs/fo-y.report.json",
    "services": [{"service": "llm", "priority": 0, "standby": "de-gpu1", "hosts": ["de-gpu1"], "wave": 0,
                  "status": "moved", "record": "llm.example.com", "model": "llm",
                  "dns": {"record": "llm.example.com", "before": {"addresses": ["10.0.1.11"]}, "after": ["10.0.2.21"]},
                  "production": {"version": "v3", "image": "reg/llm@sha256:" + "fe" * 32, "snapshot_id": "ab" * 32},
                  "reason": None, "fallback": None, "rto_s": 21.5,
                  "steps": [{"name": "restore", "status": "done", "seconds": 3.25,
                             "evidence": {"snapshot_id": "abab", "bytes": 1024}}]}],
}


def test_a_run_of_one_service_prints_its_row_and_its_steps_a_run_of_several_only_the_rows(fleet_config,
                                                                                           monkeypatch):
    for result, steps_shown in ((ONE, True), (DRY_RUN, False)):
        monkeypatch.setattr(failover, "run", lambda config, out, req, confirm=None, r=result: r)
        res = CliRunner().invoke(cli.main_group, ["--config", str(fleet_config), "failover", "--site", "dr-east",
                                                  "--yes"], terminal_width=250)
        assert res.exit_code == 0, res.output
        assert "llm.example.com" in res.output
        assert ("llm on de-gpu1" in res.output) is steps_shown                      # the step table's title
        assert ("snapshot_id=abab, bytes=1024" in res.output) is steps_shown        # and each step's evidence
        assert ("fo-y to dr-east: done, RTO 21.5s" in res.output) is steps_shown


def test_dry_run_json_is_the_engine_report(fleet_config, monkeypatch):
    seen: dict = {}
    monkeypatch.setattr(failover, "run", fake_run(seen))
    res = CliRunner().invoke(cli.main_group, ["--config", str(fleet_config), "--json", "failover", "--site",
                                              "dr-east", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert seen["services"] is None and seen["parallel"] is None
    assert json.loads(res.output) == DRY_RUN


def test_approving_a_fleet_failover_nobody_queued_is_refused(fleet_config, tmp_path):
    import os

    env = {**os.environ, "DRTOOL_STATE_DIR": str(tmp_path / "state")}
    proc = run_cli("--config", str(fleet_config), "--json", "failover", "--site", "dr-east", "--approve",
                   "fo-dr-east-nothing-queued", env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no failover awaiting approval with run id fo-dr-east-nothing-queued" in json.loads(proc.stdout)["message"]
    assert not (tmp_path / "state" / "runs").exists()   # refused before anything ran


@pytest.mark.parametrize("args, says", [
    (("--service", "nope"), "'nope'"),
    (("--service", "asr", "--model", "asr-model"), "--service NAME, not --model"),
    (("--resume", "fb-prod-west-x"), "no journal for run fb-prod-west-x"),
])
def test_fleet_failback_bad_flags_exit_2_before_anything_runs(fleet_config, args, says):
    proc = run_cli("--config", str(fleet_config), "--json", "failback", "--site", "prod-west", "--yes", *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    out = json.loads(proc.stdout)
    assert out["error"] == "UsageError" and says in out["message"], out


def test_fleet_failback_without_yes_off_a_terminal_exits_2(fleet_config, monkeypatch, tmp_path):
    """Not a tty and no --yes: the plan is shown (each service and the home hosts it comes back on), nothing
    changes, exit 2."""
    monkeypatch.setenv("DRTOOL_STATE_DIR", str(tmp_path / "state"))
    res = CliRunner().invoke(cli.main_group, ["--config", str(fleet_config), "failback", "--site", "prod-west"],
                             terminal_width=200)
    assert res.exit_code == 2, res.output
    assert "needs confirmation" in res.output and "to prod-west: plan, nothing changed yet" in res.output
    assert "rerank" in res.output and "pw-gpu1" in res.output
    assert not (tmp_path / "state" / "runs").exists()
