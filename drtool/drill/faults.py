"""The faults drills inject, each with its undo. Host faults go through the lab (power, network link, a Docker
engine that will not start, registry storage); store faults through the standard store API, so they work on any
S3. Every inject records what it changed so that undo puts exactly that back."""

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from drtool.config import Config, Site
from drtool.errors import UsageError
from drtool.fsutil import write_atomic
from drtool.snapshot import catalog
from drtool.snapshot.stores import blob_key, open_store


def lab_for(config: Config, scenario: str):
    if not config.lab_state_dir:
        raise UsageError(f"scenario {scenario} injects its fault through the embedded lab, and this configuration "
                         "has no lab section", hint="run drills with faults on the lab (`make drill`), or "
                                                    "corrupt-latest-snapshot, which works on any store")
    from drtool.lab.manager import Lab

    return Lab(Path(config.lab_state_dir))


@dataclass
class Fault:
    name: str
    description: str = ""
    undo_actions: list = field(default_factory=list)  # (label, callable), undone in reverse order
    info: dict = field(default_factory=dict)

    def undo(self) -> list[dict]:
        done = []
        for label, fn in reversed(self.undo_actions):
            try:
                fn()
                done.append({"action": label, "ok": True, "detail": "done"})
            except Exception as exc:  # noqa: BLE001 - cleanup records every failure and goes on
                done.append({"action": label, "ok": False, "detail": f"{type(exc).__name__}: {exc}"})
        self.undo_actions.clear()
        return done


def primary_down(config: Config, primary: Site) -> Fault:
    """Every serving host of the primary site goes down (with one left, its Nginx would keep the site serving:
    that is the in-site ladder's case, not a failover's)."""
    lab = lab_for(config, "primary-down")
    names = ", ".join(h.name for h in primary.hosts)
    fault = Fault("primary-down", f"powered off {names} (every serving host of {primary.name})")
    for host in primary.hosts:
        fault.undo_actions.append((f"power on {host.name}", lambda h=host: lab.power_on(h.name)))
        lab.power_off(host.name)
    return fault


def region_partition(config: Config, primary: Site) -> Fault:
    lab = lab_for(config, "region-partition")
    fault = Fault("region-partition", "cut the network link of " + ", ".join(h.name for h in primary.hosts))
    for host in primary.hosts:
        fault.undo_actions.append((f"restore the link of {host.name}", lambda h=host: lab.set_link(h.name, True)))
        lab.set_link(host.name, False)
    return fault


def standby_boot_failure(config: Config, dr: Site) -> Fault:
    lab = lab_for(config, "standby-boot-failure")
    first = dr.hosts[0]
    if len(dr.hosts) < 2:
        raise UsageError(f"standby-boot-failure needs two standbys at {dr.name}; its pool has one")
    fault = Fault("standby-boot-failure", f"{first.name}'s Docker engine will not start")
    fault.undo_actions.append((f"repair {first.name}'s engine", lambda: lab.break_engine(first.name, False)))
    lab.break_engine(first.name, True)
    return fault


def corrupt_latest_snapshot(config: Config, dr: Site, model: str, version: str) -> Fault:
    """Flip one byte of a blob of the newest snapshot of `version` in the DR store, preferring a blob no other
    snapshot of that version shares (so an older snapshot can still verify)."""
    store = open_store(dr.object_stores[0])
    loaded = [(r, m) for r, m, _ in catalog.load_many(store, catalog.list_refs(store, model))
              if m is not None and m.version == version]
    if not loaded:
        store.close()
        raise UsageError(f"no snapshot of {model} {version} in {dr.object_stores[0].url} to damage")
    loaded.sort(key=lambda rm: rm[1].created, reverse=True)
    newest_ref, newest = loaded[0]
    others = {p.sha256 for _, m in loaded[1:] for f in m.files for p in f.parts}
    parts = [p for f in newest.files for p in f.parts]
    unique = [p for p in parts if p.sha256 not in others]
    victim = min(unique or parts, key=lambda p: p.size)
    key = blob_key(victim.sha256)
    good = store.get(key)
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0x01
    fault = Fault("corrupt-latest-snapshot",
                  f"flipped a byte of blob {victim.sha256[:12]} of snapshot {newest_ref.id[:12]} ({newest.created}) "
                  f"in {dr.object_stores[0].url}" + ("" if unique else " (a blob every snapshot shares)"))
    fault.info.update(newest=newest_ref.id, shared=not unique)

    def undo():
        store.put(key, good)
        store.close()

    fault.undo_actions.append((f"restore blob {victim.sha256[:12]}", undo))
    store.put(key, bytes(bad))
    return fault


