"""drtool watch (and drtool serve's instance alerts) on a site with several services, without the lab: each service
probed on each of its home hosts at its own port, one ladder instance per (host, service); probes and remedies
stood in for, the real ladder, state dir and decision book."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from drtool.actions import deploy, proxy, watch
from drtool.alerts.decisions import DecisionBook
from drtool.alerts.ladder import AlertLadder
from drtool.config import load_config
from drtool.errors import UsageError
from drtool.ha.instances import decide_per_service, site_instances
from drtool.ha.ladder import InstanceHealth, LadderState
from drtool.output import Output

from .test_serve_ladder import SITES, TOKEN, Fakes, batch
from .test_serve_ladder import alert as instance_alert

CONFIG = SITES + """\
  asr-demo: {{weights_path: /srv/models/asr, image: asr}}
  tts-demo: {{weights_path: /srv/models/tts, image: asr}}
  llm-small: {{weights_path: /srv/models/llm, image: asr}}
services:
  asr: {{model: asr-demo, site: prod-west, record: model.example.com, port: 8080, priority: 0}}
  tts: {{model: tts-demo, site: prod-west, record: tts.example.com, port: 8081, priority: 10}}
  llm: {{model: llm-small, site: prod-west, record: llm.example.com, port: 8082, priority: 20}}
alerts:
  policy: {policy}
  token_file: {tmp}/token
  firing_for_s: 0
  cooldown_s: 600
  state_dir: {tmp}/state
ha:
  restart_attempts: 2
  restart_window_s: 600
  ready_timeout_s: 0
  policy: {{restart: auto, drain: auto, failover: auto}}
"""
INSTANCES = {"pw-gpu1/asr": "http://10.0.1.11:8080/readyz", "pw-gpu2/asr": "http://10.0.1.12:8080/readyz",
             "pw-gpu1/tts": "http://10.0.1.11:8081/readyz", "pw-gpu1/llm": "http://10.0.1.11:8082/readyz"}


def config(tmp_path: Path, policy="auto"):
    (tmp_path / "token").write_text(TOKEN + "\n")
    path = tmp_path / "drtool.yaml"
    path.write_text(CONFIG.format(tmp=tmp_path, policy=policy))
    return load_config(path)


class World:
    """The fakes of a watch: what each probe answers (`down`: instance -> problem), which hosts answer SSH, every
    remedy run and every failover launched."""

    def __init__(self, monkeypatch, down: dict[str, str], unreachable=()):
        self.down, self.unreachable = dict(down), set(unreachable)
        self.probed: list[dict[str, str]] = []
        self.calls: list[tuple] = []
        self.launched: list[tuple] = []
        monkeypatch.setattr(watch, "probe", self.probe)
        monkeypatch.setattr(watch, "ssh_banner", lambda address, port, timeout: None
                            if address in self.unreachable else "SSH-2.0-OpenSSH")
        monkeypatch.setattr(watch, "subprocess_launcher", lambda config, logs: self.launch)
        monkeypatch.setattr(deploy, "restart", lambda config, host, model:
                            self.calls.append(("restart", host.name, model.name)))
        monkeypatch.setattr(proxy, "drain", lambda config, site, name: self.calls.append(("drain", name)))
        monkeypatch.setattr(proxy, "undrain", lambda config, site, name: self.calls.append(("undrain", name)))

    def probe(self, targets, timeout):
        self.probed.append(dict(targets))
        return {name: self.down.get(name) for name in targets}

    def launch(self, site, run_id, reason):
        self.launched.append((site, run_id, reason))

    def watch(self, cfg, probes: int) -> dict:
        return watch.run(cfg, Output(json_mode=True), "prod-west", failures=1, interval=0.01, exit_on_trigger=False,
                         max_probes=probes)


def test_every_service_is_probed_on_its_home_hosts_at_its_own_port(tmp_path, monkeypatch):
    """The service on the site's record on both hosts (behind Nginx), the others on the first host only."""
    world = World(monkeypatch, {})
    result = world.watch(config(tmp_path), 1)
    assert world.probed == [INSTANCES]
    assert result["decisions"] == [] and world.calls == []


