"""Run a version's image with its snapshot's weights on a canary input, on a primary host, beside production."""

from drtool.actions import deploy
from drtool.config import Config
from drtool.errors import VerificationError
from drtool.execute.serving import base_url, predict, version, wait_ready
from drtool.model_registry.entries import VersionEntry

CANARY_PORT = 18080
SCRATCH = "/srv/drtool-canary"


def run_canary(config: Config, entry: VersionEntry, inputs: dict) -> object:
    """The outputs of `entry`'s image on `inputs`, with the weights restored (and verified) from its snapshot."""
    site, model = config.primary, config.model(entry.model)
    host = site.hosts[0]
    dest = f"{SCRATCH}/{entry.model}-{entry.snapshot_id[:12]}"
    container = f"drtool-canary-{entry.model}"
    deploy.pull(config, site, host, entry)
    deploy.restore(config, site, host, model, entry, dest=dest)
    try:
        deploy.start(config, site, host, model, entry, weights=dest, port=CANARY_PORT, container=container)
        url = base_url(host.address, CANARY_PORT)
        wait_ready(url)
        served = version(url)
        if served.get("snapshot_id") != entry.snapshot_id:
            raise VerificationError(f"canary server reports snapshot {served.get('snapshot_id')}, "
                                    f"expected {entry.snapshot_id}")
        return predict(url, inputs)["outputs"]
    finally:
        deploy.stop(config, host, model, container=container, raise_on_failure=False)
        deploy.remove_weights(config, host, dest, raise_on_failure=False)
