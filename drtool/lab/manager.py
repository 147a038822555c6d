"""The Lab: brings the embedded two-site lab up, reports on it, powers hosts, cuts links, tears it down."""

import contextlib
import fcntl
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from drtool.errors import BusyError, LabError, UsageError
from drtool.fsutil import write_atomic
from drtool.lab import netns, pki, procs, services
from drtool.lab.cmd import check_binaries, check_python_modules
from drtool.lab.layout import Layout, default_state_dir
from drtool.lab.status import PartStatus, collect
from drtool.lab.topology import (
    DNS,
    DNS_PORT,
    FLEET_SERVICES,
    FLEET_STANDBY_GPUS,
    HOSTS,
    MODEL_RECORD,
    MODEL_TTL,
    NAMESPACES,
    NS_PREFIX,
    PROXIES,
    S3_REGION,
    SERVING_HOSTS,
    SERVING_PORT,
    SITES,
    ZONE,
    Namespace,
    host_spec,
    namespace_for,
)

Progress = Callable[[str], None]
LOCK_WAIT = 120.0
LOCK_FILE = Path("/run/lock/drtool-lab.lock")


def _require_root() -> None:
    if os.geteuid() != 0:
        raise UsageError("the embedded lab needs root (network namespaces, sshd, dockerd, BIND)",
                         hint="run as root, e.g. `sudo drtool lab up`")


