"""drtool serve: alerts about one serving instance climb the escalation ladder (restart, drain) before any failover
(drtool/alerts/ladder.py). Pure unit tests: fake remedies, the real DecisionBook with a recording launcher."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import requests

from drtool.alerts.decisions import STARTED, DecisionBook
from drtool.alerts.ladder import AlertLadder, Remedies
from drtool.alerts.receiver import ReceiverServer, parse_webhook
from drtool.config import load_config
from drtool.errors import OperationFailed
from drtool.ha.ladder import LadderJournal

TOKEN = "t0ken-" + "y" * 32

SITES = """\
version: 1
sites:
  prod-west:
    role: primary
    hosts:
      - {{name: pw-gpu1, address: 10.0.1.11}}
      - {{name: pw-gpu2, address: 10.0.1.12}}
    proxy: {{name: pw-lb, address: 10.0.1.13}}
    container_registry: {{url: "r.example"}}
    object_stores: [{{url: "s3://ok-bucket/x"}}]
    dns: {{provider: rfc2136, record: model.example.com, server: 10.0.0.53, zone: example.com, tsig_key_file: /k}}
    serving: {{port: 8080}}
  dr-east:
    role: dr
    hosts:
      - {{name: de-gpu1, address: 10.0.2.21}}
    container_registry: {{url: "r.example"}}
    object_stores: [{{url: "s3://ok-bucket/x"}}]
    dns: {{provider: rfc2136, record: model.example.com, server: 10.0.0.53, zone: example.com, tsig_key_file: /k}}
    serving: {{port: 8080}}
models:
"""  # a two-instance primary behind Nginx and one DR host; each test adds its models
CONFIG = SITES + """\
  asr: {{weights_path: /srv/models/asr, image: asr}}
alerts:
  policy: auto
  token_file: {tmp}/token
  firing_for_s: 0
  cooldown_s: 600
  state_dir: {tmp}/state
ha:
  restart_attempts: 2
  restart_window_s: 600
  ready_timeout_s: 120
  policy: {{restart: "{restart}", drain: auto, failover: auto}}
