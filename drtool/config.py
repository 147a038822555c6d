"""Load drtool.yaml, validate it against one schema, and report every problem at once."""

from __future__ import annotations  # PEP 563 (public), for yaml.Node, imported lazily

import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from drtool.errors import ConfigError, UsageError
from drtool.ha.ladder import LadderSettings, Policy

# jsonschema and yaml are imported when a config file is read: an s3:// snapshot without a config (the nightly job
# on a host) imports this module for ObjectStore alone, and the two cost ~0.1 s of CPU (docs/benchmarks.md).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import jsonschema
    import yaml

DEFAULT_CONFIG_NAME = "drtool.yaml"
DEFAULT_LAB_DIR = Path("/var/lib/drtool-lab")


@dataclass(frozen=True)
class Host:
    name: str
    address: str
    site: str
    port: int = 22
    standby: bool = False
    instance_id: str | None = None
    gpus: int = 1                # GPU slots (a standby pool's host: how many services it can take)


@dataclass(frozen=True)
class ObjectStore:
    url: str
    endpoint_url: str | None = None
    region: str | None = None
    credentials_file: str | None = None
    profile: str | None = None


@dataclass(frozen=True)
class DnsTarget:
    provider: str
    record: str
    server: str | None = None
    port: int = 53
    zone: str | None = None
    zone_id: str | None = None
    ttl: int = 60
    tsig_key_file: str | None = None
    prepare_ttl: int = 30     # `failover --prepare` lowers the record's TTL to this ahead of a failover


@dataclass(frozen=True)
class Proxy:
    """The site's Nginx (roles/serving_proxy) in front of its serving hosts: it listens on the site's serving port,
    and the serving record points at it, not at a model host (docs/serving-proxy.md)."""

    name: str
    address: str
    port: int = 22                                 # its SSH port
    dir: str = "/var/lib/drtool/serving-proxy"     # where that nginx keeps its config, pid and logs


@dataclass(frozen=True)
class Site:
    name: str
    role: str
    gpu: bool
    hosts: tuple[Host, ...]
    standby_provider: str | None
    docker_host: str
    registry_url: str
    registry_ca_file: str | None
    object_stores: tuple[ObjectStore, ...]
    dns: DnsTarget
    serving_port: int
    health_path: str
    raw: dict = field(repr=False, compare=False, default_factory=dict)
    proxy: Proxy | None = None

    @property
    def is_standby(self) -> bool:
        return self.standby_provider is not None

    @property
    def front_address(self) -> str:
        """Where the serving record points when this site serves: its Nginx, else its first serving host."""
        return self.proxy.address if self.proxy else self.hosts[0].address


@dataclass(frozen=True)
class Model:
    name: str
    weights_path: str
    image: str
    # The weights' own JSON file that names their version (relative to weights_path): snapshots taken on the host,
    # the nightly ones included, are labelled from it. None: only `drtool backup` labels (from the registry).
    version_file: str | None = "config.json"


@dataclass(frozen=True)
class ServiceSpec:
    """One served model at a site (`services:`): lower `priority` = more important."""

    name: str
    model: str
    site: str
    record: str
    port: int
    priority: int = 100
    gpus: int = 1
    alias: str = "production"


@dataclass(frozen=True)
class SshSettings:
    user: str = "root"
    private_key_file: str | None = None
    known_hosts_file: str | None = None
    python_interpreter: str | None = None
    port: int = 22


@dataclass(frozen=True)
class AlertSettings:
    """How `drtool serve` turns alerts into failovers."""

    policy: str = "approve"          # auto: start the failover; approve: record it for `failover --approve`
    token_file: str | None = None    # bearer token Alertmanager must send (secret: a path, never a value)
    firing_for_s: float = 60.0       # an alert must have been firing this long
    cooldown_s: float = 1800.0       # no second failover to the same site within this window
    state_dir: str | None = None     # decisions persist here (default: drtool's state dir)
    failover_to: dict = field(default_factory=dict)  # failing site -> DR site (default: the first dr site)


@dataclass(frozen=True)
class FailoverSettings:
    snapshot: str = "newest"          # newest: the newest snapshot of the production version; registered: its own
    fallback_to_older: bool = True    # a snapshot that fails verification: try the next older one of that version
    fence: bool = True                # stop the primary's serving container when it is reachable
    primary_ready_wait_s: float = 90  # failback: how long a primary whose container is running may take to be ready
    parallel: int = 4                 # a region outage: services brought up at once per wave


