"""Builds, repairs, partitions and removes the lab network: one bridge, namespaces joined by veth pairs."""

import json
import os
import time
from pathlib import Path

from drtool.errors import LabError
from drtool.lab.cmd import run
from drtool.lab.topology import (
    BRIDGE,
    BRIDGE_ADDRESS,
    IN_NS_IFNAME,
    NS_PREFIX,
    PREFIX_LEN,
    SUBNET,
    VETH_PREFIX,
    Namespace,
)

NETNS_DIR = Path("/run/netns")


def ns_path(ns: str) -> Path:
    return NETNS_DIR / ns


def list_namespaces(prefix: str = NS_PREFIX) -> list[str]:
    """Named namespaces whose name starts with prefix (from `ip netns list`)."""
    out = run(["ip", "netns", "list"]).stdout
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return [n for n in names if n.startswith(prefix)]


def exists(ns: str) -> bool:
    return ns_path(ns).exists()


def inode(ns: str) -> int | None:
    """Identity of a named namespace (the inode of its nsfs file), None when it does not exist."""
    try:
        return os.stat(ns_path(ns)).st_ino
    except OSError:
        return None


def pids(ns: str) -> list[int]:
    """Every process inside a named namespace (`ip netns pids`)."""
    if not exists(ns):
        return []
    proc = run(["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def _link(name: str, ns: str | None = None) -> dict | None:
    argv = ["ip", "-j"] + (["-n", ns] if ns else []) + ["link", "show", "dev", name]
    proc = run(argv, check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        return None
    info = json.loads(proc.stdout)
    return info[0] if info else None


def _addrs(name: str, ns: str | None = None) -> list[str]:
    argv = ["ip", "-j"] + (["-n", ns] if ns else []) + ["addr", "show", "dev", name]
    proc = run(argv, check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        return []
    info = json.loads(proc.stdout)
    return [f"{a['local']}/{a['prefixlen']}" for i in info for a in i.get("addr_info", [])
            if a.get("family") == "inet"]


def lab_veths() -> list[str]:
    """Root-side interfaces carrying the lab's veth prefix (also those of a crashed lab)."""
    info = json.loads(run(["ip", "-j", "link", "show"]).stdout or "[]")
    return [i["ifname"] for i in info if i.get("ifname", "").startswith(VETH_PREFIX)]


def bridge_exists() -> bool:
    return _link(BRIDGE) is not None


def is_up(info: dict | None) -> bool:
    return bool(info) and "UP" in info.get("flags", [])


def mac_for(address: str) -> str:
    """A fixed, locally administered MAC per lab address. A namespace or veth re-created by a repair
    keeps its MAC, so no neighbour cache in the lab points at a vanished one (that cut a repaired
    namespace off for up to 45s, until the stale ARP entries expired)."""
    a, b, c, d = (int(x) for x in address.split("."))
    return f"02:{a:02x}:{b:02x}:{c:02x}:{d:02x}:01"


def lab_routed() -> bool:
    """True when the kernel sends lab traffic to the bridge. Without it (lab down) packets for
    10.77.0.x would follow the default route out of the machine: probes must not be sent then."""
    proc = run(["ip", "-j", "route", "get", BRIDGE_ADDRESS.rsplit(".", 1)[0] + ".2"], check=False)
    try:
        routes = json.loads(proc.stdout or "[]")
    except ValueError:
        return False
    return bool(routes) and all(r.get("dev") == BRIDGE for r in routes)


def ensure_bridge() -> None:
    """Create drlab0 with 10.77.0.1/24, or repair its address and state."""
    info = _link(BRIDGE)
    mac = mac_for(BRIDGE_ADDRESS)     # fixed: a bridge otherwise takes the lowest MAC among its ports
    if info is None:
        _check_subnet_free()
        run(["ip", "link", "add", BRIDGE, "address", mac, "type", "bridge"], what=f"creating bridge {BRIDGE}")
    elif info.get("address") != mac:
        run(["ip", "link", "set", BRIDGE, "address", mac])
    want = f"{BRIDGE_ADDRESS}/{PREFIX_LEN}"
    if want not in _addrs(BRIDGE):
        run(["ip", "addr", "add", want, "dev", BRIDGE], what=f"addressing bridge {BRIDGE}")
    if not is_up(info):
        run(["ip", "link", "set", BRIDGE, "up"])
    _ensure_isolation()
    _ensure_forwarding()


def _check_subnet_free() -> None:
    out = run(["ip", "-j", "route", "show", SUBNET]).stdout
    routes = json.loads(out or "[]")
    others = [r.get("dev") for r in routes if r.get("dev") != BRIDGE]
    if others:
        raise LabError(f"the lab subnet {SUBNET} is already routed via {', '.join(map(str, others))}",
                       hint="free that subnet (or remove the other interface) before `drtool lab up`")


# Isolation: the machine forwards IP (ip_forward=1 here), so a lab process aiming at an outside address
# would be routed out of the machine through the namespaces' default route. A policy rule sends every
# packet arriving from the bridge to a table holding only "unreachable default": the sender gets an
# immediate "network unreachable". Traffic between namespaces is bridged, never routed, and traffic to
# 10.77.0.1 itself is delivered by the local table (consulted first), so the lab is unaffected.
ISOLATION_TABLE = "7700"
ISOLATION_PREF = "7700"


def _ensure_isolation() -> None:
    rules = run(["ip", "rule", "show", "pref", ISOLATION_PREF], check=False).stdout
    if f"iif {BRIDGE}" not in rules:
        run(["ip", "rule", "add", "pref", ISOLATION_PREF, "iif", BRIDGE, "lookup", ISOLATION_TABLE],
            what="isolating the lab network")
    routes = run(["ip", "route", "show", "table", ISOLATION_TABLE], check=False).stdout
    if "unreachable default" not in routes:
        run(["ip", "route", "replace", "unreachable", "default", "table", ISOLATION_TABLE],
            what="isolating the lab network")


def remove_isolation() -> None:
    while f"iif {BRIDGE}" in run(["ip", "rule", "show", "pref", ISOLATION_PREF], check=False).stdout:
        if run(["ip", "rule", "del", "pref", ISOLATION_PREF, "iif", BRIDGE], check=False).returncode != 0:
            break
    run(["ip", "route", "flush", "table", ISOLATION_TABLE], check=False)


# With br_netfilter, frames crossing a bridge go through iptables' FORWARD chain. When that chain
# drops by default (a system Docker sets that up), the namespaces could not reach each other.
_FORWARD_RULE = ["FORWARD", "-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT"]


def _forward_policy_drops() -> bool:
    nf = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")
    if not nf.exists() or nf.read_text().strip() != "1":
        return False
    try:
        out = run(["iptables", "-S", "FORWARD"], check=False, timeout=10).stdout
    except LabError:       # no iptables binary: nothing filters
        return False
    return "-P FORWARD ACCEPT" not in out


def _ensure_forwarding() -> None:
    if not _forward_policy_drops():
        return
    if run(["iptables", "-C", *_FORWARD_RULE], check=False).returncode != 0:
        run(["iptables", "-I", *_FORWARD_RULE], what="allowing forwarding across the lab bridge")


def remove_forwarding() -> None:
    try:
        while run(["iptables", "-C", *_FORWARD_RULE], check=False, timeout=10).returncode == 0:
            run(["iptables", "-D", *_FORWARD_RULE], check=False)
    except LabError:
        pass


def ensure_namespace(n: Namespace, link_up: bool = True) -> bool:
    """Create or repair one namespace: veth pair on the bridge, address, default route, lo up.

    Returns True when anything had to be (re)created."""
    changed = False
    if not exists(n.ns):
        run(["ip", "netns", "add", n.ns], what=f"creating namespace {n.ns}")
        changed = True
    outer, inner = _link(n.veth), _link(IN_NS_IFNAME, n.ns)
    paired = (outer is not None and inner is not None
              and outer.get("link_index") == inner.get("ifindex")
              and inner.get("link_index") == outer.get("ifindex"))
    if not paired:
        # Half a pair (its namespace was deleted, or a stale end): remove both ends and start over.
        if outer is not None:
            run(["ip", "link", "del", n.veth], check=False)
        if inner is not None:
            run(["ip", "-n", n.ns, "link", "del", IN_NS_IFNAME], check=False)
        tmp = "drp-" + n.short
        run(["ip", "link", "add", n.veth, "type", "veth",
             "peer", "name", tmp, "address", mac_for(n.address), "netns", n.ns], what=f"creating veth {n.veth}")
        run(["ip", "-n", n.ns, "link", "set", tmp, "name", IN_NS_IFNAME])
        outer = _link(n.veth)
        changed = True
    if (outer or {}).get("master") != BRIDGE:
        run(["ip", "link", "set", n.veth, "master", BRIDGE])
    if is_up(outer) != link_up:
        run(["ip", "link", "set", n.veth, "up" if link_up else "down"])
    want = f"{n.address}/{PREFIX_LEN}"
    if want not in _addrs(IN_NS_IFNAME, n.ns):
        run(["ip", "-n", n.ns, "addr", "add", want, "dev", IN_NS_IFNAME])
        changed = True
    if not is_up(_link(IN_NS_IFNAME, n.ns)):
        run(["ip", "-n", n.ns, "link", "set", IN_NS_IFNAME, "up"])
    if not is_up(_link("lo", n.ns)):
        run(["ip", "-n", n.ns, "link", "set", "lo", "up"])
    routes = json.loads(run(["ip", "-j", "-n", n.ns, "route", "show", "default"]).stdout or "[]")
    if not any(r.get("gateway") == BRIDGE_ADDRESS for r in routes):
        run(["ip", "-n", n.ns, "route", "replace", "default", "via", BRIDGE_ADDRESS])
    return changed


def link_state(n: Namespace) -> str:
    """'up', 'down' (partitioned) or 'missing' for the root side of a namespace's veth."""
    info = _link(n.veth)
    if info is None:
        return "missing"
    return "up" if is_up(info) else "down"


def set_link(n: Namespace, up: bool) -> None:
    if _link(n.veth) is None:
        raise LabError(f"no veth {n.veth} for {n.ns}", hint="bring the lab up first: `drtool lab up`")
    run(["ip", "link", "set", n.veth, "up" if up else "down"], what=f"setting {n.veth} {'up' if up else 'down'}")


def delete_namespace(ns: str) -> None:
    if exists(ns):
        run(["ip", "netns", "del", ns], check=False)


def delete_link(name: str) -> None:
    if _link(name) is not None:
        run(["ip", "link", "del", name], check=False)


def delete_bridge() -> None:
    delete_link(BRIDGE)


def wait_links_gone(timeout: float = 5) -> list[str]:
    """Namespace deletion frees veths asynchronously: wait for them, delete stragglers, return leftovers."""
    deadline = time.monotonic() + timeout
    left = lab_veths()
    while left and time.monotonic() < deadline:
        for name in left:
            delete_link(name)
        time.sleep(0.1)
        left = lab_veths()
    return left


def release_netns_dir() -> None:
    """`ip netns add` turns /run/netns into a mount point; undo that once no namespace is left in it."""
    if not NETNS_DIR.is_dir() or any(NETNS_DIR.iterdir()):
        return
    if str(NETNS_DIR) in mount_points():
        run(["umount", str(NETNS_DIR)], check=False)


def mount_points() -> list[str]:
    """Mount points of the root mount namespace (a bind mount of a directory onto itself included)."""
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            # mountinfo escapes blanks as octal: \040
            points.append(fields[4].encode().decode("unicode_escape"))
    return points
