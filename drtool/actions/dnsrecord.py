"""The service records around a failover: lower their TTL ahead of time (`--prepare`), keep every record a flip
replaced, and put a saved record back (`drtool dns restore`) only when the address it names serves correctly.
Each service has its own record (`services:`); without `--service` these act on the site's own record."""

import dataclasses
import json
import time

from drtool.actions import deploy
from drtool.actions.registry import site_registry
from drtool.config import Config, Host, ServiceSpec, Site
from drtool.errors import DrtoolError, UsageError, VerificationError
from drtool.execute.dns import ARecord, dns_for
from drtool.execute.serving import base_url, version
from drtool.fleet.plan import select_services
from drtool.fsutil import write_json_atomic
from drtool.output import Output
from drtool.paths import state_dir
from drtool.snapshot.stores import BlobStore, open_store

PREFIX = "dns"


def _key(record: str) -> str:
    return f"{PREFIX}/{record.rstrip('.')}"


def record_view(site: Site, spec: ServiceSpec) -> Site:
    """`site` as one service's record sees it: that record and the service's port (same DNS server, zone, key)."""
    return dataclasses.replace(site, serving_port=spec.port, dns=dataclasses.replace(site.dns, record=spec.record))


def for_service(config: Config, site_name: str, service: str | None) -> tuple[Site, ServiceSpec | None]:
    """The site as the named service's record sees it, and the service; without one, the site and its own record."""
    site = config.site(site_name)
    if not service:
        return site, None
    spec = config.services.get(service)
    if spec is None:
        raise UsageError(f"unknown service {service!r}", hint=f"services: {', '.join(sorted(config.services))}")
    return record_view(site, spec), spec


def save_previous(site: Site, store: BlobStore, before: ARecord, run_id: str) -> str:
    """Keep the record a change is about to replace: in the site's store (seen from anywhere) and locally.
    Written before the change, so a crash in between leaves the old record saved, never lost."""
    doc = {"record": site.dns.record, "addresses": before.addresses, "ttl": before.ttl, "run_id": run_id,
           "saved_at": time.time(), "site": site.name}
    data = json.dumps(doc, sort_keys=True, indent=2).encode()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(doc["saved_at"]))
    key = f"{_key(site.dns.record)}/{stamp}-{run_id}.json"
    store.put(key, data)
    write_json_atomic(state_dir() / key, doc, 0o644)
    return key


def saved(config: Config, site: Site) -> list[dict]:
    """Every saved previous record of the site's service record, newest first."""
    store = open_store(site.object_stores[0])
    try:
        docs = [json.loads(store.get(o.key)) for o in store.list(_key(site.dns.record) + "/")]
    finally:
        store.close()
    return sorted(docs, key=lambda d: d["saved_at"], reverse=True)


def show(config: Config, site_name: str, service: str | None = None) -> dict:
    site, _spec = for_service(config, site_name, service)
    current = dns_for(site.dns).read_a()
    return {"site": site.name, "record": site.dns.record,
            "current": {"addresses": current.addresses, "ttl": current.ttl},
            "configured_ttl": site.dns.ttl, "prepare_ttl": site.dns.prepare_ttl, "saved": saved(config, site)}


def prepare(config: Config, out: Output, site_name: str, ttl: int | None, dry_run: bool,
            services: list[str] | None = None) -> dict:
    """Lower the TTL of the record of every service that fails over to the site (or of the named ones) now, so
    resolvers drop the old answer quickly when a failover flips it later. The addresses stay exactly as they are;
    each record as it was is saved first. Every record is read before any changes: one without an address stops
    it with nothing changed. The result is the site's own record's (when it is one of them), with `records`."""
    dr = config.site(site_name)
    ttl = ttl or dr.dns.prepare_ttl
    views = [record_view(dr, s) for s in select_services(config, dr.name, services)]
    current = [dns_for(site.dns).read_a() for site in views]
    empty = [site.dns.record for site, now in zip(views, current, strict=True) if not now.addresses]
    if empty:
        raise UsageError(f"{', '.join(empty)}: no A record at {dr.dns.server or dr.dns.zone_id}; nothing changed",
                         hint="check the service records (dns.record, services.*.record) in the configuration")
    store = None
    if not dry_run and any(now.ttl is None or now.ttl > ttl for now in current):
        dns_for(dr.dns).check_credentials()   # one server and key for every record: checked once, before any change
        store = open_store(dr.object_stores[0])
    try:
        results = [_prepare_record(site, now, out, ttl, store) for site, now in zip(views, current, strict=True)]
    finally:
        if store is not None:
            store.close()
    mine = next((r for r in results if r["record"] == dr.dns.record), results[0])
    return {**mine, "site": dr.name, "changed": any(r["changed"] for r in results), "records": results}