@dataclass(frozen=True)
class WatchSettings:
    interval_s: float = 10.0          # between probes of the primary's health endpoint
    failures: int = 3                 # consecutive failed probes (every primary host) before the alert path runs
    timeout_s: float = 3.0            # per probe


@dataclass(frozen=True)
class LoadSettings:
    requests: int = 300
    concurrency: int = 8
    slo: dict = field(default_factory=lambda: {"p95_ms": 1000.0, "error_rate": 0.01, "min_rps": 5.0})


@dataclass(frozen=True)
class DrillSettings:
    record: str | None = None         # the drill's own DNS record (default: drill.<production record>)
    rto_target_s: float = 300.0
    rpo_target_s: float = 26 * 3600.0
    detection_for_s: float = 5.0      # the drill alert rule's `for:`
    scrape_interval_s: float = 2.0
    prometheus_bin: str = "prometheus"
    alertmanager_bin: str = "prometheus-alertmanager"
    history_keep: int = 100
    metrics_file: str | None = None   # Prometheus textfile with drill results (node_exporter textfile collector)
    load: LoadSettings = field(default_factory=LoadSettings)


@dataclass(frozen=True)
class ReadinessSettings:
    """`drtool readiness` (docs/readiness.md): targets default to the drill's, so one number is set once."""

    rto_target_s: float | None = None     # None: drill.rto_target_s
    rpo_target_s: float | None = None     # None: drill.rpo_target_s
    drill_max_age_s: float = 35 * 86400.0  # the last passing drill of a service must be younger (DrtoolDrillOverdue's)
    history_runs: int = 10                # the RTO predictor's window: the median of the last N measured runs
    workers: int = 32                     # network checks at once (registry HEADs, store reads, DNS)
    textfile: str | None = None           # Prometheus textfile (node_exporter textfile collector)


@dataclass(frozen=True)
class Config:
    path: Path
    sites: dict[str, Site]
    models: dict[str, Model]
    ssh: SshSettings
    ca_file: str | None
    lab_state_dir: str | None
    alerts: AlertSettings = field(default_factory=AlertSettings)
    failover: FailoverSettings = field(default_factory=FailoverSettings)
    watch: WatchSettings = field(default_factory=WatchSettings)
    ha: LadderSettings = field(default_factory=lambda: ha_settings({}))
    drill: DrillSettings = field(default_factory=DrillSettings)
    readiness: ReadinessSettings = field(default_factory=ReadinessSettings)
    build_engine: str = "unix:///var/run/docker.sock"   # the engine images are built on, seen from here
    build_cache_dir: str = "/var/cache/drtool"
    agent_dir: str | None = None  # `drtool agent install` puts drtool here on the hosts (None: the interpreter's)
    services: dict[str, ServiceSpec] = field(default_factory=dict)  # `services:`, else one per model at the primary
    raw: dict = field(repr=False, compare=False, default_factory=dict)

    def site(self, name: str) -> Site:
        """The named site, or a usage error listing the known ones."""
        if name not in self.sites:
            known = ", ".join(sorted(self.sites))
            raise UsageError(f"unknown site {name!r}", hint=f"known sites in {self.path}: {known}")
        return self.sites[name]

    def model(self, name: str) -> Model:
        if name not in self.models:
            known = ", ".join(sorted(self.models))
            raise UsageError(f"unknown model {name!r}", hint=f"known models in {self.path}: {known}")
        return self.models[name]

    def dr_site_for(self, failing: str) -> Site:
        """The site that takes over when `failing` goes down."""
        target = self.alerts.failover_to.get(failing)
        if target:
            return self.site(target)
        return next(s for s in self.sites.values() if s.role == "dr")

    @property
    def primary(self) -> Site:
        return next(s for s in self.sites.values() if s.role == "primary")

    def all_hosts(self) -> list[Host]:
        return [h for s in self.sites.values() for h in s.hosts]

    def host(self, name: str) -> Host:
        for h in self.all_hosts():
            if h.name == name:
                return h
        known = ", ".join(h.name for h in self.all_hosts())
        raise UsageError(f"unknown host {name!r}", hint=f"known hosts: {known}")


def _schema() -> dict:
    text = resources.files("drtool").joinpath("schema/config.schema.json").read_text()
    return json.loads(text)


