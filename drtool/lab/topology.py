"""The lab's fixed layout: bridge, namespaces, addresses, sites, hosts and the services they run."""

from dataclasses import dataclass

BRIDGE = "drlab0"
BRIDGE_ADDRESS = "10.77.0.1"
PREFIX_LEN = 24
SUBNET = "10.77.0.0/24"
NS_PREFIX = "drlab-"
VETH_PREFIX = "drl-"          # root-side veth ends: drl-<short>, at most 15 characters
IN_NS_IFNAME = "eth0"          # the namespace-side end, renamed after it is moved in

ZONE = "drlab.test"
MODEL_RECORD = "model"         # model.drlab.test, the name clients resolve to reach the serving site
MODEL_TTL = 60
TSIG_KEY_NAME = "drtool-key"

SSH_PORT = 22
REGISTRY_PORT = 5000
S3_PORT = 9000
DNS_PORT = 53
S3_REGION = "us-east-1"
SERVING_PORT = 8080

# Inside a host's own mount namespace: where its engine's socket is, where its data lives.
HOST_DOCKER_SOCKET = "/run/drtool/docker.sock"
HOST_RUN_MOUNT = "/run/drtool"
HOST_SRV_MOUNT = "/srv"


@dataclass(frozen=True)
class Namespace:
    """One network namespace of the lab: a name, its address and its root-side veth."""

    short: str                 # "dns", "pw-svc", "pw-gpu1"
    address: str

    @property
    def ns(self) -> str:
        return NS_PREFIX + self.short

    @property
    def veth(self) -> str:
        return VETH_PREFIX + self.short


@dataclass(frozen=True)
class Site:
    name: str                  # "prod-west"
    role: str                  # "primary" | "dr"
    services: Namespace        # runs the site's registry and S3 store
    bucket: str

    @property
    def registry(self) -> str:
        return f"{self.services.address}:{REGISTRY_PORT}"

    @property
    def registry_url(self) -> str:
        return f"https://{self.registry}"

    @property
    def s3_endpoint(self) -> str:
        return f"http://{self.services.address}:{S3_PORT}"


@dataclass(frozen=True)
class HostSpec:
    """A serving host: a namespace with its own sshd, Docker engine and /srv."""

    name: str                  # "pw-gpu1"
    site: str                  # "prod-west"
    address: str
    powered_at_start: bool     # on at `lab up` (the primary) or off (a cold standby)
    kind: str = "serving"      # "serving": a model host; "proxy": the site's Nginx in front of its serving hosts

    @property
    def netns(self) -> Namespace:
        return Namespace(self.name, self.address)

    @property
    def ns(self) -> str:
        return self.netns.ns


DNS = Namespace("dns", "10.77.0.2")

SITES: dict[str, Site] = {
    "prod-west": Site("prod-west", "primary", Namespace("pw-svc", "10.77.0.10"), "drtool-prod-west"),
    "dr-east": Site("dr-east", "dr", Namespace("de-svc", "10.77.0.20"), "drtool-dr-east"),
}

HOSTS: dict[str, HostSpec] = {
    "pw-gpu1": HostSpec("pw-gpu1", "prod-west", "10.77.0.11", powered_at_start=True),
    "pw-gpu2": HostSpec("pw-gpu2", "prod-west", "10.77.0.12", powered_at_start=True),
    # prod-west's Nginx (roles/serving_proxy): the production record points here, with pw-gpu1 as its primary
    # upstream and pw-gpu2 as its backup. A lab host like the others (sshd and an engine), serving no model.
    "pw-lb": HostSpec("pw-lb", "prod-west", "10.77.0.13", powered_at_start=True, kind="proxy"),
    "de-gpu1": HostSpec("de-gpu1", "dr-east", "10.77.0.21", powered_at_start=False),
    "de-gpu2": HostSpec("de-gpu2", "dr-east", "10.77.0.22", powered_at_start=False),
    "de-gpu3": HostSpec("de-gpu3", "dr-east", "10.77.0.23", powered_at_start=False),
    "de-gpu4": HostSpec("de-gpu4", "dr-east", "10.77.0.24", powered_at_start=False),
}

# Every namespace, in the order they are created.
NAMESPACES: tuple[Namespace, ...] = (DNS, *(s.services for s in SITES.values()),
                                     *(h.netns for h in HOSTS.values()))

PROXIES: dict[str, HostSpec] = {h.site: h for h in HOSTS.values() if h.kind == "proxy"}
SERVING_HOSTS: dict[str, HostSpec] = {n: h for n, h in HOSTS.items() if h.kind == "serving"}

MODEL_INITIAL_ADDRESS = PROXIES["prod-west"].address


@dataclass(frozen=True)
class FleetService:
    """A service of the lab's fleet configuration (drtool-fleet.yaml): the demo model under another
    name, served on pw-gpu1 on its own port behind its own record (asr-demo is the lab's production service)."""

    name: str
    model: str
    port: int
    priority: int

    @property
    def record(self) -> str:
        return f"{MODEL_RECORD}.{ZONE}" if self.model == "asr-demo" else f"{self.name}.{ZONE}"


FLEET_SERVICES: tuple[FleetService, ...] = (
    FleetService("asr", "asr-demo", SERVING_PORT, 0),
    FleetService("tts", "tts-demo", 8081, 10),
    FleetService("emotion", "emotion-demo", 8082, 20),
    FleetService("llm-small", "llm-small", 8083, 30),
    FleetService("llm-medium", "llm-medium", 8084, 40),
    FleetService("llm-large", "llm-large", 8085, 50),
)
# GPU slots of dr-east's standbys in the fleet configuration: six services on four hosts
FLEET_STANDBY_GPUS = {"de-gpu1": 2, "de-gpu2": 2, "de-gpu3": 1, "de-gpu4": 1}


def namespace_for(name: str) -> Namespace:
    """Resolve a host name ("pw-gpu1"), a short namespace name ("dns") or a full one ("drlab-dns")."""
    short = name[len(NS_PREFIX):] if name.startswith(NS_PREFIX) else name
    for ns in NAMESPACES:
        if ns.short == short:
            return ns
    known = ", ".join(n.short for n in NAMESPACES)
    from drtool.errors import UsageError

    raise UsageError(f"unknown lab host or namespace {name!r}", hint=f"known: {known}")


def host_spec(name: str) -> HostSpec:
    try:
        return HOSTS[name]
    except KeyError:
        from drtool.errors import UsageError

        raise UsageError(f"unknown lab host {name!r}", hint=f"known hosts: {', '.join(HOSTS)}") from None


assert all(len(ns.veth) <= 15 for ns in NAMESPACES), "interface names are limited to 15 characters"