def test_a_crashed_service_is_restarted_alone_and_never_drained(tmp_path, monkeypatch):
    """tts's container on pw-gpu1 is down, everything else serves: only tts's container is restarted (with its own
    model), twice (the limit); then nothing more: tts is not behind the site's Nginx, so it has no drain rung, and
    the site still serves, so there is no failover. No other service is touched."""
    cfg = config(tmp_path)
    world = World(monkeypatch, {"pw-gpu1/tts": "ConnectionError"})
    result = world.watch(cfg, 4)
    assert world.calls == [("restart", "pw-gpu1", "tts-demo"), ("restart", "pw-gpu1", "tts-demo")]
    assert result["decisions"] == [] and result["drains"] == [] and world.launched == []
    ladder = result["ladder"]["instances"]
    assert set(ladder) == {"pw-gpu1/tts"} and ladder["pw-gpu1/tts"]["restarts"] == 2
    assert result["ladder"]["sites"] == {}
    state = result["ladder_state"]["instances"]
    assert set(state) == {"pw-gpu1/tts"} and state["pw-gpu1/tts"]["drained_at"] is None


def test_the_nginx_service_is_drained_by_its_host_while_its_other_host_serves(tmp_path, monkeypatch):
    """asr on pw-gpu1 stays down after its restarts: it is drained from the site's Nginx under its host's name;
    the other services on pw-gpu1 are not touched."""
    world = World(monkeypatch, {"pw-gpu1/asr": "HTTP 500"})
    result = world.watch(config(tmp_path), 3)
    assert world.calls == [("restart", "pw-gpu1", "asr-demo"), ("restart", "pw-gpu1", "asr-demo"),
                           ("drain", "pw-gpu1")]
    assert [d["instance"] for d in result["drains"]] == ["pw-gpu1/asr"] and result["decisions"] == []


def test_the_last_nginx_instance_is_not_drained_because_another_service_serves(tmp_path, monkeypatch):
    """asr is down on both hosts (degraded: no restart) while tts and llm serve: draining either asr instance would
    leave the site's record with nothing behind Nginx, so neither is drained; the site still serves (tts, llm), so
    there is no failover either."""
    world = World(monkeypatch, {"pw-gpu1/asr": "degraded: hot", "pw-gpu2/asr": "degraded: hot"})
    result = world.watch(config(tmp_path), 2)
    assert world.calls == [] and result["drains"] == [] and result["decisions"] == [] and world.launched == []


def test_all_hosts_down_is_one_site_decision_not_one_per_service(tmp_path, monkeypatch):
    """Both hosts powered off: every instance of every service is down and no host answers SSH. Nothing is
    restarted; the site's failover rung hands ONE alert to the decision book, which starts one failover, and
    later rounds of the same outage add nothing."""
    cfg = config(tmp_path)
    world = World(monkeypatch, {n: "ConnectTimeout" for n in INSTANCES}, unreachable=("10.0.1.11", "10.0.1.12"))
    result = world.watch(cfg, 4)
    assert world.calls == []
    assert [d["action"] for d in result["decisions"]] == ["started"]
    assert [site for site, _, _ in world.launched] == ["dr-east"]
    book = json.loads((Path(cfg.alerts.state_dir) / "alerts" / "decisions.json").read_text())
    assert [r["action"] for r in book["decisions"].values()] == ["started"]
    (failover,) = result["ladder"]["sites"]["prod-west"]["failovers"]
    assert failover["kind"] == "failover" and "pw-gpu1/tts (down)" in failover["reason"]