def resolve_config_path(explicit: str | os.PathLike | None) -> Path:
    """--config, else $DRTOOL_CONFIG, else ./drtool.yaml, else the running lab's config."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("DRTOOL_CONFIG")
    if env:
        return Path(env)
    local = Path.cwd() / DEFAULT_CONFIG_NAME
    if local.exists():
        return local
    lab = Path(os.environ.get("DRTOOL_LAB_DIR", DEFAULT_LAB_DIR)) / DEFAULT_CONFIG_NAME
    if lab.exists():
        return lab
    raise UsageError(
        "no configuration found",
        hint="pass --config PATH, set DRTOOL_CONFIG, put a drtool.yaml in the current directory, "
        "or start the embedded lab with `drtool lab up` (see docs/configuration.md)",
    )


def _line_index(node: yaml.Node, path: tuple = ()) -> dict[tuple, int]:
    """Map each key path in the YAML document to its 1-based line, for error messages."""
    import yaml

    lines: dict[tuple, int] = {path: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            lines[path + (key,)] = key_node.start_mark.line + 1
            lines.update({k: v for k, v in _line_index(value_node, path + (key,)).items() if k != path + (key,)})
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines.update(_line_index(item, path + (i,)))
    return lines


def _dotted(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _schema_message(err: jsonschema.ValidationError) -> tuple[tuple, str]:
    path = tuple(err.absolute_path)
    if err.validator == "additionalProperties":
        extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
        allowed = ", ".join(sorted(err.schema.get("properties", {})))
        return path, f"unknown key(s) {', '.join(map(repr, extra))} (allowed: {allowed})"
    if err.validator == "required":
        return path, err.message.replace("is a required property", "is required")
    if err.validator == "enum":
        return path, f"{err.instance!r} is not one of {', '.join(map(str, err.validator_value))}"
    if err.validator == "pattern":
        return path, f"{err.instance!r}: {err.schema.get('x-message', 'does not match ' + err.validator_value)}"
    if err.validator == "propertyNames":
        return path, f"name {err.instance!r} is not valid: lower-case letters, digits and '-' only"
    return path, err.message


def _semantic_problems(doc: dict) -> list[tuple[tuple, str]]:
    """Rules the schema cannot say: roles, pools, unique names."""
    problems: list[tuple[tuple, str]] = []
    sites = doc.get("sites") or {}
    if not isinstance(sites, dict):
        return problems
    roles = [s.get("role") for s in sites.values() if isinstance(s, dict)]
    if not all(r in ("primary", "dr") for r in roles):
        roles = []  # a bad role is reported by the schema; counting would only repeat it
    if roles and roles.count("primary") != 1:
        problems.append((("sites",), f"exactly one site must have role 'primary' (found {roles.count('primary')})"))
    if roles and "dr" not in roles:
        problems.append((("sites",), "at least one site must have role 'dr'"))
    alerts = doc.get("alerts") if isinstance(doc.get("alerts"), dict) else {}
    for failing, target in (alerts.get("failover_to") or {}).items():
        for key, name in ((failing, failing), (failing, target)):
            if name not in sites:
                problems.append((("alerts", "failover_to", key), f"unknown site {name!r} (known: {', '.join(sites)})"))
    seen: dict[str, str] = {}
    for site_name, site in sites.items():
        if not isinstance(site, dict):
            continue
        has_hosts, has_pool = "hosts" in site, "standby_pool" in site
        if has_hosts == has_pool:
            problems.append((("sites", site_name),
                             "give either 'hosts' (serving hosts) or 'standby_pool' (cold standbys), exactly one"))
        if "proxy" in site and has_pool:
            problems.append((("sites", site_name, "proxy"), "a proxy fronts serving hosts ('hosts'); a standby "
                             "pool's host serves directly after a failover"))
        host_lists = [("hosts", site.get("hosts"))]
        if isinstance(site.get("standby_pool"), dict):
            host_lists.append((("standby_pool", "hosts"), site["standby_pool"].get("hosts")))
        for key, hosts in host_lists:
            for i, h in enumerate(hosts or []):
                if isinstance(h, dict) and isinstance(h.get("name"), str):
                    key_path = key if isinstance(key, tuple) else (key,)
                    if h["name"] in seen:
                        problems.append((("sites", site_name, *key_path, i, "name"),
                                         f"host name {h['name']!r} is already used in site {seen[h['name']]!r}"))
                    seen[h["name"]] = site_name
        proxy = site.get("proxy")
        if isinstance(proxy, dict) and isinstance(proxy.get("name"), str):
            if proxy["name"] in seen:
                problems.append((("sites", site_name, "proxy", "name"),
                                 f"host name {proxy['name']!r} is already used in site {seen[proxy['name']]!r}"))
            seen[proxy["name"]] = site_name
    problems += _service_problems(doc, sites)
    return problems


def _service_problems(doc: dict, sites: dict) -> list[tuple[tuple, str]]:
    """`services:`: known model, a serving site, one record per service, one port per site, and a standby of the
    site's failover target big enough for it."""
    from drtool.fleet import planner

    services = doc.get("services")
    if not isinstance(services, dict):
        return []
    problems: list[tuple[tuple, str]] = []
    models = doc.get("models") if isinstance(doc.get("models"), dict) else {}
    primaries = [n for n, s in sites.items() if isinstance(s, dict) and s.get("role") == "primary"]
    drs = [n for n, s in sites.items() if isinstance(s, dict) and s.get("role") == "dr"]
    alerts = doc.get("alerts") if isinstance(doc.get("alerts"), dict) else {}
    failover_to = alerts.get("failover_to") if isinstance(alerts.get("failover_to"), dict) else {}
    records: dict[str, str] = {}
    ports: dict[tuple, str] = {}
    for name, svc in services.items():
        if not isinstance(svc, dict):
            continue
        here = ("services", name)
        model = svc.get("model")
        if isinstance(model, str) and model not in models:
            problems.append((here + ("model",), f"unknown model {model!r} (known: {', '.join(models) or 'none'})"))
        site_name = svc.get("site", primaries[0] if len(primaries) == 1 else None)
        site = sites.get(site_name) if isinstance(site_name, str) else None
        if "site" in svc and isinstance(site_name, str) and site is None:
            problems.append((here + ("site",), f"unknown site {site_name!r} (known: {', '.join(sites)})"))
            continue
        if not isinstance(site, dict):
            continue
        if "hosts" not in site:
            problems.append((here + ("site",) if "site" in svc else here,
                             f"site {site_name!r} has no serving hosts: a service runs at a site with 'hosts'"))
            continue
        dns = site.get("dns") if isinstance(site.get("dns"), dict) else {}
        serving = site.get("serving") if isinstance(site.get("serving"), dict) else {}
        record = svc.get("record", dns.get("record"))
        port = svc.get("port", serving.get("port"))
        if isinstance(record, str):
            where = here + ("record",) if "record" in svc else here
            if record in records:
                default = "" if "record" in svc else f" (the default: site {site_name}'s dns.record)"
                problems.append((where, f"record {record!r}{default} is already used by service "
                                        f"{records[record]!r}; each service needs its own record"))
            else:
                records[record] = name
        if isinstance(port, int) and not isinstance(port, bool):
            where = here + ("port",) if "port" in svc else here
            if (site_name, port) in ports:
                default = "" if "port" in svc else f" (the default: site {site_name}'s serving.port)"
                problems.append((where, f"port {port}{default} at site {site_name} is already used by service "
                                        f"{ports[(site_name, port)]!r}"))
            else:
                ports[(site_name, port)] = name
        # the standbys of the site it fails over to must include one with enough GPUs
        gpus = svc.get("gpus", 1)
        target_name = failover_to.get(site_name) or (drs[0] if drs else None)
        target = sites.get(target_name) if isinstance(target_name, str) else None
        pool = target.get("standby_pool") if isinstance(target, dict) else None
        if not isinstance(gpus, int) or isinstance(gpus, bool) or not isinstance(pool, dict) \
                or target_name == site_name or not isinstance(pool.get("hosts"), list):
            continue
        standbys = [planner.StandbyHost(h["name"], target_name, h.get("gpus", 1)) for h in pool["hosts"]
                    if isinstance(h, dict) and isinstance(h.get("name"), str)
                    and isinstance(h.get("gpus", 1), int) and 1 <= h.get("gpus", 1) <= planner.GPUS_MAX]
        service = planner.Service(name, site_name, str(model), str(record), 1, 0, gpus)
        prefix = f"service {name} needs"
        for msg in planner.validate([service], standbys):
            if msg.startswith(prefix):
                problems.append((here + ("gpus",) if "gpus" in svc else here,
                                 f"{msg}: no standby of {target_name} (where {site_name} fails over to) can take it"))
    return problems


