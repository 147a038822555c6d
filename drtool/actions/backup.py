"""drtool backup: snapshot every serving host's weights next to them, replicate to the site's other stores and
to every DR site's store, then read back a sample at each; or install / remove the nightly job."""

from drtool.actions.deploy import store_vars
from drtool.config import Config, ObjectStore, Site
from drtool.errors import DrtoolError, OperationFailed, VerificationError
from drtool.execute.ansible import run_playbook
from drtool.output import Output
from drtool.snapshot.replicate import replicate_snapshot
from drtool.snapshot.stores import open_store
from drtool.snapshot.verify import verify_snapshot

VERIFY_SAMPLE_PCT = 5.0


def _models(config: Config, site: Site, model: str | None) -> list[dict]:
    chosen = [config.model(model)] if model else list(config.models.values())
    return [{"name": m.name, "weights_path": m.weights_path, "version_file": m.version_file,
             "port": site.serving_port} for m in chosen]


def _per_host(config: Config, site: Site, model: str | None) -> dict[str, list[dict]]:
    """{host: the models it serves}. With services configured for the site (a fleet), each service's model on
    the hosts that serve it (drtool.fleet.plan.home_hosts), at the service's port; else every model on every host."""
    from drtool.fleet.plan import home_hosts

    specs = [s for s in config.services.values() if s.site == site.name and (model is None or s.model == model)]
    if not specs or site.is_standby:
        models = _models(config, site, model)
        return {h.name: list(models) for h in site.hosts}
    per: dict[str, list[dict]] = {h.name: [] for h in site.hosts}
    for spec in sorted(specs, key=lambda s: (s.priority, s.name)):
        m = config.model(spec.model)
        for h in home_hosts(site, spec):
            if all(x["name"] != m.name for x in per[h.name]):
                per[h.name].append({"name": m.name, "weights_path": m.weights_path, "version_file": m.version_file,
                                    "port": spec.port})
    return {h: ms for h, ms in per.items() if ms}


def _label_versions(config: Config, site: Site, models: list[dict]) -> list[dict]:
    """Label each snapshot with the version the site's registry names production: a failover restores the newest
    snapshot of the production version (RPO). When the model has a version_file, the host checks that its weights
    say the same version and refuses to label them otherwise; the nightly job, with no registry at hand, labels from
    that file alone."""
    from drtool.actions.registry import site_registry

    try:
        reg = site_registry(config, site)
        for m in models:
            alias = reg.alias(m["name"])
            if alias is not None:
                m["version"] = alias.version
    except DrtoolError:
        pass  # no registry yet: snapshots without a version label
    return models


def _target_stores(config: Config, site: Site) -> list[ObjectStore]:
    """Where each new snapshot is copied: the site's other stores, then every DR site's own store."""
    return [*site.object_stores[1:],
            *(s.object_stores[0] for s in config.sites.values() if s.role == "dr" and s.name != site.name)]


def plan(config: Config, site_name: str | None, model: str | None) -> dict:
    site = config.site(site_name) if site_name else config.primary
    per_host = _per_host(config, site, model)
    models = list({m["name"]: m for ms in per_host.values() for m in ms}.values())
    return {"site": site.name, "hosts": list(per_host), "models": models, "per_host": per_host,
            "store": site.object_stores[0].url, "replicate_to": [s.url for s in _target_stores(config, site)]}


def run(config: Config, out: Output, site_name: str | None, model: str | None, dry_run: bool) -> dict:
    p = plan(config, site_name, model)
    if dry_run:
        out.step("dry run: nothing is snapshotted, copied or changed")
        return {**p, "dry_run": True}
    site = config.site(p["site"])
    if site.is_standby:
        raise OperationFailed(f"site {site.name} has only cold standbys: there is nothing serving to snapshot",
                              hint="back up the site that serves (the primary)")
    with out.working(f"snapshotting on {', '.join(p['hosts'])}"):
        labelled = {m["name"]: m for m in _label_versions(config, site, p["models"])}
        # Each host its own models (inventory variables), all hosts in one play: Ansible's forks run them at once.
        res = run_playbook(config, "backup.yml", progress=out.ansible_progress(), forks=len(p["hosts"]), extravars={
            "drtool_targets": ",".join(p["hosts"]), "weights_backup_action": "snapshot",
            **store_vars(site, "weights_backup")},
            host_vars={h: {"weights_backup_models": [labelled[m["name"]] | {"port": m["port"]} for m in ms]}
                       for h, ms in p["per_host"].items()})
    # sorted by host name, not in the order the hosts' plays happened to finish
    snapshots = [dict(s, host=h, drtool=data.get("drtool")) for h, data in sorted(res.results.items())
                 for s in data.get("snapshots", [])]
    source = open_store(site.object_stores[0])
    copies, problems = [], []
    try:
        for target_url in p["replicate_to"]:
            target_site = next(s for s in config.sites.values() if any(o.url == target_url for o in s.object_stores))
            target_store = open_store(next(o for o in target_site.object_stores if o.url == target_url))
            try:
                for snap in snapshots:
                    with out.working(f"replicating {snap['id'][:12]} to {target_url}"):
                        rep = replicate_snapshot(source, target_store, snap["id"])
                        ver = verify_snapshot(target_store, snap["id"], sample_percent=VERIFY_SAMPLE_PCT)
                    copies.append({"snapshot": snap["id"], "model": snap["model"], "to": target_url,
                                   "bytes_copied": rep.get("bytes_copied"),
                                   # blobs the target held damaged (other bytes under their name), copied again
                                   "blobs_repaired": rep.get("blobs_repaired", 0), "repaired": rep.get("repaired", []),
                                   "verify": ver["mode"],
                                   "blobs_checked": ver["blobs_checked"]})
            except DrtoolError as exc:
                problems.append(f"{target_url}: {exc.message}")
            finally:
                target_store.close()
    finally:
        source.close()
    result = {**p, "snapshots": snapshots, "copies": copies, "problems": problems, "seconds": res.seconds}
    if problems:
        cls = VerificationError if any("verif" in x for x in problems) else OperationFailed
        raise cls(f"backup of {site.name} finished with {len(problems)} problem(s) in replication or verify",
                  details=problems, hint="the snapshots are in the site's own store; re-run `drtool backup`")
    return result


def schedule(config: Config, out: Output, site_name: str | None, model: str | None, remove: bool) -> dict:
    p = plan(config, site_name, model)
    site = config.site(p["site"])
    action = "unschedule" if remove else "schedule"
    replicate_to = [{"url": s.url, "endpoint": s.endpoint_url or "", "region": s.region or "",
                     "credentials_file": s.credentials_file or ""} for s in _target_stores(config, site)]
    hosts = p["hosts"] if not remove else [h.name for h in site.hosts]   # remove: from every host of the site
    res = run_playbook(config, "backup.yml", progress=out.ansible_progress(), extravars={
        "drtool_targets": ",".join(hosts), "weights_backup_action": action,
        "weights_backup_replicate_to": replicate_to, **store_vars(site, "weights_backup")},
        host_vars={h: {"weights_backup_models": p["per_host"].get(h, [])} for h in hosts})
    return {**p, "schedule": "removed" if remove else "installed", "hosts": sorted(res.results or p["hosts"])}