"""


class Clock:
    def __init__(self):
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class Fakes:
    """Records every remedy and book launch; `fail` names remedies that raise."""

    def __init__(self, unreachable=()):
        self.calls: list[tuple[str, str]] = []
        self.launched: list[tuple[str, str, str]] = []
        self.unreachable = set(unreachable)
        self.fail: set[str] = set()

    def remedies(self) -> Remedies:
        def act(kind):
            def run(site, target):
                name = getattr(target, "name", target)
                self.calls.append((kind, name))
                if kind in self.fail:
                    raise OperationFailed(f"{kind} of {name} failed")
            return run

        return Remedies(restart=act("restart"), drain=act("drain"), undrain=act("undrain"),
                        reachable=lambda host: host.name not in self.unreachable)

    def launch(self, site, run_id, reason):
        self.launched.append((site, run_id, reason))

    def of(self, kind):
        return [name for k, name in self.calls if k == kind]


def setup(tmp_path: Path, restart="auto", unreachable=()):
    (tmp_path / "token").write_text(TOKEN + "\n")
    path = tmp_path / "drtool.yaml"
    path.write_text(CONFIG.format(tmp=tmp_path, restart=restart))
    cfg = load_config(path)
    fakes, clock = Fakes(unreachable), Clock()
    book = DecisionBook(cfg, Path(cfg.alerts.state_dir), fakes.launch, clock=clock)
    ladder = AlertLadder(cfg, book, Path(cfg.alerts.state_dir) / "ladder", fakes.remedies(), clock=clock)
    return cfg, ladder, book, fakes, clock


def alert(name, instance="10.0.1.11:8080", status="firing", fingerprint="0a1", starts_ago=600.0, site="prod-west",
          summary=None):
    labels = {"alertname": name, "site": site, "site_role": "primary"}
    if instance is not None:
        labels["instance"] = instance
    starts = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - starts_ago))
    return {"status": status, "labels": labels, "annotations": {"summary": summary or f"{name} on {instance}"},
            "startsAt": starts, "endsAt": "0001-01-01T00:00:00Z", "fingerprint": fingerprint}


def batch(*alerts, status="firing"):
    return parse_webhook(json.dumps({"version": "4", "status": status, "alerts": list(alerts)}).encode())


def test_instance_down_restarts_once_then_waits_for_ready(tmp_path):
    _, ladder, book, fakes, clock = setup(tmp_path)
    out = ladder.handle(batch(alert("ModelInstanceDown")))
    assert fakes.of("restart") == ["pw-gpu1"]
    assert any(d["action"] == "ladder_restart" and d["outcome"] == "ok" for d in out)
    clock.now += 30   # Alertmanager re-sends within ready_timeout_s: no second restart, nothing else
    out = ladder.handle(batch(alert("ModelInstanceDown")))
    assert fakes.calls == [("restart", "pw-gpu1")]
    assert any(d["action"] == "ladder_none" and "waiting" in d["why"] for d in out)
    assert fakes.launched == [] and book.load()["decisions"] == {}
    clock.now += 120  # still down after ready_timeout_s: the second of two restarts
    ladder.handle(batch(alert("ModelInstanceDown")))
    assert fakes.of("restart") == ["pw-gpu1", "pw-gpu1"]
    clock.now += 121  # attempts used up, pw-gpu2 healthy: drain
    ladder.handle(batch(alert("ModelInstanceDown")))
    assert fakes.of("drain") == ["pw-gpu1"] and fakes.launched == []
    rungs = LadderJournal(tmp_path / "state" / "ladder" / "prod-west.jsonl").summary()["instances"]["pw-gpu1"]
    assert [r["kind"] for r in rungs["rungs"]] == ["restart", "restart", "drain"]
    assert rungs["drained"] and all(r["outcome"] == "ok" for r in rungs["rungs"])


def test_instance_matched_by_bare_name_or_address_and_serving_port_only(tmp_path):
    _, ladder, _, _, _ = setup(tmp_path)
    assert ladder.instance_of(batch(alert("ModelInstanceDown", instance="pw-gpu2"))[0])[1].name == "pw-gpu2"
    assert ladder.instance_of(batch(alert("ModelInstanceDown", instance="10.0.1.12"))[0])[1].name == "pw-gpu2"
    # node_exporter's port, a DR host, no instance label: not an instance of the primary's serving
    assert ladder.instance_of(batch(alert("DrtoolBackupTooOld", instance="10.0.1.11:9100"))[0]) is None
    assert ladder.instance_of(batch(alert("ModelInstanceDown", instance="10.0.2.21:8080"))[0]) is None
    assert ladder.instance_of(batch(alert("ModelPrimaryDown", instance=None))[0]) is None


def test_hot_gpu_drains_without_restart_and_resolved_undrains(tmp_path):
    _, ladder, _, fakes, clock = setup(tmp_path)
    out = ladder.handle(batch(alert("ModelGpuTemperatureHigh", summary="GPU 0 of pw-gpu1 is above 85 °C")))
    assert fakes.calls == [("drain", "pw-gpu1")]
    drain = next(d for d in out if d["action"] == "ladder_drain")
    assert "ModelGpuTemperatureHigh: GPU 0 of pw-gpu1 is above 85 °C" in drain["why"]
    assert "pw-gpu2" in drain["why"]   # the one that keeps serving
    clock.now += 60   # still hot: already drained, nothing more
    ladder.handle(batch(alert("ModelGpuTemperatureHigh")))
    assert fakes.calls == [("drain", "pw-gpu1")]
    clock.now += 60
    out = ladder.handle(batch(alert("ModelGpuTemperatureHigh", status="resolved"), status="resolved"))
    assert fakes.calls == [("drain", "pw-gpu1"), ("undrain", "pw-gpu1")]
    assert [d["action"] for d in out] == ["resolved", "ladder_undrain"]
    clock.now += 60   # healthy and undrained: nothing to do
    ladder.handle(batch(alert("ModelGpuMemoryHigh", fingerprint="0b2", status="resolved"), status="resolved"))
    assert len(fakes.calls) == 2


def test_a_failed_drain_is_not_recorded_as_drained_and_is_tried_again(tmp_path):
    _, ladder, _, fakes, clock = setup(tmp_path)
    fakes.fail.add("drain")
    out = ladder.handle(batch(alert("ModelGpuMemoryHigh")))
    assert next(d for d in out if d["action"] == "ladder_drain")["outcome"] == "failed"
    fakes.fail.clear()
    clock.now += 30
    ladder.handle(batch(alert("ModelGpuMemoryHigh")))
    assert fakes.of("drain") == ["pw-gpu1", "pw-gpu1"]


def test_both_instances_down_restart_off_one_failover_to_the_book(tmp_path):
    _, ladder, book, fakes, clock = setup(tmp_path, restart="off")
    both = [alert("ModelInstanceDown", instance="10.0.1.11:8080", fingerprint="0a1"),
            alert("ModelInstanceDown", instance="10.0.1.12:8080", fingerprint="0a2")]
    out = ladder.handle(batch(*both))
    assert fakes.calls == []   # restart off, and draining either would leave the site with nothing
    assert len(fakes.launched) == 1 and fakes.launched[0][0] == "dr-east"
    failover = next(d for d in out if d["action"] == "ladder_failover")
    assert failover["instance"] is None and failover["decisions"][0]["action"] == STARTED
    for _ in range(5):   # Alertmanager keeps re-sending: still one outage to the book
        clock.now += 60
        ladder.handle(batch(*both))
    assert len(fakes.launched) == 1 and fakes.calls == []
    assert len(book.load()["decisions"]) == 1


def test_one_instance_down_alert_per_batch_still_sees_the_other(tmp_path):
    """Alertmanager may send each instance's alert in its own batch: the ladder remembers what still fires."""
    _, ladder, _, fakes, _ = setup(tmp_path, restart="off")
    ladder.handle(batch(alert("ModelInstanceDown", instance="10.0.1.11:8080", fingerprint="0a1")))
    assert fakes.of("drain") == ["pw-gpu1"] and fakes.launched == []
    ladder.handle(batch(alert("ModelInstanceDown", instance="10.0.1.12:8080", fingerprint="0a2")))
    assert fakes.of("drain") == ["pw-gpu1"]   # never the last one
    assert len(fakes.launched) == 1


