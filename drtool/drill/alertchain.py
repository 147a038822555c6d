"""The real alert chain a `primary-down` drill detects through: Prometheus scrapes the primary's model server,
an alert rule fires, Alertmanager posts the webhook to `drtool serve`, which starts the failover. All three are
real processes (Debian's prometheus and prometheus-alertmanager, drtool itself) on 127.0.0.1, started for the
drill and stopped by its cleanup. The rule is the ops kit's ModelPrimaryDown with the drill's shorter `for:`."""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests
import yaml

from drtool.config import Config, Site
from drtool.errors import OperationFailed, UsageError
from drtool.fsutil import write_atomic

ALERT = "ModelPrimaryDown"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _binary(name: str) -> str:
    found = shutil.which(name)
    if not found:
        raise UsageError(f"{name} is not installed: the drill detects through the real alert chain",
                         hint="run `make setup` (Debian packages prometheus and prometheus-alertmanager), or set "
                              "drill.prometheus_bin / drill.alertmanager_bin")
    return found


class AlertChain:
    def __init__(self, config: Config, primary: Site, workdir: Path):
        self.config, self.primary, self.dir = config, primary, workdir
        self.settings = config.drill
        self.procs: dict[str, subprocess.Popen] = {}
        self.ports = {"prometheus": free_port(), "alertmanager": free_port(), "serve": free_port()}
        self.token_file = workdir / "serve.token"
        self.alerts_dir = workdir / "alerts"

    # -- configuration ----------------------------------------------------------------------------------
    def drtool_alerts(self, dr_site: str) -> dict:
        """The `alerts` section the drill's `drtool serve` runs with: start the failover at once, no cooldown
        left over from a previous drill (its own state dir)."""
        return {"policy": "auto", "token_file": str(self.token_file), "firing_for_s": 0, "cooldown_s": 0,
                "state_dir": str(self.alerts_dir), "failover_to": {self.primary.name: dr_site}}

    def write_configs(self) -> None:
        write_atomic(self.token_file, secrets.token_hex(32) + "\n", 0o600)
        every = f"{self.settings.scrape_interval_s:g}s"
        prom = {
            "global": {"scrape_interval": every, "evaluation_interval": "1s", "scrape_timeout": "1s"},
            "rule_files": [str(self.dir / "rules.yml")],
            "alerting": {"alertmanagers": [{"static_configs": [
                {"targets": [f"127.0.0.1:{self.ports['alertmanager']}"]}]}]},
            "scrape_configs": [{
                "job_name": "drtool-model-server", "metrics_path": "/metrics",
                "static_configs": [{"targets": [f"{h.address}:{self.primary.serving_port}"],
                                    "labels": {"site": self.primary.name, "site_role": "primary", "host": h.name}}
                                   for h in self.primary.hosts]}],
        }
        rules = {"groups": [{"name": "drtool-drill", "rules": [{
            "alert": ALERT,
            "expr": 'max by (site) (up{job="drtool-model-server", site_role="primary"}) == 0',
            "for": f"{self.settings.detection_for_s:g}s",
            "labels": {"severity": "page"},
            "annotations": {"summary": "the primary site's model server cannot be scraped"}}]}]}
        am = {
            "route": {"receiver": "drtool", "group_by": ["alertname", "site"], "group_wait": "0s",
                      "group_interval": "1s", "repeat_interval": "1h"},
            "receivers": [{"name": "drtool", "webhook_configs": [{
                "url": f"http://127.0.0.1:{self.ports['serve']}/alerts", "send_resolved": False,
                "http_config": {"authorization": {"type": "Bearer", "credentials_file": str(self.token_file)}}}]}],
        }
        for name, doc in (("prometheus.yml", prom), ("rules.yml", rules), ("alertmanager.yml", am)):
            write_atomic(self.dir / name, yaml.safe_dump(doc, sort_keys=False), 0o644)

    # -- processes ----------------------------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str], ready_url: str) -> None:
        log = open(self.dir / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True, env=os.environ.copy())
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.procs[name].poll() is not None:
                raise OperationFailed(f"{name} exited at start (code {self.procs[name].returncode})",
                                      hint=f"see {self.dir / (name + '.log')}")
            try:
                if requests.get(ready_url, timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise OperationFailed(f"{name} did not become ready at {ready_url} within 30s",
                              hint=f"see {self.dir / (name + '.log')}")

    def start(self, drill_config: Path) -> None:
        for old in (self.alerts_dir, self.dir / "am-data", self.dir / "prom-data"):  # a previous drill's memory
            shutil.rmtree(old, ignore_errors=True)
        self.write_configs()
        p, a, s = self.ports["prometheus"], self.ports["alertmanager"], self.ports["serve"]
        self._spawn("serve", [sys.executable, "-m", "drtool", "--config", str(drill_config), "serve",
                              "--listen", f"127.0.0.1:{s}"], f"http://127.0.0.1:{s}/healthz")
        self._spawn("alertmanager", [_binary(self.settings.alertmanager_bin),
                                     f"--config.file={self.dir / 'alertmanager.yml'}",
                                     f"--storage.path={self.dir / 'am-data'}",
                                     f"--web.listen-address=127.0.0.1:{a}", "--cluster.listen-address="],
                    f"http://127.0.0.1:{a}/-/ready")
        self._spawn("prometheus", [_binary(self.settings.prometheus_bin),
                                   f"--config.file={self.dir / 'prometheus.yml'}",
                                   f"--storage.tsdb.path={self.dir / 'prom-data'}",
                                   f"--web.listen-address=127.0.0.1:{p}"],
                    f"http://127.0.0.1:{p}/-/ready")

    def wait_scraped_up(self, timeout: float = 60) -> None:
        """Steady state as Prometheus sees it: the primary is scraped and up, and the alert is not firing."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._query_up() == 1.0:
                return
            time.sleep(0.5)
        raise OperationFailed(f"Prometheus never scraped {self.primary.name}'s model server as up",
                              hint=f"see {self.dir / 'prometheus.log'}")

    def _query_up(self) -> float | None:
        try:
            r = requests.get(f"http://127.0.0.1:{self.ports['prometheus']}/api/v1/query", timeout=3,
                             params={"query": 'max(up{job="drtool-model-server", site_role="primary"})'})
            res = r.json()["data"]["result"]
            return float(res[0]["value"][1]) if res else None
        except (requests.RequestException, ValueError, KeyError, IndexError):
            return None

    def wait_firing(self, timeout: float) -> float:
        """When (epoch) this process first saw the alert firing in Prometheus."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                r = requests.get(f"http://127.0.0.1:{self.ports['prometheus']}/api/v1/alerts", timeout=3)
                for a in r.json()["data"]["alerts"]:
                    if a["labels"].get("alertname") == ALERT and a["state"] == "firing":
                        return time.time()
            except (requests.RequestException, ValueError, KeyError):
                pass
            time.sleep(0.25)
        raise OperationFailed(f"alert {ALERT} did not fire within {timeout:.0f}s",
                              hint=f"see {self.dir / 'prometheus.log'}")

    def wait_decision(self, timeout: float, since: float) -> dict:
        """The decision `drtool serve` took (with its run id) after `since`, from its persisted decision book."""
        path = self.alerts_dir / "alerts" / "decisions.json"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                for rec in json.loads(path.read_text())["decisions"].values():
                    if rec.get("alert") == ALERT and rec.get("run_id") and rec["action"] in ("starting", "started") \
                            and rec.get("decided_at", 0) >= since:
                        return rec
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.25)
        raise OperationFailed(f"drtool serve took no failover decision within {timeout:.0f}s",
                              hint=f"see {self.dir / 'serve.log'} and {self.dir / 'alertmanager.log'}")

    def launched_runs(self) -> list[str]:
        """Run ids of failovers `drtool serve` started (they run on after serve stops)."""
        try:
            book = json.loads((self.alerts_dir / "alerts" / "decisions.json").read_text())
        except (OSError, ValueError):
            return []
        return [r["run_id"] for r in book.get("decisions", {}).values()
                if r.get("run_id") and r.get("action") in ("starting", "started")]

    def stop(self) -> list[str]:
        """Stop every process; returns the names that would not stop."""
        stuck = []
        for name, proc in self.procs.items():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    try:
                        proc.wait(5)
                    except subprocess.TimeoutExpired:
                        stuck.append(name)
        return stuck
