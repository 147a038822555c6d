"""`drtool failover --service/--parallel` (issue #16) without the lab: option checks, unknown names and the
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


FAKE_PLAN = {
    "site": "dr-east", "from": ["prod-west"], "parallel": 2, "waves": 1, "changes": "none (dry run)",
    "services": [{"service": "llm", "site": "prod-west", "priority": 0, "model": "llm", "alias": "production",
                  "version": "v3", "standby": "de-gpu1", "address": "10.0.2.21", "gpus": [0, 1, 2, 3], "wave": 0,
                  "snapshot": "0123456789abcdef" * 4, "image": "reg/llm@sha256:" + "fe" * 32,
                  "record": "llm.example.com", "port": 8081, "problem": None},
                 {"service": "asr", "site": "prod-west", "priority": 10, "model": "asr", "alias": "production",
                  "version": None, "standby": "de-gpu3", "address": "10.0.2.23", "gpus": [0], "wave": 0,
                  "snapshot": None, "image": None, "record": "model.example.com", "port": 8080,
                  "problem": "no production version of asr in dr-east's registry"}],
    "left": [{"service": "ocr", "priority": 100, "gpus": 1, "reason": "no standby left at dr-east (1 GPUs needed)"}],
}


def fake_run(seen):
    def run(config, out, req, confirm=None):
        seen.update(site=req.site, dry_run=req.dry_run, services=list(req.services) if req.services else None,
                    parallel=req.parallel)
        site = req.site
        return {"kind": "failover", "run_id": "fo-x", "site": site, "status": "done", "steps": [],
                "already_serving": None, "dns": {"record": "model.example.com", "before": None, "after": None},
                "rto_s": None, "fleet_plan": FAKE_PLAN}
    return run


def test_dry_run_prints_the_fleet_tables(fleet_config, monkeypatch):
    seen: dict = {}
    monkeypatch.setattr(failover, "run", fake_run(seen))
    res = CliRunner().invoke(cli.main_group, ["--config", str(fleet_config), "failover", "--site", "dr-east",
                                              "--dry-run", "--service", "llm", "--service", "asr", "--parallel", "2"],
                             terminal_width=200)
    assert res.exit_code == 0, res.output
    assert seen == {"site": "dr-east", "dry_run": True, "services": ["llm", "asr"], "parallel": 2}
    assert "Fleet plan" in res.output and "de-gpu1" in res.output and "0,1,2,3" in res.output
    assert "0123456789ab" in res.output and "0123456789abc" not in res.output  # snapshot: 12 characters
    assert "fefefefefefe" in res.output and "no production version of asr" in res.output
    assert "Left" in res.output and "ocr" in res.output and "no standby left at dr-east" in res.output


def test_dry_run_json_carries_the_fleet_plan(fleet_config, monkeypatch):
    seen: dict = {}
    monkeypatch.setattr(failover, "run", fake_run(seen))
    res = CliRunner().invoke(cli.main_group, ["--config", str(fleet_config), "--json", "failover", "--site",
                                              "dr-east", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert seen["services"] is None and seen["parallel"] is None
    assert json.loads(res.output)["fleet_plan"] == FAKE_PLAN


def test_run_dry_run_attaches_the_fleet_plan(tmp_path, monkeypatch):
    """A dry run preflights every service it would move (nothing written) and carries the read-only fleet plan."""
    from drtool.fleet import plan as fleet
    from drtool.output import Output
    from drtool.recovery.moves import FAILOVER, Request

    from .engine_world import FLEET_MODELS, FLEET_SERVICES, World

    world = World(tmp_path, monkeypatch, FLEET_MODELS, FLEET_SERVICES)
    world.serve_at_home()
    calls = []
    monkeypatch.setattr(fleet, "fleet_plan", lambda *a: calls.append(a[1:]) or {"planned": True})
    report = failover.run(world.config, Output(), Request(FAILOVER, "dr-east", ("tts", "asr"), parallel=3,
                                                          dry_run=True))
    assert report["fleet_plan"] == {"planned": True} and calls == [("dr-east", ["tts", "asr"], 3)]
    assert {r["service"]: r["status"] for r in report["services"]} == {"tts": "to move", "asr": "to move"}
    assert not (tmp_path / "state" / "runs").exists() and not world.plays and not world.flips


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
    assert "needs confirmation" in res.output and "Failback plan to prod-west (nothing changed yet)" in res.output
    assert "rerank" in res.output and "pw-gpu1" in res.output
    assert not (tmp_path / "state" / "runs").exists()
