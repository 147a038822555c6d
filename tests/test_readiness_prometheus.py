"""DR readiness as Prometheus sees it: the real Prometheus (Debian's) scrapes the readiness textfile, exactly as
`drtool readiness --textfile` writes it and node_exporter's textfile collector serves it, and the shipped alert
rules fire when a rule is broken. Runs on 127.0.0.1, no lab needed.

The rules are ops/prometheus/drtool-rules.yml's, with `for:` shortened to 1 s so the test does not wait 30 minutes
(the 30 minutes themselves are checked by promtool in tests/test_ops_kit.py)."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
import yaml

from drtool.drill.alertchain import free_port
from drtool.fsutil import write_atomic
from drtool.readiness import metrics, rules

from .test_readiness import TARGETS, healthy_service, healthy_site

REPO = Path(__file__).resolve().parents[1]
READINESS_ALERTS = {"DrtoolDrNotReady", "DrtoolPredictedRtoOverTarget"}


class Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def textfile_server(tmp_path):
    """The textfile directory over HTTP, as node_exporter would expose its contents: /metrics is the file."""
    (tmp_path / "www").mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(tmp_path / "www")))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield tmp_path / "www" / "metrics", server.server_address[1]
    server.shutdown()
    server.server_close()


def readiness_rules(path: Path) -> Path:
    doc = yaml.safe_load((REPO / "ops" / "prometheus" / "drtool-rules.yml").read_text())
    kept = []
    for group in doc["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") in READINESS_ALERTS:
                kept.append({**rule, "for": "1s"})
    assert {r["alert"] for r in kept} == READINESS_ALERTS
    path.write_text(yaml.safe_dump({"groups": [{"name": "drtool-readiness", "rules": kept}]}))
    return path


def firing(port: int) -> dict[str, list[dict]]:
    alerts = requests.get(f"http://127.0.0.1:{port}/api/v1/alerts", timeout=3).json()["data"]["alerts"]
    out: dict[str, list[dict]] = {}
    for a in alerts:
        if a["state"] == "firing":
            out.setdefault(a["labels"]["alertname"], []).append(a["labels"])
    return out


def test_prometheus_scrapes_readiness_and_fires_when_a_rule_is_broken(tmp_path, textfile_server):
    textfile, http_port = textfile_server
    # A healthy site: every rule passes, nothing fires.
    healthy = rules.assess(healthy_site(), [healthy_service()], TARGETS).to_dict()
    write_atomic(textfile, metrics.render(healthy))
    port = free_port()
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(readiness_rules(tmp_path / "rules.yml"))],
        "scrape_configs": [{"job_name": "node", "static_configs": [{"targets": [f"127.0.0.1:{http_port}"]}],
                            "honor_labels": True}]}))
    with open(tmp_path / "prometheus.log", "wb") as log:
        argv = [shutil.which("prometheus") or "prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"]
        prom = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        def query(expr: str) -> list[dict]:
            return requests.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": expr},
                                timeout=3).json()["data"]["result"]

        def until(what, predicate, timeout=60.0):
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    value = predicate()
                except requests.RequestException:
                    value = None
                if value:
                    return value
                time.sleep(0.25)   # pacing the poll only
            raise AssertionError(f"timed out waiting for {what}; see {tmp_path / 'prometheus.log'}")

        ready = until("the readiness series scraped", lambda: query('drtool_readiness_ready{service="asr-demo"}'))
        assert ready[0]["metric"]["site"] == "dr-east" and ready[0]["value"][1] == "1"
        assert firing(port) == {}

        # Break one rule (the image is gone from the DR registry) and overrun the RTO target: both alerts fire.
        broken = rules.assess(healthy_site(), [healthy_service(image_present=False)],
                              rules.Targets(rto_s=5, rpo_s=TARGETS.rpo_s, drill_max_age_s=TARGETS.drill_max_age_s))
        write_atomic(textfile, metrics.render(broken.to_dict()))
        got = until("DrtoolDrNotReady and DrtoolPredictedRtoOverTarget firing",
                    lambda: (f := firing(port)) and READINESS_ALERTS <= set(f) and f)
        assert {"site": "dr-east", "service": "asr-demo"}.items() <= got["DrtoolDrNotReady"][0].items()
        passed = {r["metric"]["rule"]: r["value"][1] for r in query('drtool_readiness_rule_passed{service="asr-demo"}')}
        assert passed["image"] == "0" and passed["dns"] == "1"
    finally:
        prom.terminate()
        prom.wait(timeout=30)