class Lab:
    """The embedded lab on this machine. Every method is safe to repeat."""

    def __init__(self, state_dir: Path | None = None):
        self.state_dir = Path(os.path.abspath(state_dir if state_dir is not None else default_state_dir()))
        self.layout = Layout(self.state_dir)
        self.config_path = self.layout.config

    # --- public API --------------------------------------------------------------------------------

    def up(self, progress: Progress | None = None) -> list[PartStatus]:
        """Bring every part up, or repair what is missing; hosts recorded off stay off."""
        _require_root()
        check_binaries()
        check_python_modules()
        say = _timed(progress)
        with self._locked():
            self._check_state_dir_safe()
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self.state_dir.chmod(0o755)
            self.layout.marker.touch()
            pki.ensure_all(self.layout)
            say("keys and certificates ready")

            state = self._load_state()
            netns.ensure_bridge()
            for n in NAMESPACES:
                if netns.ensure_namespace(n, link_up=self._link_wanted(state, n)):
                    say(f"namespace {n.ns} ({n.address}) created or repaired")
            say("network ready")

            services.ensure_mount_points()
            services.write_name_service(self.layout)
            on = [h for h in HOSTS.values() if self._powered(state, h.name)]
            first = [services.dns_daemon(self.layout)]
            for site in SITES.values():
                first += [services.registry_daemon(self.layout, site), services.s3_daemon(self.layout, site)]
            first += [services.dockerd_daemon(self.layout, h) for h in on]
            self._ensure(state, first, say)
            # sshd last: once a host answers SSH, its engine is already serving
            self._ensure(state, [services.sshd_daemon(self.layout, h) for h in on], say)
            for site in SITES.values():
                if self._link_wanted(state, site.services):
                    services.ensure_bucket(self.layout, site)
            say("daemons answer, buckets present")

            self._save_state(state)
            self._write_config()
        return self.status()

    def status(self) -> list[PartStatus]:
        """A real probe of every part; read-only; all parts down when the lab is not up."""
        _require_root()
        state = self._load_state()
        return collect(self.layout, lambda h: self._powered(state, h))

    def down(self, purge: bool = False) -> None:
        """Stop everything (containers first), delete namespaces, veths and the bridge; purge deletes state."""
        _require_root()
        with self._locked():
            hosts = list(HOSTS.values())
            with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
                list(pool.map(lambda h: services.stop_engine(self.layout, h), hosts))
            victims = set(procs.tagged_pids(None)) | set(procs.tagged_pids(self.layout))
            for pid in list(victims):     # in a namespace deleted underneath the lab: take its companions
                victims.update(procs.same_netns(pid))
            for ns in netns.list_namespaces(NS_PREFIX):
                victims.update(netns.pids(ns))
            left = procs.stop(victims, grace=5.0)
            procs.wait_reaped(victims)
            for ns in netns.list_namespaces(NS_PREFIX):
                netns.delete_namespace(ns)
            veths = netns.wait_links_gone()
            netns.delete_bridge()
            netns.remove_forwarding()
            netns.remove_isolation()
            netns.release_netns_dir()
            self._unmount_leftovers()
            for p in ("/run/drtool", "/run/docker", "/run/containerd"):
                with contextlib.suppress(OSError):
                    os.rmdir(p)           # only when empty: the mount points made by up()
            if self.state_dir.is_dir():
                self._reset_runtime_state()
            problems = []
            if left:
                problems.append(f"processes that would not die: {sorted(left)}")
            if veths:
                problems.append(f"veths left: {veths}")
            if netns.list_namespaces(NS_PREFIX):
                problems.append(f"namespaces left: {netns.list_namespaces(NS_PREFIX)}")
            if netns.bridge_exists():
                problems.append("bridge drlab0 left")
            if problems:
                raise LabError("the lab did not go down cleanly: " + "; ".join(problems),
                               hint="run `drtool lab down` again; see `ps`, `ip netns list`, `ip link`")
            if purge:
                self._purge()

    def power_on(self, host: str, timeout: float = 60) -> None:
        """Start the host's dockerd, then its sshd; return once SSH and the engine answer."""
        _require_root()
        spec = host_spec(host)
        with self._locked():
            state = self._load_state()
            if not netns.bridge_exists() or not self.layout.ca_crt.exists():
                raise LabError(f"cannot power on {host}: the lab is not up", hint="run `drtool lab up` first")
            netns.ensure_namespace(spec.netns, link_up=self._link_wanted(state, spec.netns))
            services.ensure_mount_points()
            services.write_name_service(self.layout)
            deadline = time.monotonic() + timeout
            engine, sshd = services.dockerd_daemon(self.layout, spec), services.sshd_daemon(self.layout, spec)
            try:
                engine.timeout = timeout
                self._ensure(state, [engine], _timed(None))
                sshd.timeout = max(5.0, deadline - time.monotonic())
                self._ensure(state, [sshd], _timed(None))
            except LabError:
                self._stop_host(spec)       # no half-powered host: it stays off
                raise
            state["power"][host] = "on"
            self._save_state(state)

    def power_off(self, host: str) -> None:
        """Stop the host's containers, dockerd, sshd and every other process in its namespace."""
        _require_root()
        spec = host_spec(host)
        with self._locked():
            state = self._load_state()
            self._stop_host(spec)
            state["power"][host] = "off"
            self._save_state(state)

    def is_powered(self, host: str) -> bool:
        host_spec(host)
        return self._powered(self._load_state(), host)

    def set_link(self, host_or_ns: str, up: bool) -> None:
        """Partition (up=False) or reconnect a host or namespace by setting its root-side veth down/up."""
        _require_root()
        n = namespace_for(host_or_ns)
        with self._locked():
            state = self._load_state()
            netns.set_link(n, up)
            state["links"][n.short] = "up" if up else "down"
            self._save_state(state)

    def break_engine(self, host: str, broken: bool = True) -> None:
        """Fault injection: the host's Docker engine will (or will again) start at its next power-on."""
        host_spec(host)
        marker = self.layout.host_dir(host) / services.ENGINE_FAULT
        if broken:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
        else:
            marker.unlink(missing_ok=True)

    def engine_url(self, host: str) -> str:
        host_spec(host)
        return f"unix://{self.layout.docker_socket(host)}"

    # --- internals ---------------------------------------------------------------------------------

    def _ensure(self, state: dict, daemons: list[services.Daemon], say: Progress) -> None:
        for d in daemons:
            n = next(n for n in NAMESPACES if n.ns == d.ns)
            if not self._link_wanted(state, n):
                # Partitioned on purpose: cannot probe it from here; a live process has to do.
                d.ready = lambda: True
        services.ensure(self.layout, daemons, say)

    def _stop_host(self, spec) -> None:
        services.stop_engine(self.layout, spec)
        victims = set(netns.pids(spec.ns))
        for part, token in ((f"dockerd-{spec.name}", "dockerd"), (f"sshd-{spec.name}", "sshd")):
            pid = procs.find(self.layout, part, token)
            if pid:                       # also a stale one whose namespace was deleted underneath it
                victims.update(procs.same_netns(pid) or [pid])
        left = procs.stop(victims, grace=5.0)
        self.layout.docker_socket(spec.name).unlink(missing_ok=True)
        if left:
            raise LabError(f"could not stop every process of {spec.name}: {sorted(left)}",
                           hint="see `ip netns pids " + spec.ns + "`")

    @staticmethod
    def _powered(state: dict, host: str) -> bool:
        rec = state["power"].get(host)
        return HOSTS[host].powered_at_start if rec is None else rec == "on"

    @staticmethod
    def _link_wanted(state: dict, n: Namespace) -> bool:
        return state["links"].get(n.short, "up") == "up"

    def _load_state(self) -> dict:
        try:
            data = json.loads(self.layout.state_json.read_text())
        except (OSError, ValueError):
            data = {}
        return {"version": 1, "power": dict(data.get("power") or {}), "links": dict(data.get("links") or {})}

    def _save_state(self, state: dict) -> None:
        write_atomic(self.layout.state_json, json.dumps(state, indent=2, sort_keys=True) + "\n", 0o644)

    def _reset_runtime_state(self) -> None:
        """After down, the next up starts the canonical lab: primary on, standbys off, links up,
        the DNS zone as generated. Keys, certs, images and registry storage are kept."""
        self._save_state({"version": 1, "power": {}, "links": {}})
        for h in HOSTS:  # faults are undone with the lab
            (self.layout.host_dir(h) / services.ENGINE_FAULT).unlink(missing_ok=True)
        # The generated config names addresses that exist only while the lab is up; with the lab down,
        # drtool must not find it and send traffic to them (they route off the machine).
        self.config_path.unlink(missing_ok=True)
        self.layout.fleet_config.unlink(missing_ok=True)
        services.reset_zone(self.layout)
        for p in (self.state_dir / "pids").glob("*.pid"):
            p.unlink(missing_ok=True)
        for h in HOSTS:
            self.layout.docker_socket(h).unlink(missing_ok=True)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # One lock for the machine, not per state dir: namespaces, veths and the bridge are global.
        LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + LOCK_WAIT
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise BusyError(f"another lab operation holds {LOCK_FILE}",
                                        hint="wait for it to finish") from None
                    time.sleep(0.2)
            yield
        finally:
            os.close(fd)

    def _check_state_dir_safe(self) -> None:
        # sshd (StrictModes) rejects authorized_keys below a directory others may write to.
        for d in [self.state_dir, *self.state_dir.parents]:
            if d.exists():
                st = d.stat()
                if st.st_uid != 0 or st.st_mode & 0o022:
                    raise LabError(f"the lab state dir {self.state_dir} lies under {d}, which is not "
                                   "root-owned or is writable by others; sshd would refuse its keys",
                                   hint="set DRTOOL_LAB_DIR to a path under a root-owned directory, "
                                        "e.g. /var/lib/drtool-lab")

    def _unmount_leftovers(self) -> None:
        """The lab mounts only inside private mount namespaces, which die with their processes; this
        clears anything a crash could still have left in the machine's own namespace."""
        root = str(self.state_dir)
        for mp in sorted(netns.mount_points(), key=len, reverse=True):
            if mp == root or mp.startswith(root + "/"):
                from drtool.lab.cmd import run
                run(["umount", "-l", mp], check=False)

    def _purge(self) -> None:
        if not self.state_dir.exists():
            return
        if not self.layout.marker.exists():
            raise LabError(f"refusing to delete {self.state_dir}: it is not a drtool lab state dir",
                           hint=f"it has no {self.layout.marker.name} marker")
        shutil.rmtree(self.state_dir)

    def _write_config(self) -> None:
        L, q = self.layout, _yaml_scalar
        ca, tsig = q(L.ca_crt), q(L.tsig_key)
        dns = (f"{{provider: rfc2136, server: {DNS.address}, port: {DNS_PORT}, zone: {ZONE}, "
               f"record: {MODEL_RECORD}.{ZONE}, ttl: {MODEL_TTL}, prepare_ttl: {MODEL_TTL}, tsig_key_file: {tsig}}}")
        pw, de = SITES["prod-west"], SITES["dr-east"]

        def site_tail(site) -> str:
            # No GPU here: the lab's servers carry the limits and the drill's GPU fault hook (docs/model-server.md)
            gpu = (", gpu_memory_limit_pct: 95, gpu_temperature_limit_c: 85, gpu_fault_dir: /srv/drtool/gpu-fault"
                   if site.role == "primary" else "")
            return (f"    docker_host: unix:///run/drtool/docker.sock\n"
                    f"    container_registry: {{url: \"{site.registry}\", ca_file: {ca}}}\n"
                    f"    object_stores:\n"
                    f"      - {{url: \"s3://{site.bucket}/drtool\", endpoint_url: \"{site.s3_endpoint}\", "
                    f"region: {S3_REGION}, credentials_file: {q(L.s3_credentials(site.name))}}}\n"
                    f"    dns: {dns}\n"
                    f"    serving: {{port: {SERVING_PORT}, health_path: /readyz{gpu}}}\n")

        pw_hosts = "".join(f"      - {{name: {h.name}, address: {h.address}}}\n"
                           for h in SERVING_HOSTS.values() if h.site == pw.name)
        de_hosts = "".join(f"        - {{name: {h.name}, address: {h.address}}}\n"
                           for h in SERVING_HOSTS.values() if h.site == de.name)
        lb = PROXIES[pw.name]
        text = (
            "# Generated by `drtool lab up`. Describes the embedded lab; do not edit.\n"
            "version: 1\n"
            "ssh:\n"
            "  user: root\n"
            f"  private_key_file: {q(L.ssh_key)}\n"
            f"  known_hosts_file: {q(L.known_hosts)}\n"
            f"  python_interpreter: {q(sys.executable)}\n"
            "tls:\n"
            f"  ca_file: {ca}\n"
            "sites:\n"
            f"  {pw.name}:\n"
            f"    role: {pw.role}\n"
            "    gpu: false\n"
            "    hosts:\n"
            f"{pw_hosts}"
            f"    proxy: {{name: {lb.name}, address: {lb.address}, dir: /srv/drtool/serving-proxy}}\n"
            f"{site_tail(pw)}"
            f"  {de.name}:\n"
            f"    role: {de.role}\n"
            "    gpu: false\n"
            "    standby_pool:\n"
            "      provider: lab\n"
            "      hosts:\n"
            f"{de_hosts}"
            f"{site_tail(de)}"
            "models:\n"
            "  asr-demo:\n"
            "    weights_path: /srv/models/asr-demo\n"
            "    image: asr-demo-server\n"
            "drill:\n"
            "  rto_target_s: 240      # fault to served through the record, image pull included\n"
            "  rpo_target_s: 93600    # 26 h: the nightly snapshot plus slack\n"
            "  detection_for_s: 4\n"
            "  scrape_interval_s: 1\n"
            "  load: {requests: 200, concurrency: 4, slo: {p95_ms: 2000, error_rate: 0.01, min_rps: 3}}\n"
            "build:\n"
            f"  docker_host: {q('unix://' + str(L.docker_socket('pw-gpu1')))}\n"
            "lab:\n"
            f"  state_dir: {q(self.state_dir)}\n"
        )
        write_atomic(self.config_path, text, 0o644)
        self._write_fleet_config(text)

    def _write_fleet_config(self, base: str) -> None:
        """drtool-fleet.yaml: the same lab with six services on prod-west (the demo model under six names, each its
        own record and port on pw-gpu1; asr is production's own), GPU slots on the four dr-east standbys, and
        failover.parallel 6.
        `make drill` and the single-service tests keep using drtool.yaml; the fleet tests and bench use this."""
        import yaml

        doc = yaml.safe_load(base)
        for h in doc["sites"]["dr-east"]["standby_pool"]["hosts"]:
            h["gpus"] = FLEET_STANDBY_GPUS[h["name"]]
        asr = doc["models"]["asr-demo"]
        for svc in FLEET_SERVICES:
            doc["models"].setdefault(svc.model, {"weights_path": f"/srv/models/{svc.model}", "image": asr["image"]})
        doc.setdefault("failover", {})["parallel"] = len(FLEET_SERVICES)   # six GPU slots: all in one wave
        doc["services"] = {svc.name: {"model": svc.model, "site": "prod-west", "record": svc.record,
                                      "port": svc.port, "priority": svc.priority} for svc in FLEET_SERVICES}
        text = ("# Generated by `drtool lab up`: the lab with six services; do not edit.\n"
                + yaml.safe_dump(doc, sort_keys=False))
        write_atomic(self.layout.fleet_config, text, 0o644)


_PLAIN = re.compile(r"[A-Za-z0-9_./@+-]+")


def _yaml_scalar(value: Path | str) -> str:
    """A path as a YAML scalar: plain when that is unambiguous, else double-quoted (JSON is valid YAML)."""
    s = str(value)
    return s if _PLAIN.fullmatch(s) and not s.startswith(("-", "@")) else json.dumps(s)


def _timed(progress: Progress | None) -> Progress:
    t0 = time.monotonic()

    def say(msg: str) -> None:
        if progress:
            progress(f"{msg} ({time.monotonic() - t0:.1f}s)")

    return say
