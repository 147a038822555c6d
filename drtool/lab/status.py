"""Probes every lab part for real (in parallel, bounded) and reports each as a PartStatus."""

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from drtool.lab import netns, pki, probes
from drtool.lab.layout import Layout
from drtool.lab.topology import (
    BRIDGE,
    BRIDGE_ADDRESS,
    DNS,
    DNS_PORT,
    HOSTS,
    MODEL_RECORD,
    NAMESPACES,
    PREFIX_LEN,
    S3_REGION,
    SITES,
    SSH_PORT,
    ZONE,
    HostSpec,
    Site,
)


@dataclass
class PartStatus:
    name: str           # "pw-gpu1", "engine@pw-gpu1", "registry@prod-west", "s3@dr-east", "dns", "network"
    kind: str           # "host" | "engine" | "registry" | "s3" | "dns" | "network"
    site: str | None    # "prod-west" | "dr-east" | None
    address: str        # where it was probed
    up: bool            # the result of a real probe, never of bookkeeping alone
    detail: str         # short human text

    def to_dict(self) -> dict:
        return asdict(self)


def collect(layout: Layout, powered: Callable[[str], bool]) -> list[PartStatus]:
    """Every part's status, in a stable order; never raises for a part that is down."""
    # Unrouted (lab down), a probe of 10.77.0.x would leave the machine by its default route.
    routed = netns.lab_routed()
    net = _unrouted if not routed else None
    parts: list[tuple[PartStatus, Callable[[], tuple[bool, str]]]] = [
        (PartStatus("network", "network", None, f"{BRIDGE_ADDRESS}/{PREFIX_LEN}", False, ""), _network),
        (PartStatus("dns", "dns", None, f"{DNS.address}:{DNS_PORT}", False, ""), net or _dns),
    ]
    for site in SITES.values():
        parts += [
            (PartStatus(f"registry@{site.name}", "registry", site.name, site.registry_url, False, ""),
             net or (lambda s=site: probes.registry_v2(s.registry_url, layout.ca_crt, timeout=3))),
            (PartStatus(f"s3@{site.name}", "s3", site.name, site.s3_endpoint, False, ""),
             net or (lambda s=site: _s3(layout, s))),
        ]
    for host in HOSTS.values():
        on = powered(host.name)
        parts += [
            (PartStatus(host.name, "host", host.site, f"{host.address}:{SSH_PORT}", False, ""),
             lambda h=host, on=on: _host(layout, h, on, routed)),
            (PartStatus(f"engine@{host.name}", "engine", host.site, f"unix://{layout.docker_socket(host.name)}",
                        False, ""),
             lambda h=host, on=on: _engine(layout, h, on)),
        ]
    with ThreadPoolExecutor(max_workers=len(parts)) as pool:
        futures = [pool.submit(_safe, probe) for _, probe in parts]
        for (part, _), fut in zip(parts, futures, strict=True):
            part.up, part.detail = fut.result()
    return [part for part, _ in parts]


def _safe(probe: Callable[[], tuple[bool, str]]) -> tuple[bool, str]:
    try:
        return probe()
    except Exception as e:  # noqa: BLE001 - a status report must not die on one broken probe
        return False, f"probe failed: {e}"


def _unrouted() -> tuple[bool, str]:
    return False, f"not probed: no route via {BRIDGE} (lab network down)"


def _network() -> tuple[bool, str]:
    if not netns.bridge_exists():
        return False, f"bridge {BRIDGE} missing"
    missing = [n.ns for n in NAMESPACES if not netns.exists(n.ns)]
    links = {n.short: netns.link_state(n) for n in NAMESPACES if n.ns not in missing}
    broken = [s for s, st in links.items() if st == "missing"]
    parted = [s for s, st in links.items() if st == "down"]
    detail = f"bridge {BRIDGE}, {len(NAMESPACES) - len(missing)}/{len(NAMESPACES)} namespaces"
    if missing:
        detail += f"; missing: {', '.join(missing)}"
    if broken:
        detail += f"; no veth: {', '.join(broken)}"
    if parted:
        detail += f"; partitioned: {', '.join(parted)}"
    return not missing and not broken, detail


def _dns() -> tuple[bool, str]:
    return probes.dns_soa(DNS.address, ZONE, f"{MODEL_RECORD}.{ZONE}", DNS_PORT, timeout=2)


def _s3(layout: Layout, site: Site) -> tuple[bool, str]:
    try:
        key_id, secret = pki.s3_credentials(layout, site.name)
    except Exception:  # noqa: BLE001
        return False, "no credentials file"
    return probes.s3_bucket(site.s3_endpoint, site.bucket, key_id, secret, S3_REGION, timeout=3)


def _host(layout: Layout, host: HostSpec, on: bool, routed: bool) -> tuple[bool, str]:
    banner = probes.ssh_banner(host.address, SSH_PORT, timeout=2) if routed else None
    engine = probes.docker_ping(layout.docker_socket(host.name), timeout=2)
    if not on:
        detail = "powered off" + (" (yet sshd answers)" if banner else "")
    elif not routed:
        detail = _unrouted()[1]
    elif netns.link_state(host.netns) == "down":
        detail = "partitioned (link down)"
    elif banner and engine:
        detail = "sshd+dockerd running"
    elif banner:
        detail = "sshd running, dockerd not answering"
    else:
        detail = "powered on, sshd not answering"
    return banner is not None, detail


def _engine(layout: Layout, host: HostSpec, on: bool) -> tuple[bool, str]:
    sock = layout.docker_socket(host.name)
    ok = probes.docker_ping(sock, timeout=2)
    if not on:
        detail = "powered off" + (" (yet the engine answers)" if ok else "")
    elif not ok:
        detail = "engine not answering"
    else:
        try:
            n = len(probes.docker_containers(sock, timeout=3))
            detail = f"ping OK, {n} container{'s' if n != 1 else ''}"
        except OSError:
            detail = "ping OK"
    return ok, detail
