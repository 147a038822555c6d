"""A stand-in world for the recovery engine without the lab: hosts, their containers, DNS records and the plays
Ansible would run, in memory. Only the I/O edges are replaced (run_playbook, DNS, the standby provider, HTTP
checks, the registry); the engine, its journals, the lease and the saved records are the real ones, over a
file:// store. The lab tests (tests/test_failover_lab.py, tests/test_fleet_lab.py) run the same engine for real."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

from drtool.config import load_config
from drtool.errors import OperationFailed, VerificationError
from drtool.execute.ansible import PlaybookResult, TaskEvent
from drtool.execute.dns import ARecord
from drtool.snapshot.stores import lease_key

from .test_config import FLEET

SINGLE = """\
version: 1
sites:
  prod-west:
    role: primary
    hosts:
      - {{name: pw-gpu1, address: 10.0.1.11}}
    container_registry: {{url: "reg.pw"}}
    object_stores: [{{url: "file://{root}/pw"}}]
    dns: {{provider: rfc2136, record: model.example.com, server: 10.0.0.53, zone: example.com, tsig_key_file: /k}}
    serving: {{port: 8080}}
  dr-east:
    role: dr
    standby_pool:
      provider: lab
      hosts:
        - {{name: de-gpu1, address: 10.0.2.21, gpus: 4}}
        - {{name: de-gpu2, address: 10.0.2.22, gpus: 4}}
        - {{name: de-gpu3, address: 10.0.2.23, gpus: 2}}
        - {{name: de-gpu4, address: 10.0.2.24, gpus: 2}}
    container_registry: {{url: "reg.de"}}
    object_stores: [{{url: "file://{root}/de"}}]
    dns: {{provider: rfc2136, record: model.example.com, server: 10.0.0.53, zone: example.com, tsig_key_file: /k}}
    serving: {{port: 8080}}
models:
{models}
"""
FLEET_MODELS = ("asr", "llm", "embed", "rerank", "tts", "ocr")
FLEET_SERVICES = FLEET[FLEET.index("services:"):]   # the six services of tests/test_config.py's FLEET


@dataclasses.dataclass(frozen=True)
class Image:
    name: str

    def at(self, registry_url: str) -> str:
        return f"{registry_url}/{self.name}@sha256:" + "a" * 64


@dataclasses.dataclass(frozen=True)
class Entry:
    model: str
    version: str
    snapshot_id: str
    image: Image


class Crash(BaseException):
    """Stands in for the SIGKILL of drtool's fault hook: nothing after it runs, nothing is cleaned up."""


