"""A serving site's Nginx (roles/serving_proxy through playbooks/serving_proxy.yml): deploy it in front of the
site's serving hosts, drain one instance so the site's other GPU serves, undrain it. The site's first host is the
primary upstream, the others are backups (docs/serving-proxy.md)."""

from drtool.config import Config, Host, Site
from drtool.errors import UsageError
from drtool.execute.ansible import run_playbook


def require_proxy(site: Site):
    if site.proxy is None:
        raise UsageError(f"site {site.name} has no proxy", hint=f"add sites.{site.name}.proxy (name, address) to "
                                                                "the configuration; see docs/serving-proxy.md")
    return site.proxy


def instances(site: Site, drained: tuple[str, ...] | list[str] = ()) -> list[dict]:
    """The role's instance list: every serving host of the site, the first as primary, the rest as backups."""
    return [{"name": h.name, "address": h.address, "port": site.serving_port,
             "role": "primary" if i == 0 else "backup", "drained": h.name in drained}
            for i, h in enumerate(site.hosts)]


def front(site: Site) -> Host:
    """The proxy as a Host, so the serving checks (/version, canary) run through it as clients reach it."""
    p = require_proxy(site)
    return Host(name=p.name, address=p.address, site=site.name, port=p.port)


def _run(config: Config, site: Site, action: str, progress=None, **extra) -> dict:
    p = require_proxy(site)
    res = run_playbook(config, "serving_proxy.yml", progress=progress, extravars={
        "drtool_targets": p.name, "serving_proxy_action": action, **extra})
    return {**res.results.get(p.name, {}), "proxy": p.name, "seconds": res.seconds}


def deploy(config: Config, site: Site, drained: tuple[str, ...] | list[str] = (), progress=None) -> dict:
    """Render and (re)load the site's Nginx with every serving host; `drained` ones are marked down. A deploy is
    authoritative: it also undoes earlier drains."""
    return _run(config, site, "deploy", progress, serving_proxy_instances=instances(site, drained))


def drain(config: Config, site: Site, instance: str) -> dict:
    _known(site, instance)
    return _run(config, site, "drain", serving_proxy_instance=instance)


def undrain(config: Config, site: Site, instance: str) -> dict:
    _known(site, instance)
    return _run(config, site, "undrain", serving_proxy_instance=instance)


def _known(site: Site, instance: str) -> None:
    if instance not in {h.name for h in site.hosts}:
        raise UsageError(f"{instance!r} is not a serving host of {site.name}",
                         hint="known: " + ", ".join(h.name for h in site.hosts))
