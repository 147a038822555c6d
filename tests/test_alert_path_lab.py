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

import pytest
import requests
import yaml

from drtool.drill.alertchain import free_port

from .conftest import PW_HOSTS, REPO, power_off_primary, run_cli

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


def test_alertmanager_to_exactly_one_real_failover(lab, production, tmp_path, monkeypatch):
    monkeypatch.setenv("DRTOOL_STATE_DIR", str(tmp_path / "state"))
    (tmp_path / "token").write_text(TOKEN)
    (tmp_path / "token").chmod(0o600)
    doc = yaml.safe_load(lab.config_path.read_text())
    doc["alerts"] = {"policy": "auto", "token_file": str(tmp_path / "token"), "firing_for_s": 0, "cooldown_s": 3600,
                     "state_dir": str(tmp_path / "alerts")}
    cfg = tmp_path / "drtool.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    rport, aport = free_port(), free_port()
    (tmp_path / "am.yml").write_text(yaml.safe_dump({
        "route": {"receiver": "drtool", "group_by": ["alertname", "site"], "group_wait": "0s",
                  "group_interval": "1s", "repeat_interval": "1s"},
        "receivers": [{"name": "drtool", "webhook_configs": [{
            "url": f"http://127.0.0.1:{rport}/alerts", "send_resolved": False,
            "http_config": {"authorization": {"type": "Bearer", "credentials_file": str(tmp_path / "token")}}}]}],
    }))
    log = open(tmp_path / "serve.log", "ab")  # noqa: SIM115 - kept open across the receiver's restart
    am = subprocess.Popen(["prometheus-alertmanager", f"--config.file={tmp_path / 'am.yml'}",
                           f"--storage.path={tmp_path / 'am-data'}", f"--web.listen-address=127.0.0.1:{aport}",
                           "--cluster.listen-address="], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    receiver = start_receiver(cfg, rport, log)
    try:
        wait_http(f"http://127.0.0.1:{aport}/-/ready")
        power_off_primary(lab)  # with one GPU host left, its Nginx keeps the site serving: no failover
        alert = [{"labels": {"alertname": "ModelPrimaryDown", "site": "prod-west", "severity": "page"},
                  "startsAt": datetime.now(UTC).isoformat()}]
        for i in range(50):
            assert requests.post(f"http://127.0.0.1:{aport}/api/v2/alerts", json=alert, timeout=5).ok
            if i == 25:  # restart the receiver mid-storm: its decisions are on disk
                os.killpg(receiver.pid, signal.SIGTERM)
                receiver.wait(timeout=20)
                receiver = start_receiver(cfg, rport, log)
            time.sleep(0.1)
        time.sleep(5)  # Alertmanager keeps re-sending every second: more chances to double-trigger
        runs = tmp_path / "alerts" / "runs"
        launched = sorted(runs.glob("*.log"))
        assert len(launched) == 1, launched
        decisions = json.loads((tmp_path / "alerts" / "alerts" / "decisions.json").read_text())["decisions"]
        (rec,) = decisions.values()
        assert rec["action"] == "started" and rec["count"] > 1
        # The failover it started is real: wait for its report, then DNS points at the standby.
        report_path = tmp_path / "state" / "runs" / f"{rec['run_id']}.report.json"
        deadline = time.monotonic() + 300
        while not report_path.exists() and time.monotonic() < deadline:
            time.sleep(1)
        report = json.loads(report_path.read_text())
        assert report["status"] == "done", launched[0].read_text()[-3000:]
        assert "ModelPrimaryDown" in report["reason"]
        dig = subprocess.run(["dig", "@10.77.0.2", "model.drlab.test", "+short"], capture_output=True, text=True)
        assert dig.stdout.strip() == "10.77.0.21"
    finally:
        os.killpg(receiver.pid, signal.SIGTERM)
        am.terminate()
        am.wait(timeout=20)
        log.close()
        for h in PW_HOSTS:   # both were powered off above
            lab.power_on(h)
        proc = run_cli("failback", "--site", "prod-west", "--yes")
        assert proc.returncode == 0, proc.stderr