def test_restart_counts_of_a_service_survive_a_restarted_watch(tmp_path, monkeypatch):
    """A watch restarts pw-gpu1/tts once and is restarted itself; the next one reads the saved state under the
    instance's per-service name and allows only the second of two restarts."""
    cfg = config(tmp_path)
    world = World(monkeypatch, {"pw-gpu1/tts": "ConnectionError"})
    world.watch(cfg, 1)
    assert world.calls == [("restart", "pw-gpu1", "tts-demo")]
    state = json.loads((Path(cfg.alerts.state_dir) / "ladder" / "prod-west.state.json").read_text())
    assert list(state["ladder"]["instances"]) == ["pw-gpu1/tts"]
    assert len(state["ladder"]["instances"]["pw-gpu1/tts"]["restarts"]) == 1
    world.watch(cfg, 3)
    assert world.calls == [("restart", "pw-gpu1", "tts-demo")] * 2


def test_a_site_with_one_service_among_several_models_is_watched_by_its_hosts(tmp_path, monkeypatch):
    """Several models, one of them served (`services:` names only asr): its instances keep their host names, and a
    restart starts asr's container. Without `services:` every model is an implicit service on the site's one port:
    a restart could not know which container to start, so the watch refuses to start."""
    text = CONFIG.format(tmp=tmp_path, policy="auto")
    one = text.replace(text[text.index("  tts:"):text.index("alerts:")], "")
    (tmp_path / "token").write_text(TOKEN + "\n")
    (tmp_path / "drtool.yaml").write_text(one)
    world = World(monkeypatch, {"pw-gpu2": "ConnectionError"})
    world.watch(load_config(tmp_path / "drtool.yaml"), 1)
    assert world.probed == [{"pw-gpu1": "http://10.0.1.11:8080/readyz", "pw-gpu2": "http://10.0.1.12:8080/readyz"}]
    assert world.calls == [("restart", "pw-gpu2", "asr-demo")]
    (tmp_path / "drtool.yaml").write_text(text[:text.index("services:")] + text[text.index("alerts:"):])
    with pytest.raises(UsageError, match="several models on one port"):
        world.watch(load_config(tmp_path / "drtool.yaml"), 1)


def test_per_service_decisions_group_drains_by_service_and_fail_over_once(tmp_path):
    """The pure core: with both hosts down the ladder gives one failover for the site, after per-instance
    decisions; with only tts down it gives one restart and no site action."""
    cfg = config(tmp_path)
    instances = site_instances(cfg, cfg.site("prod-west"))
    down = [InstanceHealth(i.name, "prod-west", False, None, 100.0, host_reachable=False) for i in instances]
    actions = decide_per_service(LadderState(), down, instances, cfg.ha, 100.0)
    assert [a.kind for a in actions if a.instance is None] == ["failover"] and actions[-1].kind == "failover"
    assert all(a.kind == "none" for a in actions[:-1])
    one = [InstanceHealth(i.name, "prod-west", i.name != "pw-gpu1/tts", None, 100.0) for i in instances]
    actions = decide_per_service(LadderState(), one, instances, cfg.ha, 100.0)
    assert [(a.kind, a.instance) for a in actions] == [("restart", "pw-gpu1/tts")]


def test_serve_instance_alerts_name_the_service_by_port(tmp_path):
    """drtool serve: ModelInstanceDown for 10.0.1.11:8081 is tts on pw-gpu1: its container alone is restarted, and
    the site's other instances count as healthy."""
    cfg = config(tmp_path)
    fakes = Fakes()
    book = DecisionBook(cfg, Path(cfg.alerts.state_dir), fakes.launch)
    ladder = AlertLadder(cfg, book, Path(cfg.alerts.state_dir) / "ladder", fakes.remedies())
    out = ladder.handle(batch(instance_alert("ModelInstanceDown", instance="10.0.1.11:8081")))
    assert out[0]["instance"] == "pw-gpu1/tts" and out[0]["action"] == "observed"
    assert fakes.calls == [("restart", "pw-gpu1/tts")] and fakes.launched == []
    assert [r["action"] for r in out[1:]] == ["ladder_restart"]