def registry_mismatch(config: Config, dr: Site, repository: str) -> Fault:
    """The DR registry loses the production image: its repository is moved aside in the registry's storage
    (the registry reads manifests from disk on each request), and moved back by undo."""
    lab = lab_for(config, "registry-mismatch")
    repos = lab.layout.registry_dir(dr.name) / "storage" / "docker" / "registry" / "v2" / "repositories"
    src, aside = repos / repository, repos.parent / f"drill-hidden-{repository.replace('/', '_')}"
    if not src.is_dir():
        raise UsageError(f"the DR registry has no repository {repository} to hide ({src})")
    fault = Fault("registry-mismatch", f"moved repository {repository} out of {dr.name}'s registry")
    fault.undo_actions.append((f"put {repository} back into {dr.name}'s registry", lambda: os.rename(aside, src)))
    os.rename(src, aside)
    return fault


def process_crash(config: Config, primary: Site, container: str) -> Fault:
    """The primary's serving container stops and its engine leaves it stopped (a crash that the restart policy
    does not cover): only the escalation ladder's restart brings it back."""
    import docker.errors

    from drtool.execute.docker import engine

    lab = lab_for(config, "process-crash")
    host = primary.hosts[0]
    url = f"unix://{lab.layout.docker_socket(host.name)}"
    fault = Fault("process-crash", f"stopped {host.name}'s serving container {container} (the engine leaves it)")

    def start_again() -> None:
        client = engine(url, timeout=60)
        try:
            c = client.containers.get(container)
            if c.status != "running":
                c.start()
        finally:
            client.close()

    client = engine(url, timeout=60)
    try:
        c = client.containers.get(container)
        fault.undo_actions.append((f"start {container} on {host.name} if still stopped", start_again))
        c.stop(timeout=5)
    except docker.errors.DockerException as exc:
        raise UsageError(f"process-crash: cannot stop {container} on {host.name}: {exc}") from None
    finally:
        client.close()
    return fault


GPU_FAULT_FILE = "gpu-fault.json"   # the model_server role mounts serving.gpu_fault_dir; the server reads this name


def gpu_degraded(config: Config, primary: Site) -> Fault:
    """The primary upstream's GPU runs hot: the drill hook (serving.gpu_fault_dir, docs/model-server.md) makes its
    server read 95 °C, above the site's gpu_temperature_limit_c, so /readyz answers 503 "degraded" while /predict
    keeps answering. Undo deletes the file; the next reading is the real one again."""
    lab = lab_for(config, "gpu-degraded")
    serving = primary.raw.get("serving", {})
    fault_dir, limit = serving.get("gpu_fault_dir"), serving.get("gpu_temperature_limit_c")
    if not fault_dir or not limit or primary.proxy is None or len(primary.hosts) < 2:
        raise UsageError(f"gpu-degraded needs two serving hosts behind a proxy at {primary.name}, with "
                         "serving.gpu_temperature_limit_c and serving.gpu_fault_dir set",
                         hint="the lab has them (`drtool lab up`); see docs/drills.md")
    if not Path(fault_dir).is_relative_to("/srv"):
        raise UsageError(f"gpu-degraded writes the fault through the lab's /srv; serving.gpu_fault_dir is {fault_dir}")
    host = primary.hosts[0]
    path = lab.layout.host_srv(host.name) / Path(fault_dir).relative_to("/srv") / GPU_FAULT_FILE
    reading = {"device": 0, "temperature_c": float(limit) + 10, "memory_used_pct": 50}
    fault = Fault("gpu-degraded", f"{host.name}'s GPU 0 reads {reading['temperature_c']:g} °C (limit {limit:g} °C; "
                                  "the model server's GPU fault hook)")
    fault.info.update(instance=host.name, reading=reading)
    fault.undo_actions.append((f"clear {host.name}'s GPU fault", lambda: path.unlink(missing_ok=True)))
    write_atomic(path, json.dumps(reading), 0o644)   # the server never reads half a file
    return fault