def load_config(explicit: str | os.PathLike | None = None) -> Config:
    path = resolve_config_path(explicit)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UsageError(f"configuration file {path} does not exist",
                         hint="check --config / DRTOOL_CONFIG, or run `drtool lab up` for the lab") from None
    except OSError as exc:
        raise UsageError(f"cannot read configuration file {path}: {exc.strerror}") from None
    import jsonschema
    import yaml

    try:
        node = yaml.compose(text)
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}",
                          hint="fix the YAML syntax and run again", details=[f"{where}: {exc}"]) from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: the configuration must be a mapping (sites:, models:, ...)",
                          details=[f"{path}: top level is {type(doc).__name__}"])
    lines = _line_index(node) if node is not None else {}

    found = [_schema_message(e) for e in jsonschema.Draft202012Validator(_schema()).iter_errors(doc)]
    found += _semantic_problems(doc)
    if found:
        details = []
        for key_path, msg in sorted(found, key=lambda p: (lines.get(p[0], 0), _dotted(p[0]))):
            line = lines.get(key_path)
            where = f"{path}:{line}" if line else str(path)
            details.append(f"{where}: {_dotted(key_path)}: {msg}")
        raise ConfigError(f"{path}: {len(details)} problem(s) in the configuration",
                          hint="fix every listed key; see docs/configuration.md", details=details)
    return _build(path, doc)


