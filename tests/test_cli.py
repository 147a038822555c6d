"""The command line as a user meets it: help, exit codes, unknown names, --json errors."""

from __future__ import annotations

import json

import pytest

from .conftest import REPO, run_cli

EXAMPLE = str(REPO / "inventory" / "drtool.example.yaml")


def test_help_lists_commands_and_exit_codes():
    proc = run_cli("--help")
    assert proc.returncode == 0
    for cmd in ("backup", "snapshot", "image", "registry", "failover", "failback", "drill", "status", "serve", "lab"):
        assert f"  {cmd} " in proc.stdout, cmd
    for code in ("0  success", "2  usage", "3  verification failed", "4  busy"):
        assert code in proc.stdout


@pytest.mark.parametrize("args", [["failover", "--site", "nowhere"], ["drill", "--site", "nowhere"],
                                  ["failback", "--site", "nowhere"], ["backup", "--site", "nowhere"],
                                  ["registry", "verify", "--site", "nowhere"]])
def test_unknown_site_exits_2_naming_known_sites(args):
    proc = run_cli("--config", EXAMPLE, *args)
    assert proc.returncode == 2, proc.stderr
    assert "unknown site 'nowhere'" in proc.stderr
    assert "prod-west" in proc.stderr and "dr-east" in proc.stderr


def test_unknown_site_json_after_subcommand():
    proc = run_cli("--config", EXAMPLE, "failover", "--site", "nowhere", "--json")
    assert proc.returncode == 2
    err = json.loads(proc.stdout)
    assert err["exit_code"] == 2 and "dr-east" in err["hint"]


def test_wrong_flag_is_usage_error():
    proc = run_cli("failover", "--sight", "dr-east")
    assert proc.returncode == 2
    assert "No such option" in proc.stderr


def test_drill_and_watch_bad_input_is_exit_2_naming_the_problem():
    proc = run_cli("--config", EXAMPLE, "drill", "--site", "dr-east", "--scenario", "meteor-strike")
    assert proc.returncode == 2 and "unknown scenario meteor-strike" in proc.stderr
    assert "registry-mismatch" in proc.stderr  # the known ones are listed
    proc = run_cli("--config", EXAMPLE, "drill")
    assert proc.returncode == 2 and "--site" in proc.stderr
    proc = run_cli("--config", EXAMPLE, "drill", "--site", "prod-west")
    assert proc.returncode == 2 and "not a DR site" in proc.stderr
    proc = run_cli("--config", EXAMPLE, "watch", "--site", "dr-east")
    assert proc.returncode == 2 and "not a primary site" in proc.stderr
    proc = run_cli("--config", EXAMPLE, "failover", "--site", "dr-east", "--ttl", "30")
    assert proc.returncode == 2 and "--ttl goes with --prepare" in proc.stderr


def test_status_no_probe_json():
    proc = run_cli("--config", EXAMPLE, "--json", "status", "--no-probe")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert {s["site"] for s in data["sites"]} == {"prod-west", "dr-east"}