def _prepare_record(site: Site, current: ARecord, out: Output, ttl: int, store: BlobStore | None) -> dict:
    """One record's TTL lowered (its old record saved in `store` first); `store` None: a dry run."""
    result = {"site": site.name, "record": site.dns.record, "addresses": current.addresses,
              "ttl_before": current.ttl, "ttl_after": ttl, "dry_run": store is None, "changed": False}
    if current.ttl is not None and current.ttl <= ttl:
        out.info(f"{site.dns.record} already has TTL {current.ttl}s (<= {ttl}s): nothing to change")
        return result
    if store is None:
        out.info(f"would lower the TTL of {site.dns.record} from {current.ttl}s to {ttl}s (addresses unchanged)")
        return result
    dns = dns_for(site.dns)
    result["previous_saved"] = save_previous(site, store, current, f"prepare-{int(time.time())}")
    dns.replace_a(current.addresses, ttl)
    after = dns.read_a()
    if after.addresses != current.addresses or after.ttl != ttl:
        raise DrtoolError(f"{site.dns.server} answers {after.addresses} TTL {after.ttl} after the change, "
                          f"expected {current.addresses} TTL {ttl}")
    out.info(f"lowered the TTL of {site.dns.record} from {current.ttl}s to {ttl}s; resolvers that cached it pick "
             f"up a failover within {ttl}s after up to {current.ttl}s. Restore it with `drtool dns restore`.")
    return {**result, "changed": True}


def host_at(config: Config, address: str) -> tuple[Site, Host] | None:
    """The serving host, or the site's Nginx (checked through it, as clients reach it), at `address`."""
    for s in config.sites.values():
        for h in s.hosts:
            if h.address == address:
                return s, h
        if s.proxy and s.proxy.address == address:
            return s, Host(name=s.proxy.name, address=s.proxy.address, site=s.name, port=s.proxy.port)
    return None


def serving_check(config: Config, addresses: list[str], model: str, port: int | None = None) -> dict:
    """Every address must be a configured host serving the production version and canary correctly (at `port`,
    default its site's serving port): a record is never pointed where no site would be serving."""
    evidence = {}
    for addr in addresses:
        found = host_at(config, addr)
        if found is None:
            raise VerificationError(f"{addr} is not a host of any configured site",
                                    hint="refusing to point the record at an address drtool cannot verify")
        site, host = found
        site = dataclasses.replace(site, serving_port=port or site.serving_port)
        try:
            entry = site_registry(config, site).production(model)
            if entry is None:
                raise UsageError(f"{model} has no production version in {site.name}'s registry")
            # A failover may serve a newer (or fallback) snapshot of the production version: the server checked
            # those weights against that snapshot's manifest, and the canary below checks what they compute.
            served = version(base_url(host.address, site.serving_port)).get("snapshot_id")
            if served and served != entry.snapshot_id:
                entry = dataclasses.replace(entry, snapshot_id=served)
            evidence[addr] = {"host": host.name, **deploy.check(site, host, entry)}
        except DrtoolError as exc:
            raise VerificationError(f"{host.name} ({addr}) does not serve {model} correctly: {exc.message}",
                                    hint="refusing: no site would be serving behind the record. Bring it up "
                                         "first (`drtool failback` or `drtool failover`)") from None
    return evidence


def restore(config: Config, out: Output, site_name: str, model: str | None, index: int, dry_run: bool,
            service: str | None = None) -> dict:
    """Put back a saved record (the newest by default): refused unless its addresses serve correctly. With a
    service, its own record, checked for its model at its port."""
    site, spec = for_service(config, site_name, service)
    model = spec.model if spec else model
    docs = saved(config, site)
    if not docs:
        raise UsageError(f"no saved record for {site.dns.record} in {site.object_stores[0].url}",
                         hint="records are saved by `failover`, `failback` and `failover --prepare`")
    if index >= len(docs):
        raise UsageError(f"only {len(docs)} saved record(s) for {site.dns.record}", hint="see `drtool dns show`")
    doc = docs[index]
    dns = dns_for(site.dns)
    current = dns.read_a()
    result = {"site": site.name, "record": site.dns.record, "restoring": doc,
              "current": {"addresses": current.addresses, "ttl": current.ttl}, "dry_run": dry_run, "changed": False}
    result["serving"] = serving_check(config, doc["addresses"], model, spec.port if spec else None)
    if dry_run or (current.addresses == doc["addresses"] and current.ttl == doc["ttl"]):
        return result
    dns.check_credentials()
    store = open_store(site.object_stores[0])
    try:
        save_previous(site, store, current, f"restore-{int(time.time())}")
    finally:
        store.close()
    dns.replace_a(doc["addresses"], doc["ttl"])
    after = dns.read_a()
    out.info(f"{site.dns.record}: {current.addresses} TTL {current.ttl} -> {after.addresses} TTL {after.ttl}")
    return {**result, "changed": True, "after": {"addresses": after.addresses, "ttl": after.ttl}}


def standbys_in_use(config: Config, exclude: set[str] = frozenset()) -> dict[str, list[str]]:
    """{DR standby address: [services whose record points at it]}, over every configured service not in
    `exclude`: the standbys that must stay on."""
    standby = {h.address for s in config.sites.values() if s.role == "dr" and s.is_standby for h in s.hosts}
    used: dict[str, list[str]] = {}
    for spec in config.services.values():
        if spec.name in exclude:
            continue
        for a in dns_for(config.site(spec.site).dns).read_a(spec.record).addresses:
            if a in standby:
                used.setdefault(a, []).append(spec.name)
    return used