def _build(path: Path, doc: dict[str, Any]) -> Config:
    ssh_doc = doc.get("ssh", {})
    ssh = SshSettings(**ssh_doc)
    sites = {}
    for name, s in doc["sites"].items():
        pool = s.get("standby_pool")
        host_docs = pool["hosts"] if pool else s["hosts"]
        hosts = tuple(
            Host(name=h["name"], address=h["address"], site=name, port=h.get("port", ssh.port),
                 standby=bool(pool), instance_id=h.get("instance_id"), gpus=h.get("gpus", 1))
            for h in host_docs
        )
        dns = s["dns"]
        sites[name] = Site(
            name=name,
            role=s["role"],
            gpu=s.get("gpu", False),
            hosts=hosts,
            standby_provider=pool["provider"] if pool else None,
            docker_host=s.get("docker_host", "unix:///var/run/docker.sock"),
            registry_url=s["container_registry"]["url"],
            registry_ca_file=s["container_registry"].get("ca_file"),
            object_stores=tuple(ObjectStore(**o) for o in s["object_stores"]),
            dns=DnsTarget(**dns),
            serving_port=s["serving"]["port"],
            health_path=s["serving"].get("health_path", "/readyz"),
            raw=s,
            proxy=Proxy(**{"port": ssh.port, **s["proxy"]}) if "proxy" in s else None,
        )
    models = {n: Model(name=n, **m) for n, m in doc["models"].items()}
    return Config(
        path=path,
        sites=sites,
        models=models,
        ssh=ssh,
        ca_file=doc.get("tls", {}).get("ca_file"),
        lab_state_dir=doc.get("lab", {}).get("state_dir"),
        alerts=AlertSettings(**doc.get("alerts", {})),
        failover=FailoverSettings(**doc.get("failover", {})),
        watch=WatchSettings(**doc.get("watch", {})),
        ha=ha_settings(doc.get("ha", {})),
        drill=_drill(doc.get("drill", {})),
        readiness=ReadinessSettings(**doc.get("readiness", {})),
        build_engine=doc.get("build", {}).get("docker_host", "unix:///var/run/docker.sock"),
        build_cache_dir=doc.get("build", {}).get("cache_dir", "/var/cache/drtool"),
        agent_dir=doc.get("agent", {}).get("dir"),
        services=_services(doc, sites),
        raw=doc,
    )


def _services(doc: dict, sites: dict[str, Site]) -> dict[str, ServiceSpec]:
    """`services:` with its defaults; absent: one implicit service per model at the primary site."""
    primary = next(s for s in sites.values() if s.role == "primary")
    if "services" not in doc:
        return {m: ServiceSpec(name=m, model=m, site=primary.name, record=primary.dns.record,
                               port=primary.serving_port) for m in doc["models"]}
    out = {}
    for name, s in (doc["services"] or {}).items():
        site = sites[s.get("site", primary.name)]
        out[name] = ServiceSpec(name=name, model=s["model"], site=site.name, record=s.get("record", site.dns.record),
                                port=s.get("port", site.serving_port), priority=s.get("priority", 100),
                                gpus=s.get("gpus", 1), alias=s.get("alias", "production"))
    return out


def ha_settings(doc: dict) -> LadderSettings:
    """The escalation ladder of `drtool watch` (docs/failover.md). Its failover rung defaults to auto here: it hands
    the site's outage to the alert path, where `alerts.policy` (auto or approve) still decides, as before."""
    policy = {"failover": "auto", **doc.get("policy", {})}
    return LadderSettings(**{k: v for k, v in doc.items() if k != "policy"}, policy=Policy(**policy))


def _drill(doc: dict) -> DrillSettings:
    load = dict(doc.get("load", {}))
    if "slo" in load:
        load["slo"] = {**LoadSettings().slo, **load["slo"]}
    return DrillSettings(**{**doc, "load": LoadSettings(**load)})
