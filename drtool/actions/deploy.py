"""Bring a registered version up on one host and prove it: pull by digest, restore verified weights, start the
container, wait for readiness, check /version against the registry and the canary output. Failover, failback
and the lab's production set-up are made of these steps."""

from drtool.config import Config, Host, Model, Site
from drtool.errors import VerificationError
from drtool.execute.ansible import run_playbook
from drtool.execute.serving import base_url, predict, version, wait_ready
from drtool.model_registry.entries import VersionEntry, compare_output


def store_vars(site: Site, prefix: str) -> dict:
    """Ansible variables naming a site's own store: URL, endpoint, region and the credentials file's path."""
    store = site.object_stores[0]
    return {f"{prefix}_store_url": store.url, f"{prefix}_store_endpoint": store.endpoint_url or "",
            f"{prefix}_store_region": store.region or "",
            f"{prefix}_store_credentials_file": store.credentials_file or ""}


def pull(config: Config, site: Site, host: Host, entry: VersionEntry, progress=None) -> dict:
    ref = entry.image.at(site.registry_url)
    res = run_playbook(config, "pull_image.yml", progress=progress,
                       extravars={"drtool_targets": host.name, "serving_image_ref": ref})
    return {"image": ref, **res.results.get(host.name, {}), "seconds": res.seconds}


def restore(config: Config, site: Site, host: Host, model: Model, entry: VersionEntry, progress=None,
            dest: str | None = None) -> dict:
    res = run_playbook(config, "restore_weights.yml", progress=progress, extravars={
        "drtool_targets": host.name, **store_vars(site, "model_weights"),
        "model_weights_snapshot_id": entry.snapshot_id, "model_weights_dest": dest or model.weights_path})
    data = res.results.get(host.name, {})
    return {"snapshot_id": entry.snapshot_id, "store": site.object_stores[0].url,
            "restore": data.get("restore", {}), "seconds": res.seconds}


def server_vars(site: Site, model: Model, image_ref: str, version: str, snapshot_id: str, *,
                weights: str | None = None, port: int | None = None, container: str | None = None,
                service: str | None = None) -> dict:
    """The model_server role's variables for one serving container: the same for a single failover, each service
    of a fleet and a failback. A canary run (its own container name) gets no GPU, limits or hook."""
    canary = container is not None and service is None
    gpu = site.gpu and not canary
    serving = site.raw.get("serving", {}) if not canary else {}
    labels = {"io.drtool.version": version, "io.drtool.snapshot": snapshot_id}
    if service:
        labels["io.drtool.service"] = service
    return {
        "model_server_gpu_memory_limit_pct": serving.get("gpu_memory_limit_pct", 0),
        "model_server_gpu_temperature_limit_c": serving.get("gpu_temperature_limit_c", 0),
        "model_server_gpu_fault_dir": serving.get("gpu_fault_dir", ""),
        "model_server_action": "deploy", "model_server_model": model.name,
        "model_server_container": container or f"drtool-{model.name}",
        "model_server_image_ref": image_ref,
        "model_server_weights": weights or model.weights_path, "model_server_port": port or site.serving_port,
        "model_server_gpu": gpu, "model_server_labels": labels}


def start(config: Config, site: Site, host: Host, model: Model, entry: VersionEntry, progress=None, *,
          weights: str | None = None, port: int | None = None, container: str | None = None) -> dict:
    """The serving container; a canary run passes its own weights copy, port and container name."""
    hv = server_vars(site, model, entry.image.at(site.registry_url), entry.version, entry.snapshot_id,
                     weights=weights, port=port, container=container)
    res = run_playbook(config, "model_server.yml", progress=progress, extravars={"drtool_targets": host.name, **hv})
    return {**res.results.get(host.name, {}), "gpu_requested": hv["model_server_gpu"], "seconds": res.seconds}


def _container_action(config: Config, host: Host, model: Model, action: str, progress=None,
                      container: str | None = None, raise_on_failure: bool = True):
    """One model_server action on the model's serving container (or the named one): stop, probe or restart."""
    return run_playbook(config, "model_server.yml", progress=progress, raise_on_failure=raise_on_failure, extravars={
        "drtool_targets": host.name, "model_server_action": action, "model_server_model": model.name,
        "model_server_container": container or f"drtool-{model.name}"})


def stop(config: Config, host: Host, model: Model, progress=None, container: str | None = None,
         raise_on_failure: bool = True) -> dict:
    res = _container_action(config, host, model, "stop", progress, container, raise_on_failure)
    return res.results.get(host.name, {})


def remove_weights(config: Config, host: Host, dest: str, raise_on_failure: bool = True) -> None:
    run_playbook(config, "restore_weights.yml", raise_on_failure=raise_on_failure, extravars={
        "drtool_targets": host.name, "model_weights_action": "remove", "model_weights_dest": dest})


def probe(config: Config, host: Host, model: Model) -> dict:
    """The serving container as the host's engine sees it: exists, running, image, labels."""
    return _container_action(config, host, model, "probe").results.get(host.name, {})


def restart(config: Config, host: Host, model: Model) -> dict:
    """The serving container started again in place: same image, weights and settings (ladder rung 1)."""
    res = _container_action(config, host, model, "restart")
    return {**res.results.get(host.name, {}), "seconds": res.seconds}


def wait(site: Site, host: Host, timeout: float = 300) -> dict:
    body = wait_ready(base_url(host.address, site.serving_port), timeout=timeout)
    return {"readyz": body}


def check(site: Site, host: Host, entry: VersionEntry) -> dict:
    """/version equals the registry's entry and the canary output matches; VerificationError naming the check."""
    url = base_url(host.address, site.serving_port)
    served = version(url)
    expected = {"model": entry.model, "version": entry.version, "snapshot_id": entry.snapshot_id}
    got = {k: served.get(k) for k in expected}
    if got != expected:
        raise VerificationError(f"{host.name} serves {got}, the registry's production entry is {expected}",
                                hint="the host runs another version or weights; DNS stays where it is")
    outputs = predict(url, entry.canary.input)["outputs"]
    ok, evidence = compare_output(entry.canary.expected, outputs, entry.canary.tolerance)
    if not ok:
        raise VerificationError(f"canary output of {host.name} does not match the registry's: {evidence}",
                                hint="the serving stack computes something else than what was registered")
    return {"version": served, "canary": evidence}