def test_unreachable_hosts_are_not_restarted_and_the_site_fails_over(tmp_path):
    _, ladder, _, fakes, _ = setup(tmp_path, unreachable=("pw-gpu1", "pw-gpu2"))
    ladder.handle(batch(alert("ModelInstanceDown", instance="pw-gpu1", fingerprint="0a1"),
                        alert("ModelInstanceDown", instance="pw-gpu2", fingerprint="0a2")))
    assert fakes.calls == [] and len(fakes.launched) == 1


def test_latency_and_error_rate_are_recorded_but_never_acted_on(tmp_path):
    _, ladder, book, fakes, _ = setup(tmp_path)
    out = ladder.handle(batch(alert("ModelLatencyP95High"), alert("ModelErrorRateHigh", fingerprint="0c3")))
    assert [d["action"] for d in out if d["alert"] != "ladder"] == ["ignored", "ignored"]
    assert fakes.calls == [] and fakes.launched == [] and book.load()["decisions"] == {}


def test_threads_restart_once(tmp_path):
    _, ladder, _, fakes, _ = setup(tmp_path)
    threads = [threading.Thread(target=ladder.handle, args=(batch(alert("ModelInstanceDown")),)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert fakes.of("restart") == ["pw-gpu1"]


def test_receiver_sends_site_alerts_to_the_book_and_instance_alerts_up_the_ladder(tmp_path):
    _, ladder, book, fakes, _ = setup(tmp_path)
    srv = ReceiverServer(("127.0.0.1", 0), book, TOKEN, ladder=ladder)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}/alerts"

    def post(*alerts):
        doc = {"version": "4", "status": "firing", "alerts": list(alerts)}
        r = requests.post(url, data=json.dumps(doc), headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        assert r.status_code == 200
        return r.json()["decisions"]

    try:
        out = post(alert("ModelInstanceDown", instance="10.0.1.12:8080"))
        assert fakes.of("restart") == ["pw-gpu2"] and fakes.launched == []
        assert book.load()["decisions"] == {}
        # The site-level alert (no instance label) takes the path it always took: straight to the book.
        out = post(alert("ModelPrimaryDown", instance=None, fingerprint="ff01"))
        assert [d["action"] for d in out] == [STARTED] and out[0]["alert"] == "ModelPrimaryDown"
        assert len(fakes.launched) == 1 and "ModelPrimaryDown" in fakes.launched[0][2]
        assert fakes.of("restart") == ["pw-gpu2"]
        # An alert about an instance drtool does not know never reaches the book: no site fails over for it.
        out = post(alert("ModelGpuTemperatureHigh", instance="10.9.9.9:8080", fingerprint="ff02"))
        assert [d["action"] for d in out] == ["ignored"] and "10.9.9.9:8080" in out[0]["why"]
        assert len(fakes.launched) == 1 and fakes.of("drain") == []
    finally:
        srv.shutdown()
        srv.server_close()


def test_restart_counts_survive_a_restarted_serve(tmp_path):
    """The ladder's state (restart times, drains) is saved per site and read back: a restarted `drtool serve` does
    not get a fresh allowance of restarts for an instance it already restarted."""
    cfg, ladder, book, fakes, clock = setup(tmp_path)
    ladder.handle(batch(alert("ModelInstanceDown")))
    assert fakes.of("restart") == ["pw-gpu1"]
    saved = json.loads((tmp_path / "state" / "ladder" / "prod-west.state.json").read_text())
    assert len(saved["ladder"]["instances"]["pw-gpu1"]["restarts"]) == 1
    clock.now += 121
    again = AlertLadder(cfg, book, Path(cfg.alerts.state_dir) / "ladder", fakes.remedies(), clock=clock)
    again.handle(batch(alert("ModelInstanceDown")))
    assert fakes.of("restart") == ["pw-gpu1", "pw-gpu1"]   # the second of two
    clock.now += 121
    again.handle(batch(alert("ModelInstanceDown")))
    assert fakes.of("restart") == ["pw-gpu1", "pw-gpu1"] and fakes.of("drain") == ["pw-gpu1"]


def test_a_queued_site_failover_is_cancelled_when_the_site_serves_again(tmp_path):
    """alerts.policy approve: both instances down, the ladder's failover rung queues a failover for approval; the
    instance alerts resolve, the site serves again, and the queued failover is cancelled (an approval now would move
    a serving site)."""
    (tmp_path / "token").write_text(TOKEN + "\n")
    path = tmp_path / "drtool.yaml"
    path.write_text(CONFIG.format(tmp=tmp_path, restart="off").replace("policy: auto\n", "policy: approve\n", 1))
    cfg = load_config(path)
    fakes, clock = Fakes(), Clock()
    book = DecisionBook(cfg, Path(cfg.alerts.state_dir), fakes.launch, clock=clock)
    ladder = AlertLadder(cfg, book, Path(cfg.alerts.state_dir) / "ladder", fakes.remedies(), clock=clock)
    both = [alert("ModelInstanceDown", instance="10.0.1.11:8080", fingerprint="0a1"),
            alert("ModelInstanceDown", instance="10.0.1.12:8080", fingerprint="0a2")]
    out = ladder.handle(batch(*both))
    queued = next(d for d in out if d["action"] == "ladder_failover")["decisions"][0]
    assert queued["action"] == "awaiting_approval"
    clock.now += 60
    out = ladder.handle(batch(*[{**a, "status": "resolved"} for a in both], status="resolved"))
    assert any(d["action"] == "cancelled" for d in out), out
    (rec,) = [r for r in book.load()["decisions"].values() if r.get("run_id") == queued["run_id"]]
    assert rec["action"] == "cancelled" and "cancelled_at" in rec and fakes.launched == []