class World:
    def __init__(self, tmp_path: Path, monkeypatch, models: tuple[str, ...], services: str = ""):
        self.root = tmp_path
        for d in ("pw", "de"):
            (tmp_path / d).mkdir(parents=True, exist_ok=True)
        text = SINGLE.format(root=tmp_path, models="\n".join(f"  {m}: {{weights_path: /srv/models/{m}, image: {m}}}"
                                                             for m in models)) + services
        (tmp_path / "drtool.yaml").write_text(text)
        self.config = load_config(tmp_path / "drtool.yaml")
        monkeypatch.setenv("DRTOOL_STATE_DIR", str(tmp_path / "state"))
        self.address = {h.name: h.address for s in self.config.sites.values() for h in s.hosts}
        self.records = {s.record: ["10.0.1.11"] for s in self.config.services.values()}
        self.ttl = 60                                          # every record's TTL until one is replaced
        self.ttls: dict[str, int] = {}
        self.powered = {h: h.startswith("pw-") for h in self.address}
        self.containers: dict[tuple[str, str], dict] = {}    # (host, model) -> {"running", "snapshot", "port"}
        self.broken: dict[str, str] = {}                      # host -> why its status play fails
        self.corrupt: set[str] = set()                        # snapshot ids whose restore fails verification
        self.canary_wrong: set[str] = set()                   # hosts whose canary output is wrong
        self.plays: list[tuple[str, dict]] = []
        self.flips: list[tuple[str, list[str], float]] = []
        self.crash_after: str | None = None
        self.events: list[str] = []
        self._patch(monkeypatch)

    def leave_dead_lease(self) -> None:
        """What a SIGKILLed run leaves behind (the in-process crash released its lease on the way out): the DR
        site's failover lease, held by a process of this machine that no longer runs."""
        import subprocess

        from drtool.snapshot.lease import Lease
        from drtool.snapshot.stores import open_store

        dead = subprocess.Popen(["true"])
        dead.wait()
        store = open_store(self.config.site("dr-east").object_stores[0])
        try:
            body = json.loads(Lease(store, "failover-dr-east", "failover (killed)")._body())
            body["pid"] = dead.pid
            store.put(lease_key("failover-dr-east"), json.dumps(body).encode())
        finally:
            store.close()

    # -- the world as a client sees it ----------------------------------------------------------------------
    def serving(self, host: str, port: int) -> bool:
        if not self.powered[host]:
            return False
        return any(c["running"] and c["port"] == port for (h, _m), c in self.containers.items() if h == host)

    def serve_at_home(self) -> None:
        for spec in self.config.services.values():
            self.containers[("pw-gpu1", spec.model)] = {"running": True, "snapshot": "s-" + spec.model,
                                                        "port": spec.port}

    def host_at(self, address: str) -> str:
        return next(h for h, a in self.address.items() if a == address)

    # -- the patched edges ----------------------------------------------------------------------------------
    def _patch(self, mp) -> None:
        from drtool.actions import deploy, dnsrecord
        from drtool.recovery import engine, steps

        world = self

        class Dns:
            def __init__(self, target):
                self.target = target

            def read_a(self, record=None):
                name = record or self.target.record
                return ARecord(name, list(world.records.get(name, [])), world.ttls.get(name, world.ttl))

            def check_credentials(self):
                return None

            def replace_a(self, addresses, ttl=None, record=None):
                name = record or self.target.record
                import time

                world.flips.append((name, list(addresses), time.time()))
                world.events.append(f"flip {name}")
                world.records[name] = list(addresses)
                if ttl is not None:
                    world.ttls[name] = ttl

        class Provider:
            def power_on(self, host):
                world.powered[host.name] = True

            def power_off(self, host):
                world.powered[host.name] = False

            def state(self, host):
                return "on" if world.powered[host.name] else "off"

            def wait_ready(self, host, timeout=120):
                return 0.0

        def playbook(_config, name, raise_on_failure=True, forks=None, extravars=None, host_vars=None, **_kw):
            extravars, host_vars = extravars or {}, host_vars or {}
            targets = [t for t in extravars.get("drtool_targets", "").split(",") if t]
            world.plays.append((name, {"targets": targets, "extravars": extravars, "host_vars": host_vars}))
            res = PlaybookResult(name, "successful", 0, 0.01)
            for h in targets:
                v = {**extravars, **host_vars.get(h, {})}
                if not world.powered.get(h):
                    res.unreachable[h] = f"ssh: connect to host {h}: No route to host"
                elif h in world.broken and name == "status.yml":
                    res.failed.append(TaskEvent(name, "engine", h, "failed", 0.0, world.broken[h]))
                elif name == "restore_weights.yml" and v.get("model_weights_snapshot_id") in world.corrupt:
                    res.failed.append(TaskEvent(name, "restore", h, "failed", 0.0,
                                                "safetensors: sha256 mismatch: expected aa actual bb (exit 3)"))
                else:
                    res.results[h] = world.act(name, h, v)
            return res

        def check(site, host, entry):
            h = host.name
            c = next((c for (hh, m), c in world.containers.items() if hh == h and m == entry.model
                      and c["port"] == site.serving_port), None)
            if c is None or not c["running"] or not world.powered[h]:
                raise OperationFailed(f"{h}:{site.serving_port} does not answer")
            if c["snapshot"] != entry.snapshot_id:
                raise VerificationError(f"{h} serves {c['snapshot']}, expected {entry.snapshot_id}")
            if h in world.canary_wrong:
                raise VerificationError(f"canary output of {h} does not match the registry's")
            world.events.append(f"verified {entry.model}@{h}")
            return {"version": {"snapshot_id": c["snapshot"]}, "canary": "ok"}

        def wait(site, host, timeout=300):
            if not world.serving(host.name, site.serving_port):
                raise OperationFailed(f"{host.name}:{site.serving_port} not ready")
            return {"readyz": {"ok": True}}

        def served(url):
            addr, port = url.removeprefix("http://").split(":")
            h = world.host_at(addr) if addr in world.address.values() else None
            c = next((c for (hh, _m), c in world.containers.items() if hh == h and c["port"] == int(port)), None)
            return {"snapshot_id": c["snapshot"]} if c and c["running"] else {}

        def answers(address, port, timeout=3.0):
            h = world.host_at(address) if address in world.address.values() else None
            return f"{address}:{port} answers /readyz 200" if h and world.serving(h, port) else None

        def entry(model, version):
            return Entry(model, version, "s-" + model, Image(model))

        registry = SimpleNamespace(require_version=entry, production=lambda m: entry(m, "1.0.0"),
                                   store=SimpleNamespace(close=lambda: None))

        def crash_point(step):
            if world.crash_after == step:
                raise Crash(step)

        mp.setattr(steps, "run_playbook", playbook)
        mp.setattr(deploy, "run_playbook", playbook)
        mp.setattr(steps, "dns_for", Dns)
        mp.setattr(dnsrecord, "dns_for", Dns)
        mp.setattr(steps, "get_provider", lambda *_: Provider())
        mp.setattr(steps, "ssh_banner", lambda address, port=22, timeout=2.0: "SSH-2.0" if world.powered.get(
            world.host_at(address)) else None)
        mp.setattr(steps, "answers_ready", answers)
        mp.setattr(steps, "version", served)
        mp.setattr(deploy, "check", check)
        mp.setattr(deploy, "wait", wait)
        mp.setattr(deploy, "probe", lambda _c, host, model: {"running": bool(
            world.containers.get((host.name, model.name), {}).get("running"))})
        mp.setattr(steps, "registry_verify", lambda _c, _o, _s, model, read_data: {"models": {model: {
            "version": "1.0.0"}}})
        mp.setattr(steps, "site_registry", lambda *_: registry)
        mp.setattr(engine, "site_registry", lambda *_: registry)
        mp.setattr(engine, "crash_point", crash_point)

    def act(self, play: str, host: str, v: dict) -> dict:
        if play == "status.yml":
            return {"engine": "ok"}
        if play == "pull_image.yml":
            return {"pulled": True}
        if play == "restore_weights.yml":
            if v.get("model_weights_action") == "remove":
                return {"removed": True}
            return {"restore": {"snapshot_id": v["model_weights_snapshot_id"]}}
        model = v.get("model_server_model")
        if v.get("model_server_action") == "stop":
            if (host, model) in self.containers:
                self.containers[(host, model)]["running"] = False
                self.events.append(f"stop {model}@{host}")
            return {"stopped": True}
        snapshot = v["model_server_labels"]["io.drtool.snapshot"]
        self.containers[(host, model)] = {"running": True, "snapshot": snapshot, "port": v["model_server_port"],
                                          "vars": v}
        return {"started": True}
