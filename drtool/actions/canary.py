"""Run a version's image with its snapshot's weights on a canary input, on a primary host, beside production."""

from __future__ import annotations

from drtool.config import Config, Site
from drtool.execute.ansible import run_playbook
from drtool.execute.serving import base_url, predict, version, wait_ready
from drtool.model_registry.entries import VersionEntry

CANARY_PORT = 18080
SCRATCH = "/srv/drtool-canary"


def store_vars(site: Site, prefix: str) -> dict:
    """Ansible variables naming a site's own store: URL, endpoint, region and the credentials file's path."""
    store = site.object_stores[0]
    return {f"{prefix}_store_url": store.url, f"{prefix}_store_endpoint": store.endpoint_url or "",
            f"{prefix}_store_region": store.region or "",
            f"{prefix}_store_credentials_file": store.credentials_file or ""}


def run_canary(config: Config, entry: VersionEntry, inputs: dict) -> object:
    """The outputs of `entry`'s image on `inputs`, with the weights restored (and verified) from its snapshot."""
    site = config.primary
    host = site.hosts[0]
    dest = f"{SCRATCH}/{entry.model}-{entry.snapshot_id[:12]}"
    target = {"drtool_targets": host.name}
    ref = entry.image.at(site.registry_url)
    run_playbook(config, "pull_image.yml", extravars={**target, "serving_image_ref": ref})
    run_playbook(config, "restore_weights.yml", extravars={
        **target, **store_vars(site, "model_weights"), "model_weights_snapshot_id": entry.snapshot_id,
        "model_weights_dest": dest})
    server = {**target, "model_server_model": entry.model, "model_server_container": f"drtool-canary-{entry.model}"}
    try:
        run_playbook(config, "model_server.yml", extravars={
            **server, "model_server_action": "deploy", "model_server_image_ref": ref, "model_server_weights": dest,
            "model_server_port": CANARY_PORT, "model_server_gpu": False})
        url = base_url(host.address, CANARY_PORT)
        wait_ready(url)
        served = version(url)
        if served.get("snapshot_id") != entry.snapshot_id:
            from drtool.errors import VerificationError

            raise VerificationError(f"canary server reports snapshot {served.get('snapshot_id')}, "
                                    f"expected {entry.snapshot_id}")
        return predict(url, inputs)["outputs"]
    finally:
        run_playbook(config, "model_server.yml", extravars={**server, "model_server_action": "stop"},
                     raise_on_failure=False)
        run_playbook(config, "restore_weights.yml", raise_on_failure=False, extravars={
            **target, "model_weights_action": "remove", "model_weights_dest": dest})
