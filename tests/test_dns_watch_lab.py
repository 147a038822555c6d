"""The record around a failover, on the lab: `failover --prepare` lowers the TTL ahead of time, every record a
change replaces is saved, `dns restore` puts one back only where a site serves, and `drtool watch` turns a dead
primary into exactly one decision on the alert path."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from drtool.actions import watch
from drtool.config import load_config
from drtool.output import Output

from .conftest import cli_json, dig, power_off_primary, run_cli
from .test_failover_lab import PRIMARY, STANDBY1

pytestmark = pytest.mark.lab


def dig_ttl() -> tuple[str, int]:
    out = subprocess.run(["dig", "@10.77.0.2", "model.drlab.test", "A", "+noall", "+answer"], capture_output=True,
                         text=True, timeout=20, check=True).stdout.split()
    return out[4], int(out[1])


def test_prepare_lowers_ttl_then_restore_puts_it_back(lab, production, state):
    addr, ttl = dig_ttl()
    assert addr == PRIMARY and ttl > 30
    # The lab's records are born at their prepared TTL (readiness passes on a fresh lab): lower it further here.
    dry = cli_json("failover", "--site", "dr-east", "--prepare", "--ttl", "30", "--dry-run")
    assert dry["changed"] is False and dig_ttl() == (PRIMARY, ttl)
    prep = cli_json("failover", "--site", "dr-east", "--prepare", "--ttl", "30")
    assert prep["changed"] and prep["ttl_before"] == ttl and prep["ttl_after"] == 30
    assert dig_ttl() == (PRIMARY, 30)
    shown = cli_json("dns", "show", "--site", "dr-east")
    assert shown["saved"][0]["addresses"] == [PRIMARY] and shown["saved"][0]["ttl"] == ttl
    restored = cli_json("dns", "restore", "--site", "dr-east")
    assert restored["changed"] and restored["serving"][PRIMARY]["host"] == "pw-lb"
    assert dig_ttl() == (PRIMARY, ttl)


@pytest.mark.nightly   # a failover and its failback: about 1.5 minutes
def test_failover_saves_the_record_and_restore_refuses_a_dead_target(lab, production, state, back_to_production):
    power_off_primary(lab)
    report = cli_json("failover", "--site", "dr-east", "--yes", "--reason", "test: record saved")
    flip = next(s for s in report["services"][0]["steps"] if s["name"] == "flip_dns")
    assert flip["evidence"]["previous_saved"].startswith("dns/model.drlab.test/")
    assert dig() == STANDBY1
    saved = cli_json("dns", "show", "--site", "dr-east")["saved"][0]
    assert saved["addresses"] == [PRIMARY] and saved["run_id"] == report["run_id"]
    # Putting the saved record back would point DNS at a dead primary: refused, record unchanged.
    proc = run_cli("--json", "dns", "restore", "--site", "dr-east")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    err = json.loads(proc.stdout)
    assert "pw-lb" in err["message"] and "no site would be serving" in err["hint"]  # its Nginx, both GPUs dead
    assert dig() == STANDBY1


@pytest.mark.nightly   # a failover and its failback: about 1.5 minutes
def test_watch_decides_once_on_a_dead_primary(lab, lab_config, production, state, tmp_path, back_to_production):
    doc = yaml.safe_load(lab_config.path.read_text())
    doc["alerts"] = {"policy": "approve", "firing_for_s": 0, "cooldown_s": 3600, "state_dir": str(tmp_path / "alerts")}
    cfg_path = tmp_path / "drtool.yaml"
    cfg_path.write_text(yaml.safe_dump(doc))
    cfg = load_config(cfg_path)
    out = Output(json_mode=True)
    healthy = watch.run(cfg, out, "prod-west", failures=2, interval=0.2, exit_on_trigger=True, max_probes=4)
    assert healthy["decisions"] == [] and healthy["failing_streak"] == 0

    power_off_primary(lab)
    first = cli_json("--config", str(cfg_path), "watch", "--site", "prod-west", "--failures", "3",
                     "--interval", "0.3", "--exit-on-trigger")
    assert [d["action"] for d in first["decisions"]] == ["awaiting_approval"]
    assert first["probes"] == 3 and first["decisions"][0]["target"] == "dr-east"
    # A second watcher on the same outage: nothing new is queued. Its first failure is either in the same second
    # as the first watcher's (the same outage key: a duplicate, not reported) or later (held by the cooldown).
    again = watch.run(cfg, out, "prod-west", failures=2, interval=0.2, exit_on_trigger=True, max_probes=3)
    assert all(d["action"] == "suppressed_cooldown" for d in again["decisions"]), again["decisions"]
    book = json.loads((tmp_path / "alerts" / "alerts" / "decisions.json").read_text())
    assert sum(1 for r in book["decisions"].values() if r["action"] == "awaiting_approval") == 1
    assert dig() == PRIMARY  # policy approve: nothing moved


def test_watch_restarts_a_crashed_container_in_place_and_does_not_fail_over(lab, lab_config, production, state,
                                                                           tmp_path, back_to_production):
    """Ladder rung 1 (issue #17, process-crash): the serving container stops and its engine does not start it again
    (a stopped container is not restarted by its policy). The watch restarts it in place, the server verifies its
    weights and serves again; no failover is decided, DNS does not move. The time to ready is reported."""
    import docker

    from drtool.execute.serving import version

    doc = yaml.safe_load(lab_config.path.read_text())
    doc["alerts"] = {"policy": "auto", "firing_for_s": 0, "cooldown_s": 3600, "state_dir": str(tmp_path / "alerts")}
    doc["ha"] = {"restart_attempts": 2, "ready_timeout_s": 90}
    cfg_path = tmp_path / "drtool.yaml"
    cfg_path.write_text(yaml.safe_dump(doc))
    cfg = load_config(cfg_path)
    engine = docker.DockerClient(base_url=f"unix://{lab.layout.docker_socket('pw-gpu1')}")
    try:
        container = engine.containers.get(f"drtool-{production['entry'].model}")
        first_id = container.id
        container.stop(timeout=5)
    finally:
        engine.close()
    result = watch.run(cfg, Output(json_mode=True), "prod-west", failures=2, interval=0.5, exit_on_trigger=True,
                       max_probes=400, exit_on_recovery=True)
    assert result["decisions"] == [], result["decisions"]          # no failover decided
    (recovery,) = result["recoveries"]
    assert recovery["instance"] == "pw-gpu1" and recovery["rung"] == "restart"
    assert 0 < recovery["ready_after_s"] < 90
    ladder = result["ladder"]["instances"]["pw-gpu1"]
    taken = [r for r in ladder["rungs"] if r["kind"] != "none"]  # "none": waiting for ready after the restart
    assert [r["kind"] for r in taken] == ["restart"] and taken[0]["outcome"] == "ok" and ladder["restarts"] == 1
    assert dig() == PRIMARY
    served = version(f"http://{PRIMARY}:8080")
    assert served["version"] == production["entry"].version and served["ready"]
    engine = docker.DockerClient(base_url=f"unix://{lab.layout.docker_socket('pw-gpu1')}")
    try:
        assert engine.containers.get(f"drtool-{production['entry'].model}").id == first_id  # in place, not redeployed
    finally:
        engine.close()
