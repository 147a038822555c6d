"""drtool registry: register versions, promote with compare-and-swap, show, history, verify from one site."""

import getpass
import json
import socket
import time
from collections.abc import Callable
from pathlib import Path

from drtool.config import Config, Site
from drtool.errors import DrtoolError, OperationFailed, UsageError, VerificationError
from drtool.execute.container_registry import has_manifest
from drtool.model_registry.entries import (
    AliasEntry,
    Canary,
    ImageRef,
    VersionEntry,
    parse_canary,
    parse_image_ref,
)
from drtool.model_registry.registry import PRODUCTION, ModelRegistry
from drtool.output import Output
from drtool.snapshot.stores import open_store
from drtool.snapshot.verify import verify_snapshot

CanaryRunner = Callable[[Config, VersionEntry, dict], object]  # runs the image with the weights on an input


def who() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def site_registry(config: Config, site: Site) -> ModelRegistry:
    """The registry copy in the site's own store (its first object store)."""
    return ModelRegistry(open_store(site.object_stores[0]), site.name)


def _ordered_sites(config: Config) -> list[Site]:
    return [config.primary] + [s for s in config.sites.values() if s.role != "primary"]


def image_present(site: Site, image: ImageRef, ca_file: str | None) -> bool:
    return has_manifest(site.registry_url, image.repository, image.digest, site.registry_ca_file or ca_file)


def snapshot_problem(site: Site, snapshot_id: str, read_data: bool = False) -> str | None:
    """None when the snapshot is complete in the site's store, else what is wrong."""
    store = open_store(site.object_stores[0])
    try:
        verify_snapshot(store, snapshot_id, read_data=read_data)
    except VerificationError as exc:
        return exc.message
    except UsageError as exc:  # not there at all
        return exc.message
    finally:
        store.close()
    return None


