"""The Event-Driven Ansible rulebook, run for real: ansible-rulebook (Java 17, `make setup` installs both) with the
webhook-source rulebook on 127.0.0.1 takes Alertmanager's ModelPrimaryDown payload and hands it, through
playbooks/alert_ingest.yml, to drtool's decision book: with `alerts.policy: approve` exactly one failover is queued
for approval, and the same alert posted again queues nothing more. No lab: the configuration lives in tmp_path."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import requests

from .conftest import REPO, wait_for
from .test_alerts_ingest import decisions, ingest_config, payload, primary_down

BIN = Path(sys.executable).parent
RULEBOOK = "ops/eda/drtool-failover-webhook.rulebook.yml"
INVENTORY = "ops/eda/inventory.yml"
TOKEN = "eda-t0ken-" + "y" * 32
# ansible-rulebook starts its JVM and sources in several seconds, and each action runs ansible-playbook: generous
# deadlines for a busy 2-CPU machine.
START_S = 180
ACTION_S = 180


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Rulebook:
    """ansible-rulebook in its own session, its output in a log file; stopped by stop()."""

    def __init__(self, tmp_path: Path, cfg: Path):
        self.port = free_port()
        self.vars = tmp_path / "eda-vars.yml"
        self.vars.touch(mode=0o600)   # the token is a secret: in a file, never on argv
        self.vars.write_text(json.dumps({"drtool_eda_port": self.port, "drtool_eda_token": TOKEN,
                                         "drtool_bin": str(BIN / "drtool"), "drtool_config": str(cfg)}))
        self.log = tmp_path / "ansible-rulebook.log"
        exe = BIN / "ansible-rulebook"
        assert exe.exists(), "ansible-rulebook is not installed in the venv: run `make setup`"
        env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}", "ANSIBLE_NOCOLOR": "1",
               "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp")}
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [str(exe), "--rulebook", RULEBOOK, "-i", INVENTORY, "-e", str(self.vars), "-v"],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]

    def alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"ansible-rulebook exited {self.proc.returncode}:\n{self.output()}")

    def listening(self) -> bool:
        self.alive()
        with socket.socket() as s:
            s.settimeout(1)
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def post(self, doc: dict) -> requests.Response:
        return requests.post(f"http://127.0.0.1:{self.port}/alerts", json=doc, timeout=30,
                             headers={"Authorization": f"Bearer {TOKEN}"})

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)


def test_rulebook_hands_model_primary_down_to_the_decision_book_once(tmp_path):
    cfg = ingest_config(tmp_path, policy="approve")
    marker = tmp_path / "templated"
    # A label Ansible would run as a template if the alert reached it as plain extra vars.
    alert = primary_down(note="{{ lookup('ansible.builtin.pipe', 'touch " + str(marker) + "') }}")
    doc = payload(alert)
    rulebook = Rulebook(tmp_path, cfg)
    try:
        wait_for(rulebook.listening, timeout=START_S, what="ansible-rulebook's webhook source to listen", poll=0.2)
        assert requests.post(f"http://127.0.0.1:{rulebook.port}/alerts", json=doc, timeout=30).status_code == 401

        assert rulebook.post(doc).status_code == 200

        def decided(count: int):
            rulebook.alive()
            recs = decisions(tmp_path)
            return recs if recs and max(r["count"] for r in recs.values()) >= count else None

        try:
            recs = wait_for(lambda: decided(1), timeout=ACTION_S, what="the first decision", poll=0.2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{rulebook.output()}") from None
        (rec,) = recs.values()
        assert rec["action"] == "awaiting_approval" and rec["target"] == "dr-east" and rec["site"] == "prod-west"
        assert rec["run_id"].startswith("fo-dr-east-")

        # Alertmanager's repeated notification: the book hears it (count 2) and decides nothing new.
        assert rulebook.post(doc).status_code == 200
        try:
            recs = wait_for(lambda: decided(2), timeout=ACTION_S, what="the repeat to reach the book", poll=0.2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{rulebook.output()}") from None
        assert len(recs) == 1
        awaiting = [r for r in recs.values() if r["action"] == "awaiting_approval"]
        assert len(awaiting) == 1 and awaiting[0]["run_id"] == rec["run_id"]
        assert not marker.exists(), "an alert's label was rendered as a template"
        assert not (tmp_path / "state" / "alerts" / "runs").exists(), "policy approve launched a failover"
    finally:
        rulebook.stop()
