"""The alert path, for real: Debian's Alertmanager posts to `drtool serve`, which starts exactly one failover
(and a real one, on the lab) although the alert is sent 50 times and the receiver is restarted in between."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests
import yaml

from drtool.drill.alertchain import free_port

from .conftest import PW_HOSTS, REPO, ended_report, power_off_primary, run_cli

pytestmark = pytest.mark.lab
TOKEN = "alert-token-" + "z" * 32


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} did not come up")


def start_receiver(cfg, port, log):
    exe = shutil.which("drtool") or str(REPO / ".venv" / "bin" / "drtool")
    proc = subprocess.Popen([exe, "--config", str(cfg), "serve", "--listen", f"127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    wait_http(f"http://127.0.0.1:{port}/healthz")
    return proc


def receivers_config(lab, tmp_path, policy: str, name: str) -> tuple:
    """One receiver's configuration: the lab's, with its own alerts state dir (the DR store is the shared one)."""
    doc = yaml.safe_load(lab.config_path.read_text())
    doc["alerts"] = {"policy": policy, "token_file": str(tmp_path / "token"), "firing_for_s": 0, "cooldown_s": 3600,
                     "state_dir": str(tmp_path / name)}
    cfg = tmp_path / f"drtool-{name}.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    return cfg, tmp_path / name


def start_alertmanager(tmp_path, ports: list[int]):
    """Debian's Alertmanager, its one receiver posting each notification to every `drtool serve` (as two
    Alertmanager replicas each would)."""
    aport = free_port()
    (tmp_path / "am.yml").write_text(yaml.safe_dump({
        "route": {"receiver": "drtool", "group_by": ["alertname", "site"], "group_wait": "0s",
                  "group_interval": "1s", "repeat_interval": "1s"},
        "receivers": [{"name": "drtool", "webhook_configs": [{
            "url": f"http://127.0.0.1:{p}/alerts", "send_resolved": False,
            "http_config": {"authorization": {"type": "Bearer", "credentials_file": str(tmp_path / "token")}}}
            for p in ports]}],
    }))
    am = subprocess.Popen(["prometheus-alertmanager", f"--config.file={tmp_path / 'am.yml'}",
                           f"--storage.path={tmp_path / 'am-data'}", f"--web.listen-address=127.0.0.1:{aport}",
                           "--cluster.listen-address="], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_http(f"http://127.0.0.1:{aport}/-/ready")
    return am, aport


def book(state: Path) -> dict:
    return json.loads((state / "alerts" / "decisions.json").read_text())["decisions"]


@pytest.mark.nightly   # a real failover and its failback: about 1.5 minutes
def test_two_receivers_alertmanager_to_exactly_one_real_failover(lab, production, tmp_path, monkeypatch):
    """Two `drtool serve` receivers (each its own state dir, one DR store) get every notification; prod-west is
    really down. Exactly one failover runs, and a real one; the receiver that did not launch it records the other's
    run id. The alert is sent 50 times and one receiver is restarted in between."""
    monkeypatch.setenv("DRTOOL_STATE_DIR", str(tmp_path / "state"))
    (tmp_path / "token").write_text(TOKEN)
    (tmp_path / "token").chmod(0o600)
    (cfg_a, state_a), (cfg_b, state_b) = (receivers_config(lab, tmp_path, "auto", n) for n in ("a", "b"))
    port_a, port_b = free_port(), free_port()
    log = open(tmp_path / "serve.log", "ab")  # noqa: SIM115 - kept open across the receiver's restart
    receiver_a, receiver_b = start_receiver(cfg_a, port_a, log), start_receiver(cfg_b, port_b, log)
    am, aport = start_alertmanager(tmp_path, [port_a, port_b])
    try:
        power_off_primary(lab)  # with one GPU host left, its Nginx keeps the site serving: no failover
        alert = [{"labels": {"alertname": "ModelPrimaryDown", "site": "prod-west", "severity": "page"},
                  "startsAt": datetime.now(UTC).isoformat()}]
        for i in range(50):
            assert requests.post(f"http://127.0.0.1:{aport}/api/v2/alerts", json=alert, timeout=5).ok
            if i == 25:  # restart a receiver mid-storm: its decisions are on disk
                os.killpg(receiver_a.pid, signal.SIGTERM)
                receiver_a.wait(timeout=20)
                receiver_a = start_receiver(cfg_a, port_a, log)
            time.sleep(0.1)
        time.sleep(5)  # Alertmanager keeps re-sending every second: more chances to double-trigger
        launched = sorted((state_a / "runs").glob("*.log")) + sorted((state_b / "runs").glob("*.log"))
        assert len(launched) == 1, launched
        (rec_a,), (rec_b,) = book(state_a).values(), book(state_b).values()
        first, other = (rec_a, rec_b) if rec_a["action"] == "started" else (rec_b, rec_a)
        assert first["action"] == "started" and first["count"] > 1, (rec_a, rec_b)
        assert other["action"] == "duplicate" and other["run_id"] == first["run_id"], other
        # The failover it started is real: wait for its report, then DNS points at the standby.
        report = ended_report(tmp_path / "state" / "runs" / f"{first['run_id']}.report.json", timeout=300)
        assert report["status"] == "done", launched[0].read_text()[-3000:]
        assert "ModelPrimaryDown" in report["reason"]
        dig = subprocess.run(["dig", "@10.77.0.2", "model.drlab.test", "+short"], capture_output=True, text=True)
        assert dig.stdout.strip() == "10.77.0.21"
    finally:
        for r in (receiver_a, receiver_b):
            os.killpg(r.pid, signal.SIGTERM)
        am.terminate()
        am.wait(timeout=20)
        log.close()
        for h in PW_HOSTS:   # both were powered off above
            lab.power_on(h)
        proc = run_cli("failback", "--site", "prod-west", "--yes")
        assert proc.returncode == 0, proc.stderr


def test_two_receivers_in_approve_mode_queue_one_approval_either_host_can_approve(lab, production, tmp_path,
                                                                                 monkeypatch):
    """Policy approve: the same alert through Alertmanager to two receivers queues one approval under one run id;
    the other receiver names it; the run is found from the other receiver's configuration too. Nothing moves."""
    monkeypatch.setenv("DRTOOL_STATE_DIR", str(tmp_path / "state"))
    (tmp_path / "token").write_text(TOKEN)
    (tmp_path / "token").chmod(0o600)
    (cfg_a, state_a), (cfg_b, state_b) = (receivers_config(lab, tmp_path, "approve", n) for n in ("a", "b"))
    port_a, port_b = free_port(), free_port()
    log = open(tmp_path / "serve.log", "ab")  # noqa: SIM115
    receivers = [start_receiver(cfg_a, port_a, log), start_receiver(cfg_b, port_b, log)]
    am, aport = start_alertmanager(tmp_path, [port_a, port_b])
    try:
        alert = [{"labels": {"alertname": "ModelPrimaryDown", "site": "prod-west", "severity": "page"},
                  "startsAt": datetime.now(UTC).isoformat()}]
        assert requests.post(f"http://127.0.0.1:{aport}/api/v2/alerts", json=alert, timeout=5).ok

        def both_decided():
            try:
                return len(book(state_a)) == 1 and len(book(state_b)) == 1
            except (OSError, ValueError):
                return False

        deadline = time.monotonic() + 60
        while not both_decided() and time.monotonic() < deadline:
            time.sleep(0.2)
        (rec_a,), (rec_b,) = book(state_a).values(), book(state_b).values()
        first, other = (rec_a, rec_b) if rec_a["action"] == "awaiting_approval" else (rec_b, rec_a)
        assert first["action"] == "awaiting_approval", (rec_a, rec_b)
        assert other["action"] == "duplicate" and other["run_id"] == first["run_id"], other
        assert not list((state_a / "runs").glob("*.log")) and not list((state_b / "runs").glob("*.log"))
        # Either receiver's host finds the queued run: a dry-run approval from the other one plans it.
        cfg_other = cfg_b if other is rec_b else cfg_a
        proc = run_cli("--config", str(cfg_other), "--json", "failover", "--site", "dr-east", "--approve",
                       first["run_id"], "--dry-run")
        said = proc.stdout + proc.stderr
        # Found (a healthy primary then refuses the move itself: exit 2 naming what answered, or a plan, exit 0).
        assert "no failover awaiting approval" not in said and first["run_id"] in said, said
        assert proc.returncode == 0 or (proc.returncode == 2 and "the primary serves" in said), said
        dig = subprocess.run(["dig", "@10.77.0.2", "model.drlab.test", "+short"], capture_output=True, text=True)
        assert dig.stdout.strip() == "10.77.0.13"
    finally:
        for r in receivers:
            os.killpg(r.pid, signal.SIGTERM)
        am.terminate()
        am.wait(timeout=20)
        log.close()