# -- register ---------------------------------------------------------------------------------------
def register(config: Config, out: Output, model: str, version: str, snapshot_id: str, image: str,
             canary_input: Path | None, tolerance: float, run_canary: CanaryRunner | None) -> dict:
    config.model(model)
    ref = parse_image_ref(image)
    primary = config.primary
    problem = snapshot_problem(primary, snapshot_id)
    if problem:
        raise UsageError(f"snapshot {snapshot_id[:12]} is not complete in {primary.name}'s store: {problem}",
                         hint="register a snapshot listed by `drtool snapshot list`")
    if not image_present(primary, ref, config.ca_file):
        raise UsageError(f"image {ref.repository}@{ref.digest} is not in {primary.name}'s registry "
                         f"{primary.registry_url}", hint="build and push it first: `drtool image build --push`")
    if canary_input is not None:
        try:
            inputs = json.loads(canary_input.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UsageError(f"canary input {canary_input} is not readable JSON: {exc}") from None
    else:
        from drtool.model.demo import demo_inputs

        inputs = {"inputs": demo_inputs(frames=20, seed=7)}
    parse_canary({"input": inputs, "expected": None, "tolerance": tolerance}, str(canary_input or "default"))
    draft = VersionEntry(model, version, ref, snapshot_id, Canary(inputs, None, tolerance), who(), now_iso())
    existing = site_registry(config, primary).version(model, version)
    if existing is not None:
        if (existing.image, existing.snapshot_id) != (ref, snapshot_id):
            raise UsageError(f"{model} version {version} is already registered with another image or snapshot",
                             hint="versions are immutable: register a new version")
        entry = existing
        out.step(f"{model} {version} already registered; re-replicating")
    else:
        if run_canary is None:
            raise UsageError("no canary runner available")
        with out.working(f"running {model} {version} on its canary input"):
            expected = run_canary(config, draft, inputs)
        entry = VersionEntry(model, version, ref, snapshot_id, Canary(inputs, expected, tolerance), draft.registered_by,
                             draft.registered_at)
    written = {}
    for site in _ordered_sites(config):
        written[site.name] = "created" if site_registry(config, site).put_version(entry) else "present"
    return {"model": model, "version": version, "image": ref.at("<registry>"), "snapshot_id": snapshot_id,
            "canary_expected": entry.canary.expected, "sites": written}


# -- promote ----------------------------------------------------------------------------------------
def promote(config: Config, out: Output, model: str, version: str, force: bool, reason: str | None) -> dict:
    config.model(model)
    primary_reg = site_registry(config, config.primary)
    entry = primary_reg.require_version(model, version)
    current = primary_reg.alias(model)
    checks = {}
    for site in config.sites.values():
        if site.role != "dr":
            continue
        problems = []
        try:
            if not image_present(site, entry.image, config.ca_file):
                problems.append(f"image {entry.image.repository}@{entry.image.digest} missing from {site.registry_url}")
        except DrtoolError as exc:
            problems.append(exc.message)
        snap = snapshot_problem(site, entry.snapshot_id)
        if snap:
            problems.append(f"snapshot: {snap}")
        if site_registry(config, site).version(model, version) is None:
            problems.append("version entry not replicated to this site's store")
        checks[site.name] = problems
    missing = {s: p for s, p in checks.items() if p}
    if missing and not force:
        raise VerificationError(
            f"refusing to promote {model} {version}: a DR site could not serve it",
            details=[f"{s}: {p}" for s, ps in missing.items() for p in ps],
            hint="push the image and replicate the snapshot to every DR site, or pass --force",
        )
    if current is not None and current.version == version:
        out.step(f"{model} production is already {version}; re-replicating the alias")
        moved = current
    else:
        moved = primary_reg.move_alias(AliasEntry(model, PRODUCTION, (current.seq if current else 0) + 1, version,
                                                  current.version if current else None, who(), now_iso(), reason))
    replicated, failed = [], []
    for site in _ordered_sites(config)[1:]:
        try:
            site_registry(config, site).copy_alias(moved)
            replicated.append(site.name)
        except DrtoolError as exc:
            failed.append(f"{site.name}: {exc.message}")
    result = {"model": model, "production": moved.version, "previous": moved.previous, "seq": moved.seq,
              "replicated_to": replicated, "forced_past": missing if force else {}}
    if failed:
        raise OperationFailed(f"promoted {model} {version} at {config.primary.name} but could not replicate the alias",
                              details=failed, hint="run the same promote again once the site's store is reachable")
    return result


# -- show / history ---------------------------------------------------------------------------------
def show(config: Config, model: str | None, site_name: str | None) -> dict:
    site = config.site(site_name) if site_name else config.primary
    reg = site_registry(config, site)
    models = [config.model(model).name] if model else reg.models()
    out = {}
    for m in models:
        alias = reg.alias(m)
        out[m] = {
            "production": alias.version if alias else None,
            "versions": [{"version": v.version, "image": f"{v.image.repository}@{v.image.digest}",
                          "snapshot_id": v.snapshot_id, "registered_by": v.registered_by,
                          "registered_at": v.registered_at} for v in reg.versions(m)],
        }
    return {"site": site.name, "models": out}


def history(config: Config, model: str, site_name: str | None) -> dict:
    site = config.site(site_name) if site_name else config.primary
    config.model(model)
    log = site_registry(config, site).alias_log(model)
    return {"site": site.name, "model": model,
            "history": [{"seq": a.seq, "version": a.version, "previous": a.previous, "by": a.by, "at": a.at,
                         "reason": a.reason} for a in log]}


# -- verify -----------------------------------------------------------------------------------------
def verify(config: Config, out: Output, site_name: str, model: str | None, read_data: bool) -> dict:
    """From the site alone: alias resolves, image pullable there, snapshot complete there, canary present."""
    site = config.site(site_name)
    reg = site_registry(config, site)
    models = [config.model(model).name] if model else list(config.models)
    results, problems = {}, []
    for m in models:
        checks = {}
        alias = reg.alias(m)
        if alias is None:
            problems.append(f"{m}: no production alias in {site.name}'s registry copy")
            results[m] = {"alias": None}
            continue
        entry = reg.version(m, alias.version)
        checks["alias"] = f"production -> {alias.version} (seq {alias.seq})"
        if entry is None:
            problems.append(f"{m}: production points at version {alias.version!r}, which is not registered "
                            f"in {site.name}'s store")
            results[m] = checks
            continue
        try:
            ok = image_present(site, entry.image, config.ca_file)
        except DrtoolError as exc:
            ok = False
            checks["image_error"] = exc.message
        checks["image"] = f"{entry.image.repository}@{entry.image.digest} {'present' if ok else 'MISSING'} " \
                          f"in {site.registry_url}"
        if not ok:
            problems.append(f"{m}: image {entry.image.repository}@{entry.image.digest} is not pullable from "
                            f"{site.name}'s registry {site.registry_url}")
        with out.working(f"verifying snapshot {entry.snapshot_id[:12]} in {site.name}'s store"):
            snap = snapshot_problem(site, entry.snapshot_id, read_data=read_data)
        checks["snapshot"] = snap or f"{entry.snapshot_id[:12]} complete{' (all data read)' if read_data else ''}"
        if snap:
            problems.append(f"{m}: snapshot {entry.snapshot_id[:12]} in {site.name}'s store: {snap}")
        if entry.canary.expected is None:
            problems.append(f"{m}: version {entry.version} has no canary output recorded")
        checks["canary"] = "recorded" if entry.canary.expected is not None else "MISSING"
        results[m] = {"version": entry.version, **checks}
    if problems:
        raise VerificationError(f"registry verify failed at site {site.name}: {problems[0]}", details=problems,
                                hint="fix what is named; failover to this site would not serve the production version")
    return {"site": site.name, "ok": True, "models": results}
