"""Where each lab file lives under the state directory (one place, so every module agrees)."""

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_STATE_DIR = "/var/lib/drtool-lab"


def default_state_dir() -> Path:
    return Path(os.environ.get("DRTOOL_LAB_DIR", DEFAULT_STATE_DIR))


@dataclass(frozen=True)
class Layout:
    root: Path

    # bookkeeping
    @property
    def marker(self) -> Path:          # proves a directory is a lab state dir before purge deletes it
        return self.root / ".drtool-lab"

    @property
    def state_json(self) -> Path:
        return self.root / "state.json"

    @property
    def config(self) -> Path:
        return self.root / "drtool.yaml"

    @property
    def fleet_config(self) -> Path:
        """The lab's configuration with six services and GPU slots on the standbys."""
        return self.root / "drtool-fleet.yaml"

    def log(self, part: str) -> Path:
        return self.root / "logs" / f"{part}.log"

    def pidfile(self, part: str) -> Path:
        return self.root / "pids" / f"{part}.pid"

    # PKI
    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def ca_crt(self) -> Path:
        return self.pki / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.pki / "ca.key"

    def server_crt(self, address: str) -> Path:
        return self.pki / "servers" / f"{address}.crt"

    def server_key(self, address: str) -> Path:
        return self.pki / "servers" / f"{address}.key"

    @property
    def certs_d(self) -> Path:         # bound onto /etc/docker/certs.d inside each engine
        return self.pki / "certs.d"

    # SSH
    @property
    def ssh_key(self) -> Path:
        return self.root / "ssh" / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.root / "ssh" / "known_hosts"

    @property
    def authorized_keys(self) -> Path:
        return self.root / "ssh" / "authorized_keys"

    # DNS
    @property
    def dns(self) -> Path:
        return self.root / "dns"

    @property
    def tsig_key(self) -> Path:
        return self.dns / "tsig.key"

    @property
    def named_conf(self) -> Path:
        return self.dns / "named.conf"

    @property
    def dns_work(self) -> Path:        # named's working directory: the zone file and its journal
        return self.dns / "work"

    # name service seen by every lab daemon (bound over /etc/hosts and /etc/resolv.conf)
    @property
    def etc_hosts(self) -> Path:
        return self.root / "net" / "hosts"

    @property
    def resolv_conf(self) -> Path:
        return self.root / "net" / "resolv.conf"

    # S3
    @property
    def s3_secrets(self) -> Path:
        return self.root / "s3" / "keys"

    def s3_credentials(self, site: str) -> Path:
        """The site's own S3 key pair (AWS shared-credentials format, [default]): each site's store knows only its
        own, so one site's key cannot touch the other site's snapshots."""
        return self.s3_secrets / f"{site}.credentials"

    # registries
    def registry_dir(self, site: str) -> Path:
        return self.root / "registry" / site

    def s3_dir(self, site: str) -> Path:
        """A site's SeaweedFS S3 server: its identities file, data/ and logs/."""
        return self.root / "s3" / site

    # serving hosts
    def host_dir(self, host: str) -> Path:
        return self.root / "hosts" / host

    def host_srv(self, host: str) -> Path:
        return self.host_dir(host) / "srv"

    def host_run(self, host: str) -> Path:
        return self.host_dir(host) / "run"

    def docker_socket(self, host: str) -> Path:
        return self.host_run(host) / "docker.sock"

    def host_key(self, host: str) -> Path:
        return self.host_dir(host) / "ssh_host_ed25519_key"
